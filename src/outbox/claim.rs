//! The claim as an object: a transaction on its own pooled connection that
//! holds locked rows until [`Claim::finish`] marks, records and commits.
//!
//! Invariants owned here:
//! - rows are marked sent (or deleted) only by `finish`, in the transaction
//!   that locked them (invariant 1);
//! - a claim that is dropped unfinished (an error, a step abandoned at its
//!   deadline, a panic) closes its connection instead of returning it to the
//!   pool mid-transaction: the server rolls back and the rows are free at
//!   once (invariant 4).

use super::{Claimed, Failure, OnSent, Outbox, StoreError};
use deadpool_postgres::{Object, Pool};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

/// How much one claim may take.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits {
    pub rows: usize,
    /// Payloads above this are never loaded (`--max-message-size`).
    pub max_payload: usize,
    /// Payloads loaded by the claim add up to at most this
    /// (`--batch-max-bytes`); a single larger row is loaded on its own.
    pub batch_bytes: usize,
    /// The server ends the claim's session when it sits idle in its
    /// transaction longer than this (invariant 4), even if the relay hangs.
    pub idle_timeout: std::time::Duration,
}

/// Rows locked by one open transaction.
pub struct Claim {
    tx: ClaimTx,
    statements: Arc<super::Statements>,
    cursor: Arc<super::ClaimCursor>,
    pub rows: Vec<Claimed>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("rows", &self.rows.len())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens a transaction and locks up to `limits.rows` due rows.
    pub async fn claim(&self, limits: &ClaimLimits) -> Result<Claim, StoreError> {
        let mut claim = Claim {
            tx: ClaimTx::begin(&self.pool, limits).await?,
            statements: self.sql.clone(),
            cursor: self.cursor.clone(),
            rows: Vec::new(),
        };
        let to_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let (rows, max, bytes) = (
            to_i64(limits.rows),
            to_i64(limits.max_payload),
            to_i64(limits.batch_bytes),
        );
        let from = self.cursor.start();
        let statement = if self.claim_function.load(Ordering::Relaxed) {
            &claim.statements.claim_call
        } else {
            &claim.statements.claim
        };
        let rows = claim
            .tx
            .lock_rows(
                statement,
                &[
                    (&rows, Type::INT8),
                    (&max, Type::INT8),
                    (&bytes, Type::INT8),
                    (&from, Type::INT8),
                ],
            )
            .await?;
        claim.rows = rows.iter().map(Claimed::decode).collect::<Result<_, _>>()?;
        let last = claim.rows.iter().map(|c| c.id().0).max();
        let unloaded = claim
            .rows
            .iter()
            .filter_map(|c| match c {
                Claimed::Row(row) if row.payload.is_none() => Some(row.id.0),
                _ => None,
            })
            .min();
        self.cursor
            .advance(from, limits.rows, claim.rows.len(), last, unloaded);
        Ok(claim)
    }
}

impl Claim {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Reads one payload the claim left unloaded (a row above the batch's
    /// byte budget), under this claim's lock. `None` if the row is gone.
    pub async fn load_payload(&self, id: super::RowId) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.tx.client();
        let row = client
            .query_typed_opt(&self.statements.load_payload, &[(&id.0, Type::INT8)])
            .await?;
        Ok(match row {
            Some(row) => row.try_get(0)?,
            None => None,
        })
    }

    /// Marks (or deletes) the confirmed rows, records the failures and
    /// commits. Rows in neither list stay pending, unchanged.
    pub async fn finish(
        mut self,
        sent: &[i64],
        on_sent: OnSent,
        failures: &[Failure],
    ) -> Result<(), StoreError> {
        let client = self.tx.client();
        if !sent.is_empty() {
            let sql = match on_sent {
                OnSent::Mark => &self.statements.mark_sent,
                OnSent::Delete => &self.statements.delete_sent,
            };
            client
                .query_typed(sql, &[(&sent, Type::INT8_ARRAY)])
                .await?;
        }
        if !failures.is_empty() {
            record_failures(client, &self.statements.record_failures, failures).await?;
        }
        kill_point!("relay_before_commit");
        self.tx.commit().await?;
        if let Some(backoff) = failures.iter().filter(|f| !f.dead).map(|f| f.delay).min() {
            self.cursor.rescan_at(std::time::Instant::now() + backoff);
        }
        Ok(())
    }
}

/// The transaction of a claim (of either table format) on its own pooled
/// connection: begun with the claim's session settings, committed by
/// [`ClaimTx::commit`], and when dropped before that, its connection is
/// closed rather than returned to the pool mid-transaction.
pub(super) struct ClaimTx {
    client: Option<Object>,
    pool: Pool,
}

impl ClaimTx {
    /// Takes a connection and begins, with settings for this transaction
    /// only as SET LOCAL in the round trip of BEGIN (which is also all a
    /// pooler in transaction mode, PgBouncer, guarantees): the idle bound of
    /// invariant 4, and no sequential scans (every statement of a claim has
    /// an index path, and a table grown from empty before its first ANALYZE
    /// would otherwise be scanned whole).
    pub(super) async fn begin(pool: &Pool, limits: &ClaimLimits) -> Result<Self, StoreError> {
        let tx = Self {
            client: Some(pool.get().await?),
            pool: pool.clone(),
        };
        tx.client()
            .batch_execute(&format!(
                "BEGIN; SET LOCAL idle_in_transaction_session_timeout = {}; \
                 SET LOCAL enable_seqscan = off",
                limits.idle_timeout.as_millis().max(1)
            ))
            .await?;
        Ok(tx)
    }

    pub(super) fn client(&self) -> &Object {
        self.client
            .as_ref()
            .expect("a claim is used only until finished")
    }

    /// Runs the claim's locking statement. A read-only session (a standby,
    /// or `default_transaction_read_only`) was made so when it connected,
    /// and the pool's idle sessions connected under the same settings: they
    /// are closed with this one, so that the claim after the pause connects
    /// afresh and sees a database that has been fixed since (the setting
    /// reset, a failover behind the same address).
    pub(super) async fn lock_rows(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, StoreError> {
        let result = self.client().query_typed(sql, params).await;
        if let Err(e) = &result
            && e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
        {
            self.pool.retain(|_, _| false);
        }
        Ok(result?)
    }

    /// Commits; the clean connection goes back to the pool.
    pub(super) async fn commit(&mut self) -> Result<(), StoreError> {
        self.client().batch_execute("COMMIT").await?;
        self.client.take();
        Ok(())
    }
}

impl Drop for ClaimTx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Mid-transaction: never reuse it. Dropping the connection makes
            // the server roll back and release the rows now.
            drop(Object::take(client));
        }
    }
}

/// Records failed attempts of a batch in one statement.
async fn record_failures(
    client: &Object,
    sql: &str,
    failures: &[Failure],
) -> Result<(), StoreError> {
    let ids: Vec<i64> = failures.iter().map(|f| f.id.0).collect();
    let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
    let delays: Vec<f64> = failures
        .iter()
        .map(|f| f.delay.as_secs_f64() * 1000.0)
        .collect();
    let dead: Vec<bool> = failures.iter().map(|f| f.dead).collect();
    client
        .query_typed(
            sql,
            &[
                (&ids, Type::INT8_ARRAY),
                (&errors, Type::TEXT_ARRAY),
                (&delays, Type::FLOAT8_ARRAY),
                (&dead, Type::BOOL_ARRAY),
            ],
        )
        .await?;
    Ok(())
}
