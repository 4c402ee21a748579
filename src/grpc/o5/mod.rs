//! The o5 bridge: `o5.messaging.v1.topic.MessageBridgeTopic/Send`, routed as
//! the o5 platform does (topic exchange `--o5-exchange`, routing key
//! `service.<package/Service>.<Method>`).
//!
//! The body published is the `Message` exactly as the client encoded it: its
//! bytes are cut out of the request, not decoded and encoded again, so map
//! order and unknown fields survive.

pub mod j5json;

use super::status::IngressError;
use super::topology::{HEADER_METHOD, HEADER_SERVICE, HEADER_TYPE, PROTOBUF, method_route};
use crate::outbox::NewMessage;
use crate::proto::o5::messaging::v1::{Message, message::Extension};
use prost::Message as _;
use prost::bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};
use serde_json::Value;
use std::time::Duration;

pub const SEND_PATH: &str = "/o5.messaging.v1.topic.MessageBridgeTopic/Send";
/// o5's limit on `delay_seconds`.
const MAX_DELAY_SECONDS: i32 = 900;

/// Turns a `SendMessage` request into the message to store.
pub fn to_new_message(request: &[u8], exchange: &str) -> Result<NewMessage, IngressError> {
    let body = message_field(request)?.ok_or_else(|| missing("message"))?;
    let message = Message::decode(body.as_slice()).map_err(|e| undecodable(&e))?;
    if message.grpc_service.is_empty() {
        return Err(missing("message.grpc_service"));
    }
    if message.grpc_method.is_empty() {
        return Err(missing("message.grpc_method"));
    }
    if !(0..=MAX_DELAY_SECONDS).contains(&message.delay_seconds) {
        return Err(IngressError::DelayOutOfRange(message.delay_seconds.into()));
    }
    let message_id = match message.message_id.as_str() {
        "" => None,
        id => Some(uuid::Uuid::parse_str(id).map_err(|_| IngressError::MessageId(id.to_owned()))?),
    };
    Ok(NewMessage {
        message_id,
        exchange: exchange.to_owned(),
        routing_key: method_route(&message.grpc_service, &message.grpc_method),
        headers: headers_of(&message),
        content_type: Some(PROTOBUF.to_owned()),
        delay: Duration::from_secs(message.delay_seconds.unsigned_abs().into()),
        payload: body,
    })
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
mod tests {
    use super::*;
    use crate::proto::o5::messaging::v1::topic::SendMessage;

    fn send(message: Message) -> Vec<u8> {
        SendMessage {
            message: Some(message),
        }
        .encode_to_vec()
    }

    #[test]
    fn the_body_is_the_message_bytes_the_client_sent() {
        let message = Message {
            message_id: "6f1c1d2e-8a40-4a57-b3f4-3c1f0a8e5b21".into(),
            grpc_service: "orders.v1.OrderEvents".into(),
            grpc_method: "Created".into(),
            headers: [("tenant".to_owned(), "acme".to_owned())].into(),
            delay_seconds: 30,
            ..Default::default()
        };
        let new = to_new_message(&send(message.clone()), "o5").unwrap();
        assert_eq!(new.payload, message.encode_to_vec());
        assert_eq!(new.routing_key, "service.orders/v1/OrderEvents.Created");
        assert_eq!(new.delay, Duration::from_secs(30));
        assert_eq!(new.headers["tenant"], "acme");
        assert_eq!(new.headers[HEADER_METHOD], "Created");
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let ok = Message {
            grpc_service: "a.B".into(),
            grpc_method: "C".into(),
            ..Default::default()
        };
        let cases = [
            (
                Message {
                    delay_seconds: 901,
                    ..ok.clone()
                },
                "delay",
            ),
            (
                Message {
                    delay_seconds: -1,
                    ..ok.clone()
                },
                "delay",
            ),
            (
                Message {
                    message_id: "order-42".into(),
                    ..ok.clone()
                },
                "UUID",
            ),
            (
                Message {
                    grpc_method: String::new(),
                    ..ok.clone()
                },
                "grpc_method",
            ),
        ];
        for (message, expected) in cases {
            let e = to_new_message(&send(message), "o5").unwrap_err();
            assert!(e.to_string().contains(expected), "{e}");
        }
        assert!(matches!(
            to_new_message(&[], "o5"),
            Err(IngressError::Missing { .. })
        ));
        assert!(matches!(
            to_new_message(&[0x0a, 0x05, 0x01], "o5"),
            Err(IngressError::Undecodable { .. })
        ));
    }
}
