//! The claim as an object: a transaction on its own pooled connection that
//! holds locked rows until [`Claim::finish`] marks, records and commits.
//!
//! Invariants owned here:
//! - rows are marked sent (or deleted) only by `finish`, in the transaction
//!   that locked them (invariant 1);
//! - a claim that is dropped unfinished (an error, a step abandoned at its
//!   deadline, a panic) closes its connection instead of returning it to the
//!   pool mid-transaction: the server rolls back and the rows are free at
//!   once (invariant 4);
//! - a claim considers at most [`WINDOW_PER_ROW`] keyed rows per row asked
//!   for, in at most [`MAX_WINDOWS`] windows: a key with a long backlog
//!   behind a failing head costs each claim O(batch), not O(backlog).

use super::{Claimed, Failure, OnSent, Outbox, StoreError, row};
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

/// Keyed rows one claim statement considers, per row asked for: a few
/// blocked rows among them (a key whose previous row is still in flight)
/// still leave a full batch of heads.
pub const WINDOW_PER_ROW: usize = 2;
/// Statements one claim runs while every keyed row of its window was held
/// back (and nothing else was due in it): it then looks further, from the
/// end of that window, instead of coming back empty.
pub const MAX_WINDOWS: usize = 4;

/// Rows locked by one open transaction.
pub struct Claim {
    tx: ClaimTx,
    statements: Arc<super::Statements>,
    cursor: Arc<super::ClaimCursor>,
    pub rows: Vec<Claimed>,
    /// Ids of the claimed rows that have an ordering key, ascending.
    keyed: Vec<i64>,
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
            keyed: Vec::new(),
        };
        let to_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let (rows, max, bytes, window, skip) = (
            to_i64(limits.rows),
            to_i64(limits.max_payload),
            to_i64(limits.batch_bytes),
            to_i64(limits.rows.saturating_mul(WINDOW_PER_ROW)),
            self.skips_dead(),
        );
        let start = self.cursor.start();
        let statement = if self.claim_function.load(Ordering::Relaxed) {
            &claim.statements.claim_call
        } else {
            &claim.statements.claim
        };
        let (mut from, mut locked, mut walked_to) = (start, Vec::new(), None);
        for _ in 0..MAX_WINDOWS {
            let mut found = claim
                .tx
                .lock_rows(
                    statement,
                    &[
                        (&rows, Type::INT8),
                        (&max, Type::INT8),
                        (&bytes, Type::INT8),
                        (&from, Type::INT8),
                        (&window, Type::INT8),
                        (&skip, Type::BOOL),
                    ],
                )
                .await?;
            walked_to = take_marker(&mut found)?;
            locked = found;
            match walked_to {
                Some(end) if locked.is_empty() => from = end.saturating_add(1),
                _ => break,
            }
        }
        for row in &locked {
            if row_keyed(row)? {
                claim.keyed.push(row::typed(row, 0, "id", "bigint")?);
            }
        }
        claim.keyed.sort_unstable();
        claim.rows = locked
            .iter()
            .map(Claimed::decode)
            .collect::<Result<_, _>>()?;
        let last = claim.rows.iter().map(|c| c.id().0).max();
        let unloaded = claim
            .rows
            .iter()
            .filter_map(|c| match c {
                Claimed::Row(row) if row.payload.is_none() => Some(row.id.0),
                _ => None,
            })
            .min();
        self.cursor.advance(
            start,
            limits.rows,
            claim.rows.len(),
            last,
            unloaded,
            walked_to,
        );
        Ok(claim)
    }
}

/// Removes the claim's marker row (id NULL, the last one) and returns where
/// its walk ended, when the window of keyed rows bounded it.
fn take_marker(rows: &mut Vec<Row>) -> Result<Option<i64>, StoreError> {
    let Some(last) = rows.last() else {
        return Ok(None);
    };
    let id: Option<i64> = row::typed(last, 0, "id", "bigint")?;
    if id.is_some() {
        return Ok(None);
    }
    let walked_to: Option<i64> = row::typed(last, 11, "id", "bigint")?;
    rows.pop();
    Ok(walked_to)
}

/// Whether a claimed row has an ordering key.
fn row_keyed(row: &Row) -> Result<bool, StoreError> {
    let keyed: Option<bool> = row::typed(row, 10, "ordering_key", "text")?;
    Ok(keyed.unwrap_or(false))
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
        // A keyed row gone from the pending set (sent, or dead, which with
        // --ordering-on-dead skip frees its key) lets its key's next row be
        // claimed: that row may lie below the cursor, skipped while it was
        // held back.
        let keyed = |id: &i64| self.keyed.binary_search(id).is_ok();
        let freed = sent.iter().copied().filter(keyed);
        let dead = failures.iter().filter(|f| f.dead).map(|f| f.id.0);
        if let Some(first) = freed.chain(dead.filter(keyed)).min() {
            self.cursor.rewind_to(first.saturating_add(1));
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
    let counts: Vec<bool> = failures.iter().map(|f| f.counts).collect();
    client
        .query_typed(
            sql,
            &[
                (&ids, Type::INT8_ARRAY),
                (&errors, Type::TEXT_ARRAY),
                (&delays, Type::FLOAT8_ARRAY),
                (&dead, Type::BOOL_ARRAY),
                (&counts, Type::BOOL_ARRAY),
            ],
        )
        .await?;
    Ok(())
}
