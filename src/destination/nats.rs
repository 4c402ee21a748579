//! NATS JetStream: each message is published to a subject named from its
//! row (`<exchange>.<routing_key>` by default, see [`options`]) and accepted
//! once JetStream's publish ack says a stream stored it.
//!
//! Invariants owned here:
//! - `Ok` only for a publish ack, a duplicate ack included (the stream
//!   already holds the message under its `Nats-Msg-Id`);
//! - every publish carries `Nats-Msg-Id` = the row's `message_id`: a
//!   re-publish after a crash or a lost ack, within the stream's duplicate
//!   window (2 minutes by default), is dropped by JetStream;
//! - a batch is published whole before any ack is awaited: one round trip
//!   per batch, not per message;
//! - a message NATS cannot express (its subject, a header) fails alone with
//!   [`SendError::Refused`] before anything is sent; no stream for a subject
//!   is [`SendError::Rejected`] (retried, counted), never a dead row at once;
//! - while the client is not connected nothing is published: the batch
//!   fails [`SendError::Unreachable`] at once, instead of waiting in the
//!   client's buffer for acks that time out;
//! - `open` does no I/O: the first send connects; once connected, the client
//!   reconnects by itself.

mod options;
mod outgoing;

use super::{Destination, Message, SendError, fail_all};
use async_nats::connection::State;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use futures::future::BoxFuture;
use options::Settings;
use outgoing::Outgoing;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Publishes awaiting their ack, across all sends: above the relay's window
/// (workers × batches in flight × batch size) at any sane configuration,
/// so that it never makes a publish wait.
const ACKS_IN_FLIGHT: usize = 65_536;

/// How long `close` lets the client flush.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// The NATS JetStream destination.
pub struct Nats {
    settings: Arc<Settings>,
    connection: Arc<tokio::sync::Mutex<Option<Connected>>>,
}

#[derive(Clone)]
struct Connected {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
}

/// Checks the URL and builds the destination, without connecting.
pub fn open(url: &url::Url) -> Result<Nats, String> {
    Ok(Nats {
        settings: Arc::new(Settings::parse(url)?),
        connection: Arc::default(),
    })
}

impl Destination for Nats {
    fn kind(&self) -> &'static str {
        "nats"
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
            let outgoing: Vec<Result<Outgoing, SendError>> = messages
                .into_iter()
                .map(|m| Outgoing::of(&settings.naming, m))
                .collect();
            if outgoing.iter().all(Result::is_err) {
                return outgoing.into_iter().map(|o| o.map(drop)).collect();
            }
            let connected = match connect(&settings, &connection, deadline).await {
                Ok(connected) => connected,
                Err(error) => return fail_all(outgoing, &error),
            };
            if connected.client.connection_state() != State::Connected {
                let error = SendError::Unreachable(format!(
                    "not connected to NATS at {} (reconnecting)",
                    settings.shown
                ));
                return fail_all(outgoing, &error);
            }
            publish(&connected, &settings, outgoing, timeout, deadline).await
        })
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let connection = self.connection.clone();
        Box::pin(async move {
            let connected = connection.lock().await.take();
            if let Some(connected) = connected {
                let _ = tokio::time::timeout(CLOSE_FLUSH, connected.client.flush()).await;
            }
        })
    }
}

/// The client, connecting it first if this is the first send (or every
/// attempt so far failed). One connection attempt at a time: concurrent
/// sends wait for it.
async fn connect(
    settings: &Settings,
    connection: &tokio::sync::Mutex<Option<Connected>>,
    deadline: Instant,
) -> Result<Connected, SendError> {
    let timed_out = || {
        SendError::Unreachable(format!(
            "no connection to NATS at {} in time",
            settings.shown
        ))
    };
    let mut slot = tokio::time::timeout_at(deadline, connection.lock())
        .await
        .map_err(|_| timed_out())?;
    if let Some(connected) = slot.as_ref() {
        return Ok(connected.clone());
    }
    let within = deadline.saturating_duration_since(Instant::now());
    let connecting = settings
        .connect_options(within)
        .connect(settings.server.as_str());
    let client = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            return Err(SendError::Unreachable(format!(
                "cannot connect to NATS at {}: {e}",
                settings.shown
            )));
        }
        Err(_) => return Err(timed_out()),
    };
    let jetstream = async_nats::jetstream::ContextBuilder::new()
        .max_ack_inflight(ACKS_IN_FLIGHT)
        .build(client.clone());
    let connected = Connected { client, jetstream };
    *slot = Some(connected.clone());
    Ok(connected)
}

/// A publish written to the client, or a result known before any ack.
enum Pending {
    Ack(String, PublishAckFuture),
    Done(Result<(), SendError>),
}

/// Writes every publish of the batch, then awaits their acks together.
async fn publish(
    connected: &Connected,
    settings: &Settings,
    outgoing: Vec<Result<Outgoing, SendError>>,
    timeout: Duration,
    deadline: Instant,
) -> Vec<Result<(), SendError>> {
    let mut jetstream = connected.jetstream.clone();
    jetstream.set_timeout(timeout);
    let sending = Sending {
        connected,
        settings,
        timeout,
    };
    let sending = &sending;
    let mut pending = Vec::with_capacity(outgoing.len());
    for item in outgoing {
        let out = match item {
            Ok(out) => out,
            Err(error) => {
                pending.push(Pending::Done(Err(error)));
                continue;
            }
        };
        let message = PublishMessage::build()
            .payload(out.payload)
            .headers(out.headers);
        let writing = jetstream.send_publish(out.subject.clone(), message);
        pending.push(match tokio::time::timeout_at(deadline, writing).await {
            Ok(Ok(ack)) => Pending::Ack(out.subject, ack),
            Ok(Err(e)) => Pending::Done(Err(failure(&e, &out.subject, sending))),
            Err(_) => Pending::Done(Err(SendError::Timeout(timeout))),
        });
    }
    let acks = pending.into_iter().map(|p| async move {
        let (subject, ack) = match p {
            Pending::Done(result) => return result,
            Pending::Ack(subject, ack) => (subject, ack),
        };
        match tokio::time::timeout_at(deadline, std::future::IntoFuture::into_future(ack)).await {
            Ok(Ok(_ack)) => Ok(()),
            Ok(Err(e)) => Err(failure(&e, &subject, sending)),
            Err(_) => Err(unanswered(sending)),
        }
    });
    futures::future::join_all(acks).await
}

/// What a failure of one send is judged against.
struct Sending<'a> {
    connected: &'a Connected,
    settings: &'a Settings,
    timeout: Duration,
}

/// What a failed publish or ack means for the row.
fn failure(
    error: &async_nats::jetstream::context::PublishError,
    subject: &str,
    sending: &Sending<'_>,
) -> SendError {
    match error.kind() {
        PublishErrorKind::StreamNotFound => SendError::rejected(format!(
            "no JetStream stream takes subject {subject:?} (no responders): \
             create a stream whose subjects match it"
        )),
        PublishErrorKind::TimedOut => unanswered(sending),
        PublishErrorKind::BrokenPipe => SendError::Unreachable(format!(
            "the connection to NATS at {} was lost before the ack",
            sending.settings.shown
        )),
        PublishErrorKind::MaxPayloadExceeded => SendError::Refused(format!(
            "the message is larger than the NATS server's max_payload ({error})"
        )),
        _ => SendError::rejected(format!(
            "JetStream did not store the message for subject {subject:?}: {error}"
        )),
    }
}

/// No ack in time: the connection dropped meanwhile, or the server is slow.
fn unanswered(sending: &Sending<'_>) -> SendError {
    if sending.connected.client.connection_state() != State::Connected {
        SendError::Unreachable(format!(
            "the connection to NATS at {} dropped before the ack",
            sending.settings.shown
        ))
    } else {
        SendError::Timeout(sending.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(routing_key: &str) -> Message {
        Message {
            message_id: "m-1".to_owned(),
            exchange: "events".to_owned(),
            routing_key: routing_key.to_owned(),
            payload: bytes::Bytes::from_static(b"x"),
            content_type: None,
            headers: Vec::new(),
            created_epoch: None,
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_the_batch_unreachable_within_the_timeout() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nats = open(&format!("nats://127.0.0.1:{port}").parse().unwrap()).unwrap();
        let started = std::time::Instant::now();
        let results = nats
            .send(
                vec![message("a"), message("bad key")],
                Duration::from_secs(2),
            )
            .await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            matches!(&results[0], Err(SendError::Unreachable(_))),
            "{results:?}"
        );
        assert!(
            matches!(&results[1], Err(SendError::Refused(_))),
            "{results:?}"
        );
    }

    #[test]
    fn open_refuses_a_bad_url_without_connecting() {
        let error = open(&"nats://127.0.0.1:1?stream=x".parse().unwrap())
            .err()
            .unwrap();
        assert!(error.contains("\"stream\""), "{error}");
    }
}
