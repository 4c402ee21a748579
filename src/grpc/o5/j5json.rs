//! `o5.messaging.v1.Message` as J5 JSON: the body an o5 worker's sidecar
//! reads (content type `application/o5-message`), following the rules of
//! pentops/j5's codec as it applies to the types `Message` uses:
//!
//! - keys are the proto JSON names (`messageId`, `replyTo`, ...);
//! - a field is written only when set: empty strings, zero numbers, the zero
//!   enum value and empty maps are left out (proto3 implicit presence); a
//!   set message is written even when empty (`{}`);
//! - the members of a plain proto `oneof` (here `extension`, which carries no
//!   j5 `expose` option) are fields of the message itself: `"request": {..}`,
//!   not an object keyed by the oneof's name;
//! - enums are their value names without the type's prefix (`J5_JSON`, not
//!   `WIRE_ENCODING_J5_JSON`); both forms are read;
//! - bytes are standard base64 with padding (the URL-safe alphabet is read
//!   too); `int32` is a JSON number; timestamps are RFC 3339 in UTC with
//!   trailing zeros of the fraction trimmed; maps are JSON objects;
//! - reading: `null` is the same as absent; an unknown key is an error; a
//!   `oneof` with more than one member set is an error.
//!
//! `o5.messaging.v1.Any` is an ordinary message to j5 (only
//! `google.protobuf.Any` and `j5.types.any.v1.Any` get the `!type` form), so
//! the body's value stays bytes.

use crate::proto::o5::messaging::v1::message::{Event, Extension, Reply, Request, Upsert};
use crate::proto::o5::messaging::v1::{Any, Message, WireEncoding};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The content type o5 workers accept.
pub const CONTENT_TYPE: &str = "application/o5-message";

/// Why a message cannot be written or read as J5 JSON.
#[derive(Debug, thiserror::Error)]
pub enum J5Error {
    #[error("not J5 JSON of o5.messaging.v1.Message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{field}: {problem}")]
    Field {
        field: &'static str,
        problem: Problem,
    },
}

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("enum value {0} is not a WireEncoding")]
    UnknownEnumNumber(i32),
    #[error("{0:?} is not a WireEncoding")]
    UnknownEnumName(String),
    #[error("outside the years 0000 to 9999 that RFC 3339 can write")]
    TimestampOutOfRange,
    #[error("not an RFC 3339 timestamp: {0}")]
    Timestamp(String),
    #[error("not base64: {0}")]
    Base64(String),
    #[error("more than one of request, reply, event and upsert is set")]
    SeveralExtensions,
}

fn problem(field: &'static str, problem: Problem) -> J5Error {
    J5Error::Field { field, problem }
}

/// The J5 JSON bytes of `message`.
pub fn encode(message: &Message) -> Result<Vec<u8>, J5Error> {
    Ok(serde_json::to_vec(&J5Message::from_message(message)?)?)
}

/// Reads J5 JSON bytes back into a `Message`.
pub fn decode(json: &[u8]) -> Result<Message, J5Error> {
    serde_json::from_slice::<J5Message>(json)?.into_message()
}

/// The JSON shape. Field order is the proto's, as j5 writes it; every field
/// is optional so that absent and `null` read alike.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct J5Message {
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<J5Any>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<J5ReplyTo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<J5ReplyTo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<J5Entity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upsert: Option<J5Entity>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct J5Any {
    #[serde(skip_serializing_if = "Option::is_none")]
    type_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<String>,
}

/// `Message.Request` and `Message.Reply`: one string field each.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct J5ReplyTo {
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<String>,
}

/// `Message.Event` and `Message.Upsert`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct J5Entity {
    #[serde(skip_serializing_if = "Option::is_none")]
    entity_name: Option<String>,
}

/// A proto3 scalar with implicit presence: written only when not zero.
fn set<T: Default + PartialEq + Clone>(value: &T) -> Option<T> {
    (*value != T::default()).then(|| value.clone())
}

impl J5Message {
    fn from_message(m: &Message) -> Result<Self, J5Error> {
        let mut out = Self {
            message_id: set(&m.message_id),
            grpc_service: set(&m.grpc_service),
            grpc_method: set(&m.grpc_method),
            body: m.body.as_ref().map(J5Any::from_any).transpose()?,
            source_app: set(&m.source_app),
            source_env: set(&m.source_env),
            destination_topic: set(&m.destination_topic),
            timestamp: m.timestamp.as_ref().map(format_timestamp).transpose()?,
            headers: (!m.headers.is_empty()).then(|| {
                m.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            delay_seconds: set(&m.delay_seconds),
            ..Self::default()
        };
        let reply_to = |reply_to: &String| J5ReplyTo {
            reply_to: set(reply_to),
        };
        let entity = |entity_name: &String| J5Entity {
            entity_name: set(entity_name),
        };
        match &m.extension {
            Some(Extension::Request(r)) => out.request = Some(reply_to(&r.reply_to)),
            Some(Extension::Reply(r)) => out.reply = Some(reply_to(&r.reply_to)),
            Some(Extension::Event(e)) => out.event = Some(entity(&e.entity_name)),
            Some(Extension::Upsert(u)) => out.upsert = Some(entity(&u.entity_name)),
            None => {}
        }
        Ok(out)
    }

    fn into_message(self) -> Result<Message, J5Error> {
        let reply_to = |r: J5ReplyTo| r.reply_to.unwrap_or_default();
        let entity_name = |e: J5Entity| e.entity_name.unwrap_or_default();
        let mut extensions = [
            self.request.map(|r| {
                Extension::Request(Request {
                    reply_to: reply_to(r),
                })
            }),
            self.reply.map(|r| {
                Extension::Reply(Reply {
                    reply_to: reply_to(r),
                })
            }),
            self.event.map(|e| {
                Extension::Event(Event {
                    entity_name: entity_name(e),
                })
            }),
            self.upsert.map(|u| {
                Extension::Upsert(Upsert {
                    entity_name: entity_name(u),
                })
            }),
        ]
        .into_iter()
        .flatten();
        let extension = extensions.next();
        if extensions.next().is_some() {
            return Err(problem("extension", Problem::SeveralExtensions));
        }
        Ok(Message {
            message_id: self.message_id.unwrap_or_default(),
            grpc_service: self.grpc_service.unwrap_or_default(),
            grpc_method: self.grpc_method.unwrap_or_default(),
            body: self.body.map(J5Any::into_any).transpose()?,
            source_app: self.source_app.unwrap_or_default(),
            source_env: self.source_env.unwrap_or_default(),
            destination_topic: self.destination_topic.unwrap_or_default(),
            timestamp: self.timestamp.as_deref().map(parse_timestamp).transpose()?,
            headers: self.headers.unwrap_or_default().into_iter().collect(),
            delay_seconds: self.delay_seconds.unwrap_or_default(),
            extension,
        })
    }
}

impl J5Any {
    fn from_any(any: &Any) -> Result<Self, J5Error> {
        Ok(Self {
            type_url: set(&any.type_url),
            value: (!any.value.is_empty()).then(|| STANDARD.encode(&any.value)),
            encoding: match any.encoding {
                0 => None,
                n => Some(encoding_name(n)?.to_owned()),
            },
        })
    }

    fn into_any(self) -> Result<Any, J5Error> {
        Ok(Any {
            type_url: self.type_url.unwrap_or_default(),
            value: self
                .value
                .as_deref()
                .map(decode_bytes)
                .transpose()?
                .unwrap_or_default(),
            encoding: self
                .encoding
                .as_deref()
                .map(encoding_number)
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

/// The prefix j5 strips: the zero value's name less `UNSPECIFIED`.
const ENCODING_PREFIX: &str = "WIRE_ENCODING_";

fn encoding_name(number: i32) -> Result<&'static str, J5Error> {
    let value = WireEncoding::try_from(number)
        .map_err(|_| problem("body.encoding", Problem::UnknownEnumNumber(number)))?;
    let name = value.as_str_name();
    Ok(name.strip_prefix(ENCODING_PREFIX).unwrap_or(name))
}

fn encoding_number(name: &str) -> Result<i32, J5Error> {
    let long = format!(
        "{ENCODING_PREFIX}{}",
        name.strip_prefix(ENCODING_PREFIX).unwrap_or(name)
    );
    WireEncoding::from_str_name(&long)
        .map(|e| e as i32)
        .ok_or_else(|| problem("body.encoding", Problem::UnknownEnumName(name.to_owned())))
}

/// Standard or URL-safe alphabet, told apart as j5 does: a `+` or `/` means
/// standard; either needs its padding.
fn decode_bytes(text: &str) -> Result<Vec<u8>, J5Error> {
    let engine = if text.contains(['+', '/']) {
        &STANDARD
    } else {
        &URL_SAFE
    };
    engine
        .decode(text)
        .map_err(|e| problem("body.value", Problem::Base64(e.to_string())))
}

fn format_timestamp(ts: &prost_types::Timestamp) -> Result<String, J5Error> {
    let out_of_range = || problem("timestamp", Problem::TimestampOutOfRange);
    // As Go's time.Unix: nanos outside 0..1e9 carry into the seconds.
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|_| out_of_range())?
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|_| out_of_range())
}

fn parse_timestamp(text: &str) -> Result<prost_types::Timestamp, J5Error> {
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| problem("timestamp", Problem::Timestamp(e.to_string())))?;
    Ok(prost_types::Timestamp {
        seconds: parsed.unix_timestamp(),
        nanos: i32::try_from(parsed.nanosecond()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests;
