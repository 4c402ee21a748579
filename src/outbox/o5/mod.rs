//! An o5 application's outbox table (`--table-format o5`): the table o5's
//! sender library writes, `outbox (id, data, headers[, send_after])`, with
//! the relay's bookkeeping columns added by `migrate --table-format o5`
//! (attempts, last_error, dead_at, available_at).
//!
//! Invariants owned here, as for the relay's own table:
//! - the claim locks rows `FOR UPDATE SKIP LOCKED` in a transaction of its
//!   own connection, and confirmed rows are deleted only by
//!   [`O5Claim::finish`], in that transaction (invariants 1 and 5);
//! - a claim dropped unfinished closes its connection: the server rolls
//!   back and the rows are free at once (invariant 4);
//! - failures are recorded in one statement per batch and never delete a
//!   row: a dead row is kept with `dead_at` and `last_error` (invariant 3);
//! - nothing a row holds fails the claim (invariant 8): `data` is read as
//!   text; memory is bounded (invariant 10): a claim loads `data` up to
//!   `--max-message-size` a row and `--batch-max-bytes` in all.
//!
//! The table's shape is read once, when it is opened: the id column's type
//! (uuid, as o5 creates it, or text) and whether it has `send_after` (o5's
//! delayed variant; a row is due at the later of it and `available_at`).

mod sql;

pub use sql::O5Statements;

use super::claim::ClaimTx;
use super::{ClaimLimits, Identifier, StoreError, TableGauges};
use deadpool_postgres::Pool;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::Type;

/// The columns `migrate --table-format o5` adds.
const RELAY_COLUMNS: [&str; 4] = ["attempts", "last_error", "dead_at", "available_at"];

/// The type of the table's `id`, which statements cast the relay's text to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdType {
    Uuid,
    Text,
    Varchar,
}

impl IdType {
    fn from_sql(name: &str) -> Option<Self> {
        match name {
            "uuid" => Some(Self::Uuid),
            "text" => Some(Self::Text),
            "character varying" => Some(Self::Varchar),
            _ => None,
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Self::Uuid => "uuid",
            Self::Text => "text",
            Self::Varchar => "character varying",
        }
    }
}

/// What the relay found of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub id_type: IdType,
    /// The table has o5's `send_after` column.
    pub delayed: bool,
}

/// One claimed row.
#[derive(Debug, Clone)]
pub struct O5Row {
    /// The row's id as text: the message's id.
    pub id: String,
    /// `data` as JSON text; `None` when above the claim's limits (larger
    /// than a row may be, or past the claim's byte budget).
    pub data: Option<String>,
    /// Bytes of `data` as text.
    pub data_len: i64,
    /// Failed attempts so far.
    pub attempts: i32,
}

/// One failed row of a batch, ready to be recorded.
#[derive(Debug, Clone)]
pub struct O5Failure {
    pub id: String,
    pub error: String,
    /// Backoff before the row becomes due again.
    pub delay: Duration,
    /// Set `dead_at`: the row is kept but no longer relayed.
    pub dead: bool,
}

/// An o5 outbox table, reached through a connection pool.
#[derive(Clone)]
pub struct O5Outbox {
    pool: Pool,
    shape: Shape,
    sql: Arc<O5Statements>,
}

impl std::fmt::Debug for O5Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("O5Outbox")
            .field("table", &self.sql.table)
            .field("shape", &self.shape)
            .finish()
    }
}

impl O5Outbox {
    /// Reads the shape of `schema`'s `outbox` table; fails with
    /// [`StoreError::O5Table`] unless it is an o5 table the o5 migration
    /// has run on.
    pub async fn open(pool: Pool, schema: &Identifier) -> Result<Self, StoreError> {
        let table = format!("{}.outbox", schema.quoted());
        let client = pool.get().await?;
        let columns: Vec<(String, String)> = client
            .query_typed(
                "SELECT attname::text, format_type(atttypid, NULL) FROM pg_attribute
                 WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                &[(&table, Type::TEXT)],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        drop(client);
        let shape = shape_of(&columns, schema).map_err(|problem| StoreError::O5Table {
            table: table.clone(),
            problem,
        })?;
        Ok(Self {
            pool,
            shape,
            sql: Arc::new(O5Statements::new(&table, &shape)),
        })
    }

    /// The same table through another pool (e.g. the HTTP port's own
    /// connections), without reading its shape again.
    pub fn with_pool(&self, pool: Pool) -> Self {
        Self {
            pool,
            shape: self.shape,
            sql: self.sql.clone(),
        }
    }

    /// The quoted, schema-qualified table name.
    pub fn table(&self) -> &str {
        &self.sql.table
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Opens a transaction and locks up to `limits.rows` due rows, loading
    /// `data` up to `limits.max_payload` bytes a row and `limits.batch_bytes`
    /// in all (the first row always). The server ends the claim's session
    /// when it sits idle in its transaction longer than `limits.idle_timeout`.
    pub async fn claim(&self, limits: &ClaimLimits) -> Result<O5Claim, StoreError> {
        let mut claim = O5Claim {
            tx: ClaimTx::begin(&self.pool, limits).await?,
            sql: self.sql.clone(),
            rows: Vec::new(),
        };
        let to_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let found = claim
            .tx
            .lock_rows(
                &self.sql.claim,
                &[
                    (&to_i64(limits.rows), Type::INT8),
                    (&to_i64(limits.max_payload), Type::INT8),
                    (&to_i64(limits.batch_bytes), Type::INT8),
                ],
            )
            .await?;
        claim.rows = found
            .iter()
            .map(|row| O5Row {
                id: row.get(0),
                data: row.get(1),
                data_len: row.get(2),
                attempts: row.get(3),
            })
            .collect();
        Ok(claim)
    }

    /// Whether a row is due now: one indexed look, no transaction, no lock.
    pub async fn has_due(&self) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let row = client.query_typed_one(&self.sql.has_due, &[]).await?;
        Ok(row.get(0))
    }

    /// The backlog and dead rows, through the o5 migration's indexes, and
    /// the table's vacuum state, for the metrics' gauges.
    pub async fn table_gauges(&self) -> Result<TableGauges, StoreError> {
        let client = self.pool.get().await?;
        let pending = client.query_typed_one(&self.sql.backlog, &[]).await?;
        let dead = client.query_typed_one(&self.sql.dead_count, &[]).await?;
        let vacuum = client
            .query_typed_opt(super::sql::TABLE_STATS, &[(&self.sql.table, Type::TEXT)])
            .await?;
        Ok(TableGauges {
            due: pending.get(0),
            not_due: pending.get(1),
            oldest_due_seconds: pending.get(2),
            dead: dead.get(0),
            dead_tuples: vacuum.as_ref().map_or(0, |r| r.get(0)),
            last_autovacuum_epoch: vacuum.as_ref().map_or(0.0, |r| r.get(1)),
            // An o5 table has no ordering keys.
            blocked_keys: Default::default(),
        })
    }
}

/// The table's shape from its `(column, type)` list, or what is wrong.
fn shape_of(columns: &[(String, String)], schema: &Identifier) -> Result<Shape, String> {
    let type_of = |name: &str| {
        columns
            .iter()
            .find(|(column, _)| column == name)
            .map(|(_, ty)| ty.as_str())
    };
    if columns.is_empty() {
        return Err(
            "it does not exist; the o5 application's own migrations create it, then \
             `outbox-relay migrate --table-format o5` adds the relay's columns"
                .to_owned(),
        );
    }
    if type_of("data").is_none() {
        return Err(if type_of("payload").is_some() {
            "it has the relay's own format (payload, message_id): drop --table-format o5".to_owned()
        } else {
            "it has no data column, so it is no o5 outbox".to_owned()
        });
    }
    let id = type_of("id").ok_or("it has no id column")?;
    let id_type = IdType::from_sql(id)
        .ok_or_else(|| format!("its id is {id}; the relay reads ids of type uuid or text"))?;
    let missing: Vec<&str> = RELAY_COLUMNS
        .into_iter()
        .filter(|c| type_of(c).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the relay's columns {} are missing: run `outbox-relay migrate --table-format o5 --schema {schema}`",
            missing.join(", ")
        ));
    }
    Ok(Shape {
        id_type,
        delayed: type_of("send_after").is_some(),
    })
}

/// Rows locked by one open transaction.
pub struct O5Claim {
    tx: ClaimTx,
    sql: Arc<O5Statements>,
    pub rows: Vec<O5Row>,
}

impl std::fmt::Debug for O5Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("O5Claim")
            .field("rows", &self.rows.len())
            .finish_non_exhaustive()
    }
}

impl O5Claim {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Deletes the confirmed rows, records the failures and commits. Rows
    /// in neither list stay as they were.
    pub async fn finish(
        mut self,
        sent: &[String],
        failures: &[O5Failure],
    ) -> Result<(), StoreError> {
        let client = self.tx.client();
        if !sent.is_empty() {
            client
                .query_typed(&self.sql.delete_sent, &[(&sent, Type::TEXT_ARRAY)])
                .await?;
        }
        if !failures.is_empty() {
            let ids: Vec<&str> = failures.iter().map(|f| f.id.as_str()).collect();
            let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
            let delays: Vec<f64> = failures
                .iter()
                .map(|f| f.delay.as_secs_f64() * 1000.0)
                .collect();
            let dead: Vec<bool> = failures.iter().map(|f| f.dead).collect();
            client
                .query_typed(
                    &self.sql.record_failures,
                    &[
                        (&ids, Type::TEXT_ARRAY),
                        (&errors, Type::TEXT_ARRAY),
                        (&delays, Type::FLOAT8_ARRAY),
                        (&dead, Type::BOOL_ARRAY),
                    ],
                )
                .await?;
        }
        self.tx.commit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(c, t)| ((*c).to_owned(), (*t).to_owned()))
            .collect()
    }

    const MIGRATED: &[(&str, &str)] = &[
        ("id", "uuid"),
        ("data", "jsonb"),
        ("headers", "text"),
        ("attempts", "integer"),
        ("last_error", "text"),
        ("dead_at", "timestamp with time zone"),
        ("available_at", "timestamp with time zone"),
    ];

    #[test]
    fn the_shape_says_the_id_type_and_the_delayed_variant() {
        let schema = Identifier::parse("app").unwrap();
        let plain = shape_of(&columns(MIGRATED), &schema).unwrap();
        assert_eq!(
            plain,
            Shape {
                id_type: IdType::Uuid,
                delayed: false
            }
        );
        let mut delayed = columns(MIGRATED);
        delayed.push(("send_after".into(), "timestamp with time zone".into()));
        assert!(shape_of(&delayed, &schema).unwrap().delayed);
    }

    #[test]
    fn a_table_the_relay_cannot_read_says_what_to_do() {
        let schema = Identifier::parse("app").unwrap();
        for (list, says) in [
            (&[][..], "does not exist"),
            (
                &[("id", "bigint"), ("payload", "bytea")][..],
                "drop --table-format o5",
            ),
            (
                &[("id", "uuid"), ("data", "jsonb"), ("headers", "text")][..],
                "migrate --table-format o5 --schema app",
            ),
            (&[("id", "integer"), ("data", "jsonb")][..], "uuid or text"),
        ] {
            let e = shape_of(&columns(list), &schema).unwrap_err();
            assert!(e.contains(says), "{e} lacks {says:?}");
        }
    }

    #[test]
    fn statements_use_the_due_expression_of_the_indexes_and_cast_ids() {
        let delayed = Shape {
            id_type: IdType::Uuid,
            delayed: true,
        };
        let sql = O5Statements::new("\"app\".outbox", &delayed);
        assert!(
            sql.claim
                .contains("GREATEST(available_at, send_after) <= now()")
        );
        assert!(sql.delete_sent.contains("$1::text[]::uuid[]"));
        let plain = Shape {
            id_type: IdType::Text,
            delayed: false,
        };
        let sql = O5Statements::new("\"app\".outbox", &plain);
        assert!(sql.has_due.contains("available_at <= now()"));
        assert!(!sql.claim.contains("send_after"));
        assert!(sql.record_failures.contains("f.id::text"));
    }
}
