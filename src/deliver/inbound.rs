//! What a consumed message asks for: the method it names, the request bytes
//! to call it with, and the metadata that goes along.
//!
//! A message names its method in one of two ways:
//! - an o5 message (content type `application/o5-message`: the whole
//!   `o5.messaging.v1.Message` as J5 JSON; or the header `proto-type:
//!   o5.messaging.v1.Message`: its protobuf bytes, as the bridge's protobuf
//!   wire publishes it) is unwrapped: its `grpc_service` / `grpc_method`
//!   name the method and its body's value is the request (and a reply's
//!   `reply_to` says which application it is for);
//! - otherwise the headers `grpc-service` and `grpc-method` (what the
//!   ingress publishes for a topic call) name it, and the message body is
//!   the request.
//!
//! Invariant owned here: the request is the bytes the sender encoded, never
//! decoded and encoded again (unknown fields and field order survive); a
//! message naming no method, or whose o5 body is not protobuf, is
//! [`Unroutable`] (dead-lettered, never retried).
//!
//! Metadata: the AMQP `message_id` as `message-id`, and every AMQP header
//! whose name is a valid gRPC metadata key (lower-cased), except `grpc-*`,
//! HTTP/2's reserved names and RabbitMQ's dead-lettering bookkeeping
//! (`x-death`, ...); string, integer and boolean values only, and for a
//! `-bin` key any bytes.

use crate::grpc::MESSAGE_ID_METADATA;
use crate::grpc::o5::j5json;
use crate::grpc::topology::{HEADER_METHOD, HEADER_SERVICE, HEADER_TYPE};
use crate::proto::o5::messaging::v1::message::Extension;
use crate::proto::o5::messaging::v1::{Message, WireEncoding};
use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use prost::Message as _;
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue, MetadataKey, MetadataMap};

/// The protobuf type name that marks an o5 message body.
const O5_MESSAGE: &str = "o5.messaging.v1.Message";
/// Header names never turned into metadata: HTTP/2's own and
/// connection-specific ones, and the one set from `message_id`.
const RESERVED: &[&str] = &[
    "te",
    "host",
    "connection",
    "content-type",
    "content-length",
    "user-agent",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    MESSAGE_ID_METADATA,
];
/// Prefixes of header names never turned into metadata: gRPC's own. (What
/// RabbitMQ adds when a message is dead-lettered through the retry queue
/// is left out too: `settle::is_bookkeeping`.)
const RESERVED_PREFIXES: &[&str] = &["grpc-"];

/// The method a message is for, and its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressed {
    /// Full name, `package.Service`.
    pub service: String,
    pub method: String,
    /// The request, as the sender encoded it.
    pub body: Bytes,
    /// An o5 reply's addressee (`<env>/<app>`), when it names one.
    pub reply_to: Option<String>,
}

impl Addressed {
    /// The request path, `/package.Service/Method`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

/// Why a message cannot be delivered to any method.
#[derive(Debug, thiserror::Error)]
pub enum Unroutable {
    #[error(
        "the message names no method: neither an o5 message nor headers grpc-service and grpc-method"
    )]
    NoMethod,
    #[error("the o5 message names no method (grpc_service and grpc_method are required)")]
    O5NoMethod,
    #[error("the o5 message has no body")]
    O5NoBody,
    #[error("the o5 message's body is encoded as {0}; only protobuf bodies can be delivered")]
    O5Encoding(String),
    #[error("not an o5 message: {0}")]
    O5Json(#[from] j5json::J5Error),
    #[error("not an o5 message: {0}")]
    O5Protobuf(#[from] prost::DecodeError),
}

/// The method `properties` and `data` name, and its request.
pub fn address(properties: &BasicProperties, data: &[u8]) -> Result<Addressed, Unroutable> {
    let content_type = properties.content_type().as_ref().map(|c| c.as_str());
    let headers = properties.headers().as_ref();
    let named = |key: &str| headers.and_then(|h| text(h, key));
    if content_type == Some(j5json::CONTENT_TYPE) {
        return unwrap(j5json::decode(data)?);
    }
    if named(HEADER_TYPE).as_deref() == Some(O5_MESSAGE) {
        return unwrap(Message::decode(data)?);
    }
    match (named(HEADER_SERVICE), named(HEADER_METHOD)) {
        (Some(service), Some(method)) if !service.is_empty() && !method.is_empty() => {
            Ok(Addressed {
                service,
                method,
                body: Bytes::copy_from_slice(data),
                reply_to: None,
            })
        }
        _ => Err(Unroutable::NoMethod),
    }
}

/// The method and request of an o5 message.
fn unwrap(message: Message) -> Result<Addressed, Unroutable> {
    if message.grpc_service.is_empty() || message.grpc_method.is_empty() {
        return Err(Unroutable::O5NoMethod);
    }
    let body = message.body.ok_or(Unroutable::O5NoBody)?;
    match WireEncoding::try_from(body.encoding) {
        Ok(WireEncoding::Unspecified) => {}
        Ok(other) => return Err(Unroutable::O5Encoding(other.as_str_name().to_owned())),
        Err(_) => return Err(Unroutable::O5Encoding(body.encoding.to_string())),
    }
    let reply_to = match message.extension {
        Some(Extension::Reply(reply)) if !reply.reply_to.is_empty() => Some(reply.reply_to),
        _ => None,
    };
    Ok(Addressed {
        service: message.grpc_service,
        method: message.grpc_method,
        body: Bytes::from(body.value),
        reply_to,
    })
}

/// A string header's value (long or short string).
fn text(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The call's metadata: `message-id` and the headers gRPC allows.
pub fn metadata(properties: &BasicProperties) -> MetadataMap {
    let mut map = MetadataMap::new();
    if let Some(id) = properties.message_id()
        && let Ok(value) = AsciiMetadataValue::try_from(id.as_str())
    {
        map.insert(MESSAGE_ID_METADATA, value);
    }
    let Some(headers) = properties.headers() else {
        return map;
    };
    for (name, value) in headers {
        let name = name.as_str().to_ascii_lowercase();
        if RESERVED.contains(&name.as_str())
            || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
            || super::settle::is_bookkeeping(&name)
        {
            continue;
        }
        insert(&mut map, &name, value);
    }
    map
}

/// Adds `name: value` when both are valid gRPC metadata; skips it otherwise.
fn insert(map: &mut MetadataMap, name: &str, value: &AMQPValue) {
    let bytes: Vec<u8> = match value {
        AMQPValue::LongString(s) => s.as_bytes().to_vec(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
        AMQPValue::Boolean(b) => b.to_string().into_bytes(),
        AMQPValue::ShortShortInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortShortUInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortUInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongUInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongLongInt(n) => n.to_string().into_bytes(),
        _ => return,
    };
    if name.ends_with("-bin") {
        if let Ok(key) = MetadataKey::from_bytes(name.as_bytes()) {
            map.insert_bin(key, BinaryMetadataValue::from_bytes(&bytes));
        }
    } else if let (Ok(key), Ok(value)) = (
        MetadataKey::from_bytes(name.as_bytes()),
        AsciiMetadataValue::try_from(bytes.as_slice()),
    ) {
        map.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::o5::messaging::v1::Any;
    use lapin::types::ShortString;

    fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (k, v) in pairs {
            table.insert(ShortString::from(*k), v.clone());
        }
        table
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.as_bytes().to_vec().into())
    }

    #[test]
    fn the_grpc_headers_name_the_method_and_the_body_is_the_request_unchanged() {
        let props = BasicProperties::default().with_headers(headers(&[
            (HEADER_SERVICE, long("test.v1.OrderEvents")),
            (HEADER_METHOD, long("Created")),
        ]));
        let body = [0x10, 0x05, 0x0a, 0x01, b'x'];
        let found = address(&props, &body).unwrap();
        assert_eq!(found.path(), "/test.v1.OrderEvents/Created");
        assert_eq!(found.body.as_ref(), body);
        let none = address(&BasicProperties::default(), &body).unwrap_err();
        assert!(matches!(none, Unroutable::NoMethod), "{none}");
    }

    fn o5(encoding: WireEncoding) -> Message {
        Message {
            grpc_service: "foo.v1.FooTopic".into(),
            grpc_method: "Bar".into(),
            body: Some(Any {
                type_url: "type.googleapis.com/foo.v1.BarMessage".into(),
                value: vec![0x0a, 0x02, b'h', b'i'],
                encoding: encoding.into(),
            }),
            message_id: uuid::Uuid::new_v4().to_string(),
            ..Message::default()
        }
    }

    #[test]
    fn an_o5_message_is_unwrapped_from_j5_json_and_from_protobuf() {
        // The grpc headers the bridge adds too must not win over the unwrapping.
        let named = headers(&[
            (HEADER_SERVICE, long("foo.v1.FooTopic")),
            (HEADER_METHOD, long("Bar")),
        ]);
        let json = BasicProperties::default()
            .with_content_type(j5json::CONTENT_TYPE.into())
            .with_headers(named.clone());
        let bytes = j5json::encode(&o5(WireEncoding::Unspecified)).unwrap();
        let found = address(&json, &bytes).unwrap();
        assert_eq!(found.path(), "/foo.v1.FooTopic/Bar");
        assert_eq!(found.body.as_ref(), [0x0a, 0x02, b'h', b'i']);

        let mut typed = named;
        typed.insert(HEADER_TYPE.into(), long(O5_MESSAGE));
        let protobuf = BasicProperties::default().with_headers(typed);
        let bytes = o5(WireEncoding::Unspecified).encode_to_vec();
        assert_eq!(address(&protobuf, &bytes).unwrap(), found);
        assert_eq!(found.reply_to, None);
        let mut reply = o5(WireEncoding::Unspecified);
        reply.extension = Some(Extension::Reply(
            crate::proto::o5::messaging::v1::message::Reply {
                reply_to: "prod/shop".into(),
            },
        ));
        let found = address(&protobuf, &reply.encode_to_vec()).unwrap();
        assert_eq!(found.reply_to.as_deref(), Some("prod/shop"));
    }

    #[test]
    fn an_o5_message_without_a_method_or_with_a_json_body_is_unroutable() {
        let json = BasicProperties::default().with_content_type(j5json::CONTENT_TYPE.into());
        let body = j5json::encode(&o5(WireEncoding::J5Json)).unwrap();
        let e = address(&json, &body).unwrap_err();
        assert!(e.to_string().contains("WIRE_ENCODING_J5_JSON"), "{e}");
        let mut nameless = o5(WireEncoding::Unspecified);
        nameless.grpc_method.clear();
        let e = address(&json, &j5json::encode(&nameless).unwrap()).unwrap_err();
        assert!(matches!(e, Unroutable::O5NoMethod), "{e}");
        let e = address(&json, b"{not json").unwrap_err();
        assert!(matches!(e, Unroutable::O5Json(_)), "{e}");
    }

    #[test]
    fn metadata_carries_the_message_id_and_the_headers_grpc_allows() {
        let props = BasicProperties::default()
            .with_message_id("0b9d6f3e-4a7c-4d0e-9a51-3f2c8e7b1d20".into())
            .with_headers(headers(&[
                (
                    "traceparent",
                    long("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ),
                ("Tenant", long("acme")),
                ("x-outbox-attempts", AMQPValue::LongLongInt(2)),
                ("grpc-service", long("x.v1.S")),
                ("grpc-timeout", long("1S")),
                ("x-death", AMQPValue::FieldArray(Default::default())),
                ("x-first-death-queue", long("q")),
                ("bad name", long("x")),
                ("newline", long("a\nb")),
                ("te", long("trailers")),
                ("message-id", long("forged")),
                ("blob-bin", AMQPValue::LongString(vec![0, 159, 255].into())),
                ("flag", AMQPValue::Boolean(true)),
            ]));
        let map = metadata(&props);
        let get = |k: &str| map.get(k).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            get("message-id").as_deref(),
            Some("0b9d6f3e-4a7c-4d0e-9a51-3f2c8e7b1d20")
        );
        assert!(get("traceparent").unwrap().starts_with("00-0af7"));
        assert_eq!(get("tenant").as_deref(), Some("acme"));
        assert_eq!(get("x-outbox-attempts").as_deref(), Some("2"));
        assert_eq!(get("flag").as_deref(), Some("true"));
        assert_eq!(
            map.get_bin("blob-bin")
                .unwrap()
                .to_bytes()
                .unwrap()
                .as_ref(),
            [0, 159, 255]
        );
        for absent in [
            "grpc-service",
            "grpc-timeout",
            "x-first-death-queue",
            "newline",
            "te",
        ] {
            assert!(map.get(absent).is_none(), "{absent} passed");
        }
        assert_eq!(map.len(), 6, "{map:?}");
    }
}
