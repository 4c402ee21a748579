//! What an operator may change, dead rows only (the HTTP API's replay and
//! delete): a pending or sent row belongs to the relay and is left alone,
//! and the caller learns why nothing changed.

use super::browse::RowState;
use super::{Outbox, StoreError, row::typed};
use tokio_postgres::types::Type;

/// What became of a change asked for one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Done,
    /// The row exists but is not dead: nothing changed.
    NotDead(RowState),
    Missing,
}

impl Outbox {
    /// The state of row `id`, if it exists.
    pub async fn state_of(&self, id: i64) -> Result<Option<RowState>, StoreError> {
        let sql = format!(
            "SELECT sent_at IS NOT NULL, dead_at IS NOT NULL FROM {} WHERE id = $1",
            self.table()
        );
        let client = self.pool.get().await?;
        let row = client.query_typed_opt(&sql, &[(&id, Type::INT8)]).await?;
        row.map(|row| {
            let sent: bool = typed(&row, 0, "sent_at", "timestamptz")?;
            let dead: bool = typed(&row, 1, "dead_at", "timestamptz")?;
            Ok(RowState::of(sent, dead))
        })
        .transpose()
    }

    /// Deletes row `id` if it is dead; a pending or sent row is left alone
    /// (the relay owns those).
    pub async fn delete_dead(&self, id: i64) -> Result<Change, StoreError> {
        let sql = format!(
            "DELETE FROM {} WHERE id = $1 AND {} RETURNING id",
            self.table(),
            RowState::Dead.predicate()
        );
        let client = self.pool.get().await?;
        if client
            .query_typed_opt(&sql, &[(&id, Type::INT8)])
            .await?
            .is_some()
        {
            return Ok(Change::Done);
        }
        drop(client);
        self.unchanged(id).await
    }

    /// Makes dead row `id` pending again (the CLI's `replay <id>`).
    pub async fn replay_one(&self, id: i64) -> Result<Change, StoreError> {
        if self.replay(Some(&[id])).await?.is_empty() {
            return self.unchanged(id).await;
        }
        Ok(Change::Done)
    }

    /// Why a change to row `id` did nothing.
    async fn unchanged(&self, id: i64) -> Result<Change, StoreError> {
        Ok(match self.state_of(id).await? {
            None => Change::Missing,
            // Made dead again by the relay in between: still not changed.
            Some(state) => Change::NotDead(state),
        })
    }
}
