//! The operator's side of a consumed queue's dead letters (`<queue>.dead`):
//! list them without taking them, replay them to `<queue>` with a fresh
//! attempt budget, or purge them (`outbox-relay dead-queue list|replay|purge
//! --queue <queue>`).
//!
//! Invariants owned here: listing takes each message unacked and gives all
//! back at the end (nothing is lost if the command dies: the broker gives
//! back what its channel held); a replayed message is acked in the dead
//! queue only after its copy in `<queue>` was confirmed; a replay moves at
//! most the messages that were dead when it began, so messages that fail
//! again meanwhile are not replayed in a loop.

use super::plan::dead_queue;
use super::settle::{ATTEMPTS_HEADER, ERROR_HEADER, STATUS_HEADER, attempts, rebuilt};
use crate::amqp::publish::classify;
use crate::amqp::table_to_json;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Why a dead-letter queue could not be read or replayed.
#[derive(Debug, thiserror::Error)]
pub enum DeadQueueError {
    #[error(
        "cannot read {queue} (does it exist? the relay declares it when it delivers from the queue): {source}"
    )]
    Missing {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the copy to {queue} was not confirmed: {source}")]
    Replay {
        queue: String,
        #[source]
        source: crate::amqp::PublishError,
    },
}

/// Messages of `<queue>.dead` (at most `limit`) as JSON objects, left in
/// the queue in their order.
pub async fn list(
    channel: &Channel,
    queue: &str,
    limit: u32,
) -> Result<Vec<Value>, DeadQueueError> {
    let dead = dead_queue(queue);
    let mut shown = Vec::new();
    let mut last_tag = None;
    while shown.len() < limit as usize {
        let got = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|source| DeadQueueError::Missing {
                queue: dead.clone(),
                source,
            })?;
        let Some(message) = got else { break };
        let d = message.delivery;
        last_tag = Some(d.delivery_tag);
        shown.push(describe(&d.properties, &d.data, d.redelivered));
    }
    if let Some(tag) = last_tag {
        let all_back = BasicNackOptions {
            multiple: true,
            requeue: true,
        };
        channel.basic_nack(tag, all_back).await?;
    }
    Ok(shown)
}

/// One dead message as JSON.
fn describe(p: &BasicProperties, data: &[u8], redelivered: bool) -> Value {
    let header = |key: &str| {
        p.headers().as_ref().and_then(|h| match h.inner().get(key) {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            _ => None,
        })
    };
    json!({
        "message_id": p.message_id().as_ref().map(|m| m.to_string()),
        "attempts": attempts(p),
        "status": header(STATUS_HEADER),
        "error": header(ERROR_HEADER),
        "content_type": p.content_type().as_ref().map(|c| c.to_string()),
        "headers": p.headers().as_ref().map(table_to_json),
        "timestamp": p.timestamp(),
        "redelivered": redelivered,
        "size": data.len(),
        "payload": String::from_utf8_lossy(data),
    })
}

/// Moves up to `limit` messages from `<queue>.dead` back to `<queue>`,
/// without their attempt count and last failure; returns how many.
/// `channel` is put in confirm mode.
pub async fn replay(channel: &Channel, queue: &str, limit: u32) -> Result<u32, DeadQueueError> {
    let dead = dead_queue(queue);
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let found = channel
        .queue_declare(dead.as_str().into(), passive, FieldTable::default())
        .await
        .map_err(|source| DeadQueueError::Missing {
            queue: dead.clone(),
            source,
        })?;
    let budget = found.message_count().min(limit);
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut moved = 0;
    while moved < budget {
        let Some(message) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        let d = message.delivery;
        let properties = rebuilt(&d.properties, fresh(d.properties.headers().as_ref()));
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let confirmed = channel
            .basic_publish("".into(), queue.into(), options, &d.data, properties)
            .await
            .map_err(DeadQueueError::Broker)?
            .await;
        if let Err(source) = classify(confirmed) {
            let _ = d
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await;
            return Err(DeadQueueError::Replay {
                queue: queue.to_owned(),
                source,
            });
        }
        d.acker.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    Ok(moved)
}

/// The headers of a replayed message: its own, without the attempt count
/// and the last failure (a fresh budget).
fn fresh(headers: Option<&FieldTable>) -> FieldTable {
    let kept: BTreeMap<ShortString, AMQPValue> = super::settle::without_bookkeeping(headers)
        .inner()
        .iter()
        .filter(|(k, _)| ![ATTEMPTS_HEADER, STATUS_HEADER, ERROR_HEADER].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    FieldTable::from(kept)
}

/// Deletes every message of `<queue>.dead`; returns how many.
pub async fn purge(channel: &Channel, queue: &str) -> Result<u32, DeadQueueError> {
    let dead = dead_queue(queue);
    channel
        .queue_purge(dead.as_str().into(), QueuePurgeOptions::default())
        .await
        .map_err(|source| DeadQueueError::Missing {
            queue: dead,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_message_loses_its_attempts_and_failure_but_keeps_its_headers() {
        let mut h = FieldTable::default();
        h.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        h.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(10));
        h.insert(
            STATUS_HEADER.into(),
            AMQPValue::LongString("UNAVAILABLE".into()),
        );
        h.insert(ERROR_HEADER.into(), AMQPValue::LongString("busy".into()));
        h.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        let kept = fresh(Some(&h));
        let names: Vec<&str> = kept.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["tenant"]);
    }
}
