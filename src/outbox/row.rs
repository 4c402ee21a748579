//! Row types: what a claim returns and what callers insert.

use super::{MessageId, StoreError};
use std::fmt;

/// The outbox table's primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowId(pub i64);

impl fmt::Display for RowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A claimed, pending row: everything needed to publish it.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: RowId,
    pub message_id: MessageId,
    pub exchange: String,
    pub routing_key: String,
    /// `None` when the claim did not load it: above `--max-message-size`,
    /// beyond the batch's byte budget, or a large row loaded on its own
    /// later (see `Claim::load_payload`). Bounds memory (invariant 10).
    pub payload: Option<Vec<u8>>,
    /// The payload's size in bytes, known without loading it.
    pub payload_len: usize,
    pub content_type: Option<String>,
    pub headers: serde_json::Value,
    /// Failed attempts so far (before this one).
    pub attempts: i32,
    /// `created_at` in whole seconds since the Unix epoch (AMQP timestamp);
    /// `None` for `±infinity`.
    pub created_epoch: Option<i64>,
}

/// One row of a claim: decoded, or a row whose values cannot become a
/// message (invariant 8), to be recorded as a failure of that row alone.
#[derive(Debug, Clone)]
pub enum Claimed {
    Row(OutboxRow),
    Defect(RowDefect),
}

impl Claimed {
    pub fn id(&self) -> RowId {
        match self {
            Self::Row(row) => row.id,
            Self::Defect(defect) => defect.id,
        }
    }
}

/// A claimed row that cannot be read; `error` names the column.
#[derive(Debug, Clone)]
pub struct RowDefect {
    pub id: RowId,
    pub attempts: i32,
    pub error: String,
}

impl Claimed {
    /// Decodes one row of the claim statement (see `sql::CLAIM` for the
    /// columns). Values are never trusted: a NULL or unreadable value makes
    /// this row a [`RowDefect`]; only a column of the wrong *type* (the
    /// table was altered) fails the whole claim, since it fails every row.
    pub(super) fn decode(row: &tokio_postgres::Row) -> Result<Self, StoreError> {
        let id: i64 = typed(row, 0, "id", "bigint")?;
        let attempts: Option<i32> = typed(row, 8, "attempts", "integer")?;
        let attempts = attempts.unwrap_or(0);
        let message_id: Option<String> = typed(row, 1, "message_id", "text")?;
        let exchange: Option<String> = typed(row, 2, "exchange", "text")?;
        let routing_key: Option<String> = typed(row, 3, "routing_key", "text")?;
        let payload: Option<Vec<u8>> = typed(row, 4, "payload", "bytea")?;
        let payload_len: Option<i64> = typed(row, 5, "payload", "bytea")?;
        let content_type: Option<String> = typed(row, 6, "content_type", "text")?;
        let headers: Option<String> = typed(row, 7, "headers", "jsonb")?;
        let created_epoch: Option<i64> = typed(row, 9, "created_at", "timestamptz")?;
        let defect = |error: String| {
            Ok(Self::Defect(RowDefect {
                id: RowId(id),
                attempts,
                error,
            }))
        };
        let nulls = [
            (message_id.is_none(), "message_id"),
            (exchange.is_none(), "exchange"),
            (routing_key.is_none(), "routing_key"),
            (payload_len.is_none(), "payload"),
        ];
        let (Some(message_id), Some(exchange), Some(routing_key), Some(payload_len)) =
            (message_id, exchange, routing_key, payload_len)
        else {
            let column = nulls
                .into_iter()
                .find_map(|(null, name)| null.then_some(name))
                .unwrap_or("?");
            return defect(format!("column {column} is NULL"));
        };
        let headers = match headers.as_deref().map(serde_json::from_str) {
            None => serde_json::Value::Object(serde_json::Map::new()),
            Some(Ok(value)) => value,
            Some(Err(e)) => return defect(format!("column headers cannot be read: {e}")),
        };
        Ok(Self::Row(OutboxRow {
            id: RowId(id),
            message_id: MessageId::stored(message_id),
            exchange,
            routing_key,
            payload,
            payload_len: usize::try_from(payload_len).unwrap_or(usize::MAX),
            content_type,
            headers,
            attempts,
            created_epoch,
        }))
    }
}

/// Reads column `index` as `T`; a type mismatch is a schema fault.
pub(super) fn typed<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    index: usize,
    column: &'static str,
    expected: &'static str,
) -> Result<T, StoreError> {
    row.try_get(index).map_err(|e| StoreError::Schema {
        column,
        expected,
        reason: e.to_string(),
    })
}

/// A message to insert (CLI `send`, gRPC ingress).
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    /// Generated when `None` (at the door, see `grpc::sink::admit`, or
    /// else by the table's default).
    pub message_id: Option<MessageId>,
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    pub headers: serde_json::Map<String, serde_json::Value>,
    pub delay: std::time::Duration,
    /// Messages with the same key are published in the order their
    /// inserting transactions committed (see `ordering.rs`); `None`: no
    /// order with any other message. Checked by `check_ordering_key`.
    pub ordering_key: Option<String>,
}

/// Whether an insert stored a new row or found the message_id already there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    New(RowId, MessageId),
    Duplicate,
}

/// Counts by state (`outbox-relay stats`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Stats {
    pub pending: i64,
    pub due: i64,
    pub sent: i64,
    pub dead: i64,
    pub oldest_pending_seconds: f64,
    /// Ordering keys held back by a failed or dead head, and the age of
    /// the oldest such head.
    pub ordering: super::BlockedKeys,
}

/// The table's state for the metrics' gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TableGauges {
    /// Pending rows due now.
    pub due: i64,
    /// Pending rows due later (delayed or backing off).
    pub not_due: i64,
    /// Age of the oldest due row; 0 when none is due.
    pub oldest_due_seconds: f64,
    /// Dead rows awaiting replay.
    pub dead: i64,
    pub dead_tuples: i64,
    /// Seconds since the Unix epoch; 0 when never.
    pub last_autovacuum_epoch: f64,
    /// Ordering keys held back by a failed or dead head.
    pub blocked_keys: super::BlockedKeys,
}

/// A row as an operator sees it (`show`, `dead`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RowView {
    pub id: i64,
    pub message_id: MessageId,
    pub exchange: String,
    pub routing_key: String,
    pub content_type: Option<String>,
    pub headers: serde_json::Value,
    pub payload_bytes: i64,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: String,
    pub available_at: String,
    pub sent_at: Option<String>,
    pub dead_at: Option<String>,
}

impl RowView {
    pub(super) fn from_row(row: &tokio_postgres::Row) -> Self {
        Self {
            id: row.get(0),
            message_id: MessageId::stored(row.get(1)),
            exchange: row.get(2),
            routing_key: row.get(3),
            content_type: row.get(4),
            headers: row.get(5),
            payload_bytes: row.get(6),
            attempts: row.get(7),
            last_error: row.get(8),
            created_at: row.get(9),
            available_at: row.get(10),
            sent_at: row.get(11),
            dead_at: row.get(12),
        }
    }
}
