//! Group commit for the ingress's outbox mode: concurrent calls share
//! transactions instead of each paying for its own commit.
//!
//! Calls queue their messages; a few writer tasks each take whatever is
//! queued (up to [`MAX_GROUP`] messages), insert it pipelined in one
//! transaction and commit, then answer every call of the group. Under light
//! load a group is a single call, so nothing waits for company; under load
//! the groups grow while the previous commit is in flight, and the commits
//! per message fall.
//!
//! Invariants owned here:
//! - a call is answered OK only after the transaction holding all of its
//!   messages has committed; a call's messages are never split across
//!   transactions, so a batch stays all-or-nothing;
//! - one call cannot fail another: when a group's transaction fails, each of
//!   its calls is retried alone and gets its own outcome (message_ids are
//!   fixed before queueing, so a retry after a commit whose answer was lost
//!   stores nothing twice).

use crate::outbox::{NewMessage, Outbox, StoreError};
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

/// Most messages one transaction takes (a single call's batch may exceed it;
/// it is then a group of its own).
pub const MAX_GROUP: usize = 500;
/// Calls that may wait for a writer before callers wait to queue.
const QUEUE: usize = 4096;

/// One call's messages and where its answer goes.
struct Pending {
    messages: Vec<NewMessage>,
    answer: oneshot::Sender<Result<(), StoreError>>,
}

/// The queue in front of the writers; cheap to share.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts `writers` writer tasks; they end once every handle is dropped
    /// and the queue is empty.
    pub fn start(outbox: Outbox, writers: usize) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_groups(outbox.clone(), receiver.clone()));
        }
        Self { queue }
    }

    /// Stores `messages` in one transaction (shared with other calls);
    /// returns once it committed.
    pub async fn store(&self, messages: Vec<NewMessage>) -> Result<(), StoreError> {
        let (answer, answered) = oneshot::channel();
        let pending = Pending { messages, answer };
        self.queue
            .send(pending)
            .await
            .map_err(|_| StoreError::Closed)?;
        answered.await.map_err(|_| StoreError::Closed)?
    }
}

/// One writer: takes a group, commits it, answers it, until the queue closes.
async fn write_groups(outbox: Outbox, receiver: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        let group = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut size = first.messages.len();
            let mut group = vec![first];
            while size < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(next) => {
                        size += next.messages.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            group
        };
        commit_group(&outbox, group).await;
    }
}

async fn commit_group(outbox: &Outbox, group: Vec<Pending>) {
    let all: Vec<&NewMessage> = group.iter().flat_map(|p| &p.messages).collect();
    match outbox.insert_all(&all).await {
        Ok(()) => {
            for pending in group {
                let _ = pending.answer.send(Ok(()));
            }
        }
        Err(e) if group.len() == 1 => {
            let pending = group.into_iter().next().expect("one call");
            let _ = pending.answer.send(Err(e));
        }
        Err(e) => {
            tracing::debug!(error = %e, calls = group.len(), "group commit failed; storing its calls one by one");
            for pending in group {
                let messages: Vec<&NewMessage> = pending.messages.iter().collect();
                let _ = pending.answer.send(outbox.insert_all(&messages).await);
            }
        }
    }
}
