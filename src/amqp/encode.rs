//! Turning an outbox row into an AMQP message (pure, no I/O).
//!
//! Everything that can make a row unpublishable is detected here, before a
//! frame is sent, so a malformed row fails alone (invariant 8) instead of
//! closing the channel under its whole batch.

use crate::outbox::{MessageId, NewMessage, OutboxRow};
use crate::telemetry::TraceContext;
use crate::telemetry::context::{TRACEPARENT, TRACESTATE};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::Value;

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;
/// Nesting deeper than this is refused rather than recursed into.
const MAX_DEPTH: usize = 16;

/// Why a row cannot become an AMQP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("headers must be a JSON object, found {0}")]
    HeadersNotObject(&'static str),
    #[error("{field} is {len} bytes; AMQP short strings hold at most 255")]
    TooLong { field: String, len: usize },
    #[error("header {key:?}: integer {value} does not fit a signed 64-bit AMQP integer")]
    IntegerOutOfRange { key: String, value: String },
    #[error("header {key:?}: nested deeper than {MAX_DEPTH} levels")]
    TooDeep { key: String },
    #[error(
        "payload is {len} bytes, above --max-message-size {max} (the broker would close the channel)"
    )]
    TooLarge { len: usize, max: usize },
    #[error(
        "headers and properties take {len} bytes, above the broker's frame size of {frame_max} bytes (the broker would close the connection)"
    )]
    HeaderTooLarge { len: usize, frame_max: u32 },
}

/// Sizes a message must respect to be publishable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `--max-message-size`.
    pub max_payload: usize,
    /// The connection's negotiated `frame_max`: AMQP sends a message's
    /// properties (headers included) in one content-header frame, and a
    /// larger one is a connection-level FRAME_ERROR for every channel.
    pub frame_max: u32,
}

/// Bytes of a content-header frame around its properties: frame type,
/// channel, size and end octet (8), class, weight and body size (12).
const CONTENT_HEADER_OVERHEAD: usize = 20;

/// A row ready for `basic_publish`.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub properties: BasicProperties,
}

/// Builds exchange, routing key and properties: persistent, `message_id`,
/// `content_type`, `timestamp` (from `created_at`) and the headers table.
/// A payload above `max_payload` bytes is refused here: the broker would
/// answer it by closing the channel, failing every other row of the batch.
pub fn encode(row: &OutboxRow, limits: Limits) -> Result<Encoded, EncodeError> {
    encode_traced(row, limits, None)
}

/// [`encode`], with `trace` as the message's `traceparent` / `tracestate`
/// headers in place of the row's own (the relay's span, with export on).
/// Set before the frame size is checked, which counts them.
pub fn encode_traced(
    row: &OutboxRow,
    limits: Limits,
    trace: Option<&TraceContext>,
) -> Result<Encoded, EncodeError> {
    let mut headers = headers_table(&row.headers)?;
    if let Some(trace) = trace {
        let mut set = |key: &str, value: &str| {
            headers.insert(
                ShortString::from(key),
                AMQPValue::LongString(value.as_bytes().to_vec().into()),
            );
        };
        set(TRACEPARENT, &trace.traceparent);
        // A span's context keeps its parent's state, so `None` means the
        // row had none either.
        if let Some(state) = &trace.tracestate {
            set(TRACESTATE, state);
        }
    }
    let draft = Draft {
        message_id: &row.message_id,
        exchange: &row.exchange,
        routing_key: &row.routing_key,
        content_type: row.content_type.as_deref(),
        created_epoch: row.created_epoch,
        payload_len: row.payload_len,
    };
    envelope(&draft, headers, limits)
}

/// Encodes a message that is about to be stored or published directly (the
/// gRPC ingress): the same rules as for a claimed row, so a message the relay
/// could never publish is refused at the door instead of dead-lettered later.
pub fn encode_new(
    message: &NewMessage,
    message_id: &MessageId,
    created_epoch: i64,
    limits: Limits,
) -> Result<Encoded, EncodeError> {
    let draft = Draft {
        message_id,
        exchange: &message.exchange,
        routing_key: &message.routing_key,
        content_type: message.content_type.as_deref(),
        created_epoch: Some(created_epoch),
        payload_len: message.payload.len(),
    };
    envelope(&draft, object_table(&message.headers, "", 0)?, limits)
}

/// Everything of a message but its payload and headers, borrowed.
struct Draft<'a> {
    message_id: &'a MessageId,
    exchange: &'a str,
    routing_key: &'a str,
    content_type: Option<&'a str>,
    created_epoch: Option<i64>,
    payload_len: usize,
}

fn envelope(
    draft: &Draft<'_>,
    headers: FieldTable,
    limits: Limits,
) -> Result<Encoded, EncodeError> {
    if draft.payload_len > limits.max_payload {
        return Err(EncodeError::TooLarge {
            len: draft.payload_len,
            max: limits.max_payload,
        });
    }
    // Verbatim: consumers de-duplicate on exactly what the sender chose.
    let message_id = draft.message_id.as_str().to_owned();
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(short("message_id", message_id)?)
        .with_headers(headers);
    // A time before 1970 or an infinite created_at has no AMQP timestamp.
    if let Some(epoch) = draft.created_epoch.and_then(|e| u64::try_from(e).ok()) {
        properties = properties.with_timestamp(epoch);
    }
    if let Some(content_type) = draft.content_type {
        properties = properties.with_content_type(short("content_type", content_type.to_owned())?);
    }
    let header_len = properties_len(&properties) + CONTENT_HEADER_OVERHEAD;
    if header_len > limits.frame_max as usize {
        return Err(EncodeError::HeaderTooLarge {
            len: header_len,
            frame_max: limits.frame_max,
        });
    }
    Ok(Encoded {
        exchange: short("exchange", draft.exchange.to_owned())?,
        routing_key: short("routing_key", draft.routing_key.to_owned())?,
        properties,
    })
}

/// The serialized size of `properties`, with lapin's own serializer.
fn properties_len(properties: &BasicProperties) -> usize {
    cookie_factory::gen_simple(
        lapin::protocol::basic::gen_properties(properties),
        Vec::new(),
    )
    .map_or(usize::MAX, |bytes| bytes.len())
}

/// Converts the `headers` jsonb object into an AMQP field table.
///
/// Strings become long strings, integers 64-bit signed integers, other
/// numbers doubles, `null` void, arrays field arrays and objects nested
/// tables.
pub fn headers_table(headers: &Value) -> Result<FieldTable, EncodeError> {
    match headers {
        Value::Object(map) => object_table(map, "", 0),
        Value::Null => Ok(FieldTable::default()),
        other => Err(EncodeError::HeadersNotObject(json_kind(other))),
    }
}

fn object_table(
    map: &serde_json::Map<String, Value>,
    path: &str,
    depth: usize,
) -> Result<FieldTable, EncodeError> {
    let mut table = FieldTable::default();
    for (key, value) in map {
        let key_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let name = short(&format!("header name {key_path:?}"), key.clone())?;
        table.insert(name, value_of(value, &key_path, depth + 1)?);
    }
    Ok(table)
}

fn value_of(value: &Value, key: &str, depth: usize) -> Result<AMQPValue, EncodeError> {
    if depth > MAX_DEPTH {
        return Err(EncodeError::TooDeep {
            key: key.to_owned(),
        });
    }
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                AMQPValue::LongLongInt(i)
            } else if n.is_u64() {
                return Err(EncodeError::IntegerOutOfRange {
                    key: key.to_owned(),
                    value: n.to_string(),
                });
            } else {
                AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(items) => {
            let values = items
                .iter()
                .map(|item| value_of(item, key, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            AMQPValue::FieldArray(FieldArray::from(values))
        }
        Value::Object(map) => AMQPValue::FieldTable(object_table(map, key, depth)?),
    })
}

/// The inverse of [`headers_table`], for display (`tail`) and tests:
/// byte strings that are valid UTF-8 become JSON strings.
pub fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.to_string(), amqp_to_json(v)))
            .collect(),
    )
}

fn amqp_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => (*i).into(),
        AMQPValue::ShortShortUInt(i) => (*i).into(),
        AMQPValue::ShortInt(i) => (*i).into(),
        AMQPValue::ShortUInt(i) => (*i).into(),
        AMQPValue::LongInt(i) => (*i).into(),
        AMQPValue::LongUInt(i) => (*i).into(),
        AMQPValue::LongLongInt(i) => (*i).into(),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::Float(f) => f64::from(*f).into(),
        AMQPValue::Double(f) => (*f).into(),
        AMQPValue::DecimalValue(d) => (f64::from(d.value) / 10f64.powi(i32::from(d.scale))).into(),
        AMQPValue::ShortString(s) => s.as_str().into(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned().into(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned().into(),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::Void => Value::Null,
    }
}

fn short(field: &str, value: String) -> Result<ShortString, EncodeError> {
    let len = value.len();
    ShortString::try_new(value).map_err(|_| EncodeError::TooLong {
        field: field.to_owned(),
        len,
    })
}

/// What kind of JSON value `value` is, for error messages.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn scalar_headers_map_to_their_amqp_types() {
        let table = headers_table(&json!({
            "s": "text", "i": -7, "f": 1.5, "b": true, "n": null,
            "a": [1, "x"], "o": {"k": "v"}
        }))
        .unwrap();
        let inner = table.inner();
        assert_eq!(inner["s"], AMQPValue::LongString("text".into()));
        assert_eq!(inner["i"], AMQPValue::LongLongInt(-7));
        assert_eq!(inner["f"], AMQPValue::Double(1.5));
        assert_eq!(inner["b"], AMQPValue::Boolean(true));
        assert_eq!(inner["n"], AMQPValue::Void);
        assert!(matches!(inner["a"], AMQPValue::FieldArray(_)));
        assert!(matches!(inner["o"], AMQPValue::FieldTable(_)));
    }

    #[test]
    fn a_payload_above_the_limit_is_refused_before_publishing() {
        use crate::outbox::RowId;
        let row = OutboxRow {
            id: RowId(1),
            message_id: MessageId::generate(),
            exchange: String::new(),
            routing_key: "q".into(),
            payload: None,
            payload_len: 1025,
            content_type: None,
            headers: json!({}),
            attempts: 0,
            created_epoch: Some(0),
        };
        let limits = |max_payload| Limits {
            max_payload,
            frame_max: 131_072,
        };
        assert_eq!(
            encode(&row, limits(1024)).unwrap_err(),
            EncodeError::TooLarge {
                len: 1025,
                max: 1024
            }
        );
        assert!(encode(&row, limits(1025)).is_ok());
    }

    #[test]
    fn the_message_id_is_published_verbatim_and_an_overlong_stored_one_fails_its_row() {
        use crate::outbox::RowId;
        let mut row = OutboxRow {
            id: RowId(1),
            message_id: MessageId::parse("Order-42 / v2").unwrap(),
            exchange: String::new(),
            routing_key: "q".into(),
            payload: Some(Vec::new()),
            payload_len: 0,
            content_type: None,
            headers: json!({}),
            attempts: 0,
            created_epoch: None,
        };
        let limits = Limits {
            max_payload: 1024,
            frame_max: 131_072,
        };
        let encoded = encode(&row, limits).unwrap();
        assert_eq!(
            encoded.properties.message_id().as_ref().map(|m| m.as_str()),
            Some("Order-42 / v2")
        );
        // Only an application writing the table can store one this long
        // (before migration 0004's check, or with it dropped).
        row.message_id = MessageId::stored("m".repeat(256));
        assert!(matches!(
            encode(&row, limits),
            Err(EncodeError::TooLong { field, len: 256 }) if field == "message_id"
        ));
    }

    #[test]
    fn headers_above_the_frame_size_are_refused_before_publishing() {
        use crate::outbox::RowId;
        let mut row = OutboxRow {
            id: RowId(1),
            message_id: MessageId::generate(),
            exchange: String::new(),
            routing_key: "q".into(),
            payload: Some(Vec::new()),
            payload_len: 0,
            content_type: None,
            headers: json!({"big": "x".repeat(4000)}),
            attempts: 0,
            created_epoch: None,
        };
        let limits = Limits {
            max_payload: 1 << 20,
            frame_max: 4096,
        };
        assert!(encode(&row, limits).is_ok());
        row.headers = json!({"big": "x".repeat(4096)});
        assert!(matches!(
            encode(&row, limits),
            Err(EncodeError::HeaderTooLarge {
                frame_max: 4096,
                ..
            })
        ));
    }

    #[test]
    fn non_object_headers_are_refused() {
        assert_eq!(
            headers_table(&json!([1, 2])),
            Err(EncodeError::HeadersNotObject("an array"))
        );
        assert_eq!(
            headers_table(&json!("x")),
            Err(EncodeError::HeadersNotObject("a string"))
        );
    }

    #[test]
    fn an_overlong_header_name_or_huge_integer_is_refused() {
        let long = "k".repeat(256);
        assert!(matches!(
            headers_table(&json!({ long: 1 })),
            Err(EncodeError::TooLong { .. })
        ));
        assert!(matches!(
            headers_table(&json!({ "big": u64::MAX })),
            Err(EncodeError::IntegerOutOfRange { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed() {
        let mut v = json!(1);
        for _ in 0..40 {
            v = json!({ "k": v });
        }
        assert!(matches!(
            headers_table(&v),
            Err(EncodeError::TooDeep { .. })
        ));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            (-1e9f64..1e9).prop_map(|f| json!(f)),
            "\\PC{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,300}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any JSON either converts or is refused with an error: never a panic,
        /// and an accepted object converts back to itself.
        #[test]
        fn any_json_converts_or_is_refused_cleanly(v in arb_json()) {
            match headers_table(&v) {
                Ok(table) => {
                    if v.is_object() {
                        prop_assert_eq!(table_to_json(&table), v);
                    }
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
