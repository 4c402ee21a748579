//! The outbox table: row types, all SQL, migrations and wake-ups.
//!
//! Invariants owned here:
//! - every statement is rendered from a validated, quoted schema name and takes
//!   its values as bind parameters (invariant 7);
//! - claims lock rows `FOR UPDATE SKIP LOCKED` inside the caller's transaction,
//!   so marking happens under the same claim (invariants 1 and 5);
//! - failure bookkeeping (attempts, error, backoff, dead-lettering) is one
//!   statement per batch and never deletes a row (invariant 3);
//! - operators' reads (`browse`, `overview`) have an index path for every
//!   filter and run read-only under a statement timeout; an operator deletes
//!   only dead rows.

mod browse;
mod claim;
mod cursor;
mod dead;
mod error;
mod ident;
mod listen;
mod message_id;
pub mod migrate;
pub mod o5;
mod ordering;
mod overview;
mod row;
mod sql;

pub use browse::{BROWSE_TIMEOUT, Detail, Filter, Listed, Page, RowState};
pub use claim::{Claim, ClaimLimits};
pub(crate) use cursor::ClaimCursor;
pub use dead::Change;
pub use error::{StoreError, describe};

pub use ident::{Identifier, IdentifierError};
pub use listen::{O5_CHANNEL, WakeChannel, run_listener};
pub use message_id::{MessageId, MessageIdError};
pub use ordering::{
    BlockedKeys, ORDERING_KEY_MAX, OrderingKeyError, OrderingOnDead, check_ordering_key,
};
pub use overview::{Backlog, Overview, Rates, RouteCount};
pub use row::{
    Claimed, Inserted, NewMessage, OutboxRow, RowDefect, RowId, RowView, Stats, TableGauges,
};
pub use sql::Statements;

use deadpool_postgres::{Hook, Manager, ManagerConfig, Pool, RecyclingMethod};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A connection or a transaction running unnamed statements: parse, bind
/// and execute go in one round trip and nothing outlives the call on the
/// server, so the relay works through a pooler in transaction mode
/// (PgBouncer before 1.21 cannot keep named statements there). The cost is
/// planning per statement, a fraction of a millisecond per batch.
pub trait Unnamed: Sync {
    fn query_typed_opt(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Option<tokio_postgres::Row>, tokio_postgres::Error>> + Send;
}

impl Unnamed for tokio_postgres::Client {
    fn query_typed_opt(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Option<tokio_postgres::Row>, tokio_postgres::Error>> + Send
    {
        tokio_postgres::Client::query_typed_opt(self, sql, params)
    }
}

impl Unnamed for tokio_postgres::Transaction<'_> {
    fn query_typed_opt(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Option<tokio_postgres::Row>, tokio_postgres::Error>> + Send
    {
        tokio_postgres::Transaction::query_typed_opt(self, sql, params)
    }
}

/// What happens to a row once the broker confirmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum OnSent {
    /// Set `sent_at`; purge after the retention period.
    Mark,
    /// Delete the row in the claiming transaction.
    Delete,
}

/// One failed row of a batch, ready to be recorded.
#[derive(Debug, Clone)]
pub struct Failure {
    pub id: RowId,
    pub error: String,
    /// Backoff before the row becomes due again.
    pub delay: Duration,
    /// Set `dead_at`: the row leaves the pending set but is kept.
    pub dead: bool,
    /// An attempt of the row (else its destination was unreachable: the
    /// failure says nothing about the message, `attempts` stays).
    pub counts: bool,
}

/// Pool sizing and timeouts for [`connect_pool`].
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    pub max_size: usize,
    /// Bounds waiting for, and creating, a connection.
    pub timeout: Duration,
}

/// Connections a pool has opened, for `outbox_relay_reconnects_total`.
#[derive(Debug, Clone, Default)]
pub struct ConnectionCount(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    opened: AtomicU64,
    /// The highest count of reconnects reported: the pool's size and the
    /// opened count change apart, and a counter must never go down.
    reported: AtomicU64,
}

/// Builds a connection pool. Connections are created lazily, so this does not
/// fail when the database is down; broken connections (a terminated backend)
/// are detected on checkout and replaced.
pub fn connect_pool(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    options: PoolOptions,
) -> Result<Pool, deadpool_postgres::BuildError> {
    connect_counted_pool(config, tls, options, &ConnectionCount::default())
}

/// [`connect_pool`], counting every connection it opens into `opened`.
pub fn connect_counted_pool(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    options: PoolOptions,
    opened: &ConnectionCount,
) -> Result<Pool, deadpool_postgres::BuildError> {
    let opened = opened.0.clone();
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.max_size)
        .wait_timeout(Some(options.timeout))
        .create_timeout(Some(options.timeout))
        .recycle_timeout(Some(options.timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .post_create(Hook::sync_fn(move |_, _| {
            opened.opened.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }))
        .build()
}

/// One schema's outbox table, reached through a connection pool.
#[derive(Clone)]
pub struct Outbox {
    pool: Pool,
    schema: Identifier,
    sql: Arc<Statements>,
    opened: Option<ConnectionCount>,
    /// Where the next claim starts (shared by the clones: one relay).
    cursor: Arc<ClaimCursor>,
    /// The schema has the claim function (migration 0006): claims call it
    /// instead of sending the statement, which is then planned once per
    /// session. Found by [`Self::ensure_table`].
    claim_function: Arc<AtomicBool>,
    /// `--ordering-on-dead`: whether a dead row holds its key back.
    ordering_on_dead: OrderingOnDead,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("table", &self.sql.table)
            .finish()
    }
}

impl Outbox {
    pub fn new(pool: Pool, schema: Identifier) -> Self {
        let sql = Arc::new(Statements::new(&schema));
        Self {
            pool,
            schema,
            sql,
            opened: None,
            cursor: Arc::new(ClaimCursor::default()),
            claim_function: Arc::new(AtomicBool::new(false)),
            ordering_on_dead: OrderingOnDead::default(),
        }
    }

    /// Reads reconnects from `opened`, the count its pool was built with
    /// ([`connect_counted_pool`]).
    pub fn with_connection_count(mut self, opened: ConnectionCount) -> Self {
        self.opened = Some(opened);
        self
    }

    /// Connections opened to replace one the pool lost (a terminated
    /// backend, a database restart, a claim closed at its deadline): all it
    /// opened but those it holds now. Zero without a connection count.
    pub fn reconnects(&self) -> u64 {
        let Some(opened) = &self.opened else { return 0 };
        let held = self.pool.status().size as u64;
        let lost = opened.0.opened.load(Ordering::Relaxed).saturating_sub(held);
        opened
            .0
            .reported
            .fetch_max(lost, Ordering::Relaxed)
            .max(lost)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn schema(&self) -> &Identifier {
        &self.schema
    }

    /// The quoted, schema-qualified table name.
    pub fn table(&self) -> &str {
        &self.sql.table
    }

    /// Fails with [`StoreError::TableMissing`] when the migration has not
    /// run, and with [`StoreError::Schema`] when the table predates
    /// migration 0004 (its message_id is not text yet) or 0007 (it has no
    /// ordering_key: the claim reads it).
    pub async fn ensure_table(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_typed_one(
                "SELECT to_regclass($1) IS NOT NULL,
                        (SELECT format_type(atttypid, NULL) FROM pg_attribute
                         WHERE attrelid = to_regclass($1) AND attname = 'message_id'
                           AND NOT attisdropped),
                        to_regprocedure($2) IS NOT NULL,
                        (SELECT format_type(atttypid, NULL) FROM pg_attribute
                         WHERE attrelid = to_regclass($1) AND attname = 'ordering_key'
                           AND NOT attisdropped)",
                &[
                    (&self.sql.table, Type::TEXT),
                    (&self.sql.claim_function, Type::TEXT),
                ],
            )
            .await?;
        self.claim_function.store(row.get(2), Ordering::Relaxed);
        if !row.get::<_, bool>(0) {
            return Err(StoreError::TableMissing {
                table: self.sql.table.clone(),
                schema: self.schema.to_string(),
            });
        }
        for (index, column, migration) in [
            (1, "message_id", "0004_text_message_id"),
            (3, "ordering_key", "0007_ordering_key"),
        ] {
            match row.get::<_, Option<String>>(index) {
                Some(ty) if ty == "text" => {}
                found => {
                    return Err(StoreError::Schema {
                        column,
                        expected: "text",
                        reason: format!(
                            "it is {} (migration {migration} has not run: run `outbox-relay migrate`)",
                            found.as_deref().unwrap_or("missing")
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Deletes up to `limit` rows sent longer ago than `older_than`.
    pub async fn purge_sent(&self, older_than: Duration, limit: i64) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute_typed(
                &self.sql.purge_sent,
                &[
                    (&older_than.as_secs_f64(), Type::FLOAT8),
                    (&limit, Type::INT8),
                ],
            )
            .await?)
    }

    /// Inserts one message through `client` (a pooled connection or a
    /// transaction of [`Self::insert_all`]).
    async fn insert_with(
        &self,
        client: &impl Unnamed,
        message: &NewMessage,
    ) -> Result<Inserted, StoreError> {
        let headers = tokio_postgres::types::Json(&message.headers);
        let delay_ms = message.delay.as_secs_f64() * 1000.0;
        let row = client
            .query_typed_opt(
                &self.sql.insert,
                &[
                    (&message.message_id, Type::TEXT),
                    (&message.exchange, Type::TEXT),
                    (&message.routing_key, Type::TEXT),
                    (&message.payload, Type::BYTEA),
                    (&message.content_type, Type::TEXT),
                    (&headers, Type::JSONB),
                    (&delay_ms, Type::FLOAT8),
                    (&message.ordering_key, Type::TEXT),
                ],
            )
            .await?;
        Ok(match row {
            Some(row) => Inserted::New(RowId(row.get(0)), MessageId::stored(row.get(1))),
            None => Inserted::Duplicate,
        })
    }

    /// Inserts one message in its own transaction.
    pub async fn insert(&self, message: &NewMessage) -> Result<Inserted, StoreError> {
        let client = self.pool.get().await?;
        self.insert_with(&**client, message).await
    }

    /// Inserts every message in one statement: all of them are stored, or
    /// none, in one round trip and one commit whatever their number.
    ///
    /// Keyed messages go in key order (a stable sort: a key's messages keep
    /// their order), after those without a key: every transaction of this
    /// relay then takes its keys' locks (migration 0007) in one order, so
    /// two of them never deadlock on each other's keys.
    pub async fn insert_all(&self, messages: &[&NewMessage]) -> Result<(), StoreError> {
        if let [message] = messages {
            return self.insert(message).await.map(drop);
        }
        let mut ordered = messages.to_vec();
        ordered.sort_by(|a, b| a.ordering_key.cmp(&b.ordering_key));
        let columns = Columns::of(&ordered);
        let client = self.pool.get().await?;
        client
            .query_typed(
                &self.sql.insert_many,
                &[
                    (&columns.message_ids, Type::TEXT_ARRAY),
                    (&columns.exchanges, Type::TEXT_ARRAY),
                    (&columns.routing_keys, Type::TEXT_ARRAY),
                    (&columns.payloads, Type::BYTEA_ARRAY),
                    (&columns.content_types, Type::TEXT_ARRAY),
                    (&columns.headers, Type::JSONB_ARRAY),
                    (&columns.delays_ms, Type::FLOAT8_ARRAY),
                    (&columns.ordering_keys, Type::TEXT_ARRAY),
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn stats(&self) -> Result<Stats, StoreError> {
        let client = self.pool.get().await?;
        let row = client.query_typed_one(&self.sql.stats, &[]).await?;
        let blocked = client
            .query_typed_one(
                &self.sql.ordering_blocked,
                &[(&self.skips_dead(), Type::BOOL)],
            )
            .await?;
        Ok(Stats {
            ordering: BlockedKeys::from_row(&blocked)?,
            pending: row.get(0),
            due: row.get(1),
            sent: row.get(2),
            dead: row.get(3),
            oldest_pending_seconds: row.get(4),
        })
    }

    /// The backlog, dead rows and vacuum state, with indexed queries only
    /// (see `sql::BACKLOG`), for the metrics' gauges.
    pub async fn table_gauges(&self) -> Result<TableGauges, StoreError> {
        let client = self.pool.get().await?;
        let pending = client.query_typed_one(&self.sql.backlog, &[]).await?;
        let dead = client.query_typed_one(&self.sql.dead_count, &[]).await?;
        let blocked = client
            .query_typed_one(
                &self.sql.ordering_blocked,
                &[(&self.skips_dead(), Type::BOOL)],
            )
            .await?;
        let vacuum = client
            .query_typed_opt(&self.sql.table_stats, &[(&self.sql.table, Type::TEXT)])
            .await?;
        Ok(TableGauges {
            due: pending.get(0),
            not_due: pending.get(1),
            oldest_due_seconds: pending.get(2),
            dead: dead.get(0),
            dead_tuples: vacuum.as_ref().map_or(0, |r| r.get(0)),
            last_autovacuum_epoch: vacuum.as_ref().map_or(0.0, |r| r.get(1)),
            blocked_keys: BlockedKeys::from_row(&blocked)?,
        })
    }

    /// Answers when the database does (readiness).
    /// Whether a row is due now: one indexed look at the pending rows, no
    /// transaction, no lock (an idle worker's poll).
    pub async fn has_due(&self) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let row = client.query_typed(&self.sql.has_due, &[]).await?;
        Ok(row.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Finds a row by message_id or by id.
    pub async fn find(&self, key: &RowKey) -> Result<Option<RowView>, StoreError> {
        let (message_id, id) = match key {
            RowKey::MessageId(m) => (Some(m), None::<i64>),
            RowKey::Id(i) => (None, Some(*i)),
        };
        let client = self.pool.get().await?;
        let row = client
            .query_typed_opt(
                &self.sql.find,
                &[(&message_id, Type::TEXT), (&id, Type::INT8)],
            )
            .await?;
        Ok(row.as_ref().map(RowView::from_row))
    }

    pub async fn list_dead(&self, limit: i64) -> Result<Vec<RowView>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query_typed(&self.sql.list_dead, &[(&limit, Type::INT8)])
            .await?;
        Ok(rows.iter().map(RowView::from_row).collect())
    }

    /// Makes dead rows pending again (all of them when `ids` is `None`).
    pub async fn replay(&self, ids: Option<&[i64]>) -> Result<Vec<i64>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query_typed(&self.sql.replay, &[(&ids, Type::INT8_ARRAY)])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// How an operator names a row: a key of digits only is its id, anything
/// else its message_id. (A message_id of digits only is found with the list
/// filter `message_id=`, which names the row's id.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowKey {
    Id(i64),
    MessageId(MessageId),
}

impl std::fmt::Display for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "id {id}"),
            Self::MessageId(m) => write!(f, "message_id {:?}", m.as_str()),
        }
    }
}

impl std::str::FromStr for RowKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<i64>()
                .map(Self::Id)
                .map_err(|_| format!("row id {s} is out of range"));
        }
        MessageId::parse(s)
            .map(Self::MessageId)
            .map_err(|e| format!("{s:?} is neither a row id (digits) nor a message_id: {e}"))
    }
}

/// A group of messages as the arrays of [`sql::INSERT_MANY`]'s parameters.
struct Columns<'a> {
    message_ids: Vec<Option<&'a str>>,
    exchanges: Vec<&'a str>,
    routing_keys: Vec<&'a str>,
    payloads: Vec<&'a [u8]>,
    content_types: Vec<Option<&'a str>>,
    headers: Vec<tokio_postgres::types::Json<&'a serde_json::Map<String, serde_json::Value>>>,
    delays_ms: Vec<f64>,
    ordering_keys: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn of(messages: &[&'a NewMessage]) -> Self {
        Self {
            message_ids: messages
                .iter()
                .map(|m| m.message_id.as_ref().map(|id| id.as_str()))
                .collect(),
            exchanges: messages.iter().map(|m| m.exchange.as_str()).collect(),
            routing_keys: messages.iter().map(|m| m.routing_key.as_str()).collect(),
            payloads: messages.iter().map(|m| m.payload.as_slice()).collect(),
            content_types: messages.iter().map(|m| m.content_type.as_deref()).collect(),
            headers: messages
                .iter()
                .map(|m| tokio_postgres::types::Json(&m.headers))
                .collect(),
            delays_ms: messages
                .iter()
                .map(|m| m.delay.as_secs_f64() * 1000.0)
                .collect(),
            ordering_keys: messages.iter().map(|m| m.ordering_key.as_deref()).collect(),
        }
    }
}
