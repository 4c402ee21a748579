//! The o5 bridge: `o5.messaging.v1.topic.MessageBridgeTopic/Send`, routed as
//! the o5 platform does (topic exchange `--o5-exchange`, routing key
//! `service.<package/Service>.<Method>`), and the calls of o5 topics
//! ([`topic`]), which are wrapped into a `Message` and then take the same
//! path ([`Bridge::publish`]).
//!
//! What is published depends on `--o5-wire`:
//! - `j5json` (default): what an o5 worker's sidecar consumes. The message
//!   is stamped as o5's own sidecar stamps what leaves an application
//!   (`source_app` / `source_env` from `--o5-app` / `--o5-env`, the header
//!   `o5-sidecar-outbox-version`, a request's `reply_to` = `<env>/<app>`),
//!   then published whole as J5 JSON ([`j5json`]) with content type
//!   `application/o5-message`.
//! - `protobuf`: the `Message` exactly as the client encoded it: its bytes
//!   are cut out of the request, not decoded and encoded again, so map order
//!   and unknown fields survive. (A wrapped topic call has no such bytes:
//!   its `Message` is encoded.)
//!
//! An o5 application's own outbox table (`outbox-relay run --table-format
//! o5`) takes the same path: a row's `data` is read as o5's sidecar reads it
//! ([`protojson`]), its id becomes the message's id, and it is stamped and
//! published like a bridge send ([`Bridge::from_outbox_row`]).
//!
//! Either way the body and the AMQP `message_id` agree: the sender's
//! `message_id`, verbatim (any text [`MessageId::parse`] accepts), or, for
//! a message sent without one, a generated id written into the body too
//! (on the protobuf wire as field 1 appended to the bytes as sent, which a
//! decoder reads as the message's id: the last value of a field wins).

pub mod j5json;
pub mod protojson;
pub mod topic;

use super::status::IngressError;
use super::topology::{HEADER_METHOD, HEADER_SERVICE, HEADER_TYPE, PROTOBUF, method_route};
use crate::config::{GrpcArgs, O5Wire};
use crate::outbox::{MessageId, NewMessage};
use crate::proto::o5::messaging::v1::{Message, message::Extension};
use prost::Message as _;
use prost::bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};
use serde_json::Value;
use std::time::Duration;

pub const SEND_PATH: &str = "/o5.messaging.v1.topic.MessageBridgeTopic/Send";
/// o5's limit on `delay_seconds`.
const MAX_DELAY_SECONDS: i32 = 900;
/// The header o5's sidecar adds to what it publishes, with its version.
pub const VERSION_HEADER: &str = "o5-sidecar-outbox-version";

/// The bridge's configuration: where it publishes and how it stamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub exchange: String,
    pub app: Option<String>,
    pub env: Option<String>,
    pub wire: O5Wire,
}

impl Bridge {
    pub fn from_args(args: &GrpcArgs) -> Self {
        Self {
            exchange: args.o5_exchange(),
            app: args.o5_app.clone(),
            env: args.o5_env.clone(),
            wire: args.o5_wire,
        }
    }

    /// Turns a `SendMessage` request into the message to store.
    pub fn to_new_message(&self, request: &[u8]) -> Result<NewMessage, IngressError> {
        let sent = message_field(request)?.ok_or_else(|| missing("message"))?;
        let message = Message::decode(sent.as_slice()).map_err(|e| undecodable(&e))?;
        self.publish(message, Some(sent))
    }

    /// The message to store for an o5 `message`: the one path of bridge
    /// sends and o5 topic calls. `as_sent` is its encoding as the client
    /// sent it, which the protobuf wire publishes unchanged.
    pub fn publish(
        &self,
        mut message: Message,
        as_sent: Option<Vec<u8>>,
    ) -> Result<NewMessage, IngressError> {
        // The body names its message: one sent without an id gets a new
        // one, which is also the AMQP message_id.
        let (message_id, generated) = match check(&message)? {
            Some(id) => (id, false),
            None => {
                let id = MessageId::generate();
                message.message_id = id.to_string();
                (id, true)
            }
        };
        let (payload, content_type) = match self.wire {
            O5Wire::Protobuf => {
                let payload = match as_sent {
                    Some(mut bytes) if generated => {
                        append_message_id(&mut bytes, &message_id);
                        bytes
                    }
                    Some(bytes) => bytes,
                    None => message.encode_to_vec(),
                };
                (payload, PROTOBUF)
            }
            O5Wire::J5json => {
                self.stamp(&mut message);
                let json = j5json::encode(&message).map_err(IngressError::O5Json)?;
                (json, j5json::CONTENT_TYPE)
            }
        };
        Ok(NewMessage {
            message_id: Some(message_id),
            exchange: self.exchange.clone(),
            routing_key: method_route(&message.grpc_service, &message.grpc_method),
            headers: headers_of(&message),
            content_type: Some(content_type.to_owned()),
            delay: Duration::from_secs(message.delay_seconds.unsigned_abs().into()),
            payload,
            // The topic call's `ordering-key` metadata, if any, is set by
            // its caller (`raw.rs`).
            ordering_key: None,
        })
    }

    /// The message to publish for a row of an o5 application's outbox
    /// table: its `data` read as o5's sidecar reads it, the row's `id` as
    /// the message's id (whatever `data` says), then what a bridge send
    /// gets ([`Bridge::publish`]). Its delay is the row's (`send_after`),
    /// not `delay_seconds`, which stays in the body as sent.
    pub fn from_outbox_row(&self, id: &str, data: &[u8]) -> Result<NewMessage, RowError> {
        let mut message = protojson::decode(data)?;
        message.message_id = id.to_owned();
        let mut new = self.publish(message, None)?;
        new.delay = Duration::ZERO;
        Ok(new)
    }

    /// What o5's sidecar sets on a message leaving its application.
    fn stamp(&self, message: &mut Message) {
        if let Some(app) = &self.app {
            message.source_app.clone_from(app);
        }
        if let Some(env) = &self.env {
            message.source_env.clone_from(env);
        }
        message.headers.insert(
            VERSION_HEADER.to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        );
        // Replies find their way back by `<env>/<app>`; with either unknown
        // the sender's own reply_to is the only address there is.
        if let (Some(Extension::Request(request)), Some(app), Some(env)) =
            (&mut message.extension, &self.app, &self.env)
        {
            request.reply_to = format!("{env}/{app}");
        }
    }
}

/// Why a row of an o5 outbox table cannot be published: nothing about it
/// changes by trying again.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("data is {0}")]
    Data(#[from] protojson::RowDataError),
    #[error("data holds an invalid o5 message: {0}")]
    Message(#[from] IngressError),
}

/// The rules o5 puts on a message, checked before anything is stored;
/// gives its message_id, if it has one.
fn check(message: &Message) -> Result<Option<MessageId>, IngressError> {
    if message.grpc_service.is_empty() {
        return Err(missing("message.grpc_service"));
    }
    if message.grpc_method.is_empty() {
        return Err(missing("message.grpc_method"));
    }
    if !(0..=MAX_DELAY_SECONDS).contains(&message.delay_seconds) {
        return Err(IngressError::DelayOutOfRange(message.delay_seconds.into()));
    }
    Ok(MessageId::optional(&message.message_id)?)
}

/// Sets `message_id` (field 1) of the encoded `Message` in `bytes` by
/// appending it: every other byte stays as the client sent it.
fn append_message_id(bytes: &mut Vec<u8>, id: &MessageId) {
    prost::encoding::string::encode(1, &id.as_str().to_owned(), bytes);
}

/// The message's own headers, then what names it (which win on a clash).
fn headers_of(message: &Message) -> serde_json::Map<String, Value> {
    let mut headers: serde_json::Map<String, Value> = message
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut set = |key: &str, value: &str| {
        if !value.is_empty() {
            headers.insert(key.to_owned(), Value::String(value.to_owned()));
        }
    };
    set(HEADER_SERVICE, &message.grpc_service);
    set(HEADER_METHOD, &message.grpc_method);
    set(HEADER_TYPE, "o5.messaging.v1.Message");
    set("o5-source-app", &message.source_app);
    set("o5-source-env", &message.source_env);
    set("o5-destination-topic", &message.destination_topic);
    match &message.extension {
        Some(Extension::Request(r)) => set("o5-request-reply-to", &r.reply_to),
        Some(Extension::Reply(r)) => set("o5-reply-reply-to", &r.reply_to),
        Some(Extension::Event(_) | Extension::Upsert(_)) | None => {}
    }
    headers
}

/// The bytes of field 1 (`message`), as sent. Several occurrences of an
/// embedded message merge, which is what their concatenation decodes to.
fn message_field(mut request: &[u8]) -> Result<Option<Vec<u8>>, IngressError> {
    let mut found: Option<Vec<u8>> = None;
    while request.has_remaining() {
        let (field, wire) = decode_key(&mut request).map_err(|e| undecodable(&e))?;
        let skip = match wire {
            WireType::Varint => {
                decode_varint(&mut request).map_err(|e| undecodable(&e))?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                let len = decode_varint(&mut request).map_err(|e| undecodable(&e))?;
                usize::try_from(len).unwrap_or(usize::MAX)
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(undecodable(&"groups are not supported"));
            }
        };
        if skip > request.len() {
            return Err(undecodable(&"truncated field"));
        }
        if field == 1 && wire == WireType::LengthDelimited {
            found
                .get_or_insert_with(Vec::new)
                .extend_from_slice(&request[..skip]);
        }
        request.advance(skip);
    }
    Ok(found)
}

fn missing(field: &str) -> IngressError {
    IngressError::Missing {
        field: field.to_owned(),
    }
}

fn undecodable(reason: &dyn std::fmt::Display) -> IngressError {
    IngressError::Undecodable {
        type_name: "o5.messaging.v1.topic.SendMessage".to_owned(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests;
