//! Redis Streams: each message is an `XADD` to a stream whose key is named
//! from its row (`<exchange>:<routing_key>` by default, see [`options`]),
//! with the fields `payload`, `message_id`, `headers` (a JSON object of
//! text values) and `content_type` (when the row has one). The entry id
//! Redis answers is the confirm.
//!
//! Invariants owned here:
//! - a batch is one pipeline, one round trip: its `XADD`s (and `WAIT` when
//!   configured) are written together and the replies read in order, one
//!   result per message;
//! - `Ok` only for an entry id; with `wait=`, only once at least that many
//!   replicas acknowledged the batch (else every entry of it is
//!   [`SendError::Rejected`]: written, maybe, but retried);
//! - what durability an entry id gives is the server's: `appendfsync`
//!   decides whether it is on disk; Redis does not de-duplicate, so a retry
//!   after a lost reply adds the entry again (consumers de-duplicate by
//!   `message_id`);
//! - errors map by what they say about the message: connection and I/O
//!   errors are [`SendError::Unreachable`] (and the connection is dropped,
//!   to be made again by the next send); OOM, READONLY, LOADING, BUSY,
//!   TRYAGAIN are retried; WRONGTYPE (the key holds something else than a
//!   stream) is [`SendError::Refused`];
//! - `open` does no I/O: the first send connects.

mod options;
mod reply;

use super::fail_all;
use super::{Destination, Message, SendError};
use futures::future::BoxFuture;
use options::Settings;
use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};
use reply::{settle, whole_batch};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The Redis Streams destination.
pub struct Redis {
    settings: Arc<Settings>,
    connection: Arc<tokio::sync::Mutex<Slot>>,
}

/// The shared connection, and how many were made: a send that found its
/// connection broken drops it only if nobody has replaced it meanwhile.
#[derive(Default)]
struct Slot {
    made: u64,
    connection: Option<MultiplexedConnection>,
}

/// Checks the URL and builds the destination, without connecting.
pub fn open(url: &url::Url) -> Result<Redis, String> {
    Ok(Redis {
        settings: Arc::new(Settings::parse(url)?),
        connection: Arc::default(),
    })
}

/// One message's entry: its stream key and its `XADD`.
struct Entry {
    key: String,
    command: redis::Cmd,
}

impl Destination for Redis {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn send(
        &self,
        messages: Vec<Message>,
        timeout: Duration,
    ) -> BoxFuture<'static, Vec<Result<(), SendError>>> {
        let settings = self.settings.clone();
        let connection = self.connection.clone();
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let entries: Vec<Result<Entry, SendError>> =
                messages.iter().map(|m| entry(&settings, m)).collect();
            if entries.iter().all(Result::is_err) {
                return entries.into_iter().map(|e| e.map(drop)).collect();
            }
            let (made, mut conn) = match connect(&settings, &connection, deadline).await {
                Ok(made) => made,
                Err(error) => return fail_all(entries, &error),
            };
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for entry in entries.iter().flatten() {
                pipe.add_command(entry.command.clone());
            }
            if let Some(wait) = settings.wait {
                pipe.cmd("WAIT").arg(wait.replicas).arg(wait.timeout_ms);
            }
            let query = pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn);
            let replies = match tokio::time::timeout_at(deadline, query).await {
                Ok(Ok(replies)) => replies,
                Ok(Err(e)) => {
                    let error = whole_batch(&e, &settings, timeout);
                    if error.opens_breaker() {
                        forget(&connection, made).await;
                    }
                    return fail_all(entries, &error);
                }
                Err(_) => {
                    // A wedged server: the next send starts afresh.
                    forget(&connection, made).await;
                    return fail_all(entries, &SendError::Timeout(timeout));
                }
            };
            settle(entries, replies, &settings, timeout)
        })
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let connection = self.connection.clone();
        Box::pin(async move {
            connection.lock().await.connection = None;
        })
    }
}

/// The `XADD` of `message`, or why it cannot have one.
fn entry(settings: &Settings, message: &Message) -> Result<Entry, SendError> {
    let key = settings
        .naming
        .name(&message.exchange, &message.routing_key);
    if key.is_empty() {
        return Err(SendError::Refused(
            "the row names no stream key (empty exchange and routing key)".to_owned(),
        ));
    }
    let headers: serde_json::Map<String, serde_json::Value> = message
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let mut command = redis::cmd("XADD");
    command.arg(&key);
    if let Some(maxlen) = settings.maxlen {
        command.arg("MAXLEN").arg("~").arg(maxlen);
    }
    command
        .arg("*")
        .arg("payload")
        .arg(message.payload.as_ref())
        .arg("message_id")
        .arg(&message.message_id)
        .arg("headers")
        .arg(serde_json::Value::Object(headers).to_string());
    if let Some(content_type) = &message.content_type {
        command.arg("content_type").arg(content_type);
    }
    Ok(Entry { key, command })
}

/// The connection and its number, made first if there is none (the first
/// send, or the last one failed). One attempt at a time: concurrent sends
/// wait for it.
async fn connect(
    settings: &Settings,
    connection: &tokio::sync::Mutex<Slot>,
    deadline: Instant,
) -> Result<(u64, MultiplexedConnection), SendError> {
    let timed_out = || {
        SendError::Unreachable(format!(
            "no connection to Redis at {} in time",
            settings.shown
        ))
    };
    let mut slot = tokio::time::timeout_at(deadline, connection.lock())
        .await
        .map_err(|_| timed_out())?;
    if let Some(conn) = slot.connection.as_ref() {
        return Ok((slot.made, conn.clone()));
    }
    let within = deadline.saturating_duration_since(Instant::now());
    // Replies are bounded by the send's deadline, not the client's default
    // (half a second, less than a large batch may take to be written).
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(within.max(Duration::from_millis(100))))
        .set_response_timeout(None);
    let connecting = settings
        .client
        .get_multiplexed_async_connection_with_config(&config);
    let conn = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            return Err(SendError::Unreachable(format!(
                "cannot connect to Redis at {}: {e}",
                settings.shown
            )));
        }
        Err(_) => return Err(timed_out()),
    };
    slot.made += 1;
    slot.connection = Some(conn.clone());
    Ok((slot.made, conn))
}

/// Drops the shared connection if it still is connection number `made`.
async fn forget(connection: &tokio::sync::Mutex<Slot>, made: u64) {
    let mut slot = connection.lock().await;
    if slot.made == made {
        slot.connection = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_server_fails_the_batch_unreachable_within_the_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let redis = open(&format!("redis://127.0.0.1:{port}").parse().unwrap()).unwrap();
        let message = Message {
            message_id: "m".to_owned(),
            exchange: String::new(),
            routing_key: "k".to_owned(),
            payload: bytes::Bytes::new(),
            content_type: None,
            headers: Vec::new(),
            created_epoch: None,
        };
        let empty = Message {
            routing_key: String::new(),
            ..message.clone()
        };
        let results = redis
            .send(vec![message, empty], Duration::from_secs(2))
            .await;
        assert!(
            matches!(&results[0], Err(SendError::Unreachable(_))),
            "{results:?}"
        );
        assert!(
            matches!(&results[1], Err(SendError::Refused(_))),
            "{results:?}"
        );
    }
}
