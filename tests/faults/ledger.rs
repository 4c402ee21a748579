//! The bookkeeping of a fault scenario: producers that commit (and on
//! purpose roll back) rows with known message_ids, an independent consumer
//! with manual acks that survives broker restarts, and the final count of
//! lost, phantom and duplicate messages.

use crate::common::*;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Pause before the consumer reconnects to a broker that went away.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Rows per producer transaction; every `ROLLBACK_EVERY`-th one rolls back.
const ROWS_PER_TX: usize = 10;
const ROLLBACK_EVERY: usize = 7;

/// What the producers did.
#[derive(Debug, Default)]
pub struct Produced {
    pub committed: HashSet<String>,
    pub rolled_back: HashSet<String>,
}

/// Inserts `per_producer` rows from each of `producers` connections, in
/// transactions of ten; one transaction in seven rolls back. Each row carries
/// its producer and sequence number in its headers.
pub async fn produce(env: &TestEnv, producers: usize, per_producer: usize) -> Produced {
    let tasks: Vec<_> = (0..producers)
        .map(|p| tokio::spawn(produce_one(env.table(), env.queue.clone(), p, per_producer)))
        .collect();
    let mut all = Produced::default();
    for task in tasks {
        let one = task.await.expect("producer panicked");
        all.committed.extend(one.committed);
        all.rolled_back.extend(one.rolled_back);
    }
    all
}

/// One producer's rows, for callers that interleave their own inserts.
pub async fn produce_on(env: &TestEnv, producer: usize, rows: usize) -> Produced {
    produce_one(env.table(), env.queue.clone(), producer, rows).await
}

async fn produce_one(table: String, queue: String, producer: usize, rows: usize) -> Produced {
    produce_keyed(table, queue, producer, rows, 0).await
}

/// Like [`produce`], each row with one of `keys` ordering keys at random
/// (0: none), a transaction's keys in order (migration 0007: opposite
/// orders can deadlock).
pub async fn produce_ordered(
    env: &TestEnv,
    producers: usize,
    per_producer: usize,
    keys: usize,
) -> Produced {
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            tokio::spawn(produce_keyed(
                env.table(),
                env.queue.clone(),
                p,
                per_producer,
                keys,
            ))
        })
        .collect();
    let mut all = Produced::default();
    for task in tasks {
        let one = task.await.expect("producer panicked");
        all.committed.extend(one.committed);
        all.rolled_back.extend(one.rolled_back);
    }
    all
}

async fn produce_keyed(
    table: String,
    queue: String,
    producer: usize,
    rows: usize,
    keys: usize,
) -> Produced {
    let mut pg = pg_client().await;
    let sql = format!(
        "INSERT INTO {table} (message_id, routing_key, payload, headers, ordering_key)
         VALUES ($1, $2, convert_to($3, 'UTF8'), jsonb_build_object('producer', $4::int, 'seq', $5::int), $6)"
    );
    let mut out = Produced::default();
    for (tx_no, chunk) in (0..rows)
        .collect::<Vec<_>>()
        .chunks(ROWS_PER_TX)
        .enumerate()
    {
        let tx = pg.transaction().await.expect("begin");
        let mut ids = Vec::with_capacity(chunk.len());
        let mut tx_keys: Vec<Option<String>> = chunk
            .iter()
            .map(|_| (keys > 0).then(|| format!("key{}", fastrand::usize(..keys))))
            .collect();
        tx_keys.sort();
        for (&seq, key) in chunk.iter().zip(&tx_keys) {
            let id = uuid::Uuid::new_v4().to_string();
            let body = format!("p{producer}-{seq}");
            tx.execute(
                &sql,
                &[&id, &queue, &body, &(producer as i32), &(seq as i32), key],
            )
            .await
            .expect("insert");
            ids.push(id);
        }
        if tx_no % ROLLBACK_EVERY == ROLLBACK_EVERY - 1 {
            tx.rollback().await.expect("rollback");
            out.rolled_back.extend(ids);
        } else {
            tx.commit().await.expect("commit");
            out.committed.extend(ids);
        }
    }
    out
}

/// An independent consumer: manual acks, and it reconnects when the broker
/// goes away. A redelivery of a message it has already seen (an ack lost
/// with the connection) is the broker's doing, not the relay's, and is not
/// counted again.
pub struct Consumer {
    seen: Arc<Mutex<HashMap<String, usize>>>,
    /// Message ids in the order they were first seen.
    first_seen: Arc<Mutex<Vec<String>>>,
    /// Deliveries taken, duplicates and redeliveries included.
    received: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The consumer is done once no delivery came for this long (with every id
/// seen and none ready): deliveries the broker had already pushed to it (up
/// to its prefetch, unacked, so not "ready") are then processed, not handed
/// back to the queue when it stops.
const QUIET: Duration = Duration::from_secs(1);

impl Consumer {
    pub fn start(queue: &str) -> Self {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let first_seen = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn(consume_forever(
            queue.to_owned(),
            Seen(seen.clone(), first_seen.clone()),
            received.clone(),
            stop.clone(),
        ));
        Self {
            seen,
            first_seen,
            received,
            stop,
            task,
        }
    }

    /// Stops once `ids` have all arrived, the queue is empty and no delivery
    /// came for [`QUIET`], or at the deadline.
    pub async fn finish(
        self,
        queue: &str,
        ids: &HashSet<String>,
        within: Duration,
    ) -> HashMap<String, usize> {
        let seen = &self.seen;
        let received = &self.received;
        let last_change = std::sync::Mutex::new((
            received.load(Ordering::Relaxed),
            tokio::time::Instant::now(),
        ));
        wait_until(within, || async {
            let all = {
                let seen = seen.lock().await;
                ids.iter().all(|id| seen.contains_key(id))
            };
            let quiet = {
                let now = received.load(Ordering::Relaxed);
                let mut last = last_change.lock().expect("poisoned");
                if last.0 != now {
                    *last = (now, tokio::time::Instant::now());
                }
                last.1.elapsed() >= QUIET
            };
            all && quiet && queue_depth(queue).await == Some(0)
        })
        .await;
        self.stop.cancel();
        let _ = self.task.await;
        // What the consumer did not take is still in the queue, not lost:
        // count it too (a consumer session the broker dropped without a
        // word must not turn into lost messages).
        let seen = Seen(self.seen.clone(), self.first_seen.clone());
        sweep(queue, &seen, &self.received).await;
        let seen = self.seen.lock().await;
        seen.clone()
    }

    /// The ids in the order they were first seen (so far).
    pub fn first_seen(&self) -> Arc<Mutex<Vec<String>>> {
        self.first_seen.clone()
    }
}

/// What the consumer saw: counts by id, and ids in first-seen order.
#[derive(Clone)]
struct Seen(Arc<Mutex<HashMap<String, usize>>>, Arc<Mutex<Vec<String>>>);

/// Messages ready in `queue`, or None while the broker is unreachable (or
/// too busy starting to answer within [`SETUP_TIMEOUT`]).
pub async fn queue_depth(queue: &str) -> Option<u32> {
    tokio::time::timeout(SETUP_TIMEOUT, ready_in(queue))
        .await
        .ok()
        .flatten()
}

async fn ready_in(queue: &str) -> Option<u32> {
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .ok()?;
    let channel = conn.create_channel().await.ok()?;
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .ok()?;
    let _ = conn.close(200, "done".into()).await;
    Some(q.message_count())
}

/// A consumer that got nothing for this long while its queue holds ready
/// messages has been dropped by the broker.
const STALLED_CONSUMER: Duration = Duration::from_secs(2);
/// Connecting and subscribing get this long: a broker that is starting may
/// accept the TCP connection and never finish the handshake, and lapin's
/// connect has no deadline of its own.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

async fn consume_forever(
    queue: String,
    seen: Seen,
    received: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        tokio::select! {
            () = stop.cancelled() => return,
            () = consume_session(&queue, &seen, &received) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RECONNECT_PAUSE) => {}
        }
    }
}

/// Connects and subscribes to `queue`.
async fn subscribe(queue: &str) -> Option<(Connection, Channel, lapin::Consumer)> {
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .ok()?;
    let channel = conn.create_channel().await.ok()?;
    let _ = channel.basic_qos(500, BasicQosOptions::default()).await;
    let deliveries = channel
        .basic_consume(
            queue.into(),
            unique("ledger").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .ok()?;
    Some((conn, channel, deliveries))
}

/// One connection's worth of consuming; returns when the connection fails.
/// The connection is closed on the way out (also when the session is
/// cancelled), so that deliveries it held unacked go back to the queue.
async fn consume_session(queue: &str, seen: &Seen, received: &AtomicUsize) {
    let Ok(Some((conn, channel, mut deliveries))) =
        tokio::time::timeout(SETUP_TIMEOUT, subscribe(queue)).await
    else {
        return;
    };
    let guard = Closing(Some(conn));
    let conn = guard.0.as_ref().expect("set above");
    let mut last_delivery = tokio::time::Instant::now();
    loop {
        // A broker that stops does not always end the stream: check the
        // connection whenever deliveries pause. Nor does it always tell a
        // consumer it was dropped (seen after `stop_app`/`start_app`: the
        // connection looked alive, the queue held thousands of ready
        // messages and no consumer): a pause while messages wait in the
        // queue starts a new session.
        let next = tokio::time::timeout(Duration::from_millis(500), deliveries.next()).await;
        let delivery = match next {
            Ok(Some(Ok(delivery))) => delivery,
            Ok(_) => return,
            Err(_) if !conn.status().connected() || !channel.status().connected() => return,
            Err(_) if last_delivery.elapsed() >= STALLED_CONSUMER => {
                if queue_depth(queue).await.is_some_and(|ready| ready > 0) {
                    return;
                }
                continue;
            }
            Err(_) => continue,
        };
        last_delivery = tokio::time::Instant::now();
        count(seen, received, &delivery).await;
        let acked = tokio::time::timeout(SETUP_TIMEOUT, delivery.ack(BasicAckOptions::default()));
        if !matches!(acked.await, Ok(Ok(_))) {
            return;
        }
    }
}

/// Counts one delivery; a redelivery of a message already seen (its ack
/// lost with a connection) is the broker's, not a duplicate of the relay's.
async fn count(seen: &Seen, received: &AtomicUsize, delivery: &lapin::message::Delivery) {
    received.fetch_add(1, Ordering::Relaxed);
    let id = message_id(delivery);
    let mut counts = seen.0.lock().await;
    let count = counts.entry(id.clone()).or_insert(0);
    if *count == 0 {
        seen.1.lock().await.push(id);
    }
    if !(delivery.redelivered && *count > 0) {
        *count += 1;
    }
}

/// Closes its connection when dropped, without waiting for the broker's
/// answer: a session's connection must not outlive it.
struct Closing(Option<Connection>);

impl Drop for Closing {
    fn drop(&mut self) {
        // No runtime (a failed test tearing down): the socket closes with it.
        if let (Some(conn), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(SETUP_TIMEOUT, conn.close(200, "done".into())).await;
            });
        }
    }
}

/// Takes what is left in `queue` with `basic.get` on a new connection,
/// acking each, until the queue answers empty.
async fn sweep(queue: &str, seen: &Seen, received: &AtomicUsize) {
    let Ok(Ok(conn)) = tokio::time::timeout(
        SETUP_TIMEOUT,
        Connection::connect(AMQP_URL, ConnectionProperties::default()),
    )
    .await
    else {
        return;
    };
    if let Ok(channel) = conn.create_channel().await {
        while let Ok(Ok(Some(got))) = tokio::time::timeout(
            SETUP_TIMEOUT,
            channel.basic_get(queue.into(), lapin::options::BasicGetOptions::default()),
        )
        .await
        {
            count(seen, received, &got.delivery).await;
            if got.delivery.ack(BasicAckOptions::default()).await.is_err() {
                break;
            }
        }
    }
    let _ = tokio::time::timeout(SETUP_TIMEOUT, conn.close(200, "done".into())).await;
}

/// The verdict of one scenario.
#[derive(Debug, Clone)]
pub struct Tally {
    pub messages: usize,
    pub lost: usize,
    pub phantom: usize,
    pub duplicates: usize,
}

impl Tally {
    pub fn of(produced: &Produced, seen: &HashMap<String, usize>) -> Self {
        Self {
            messages: produced.committed.len(),
            lost: produced
                .committed
                .iter()
                .filter(|id| !seen.contains_key(*id))
                .count(),
            phantom: seen
                .keys()
                .filter(|id| !produced.committed.contains(*id))
                .count(),
            duplicates: seen.values().map(|n| n.saturating_sub(1)).sum(),
        }
    }
}
