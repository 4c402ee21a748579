//! The replies of a batch's pipeline, one result per message.
//!
//! Invariants owned here: results are matched to messages by position, and
//! a reply count that does not match the commands sent fails every message
//! rather than shift one message's reply onto another; a short `WAIT`
//! rejects every entry of the batch; error replies map by their code.

use super::Entry;
use super::options::Settings;
use crate::destination::SendError;
use crate::destination::fail_all;
use redis::{RedisError, RedisResult, Value};
use std::time::Duration;

/// Each message's result from the pipeline's replies, in order.
pub(super) fn settle(
    entries: Vec<Result<Entry, SendError>>,
    mut replies: Vec<RedisResult<Value>>,
    settings: &Settings,
    timeout: Duration,
) -> Vec<Result<(), SendError>> {
    let sent = entries.iter().filter(|e| e.is_ok()).count();
    let expected = sent + usize::from(settings.wait.is_some());
    if replies.len() != expected {
        let error = SendError::rejected(format!(
            "Redis answered {} replies to {expected} commands",
            replies.len()
        ));
        return fail_all(entries, &error);
    }
    let replicas = settings.wait.map(|wait| (wait, replies.pop()));
    let short = replicas.and_then(|(wait, reply)| match reply {
        Some(Ok(Value::Int(acked))) if acked >= wait.replicas as i64 => None,
        Some(Ok(Value::Int(acked))) => Some(SendError::rejected(format!(
            "only {acked} of {} replicas acknowledged within {} ms (wait=)",
            wait.replicas, wait.timeout_ms
        ))),
        Some(Err(e)) => Some(SendError::rejected(format!("WAIT failed: {e}"))),
        _ => Some(SendError::rejected("WAIT gave no replica count")),
    });
    let mut replies = replies.into_iter();
    entries
        .into_iter()
        .map(|entry| {
            let entry = entry?;
            match replies.next() {
                Some(Ok(Value::BulkString(_) | Value::SimpleString(_))) => match &short {
                    Some(error) => Err(error.clone()),
                    None => Ok(()),
                },
                Some(Ok(other)) => Err(SendError::rejected(format!(
                    "XADD to {:?} answered {other:?}, not an entry id",
                    entry.key
                ))),
                Some(Err(e)) => Err(per_entry(&e, &entry.key, settings, timeout)),
                None => Err(SendError::rejected("no reply")),
            }
        })
        .collect()
}

/// What a server's error reply to one `XADD` means for its message.
fn per_entry(error: &RedisError, key: &str, settings: &Settings, timeout: Duration) -> SendError {
    match error.code() {
        Some("WRONGTYPE") => SendError::Refused(format!(
            "key {key:?} holds another type than a stream (WRONGTYPE)"
        )),
        Some(_) => SendError::rejected(format!("Redis did not add to stream {key:?}: {error}")),
        None => whole_batch(error, settings, timeout),
    }
}

/// What an error of the whole pipeline means: the connection, mostly.
pub(super) fn whole_batch(error: &RedisError, settings: &Settings, timeout: Duration) -> SendError {
    if error.is_timeout() {
        SendError::Timeout(timeout)
    } else if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
    {
        SendError::Unreachable(format!(
            "the connection to Redis at {} failed: {error}",
            settings.shown
        ))
    } else {
        SendError::rejected(format!("Redis at {}: {error}", settings.shown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::Message;

    fn settings(query: &str) -> Settings {
        Settings::parse(&format!("redis://127.0.0.1:1/0?{query}").parse().unwrap()).unwrap()
    }

    fn entry_of(settings: &Settings, routing_key: &str) -> Result<Entry, SendError> {
        let message = Message {
            message_id: "m-1".to_owned(),
            exchange: "events".to_owned(),
            routing_key: routing_key.to_owned(),
            payload: bytes::Bytes::from_static(b"x"),
            content_type: None,
            headers: vec![("tenant".to_owned(), "acme".to_owned())],
            created_epoch: None,
        };
        super::super::entry(settings, &message)
    }

    fn id() -> RedisResult<Value> {
        Ok(Value::BulkString(b"1-0".to_vec()))
    }

    #[test]
    fn each_reply_settles_its_own_message_and_wrongtype_is_refused() {
        let s = settings("maxlen=10");
        let entries = vec![entry_of(&s, "a"), entry_of(&s, "b"), entry_of(&s, "c")];
        let wrongtype = redis::make_extension_error("WRONGTYPE".into(), Some("x".into()));
        let oom = redis::make_extension_error("OOM".into(), Some("x".into()));
        let results = settle(
            entries,
            vec![id(), Err(wrongtype), Err(oom)],
            &s,
            Duration::ZERO,
        );
        assert_eq!(results[0], Ok(()));
        assert!(matches!(&results[1], Err(SendError::Refused(r)) if r.contains("events:b")));
        assert!(
            matches!(&results[2], Err(SendError::Rejected { .. })),
            "{results:?}"
        );
    }

    #[test]
    fn fewer_replicas_than_asked_reject_the_whole_batch() {
        let s = settings("wait=2,100");
        let entries = vec![entry_of(&s, "a"), entry_of(&s, "b")];
        let results = settle(
            entries,
            vec![id(), id(), Ok(Value::Int(1))],
            &s,
            Duration::ZERO,
        );
        for result in &results {
            assert!(
                matches!(result, Err(SendError::Rejected { reason, .. })
                if reason.contains("1 of 2 replicas")),
                "{results:?}"
            );
        }
        let entries = vec![entry_of(&s, "a")];
        let results = settle(entries, vec![id(), Ok(Value::Int(2))], &s, Duration::ZERO);
        assert_eq!(results, vec![Ok(())]);
    }

    #[test]
    fn a_miscounted_reply_fails_every_message_instead_of_shifting_results() {
        let s = settings("");
        let entries = vec![entry_of(&s, "a"), entry_of(&s, "b")];
        let results = settle(entries, vec![id()], &s, Duration::ZERO);
        assert!(results.iter().all(Result::is_err), "{results:?}");
    }
}
