//! Where the next claim starts: after the rows this relay claimed last,
//! instead of at the lowest pending id.
//!
//! A claim walks the pending index in id order. Rows just marked sent stay
//! in that index as dead entries until no snapshot can see them, and rows
//! other workers hold are skipped one by one (`SKIP LOCKED`), so a claim
//! from the lowest id re-reads all of them each time. Starting after the
//! last claimed row skips both.
//!
//! Invariant: no due row is left behind for long. A row below the cursor
//! (a retry whose backoff ended, a delayed message, a transaction that
//! committed low ids late, rows another relay released) is found by the
//! next rescan from the lowest id, which comes whenever a claim returns
//! fewer rows than asked for (the end of the backlog), when a row this
//! relay failed becomes due again ([`ClaimCursor::rescan_at`]), and at
//! least every [`RESCAN_EVERY`].
//!
//! Ordering keys (migration 0007) add two moves. A claim whose window of
//! keyed rows was full walked only up to the window's end (`walked_to`):
//! the next claim goes on from there, short or not, instead of rescanning
//! the same held-back rows (a key's backlog behind a failing head would
//! otherwise stop every claim at its first window, and rows after it would
//! never be reached). And once a batch's keyed rows are marked sent, the
//! cursor is moved back to just after the lowest of them
//! ([`ClaimCursor::rewind_to`]): their keys' next rows, held back while
//! those were in flight, lie after them and possibly below the cursor.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest a due row below the cursor waits for a rescan.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Shared by the workers of one relay (one [`super::Outbox`] and its clones).
#[derive(Debug)]
pub struct ClaimCursor(Mutex<State>);

#[derive(Debug)]
struct State {
    /// The lowest id the next claim considers.
    from: i64,
    last_rescan: Instant,
    /// When a row failed by this relay is due again.
    retry_due: Option<Instant>,
}

impl Default for ClaimCursor {
    fn default() -> Self {
        Self(Mutex::new(State {
            from: 0,
            last_rescan: Instant::now(),
            retry_due: None,
        }))
    }
}

impl ClaimCursor {
    /// The lowest id for the next claim: 0 when a rescan is due.
    pub fn start(&self) -> i64 {
        let mut state = self.0.lock().expect("poisoned");
        let retry = state.retry_due.is_some_and(|due| due <= Instant::now());
        if retry || state.last_rescan.elapsed() >= RESCAN_EVERY {
            state.from = 0;
        }
        if retry {
            state.retry_due = None;
        }
        if state.from == 0 {
            state.last_rescan = Instant::now();
        }
        state.from
    }

    /// A row this relay failed is due again at `due` (its backoff): rescan
    /// then, so that its retry does not wait for the periodic rescan.
    pub fn rescan_at(&self, due: Instant) {
        let mut state = self.0.lock().expect("poisoned");
        state.retry_due = Some(state.retry_due.map_or(due, |earlier| earlier.min(due)));
    }

    /// After a claim from `from` that asked for `limit` rows and returned
    /// `claimed`, the highest id `last` and, `unloaded`, the lowest id of
    /// those whose payload it did not load (they may be left pending for the
    /// next claim). A short claim reached the end of the backlog: the next
    /// one rescans, unless its window of keyed rows ended its walk at
    /// `walked_to` first.
    pub fn advance(
        &self,
        from: i64,
        limit: usize,
        claimed: usize,
        last: Option<i64>,
        unloaded: Option<i64>,
        walked_to: Option<i64>,
    ) {
        let mut state = self.0.lock().expect("poisoned");
        let reached = match (last.filter(|_| claimed >= limit), walked_to) {
            (Some(last), _) => last,
            (None, Some(end)) => end,
            (None, None) => {
                state.from = 0;
                return;
            }
        };
        let next = unloaded.unwrap_or(reached.saturating_add(1));
        // Another worker may have moved it further meanwhile; a rescan
        // (from 0) that started before keeps what came after it.
        if state.from == from || next > state.from {
            state.from = next.max(from);
        }
    }
}

impl ClaimCursor {
    /// Rows from `id` on may be due again (their key's previous row was just
    /// sent): the next claim starts there at the latest.
    pub fn rewind_to(&self, id: i64) {
        let mut state = self.0.lock().expect("poisoned");
        state.from = state.from.min(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_claim_moves_the_cursor_past_its_rows_and_a_short_one_rescans() {
        let cursor = ClaimCursor::default();
        assert_eq!(cursor.start(), 0);
        cursor.advance(0, 3, 3, Some(9), None, None);
        assert_eq!(cursor.start(), 10);
        cursor.advance(10, 3, 2, Some(11), None, None);
        assert_eq!(cursor.start(), 0, "the end of the backlog: rescan");
        cursor.advance(0, 2, 0, None, None, None);
        assert_eq!(cursor.start(), 0);
    }

    #[test]
    fn a_retry_coming_due_brings_a_rescan() {
        let cursor = ClaimCursor::default();
        cursor.advance(0, 2, 2, Some(2), None, None);
        cursor.rescan_at(Instant::now());
        assert_eq!(cursor.start(), 0, "the failed row's backoff is over");
        cursor.advance(0, 2, 2, Some(4), None, None);
        assert_eq!(cursor.start(), 5, "one rescan per retry");
    }

    #[test]
    fn rows_left_unloaded_are_not_skipped() {
        let cursor = ClaimCursor::default();
        cursor.advance(0, 3, 3, Some(3), Some(2), None);
        assert_eq!(cursor.start(), 2);
    }

    #[test]
    fn a_claim_ended_by_its_window_goes_on_after_it_and_a_sent_key_rewinds() {
        let cursor = ClaimCursor::default();
        assert_eq!(cursor.start(), 0);
        // Short (1 of 3 rows), but its window of keyed rows ended at 40.
        cursor.advance(0, 3, 1, Some(5), None, Some(40));
        assert_eq!(cursor.start(), 41, "not a rescan: rows after 40 are due");
        cursor.advance(41, 3, 0, None, None, Some(90));
        assert_eq!(cursor.start(), 91, "a window of held-back rows is passed");
        cursor.rewind_to(6);
        assert_eq!(cursor.start(), 6, "the key of row 5 goes on");
        cursor.rewind_to(50);
        assert_eq!(cursor.start(), 6, "a rewind never moves it forward");
    }

    #[test]
    fn a_worker_behind_another_does_not_move_the_cursor_back() {
        let cursor = ClaimCursor::default();
        cursor.advance(0, 2, 2, Some(2), None, None);
        cursor.advance(3, 2, 2, Some(4), None, None);
        // A claim that also started at 3 and got rows 5 and 6 (4 was held).
        cursor.advance(3, 2, 2, Some(6), None, None);
        assert_eq!(cursor.start(), 7);
        // A late one from 0 that got 1..2 again does not pull it back.
        cursor.advance(0, 2, 2, Some(2), None, None);
        assert_eq!(cursor.start(), 7);
    }
}
