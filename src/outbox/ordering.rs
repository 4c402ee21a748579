//! Ordering keys (issue 24, migration 0007): what a key may be, what a dead
//! row does to its key, and which keys are held back.
//!
//! Invariants owned here (the claim statement keeps them, see `sql::CLAIM`):
//! - rows with the same key are published in their key's commit order
//!   (`ordering_seq`, drawn under a per-key lock by the insert trigger), one
//!   at a time: a key's next row is claimed only once the row before it has
//!   been confirmed and marked sent, so a failure or a crash can duplicate a
//!   key's rows but never reorder them;
//! - a failing row holds back the later rows of its own key only; rows of
//!   other keys, and rows without a key, are claimed as before;
//! - a dead row holds its key back until it is replayed or deleted
//!   ([`OrderingOnDead::Block`]), unless the relay runs with
//!   [`OrderingOnDead::Skip`];
//! - a key is 1 to [`ORDERING_KEY_MAX`] bytes of text, checked at every door
//!   and by the table's own check constraint.

use super::{Outbox, StoreError, row::typed};
use tokio_postgres::types::Type;

/// The longest ordering key, in bytes (the table's check says the same).
pub const ORDERING_KEY_MAX: usize = 256;

/// What a dead row does to the later rows of its key (`--ordering-on-dead`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderingOnDead {
    /// The key stops until its dead row is replayed (and sent) or deleted.
    #[default]
    Block,
    /// The key goes on without its dead row; a replayed dead row is then
    /// published after rows of its key that followed it.
    Skip,
}

/// Why an ordering key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderingKeyError {
    #[error("the ordering key is empty (leave it out for a message without one)")]
    Empty,
    #[error("the ordering key is {0} bytes; at most {ORDERING_KEY_MAX} are allowed")]
    TooLong(usize),
}

/// Checks a sender's ordering key: 1 to [`ORDERING_KEY_MAX`] bytes, any text.
pub fn check_ordering_key(key: &str) -> Result<(), OrderingKeyError> {
    match key.len() {
        0 => Err(OrderingKeyError::Empty),
        n if n > ORDERING_KEY_MAX => Err(OrderingKeyError::TooLong(n)),
        _ => Ok(()),
    }
}

/// The keys held back by their head ([`sql::ORDERING_BLOCKED`](super::sql)).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct BlockedKeys {
    /// Keys whose head has failed and waits for its retry, or is dead.
    pub keys: i64,
    /// Age of the oldest such head (`created_at`); 0 when none.
    pub oldest_seconds: f64,
}

impl Outbox {
    /// What this relay does with a key whose head is dead.
    pub fn with_ordering_on_dead(mut self, mode: OrderingOnDead) -> Self {
        self.ordering_on_dead = mode;
        self
    }

    pub fn ordering_on_dead(&self) -> OrderingOnDead {
        self.ordering_on_dead
    }

    /// The keys held back now, as this relay's `--ordering-on-dead` sees them.
    pub async fn blocked_keys(&self) -> Result<BlockedKeys, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_typed_one(
                &self.sql.ordering_blocked,
                &[(&self.skips_dead(), Type::BOOL)],
            )
            .await?;
        BlockedKeys::from_row(&row)
    }

    /// `--ordering-on-dead skip`, as the statements' parameter.
    pub(super) fn skips_dead(&self) -> bool {
        self.ordering_on_dead == OrderingOnDead::Skip
    }
}

impl BlockedKeys {
    pub(super) fn from_row(row: &tokio_postgres::Row) -> Result<Self, StoreError> {
        Ok(Self {
            keys: typed(row, 0, "ordering_key", "text")?,
            oldest_seconds: typed(row, 1, "created_at", "timestamptz")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ordering_key_is_one_to_256_bytes() {
        assert_eq!(check_ordering_key(""), Err(OrderingKeyError::Empty));
        check_ordering_key("order-42").unwrap();
        check_ordering_key(&"k".repeat(ORDERING_KEY_MAX)).unwrap();
        // Bytes, not characters: 129 two-byte characters are 258 bytes.
        assert_eq!(
            check_ordering_key(&"é".repeat(129)),
            Err(OrderingKeyError::TooLong(258))
        );
    }
}
