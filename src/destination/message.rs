//! A message as every destination receives it: owned (the send outlives
//! the claim's borrow while the relay claims the next batch), with the
//! row's headers as text.

use crate::amqp::json_kind;
use crate::outbox::OutboxRow;
use crate::telemetry::TraceContext;
use crate::telemetry::context::{TRACEPARENT, TRACESTATE};
use bytes::Bytes;
use serde_json::Value;

/// One outbox row, ready for a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Stable across retries: destinations that de-duplicate use it
    /// (`Nats-Msg-Id`, `webhook-id`, `Idempotency-Key`).
    pub message_id: String,
    pub exchange: String,
    pub routing_key: String,
    pub payload: Bytes,
    pub content_type: Option<String>,
    /// The row's headers object, each value as text: a JSON string as is,
    /// any other value as its JSON text. With trace export on, the relay's
    /// `traceparent` / `tracestate` replace the row's.
    pub headers: Vec<(String, String)>,
    /// `created_at` in seconds since the Unix epoch (`None` for ±infinity).
    pub created_epoch: Option<i64>,
}

impl Message {
    /// Builds the message of `row` with `payload`; the error says why the
    /// row cannot be expressed (its headers are not a JSON object).
    pub fn of_row(
        row: &OutboxRow,
        payload: Bytes,
        trace: Option<&TraceContext>,
    ) -> Result<Self, String> {
        let Value::Object(map) = &row.headers else {
            return Err(format!(
                "headers must be a JSON object, found {}",
                json_kind(&row.headers)
            ));
        };
        let traced = |key: &str| trace.is_some() && (key == TRACEPARENT || key == TRACESTATE);
        let mut headers: Vec<(String, String)> = map
            .iter()
            .filter(|(key, _)| !traced(key))
            .map(|(key, value)| (key.clone(), header_text(value)))
            .collect();
        if let Some(trace) = trace {
            headers.push((TRACEPARENT.to_owned(), trace.traceparent.clone()));
            if let Some(state) = &trace.tracestate {
                headers.push((TRACESTATE.to_owned(), state.clone()));
            }
        }
        Ok(Self {
            message_id: row.message_id.to_string(),
            exchange: row.exchange.clone(),
            routing_key: row.routing_key.clone(),
            payload,
            content_type: row.content_type.clone(),
            headers,
            created_epoch: row.created_epoch,
        })
    }

    /// The value of header `key`, if the row set it.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn header_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{MessageId, RowId};

    fn row(headers: Value) -> OutboxRow {
        OutboxRow {
            id: RowId(7),
            message_id: MessageId::stored("m-7".to_owned()),
            exchange: "orders".to_owned(),
            routing_key: "created".to_owned(),
            payload: None,
            payload_len: 2,
            content_type: Some("application/json".to_owned()),
            headers,
            attempts: 0,
            created_epoch: Some(1),
        }
    }

    #[test]
    fn headers_become_text_and_strings_stay_verbatim() {
        let headers = serde_json::json!({"a": "x", "n": 12345678901234567890u64, "o": {"k": [1]}});
        let message = Message::of_row(&row(headers), Bytes::from_static(b"{}"), None).unwrap();
        assert_eq!(message.header("a"), Some("x"));
        assert_eq!(message.header("n"), Some("12345678901234567890"));
        assert_eq!(message.header("o"), Some(r#"{"k":[1]}"#));
        assert_eq!(message.message_id, "m-7");
    }

    #[test]
    fn headers_that_are_not_an_object_fail_the_row_alone() {
        let error = Message::of_row(&row(serde_json::json!([1])), Bytes::new(), None).unwrap_err();
        assert!(error.contains("an array"), "{error}");
    }

    #[test]
    fn the_relays_trace_context_replaces_the_rows() {
        let headers = serde_json::json!({"traceparent": "old", "x": "1"});
        let trace = TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            tracestate: None,
        };
        let message = Message::of_row(&row(headers), Bytes::new(), Some(&trace)).unwrap();
        assert_eq!(
            message.header(TRACEPARENT),
            Some(trace.traceparent.as_str())
        );
        assert_eq!(message.headers.len(), 2);
    }
}
