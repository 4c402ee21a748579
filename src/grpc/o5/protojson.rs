//! Reading the `data` of an o5 application's outbox row: an
//! `o5.messaging.v1.Message` as o5's sender library writes it
//! (`protojson.Marshal`), read with the tolerance of the `protojson.Unmarshal`
//! that o5's own sidecar reads it with.
//!
//! `protojson.Marshal`'s output for `Message` is already J5 JSON as
//! [`j5json::decode`] reads it (JSON names, long enum names, padded
//! standard base64, RFC 3339 timestamps, the `extension` oneof's members as
//! fields). What `protojson.Unmarshal` accepts beyond that, and J5 JSON does
//! not, is rewritten into J5 JSON first, so that a hand-written row o5's
//! sidecar would relay is relayed here too:
//! - proto field names as keys (`message_id`, `type_url`, `reply_to`, ...);
//!   a field given under both names is an error, as in protojson;
//! - an enum as its number (`"encoding": 2`);
//! - an `int32` as a JSON string (`"delaySeconds": "30"`);
//! - base64 without its padding.
//!
//! Everything else is [`j5json::decode`]'s to judge: an unknown key, a wrong
//! type, two members of the oneof are errors.

use super::j5json::{self, J5Error};
use crate::proto::o5::messaging::v1::{Message, WireEncoding};
use serde_json::{Map, Value};

/// Why a row's data is not a `Message`.
#[derive(Debug, thiserror::Error)]
pub enum RowDataError {
    #[error("not JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("not an o5.messaging.v1.Message: {}", reason(.0))]
    Message(#[source] J5Error),
    #[error("not an o5.messaging.v1.Message: {0} is given twice, as {1:?} and {2:?}")]
    Duplicate(&'static str, &'static str, &'static str),
}

/// What is wrong, without [`J5Error`]'s own "not J5 JSON of ..." prefix.
fn reason(error: &J5Error) -> String {
    match error {
        J5Error::Json(e) => e.to_string(),
        J5Error::Field { .. } => error.to_string(),
    }
}

/// Reads a row's `data` into a `Message`.
pub fn decode(data: &[u8]) -> Result<Message, RowDataError> {
    // What o5 senders write (`protojson.Marshal`) is J5 JSON already: one
    // parse. Only other spellings take the normalizing second pass.
    if let Ok(message) = j5json::decode(data) {
        return Ok(message);
    }
    let mut value: Value = serde_json::from_slice(data).map_err(RowDataError::Json)?;
    if let Value::Object(message) = &mut value {
        normalize_message(message)?;
    }
    let json = serde_json::to_vec(&value).map_err(RowDataError::Json)?;
    j5json::decode(&json).map_err(RowDataError::Message)
}

/// `(proto name, JSON name)` of `Message`'s fields that differ.
const MESSAGE_NAMES: &[(&str, &str)] = &[
    ("message_id", "messageId"),
    ("grpc_service", "grpcService"),
    ("grpc_method", "grpcMethod"),
    ("source_app", "sourceApp"),
    ("source_env", "sourceEnv"),
    ("destination_topic", "destinationTopic"),
    ("delay_seconds", "delaySeconds"),
];

fn normalize_message(message: &mut Map<String, Value>) -> Result<(), RowDataError> {
    rename(message, MESSAGE_NAMES)?;
    if let Some(Value::String(text)) = message.get("delaySeconds")
        && let Ok(number) = text.trim().parse::<i64>()
    {
        // Out of int32's range stays a number j5json refuses.
        message.insert("delaySeconds".to_owned(), Value::from(number));
    }
    if let Some(Value::Object(body)) = message.get_mut("body") {
        rename(body, &[("type_url", "typeUrl")])?;
        if let Some(Value::Number(number)) = body.get("encoding")
            && let Some(name) = number
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .and_then(|n| WireEncoding::try_from(n).ok())
                .map(|e| e.as_str_name())
        {
            body.insert("encoding".to_owned(), Value::from(name));
        }
        if let Some(Value::String(text)) = body.get_mut("value") {
            // As protojson reads bytes: URL-safe when it has '-' or '_',
            // padding optional.
            if text.contains(['-', '_']) {
                *text = text.replace('-', "+").replace('_', "/");
            }
            while text.len() % 4 != 0 {
                text.push('=');
            }
        }
    }
    for (member, names) in [
        ("request", &[("reply_to", "replyTo")]),
        ("reply", &[("reply_to", "replyTo")]),
        ("event", &[("entity_name", "entityName")]),
        ("upsert", &[("entity_name", "entityName")]),
    ] {
        if let Some(Value::Object(object)) = message.get_mut(member) {
            rename(object, names)?;
        }
    }
    Ok(())
}

/// Moves each proto-named key of `object` to its JSON name.
fn rename(
    object: &mut Map<String, Value>,
    names: &[(&'static str, &'static str)],
) -> Result<(), RowDataError> {
    for &(proto, json) in names {
        if let Some(value) = object.remove(proto) {
            if object.contains_key(json) {
                return Err(RowDataError::Duplicate(json, proto, json));
            }
            object.insert(json.to_owned(), value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::o5::messaging::v1::message::{Extension, Request};
    use serde_json::json;

    fn read(value: Value) -> Result<Message, RowDataError> {
        decode(value.to_string().as_bytes())
    }

    /// What `protojson.Marshal` writes for a `Message` (o5-messaging's
    /// `outbox.Sender`), JSON names and long enum names.
    #[test]
    fn what_o5_senders_write_reads_as_is() {
        let message = read(json!({
            "messageId": "5b0f7c1e-8d2a-4f3b-9c6d-1e2f3a4b5c6d",
            "grpcService": "shop.v1.topic.OrderTopic",
            "grpcMethod": "OrderPlaced",
            "body": {
                "typeUrl": "type.googleapis.com/shop.v1.topic.OrderPlacedMessage",
                "value": "eyJvcmRlcklkIjoiNDIifQ==",
                "encoding": "WIRE_ENCODING_PROTOJSON"
            },
            "headers": {"tenant": "acme"},
            "timestamp": "2025-03-01T10:20:30.123456789Z",
            "request": {}
        }))
        .unwrap();
        assert_eq!(message.grpc_method, "OrderPlaced");
        let body = message.body.unwrap();
        assert_eq!(body.value, br#"{"orderId":"42"}"#);
        assert_eq!(body.encoding, WireEncoding::Protojson as i32);
        assert_eq!(message.timestamp.unwrap().nanos, 123_456_789);
        assert_eq!(
            message.extension,
            Some(Extension::Request(Request::default()))
        );
    }

    #[test]
    fn protojson_spellings_that_j5_refuses_read_too() {
        let message = read(json!({
            "message_id": "m1",
            "grpc_service": "shop.v1.topic.OrderTopic",
            "grpc_method": "OrderPlaced",
            "delay_seconds": "30",
            "body": {"type_url": "t", "value": "eyI", "encoding": 2},
            "reply": {"reply_to": "prod/billing"},
        }))
        .unwrap();
        assert_eq!(message.message_id, "m1");
        assert_eq!(message.delay_seconds, 30);
        let body = message.body.unwrap();
        assert_eq!(
            (body.type_url.as_str(), body.value.as_slice()),
            ("t", &b"{\""[..])
        );
        assert_eq!(body.encoding, 2);
        assert!(
            matches!(message.extension, Some(Extension::Reply(r)) if r.reply_to == "prod/billing")
        );
        // Bytes in base64's URL-safe alphabet, unpadded: [0xfb, 0xff].
        let url_safe = read(json!({"body": {"value": "-_8"}})).unwrap();
        assert_eq!(url_safe.body.unwrap().value, [0xfb, 0xff]);
    }

    #[test]
    fn what_neither_reads_is_refused_with_the_reason() {
        for (data, reason) in [
            (&b"{not json"[..], "not JSON"),
            (br#"{"messageId":"a","message_id":"b"}"#, "given twice"),
            (br#"{"grpcServise":"x"}"#, "unknown field"),
            (br#"{"delaySeconds":"soon"}"#, "not an o5"),
            (br#"{"request":{},"event":{}}"#, "more than one"),
            (br#"[1,2]"#, "not an o5"),
        ] {
            let e = decode(data).unwrap_err().to_string();
            assert!(e.contains(reason), "{e} lacks {reason:?}");
        }
    }
}
