//! The scenarios: the lapin baseline (the broker's ceiling), drains by the
//! real `outbox-relay run` binary, scale-out, steady-rate latency and the
//! wake-up trigger's cost to producers.

use crate::procfs;
use crate::statements::{self, Statement};
use crate::support::{BenchQueue, ProcessCost, RelayProcess, Schema, pg};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

pub const DRAIN_DEADLINE: Duration = Duration::from_secs(600);

/// How long a drain of `rows` may take: [`DRAIN_DEADLINE`], or 1,000 rows a
/// second for larger backlogs.
pub fn drain_deadline(rows: usize) -> Duration {
    DRAIN_DEADLINE.max(Duration::from_secs(rows as u64 / 1_000))
}

/// Plain lapin: `n` persistent, mandatory messages with confirms, keeping
/// `window` publishes in flight on one channel. Returns msgs/s.
pub async fn lapin_publish(
    conn: &Connection,
    queue: &str,
    n: usize,
    payload: usize,
    window: usize,
) -> f64 {
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = vec![b'x'; payload];
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for i in 0..n {
        if in_flight.len() >= window {
            check(in_flight.next().await.unwrap());
        }
        let properties = relay_like_properties(i as i64);
        let confirm = channel
            .basic_publish("".into(), queue.into(), options, &body, properties)
            .await
            .unwrap();
        in_flight.push(confirm);
    }
    while let Some(c) = in_flight.next().await {
        check(c);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = channel.close(200, "done".into()).await;
    rate
}

/// Consumes and drops everything that arrives on `queue` (no acks), until
/// the channel closes.
pub async fn discard(channel: lapin::Channel, queue: String) {
    let Ok(mut consumer) = channel
        .basic_consume(
            queue.as_str().into(),
            "bench-discard".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    while let Some(Ok(_)) = consumer.next().await {}
}

/// The properties the relay sends for a row of [`Schema::fill`]: the
/// baseline must carry the same per-message work for the broker (a header
/// table, a UUID message_id, a timestamp), or the ceiling is not comparable.
fn relay_like_properties(seq: i64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("seq".into(), lapin::types::AMQPValue::LongLongInt(seq));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(uuid::Uuid::new_v4().to_string().into())
        .with_timestamp(now)
        .with_content_type("application/octet-stream".into())
        .with_headers(headers)
}

fn check(confirmation: lapin::Result<Confirmation>) {
    match confirmation {
        Ok(Confirmation::Ack(None)) => {}
        other => panic!("baseline publish not acked: {other:?}"),
    }
}

/// The in-flight window that publishes fastest, tried on a sample.
pub async fn best_window(conn: &Connection, queue: &BenchQueue, n: usize, payload: usize) -> usize {
    let channel = conn.create_channel().await.unwrap();
    let sample = (n / 5).clamp(5_000, 40_000);
    let mut best = (0.0, 0);
    for window in [256, 1024, 4096] {
        let rate = lapin_publish(conn, &queue.name, sample, payload, window).await;
        queue.purge(&channel).await;
        if rate > best.0 {
            best = (rate, window);
        }
    }
    best.1
}

/// The baseline: `n` messages with `window` in flight, then the queue is
/// emptied again. Run right before the drain it is compared with, so both
/// meet the broker in the same state. Gives the rate and how busy each CPU
/// was meanwhile.
pub async fn baseline(
    conn: &Connection,
    queue: &BenchQueue,
    n: usize,
    payload: usize,
    window: usize,
) -> (f64, Vec<(f64, f64)>) {
    let before = procfs::cpu_ticks();
    let rate = lapin_publish(conn, &queue.name, n, payload, window).await;
    let busy = procfs::cpu_busy(&before, &procfs::cpu_ticks());
    queue.purge(&conn.create_channel().await.unwrap()).await;
    (rate, busy)
}

/// What one drain measured.
#[derive(Debug, Clone)]
pub struct Drain {
    pub rate: f64,
    /// How long filling the table took (the insert, VACUUM ANALYZE, CHECKPOINT).
    pub fill: Duration,
    /// The first relay's CPU and memory.
    pub cost: ProcessCost,
    /// CPU of every PostgreSQL process from the relays' start until no row
    /// was pending (the backends, and autovacuum, checkpointer and WAL
    /// writer; also this benchmark's own polling, and any other client).
    pub pg_cpu: Duration,
    /// CPU of the relays' own backends over the drain (they connect as the
    /// relays start): the part of `pg_cpu` that no other client adds to.
    pub relay_backends_cpu: Duration,
    /// The statements on the drain's table over the same span (without
    /// pg_stat_statements: none).
    pub statements: Option<Vec<Statement>>,
    pub dead_tuples: i64,
    /// How busy each CPU was over the drain and how long it waited on the
    /// disk, 0 to 1 each (pinned: CPU 0 is the broker's, the others
    /// everything else's).
    pub cpu_busy: Vec<(f64, f64)>,
}

/// How many rows a drain has, and how many of them are poison.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    pub rows: usize,
    pub payload: usize,
    pub poison_every: Option<usize>,
    /// Ordering keys the rows are spread over, at random (0: no key).
    pub keys: usize,
    /// Extra rows far above the batch budget: (count, MiB) pairs.
    pub large: &'static [(usize, usize)],
}

impl Backlog {
    fn good(&self) -> usize {
        self.rows - self.poison_every.map_or(0, |every| self.rows / every)
    }
}

/// `relays` relay processes drain the backlog; good msgs/s over the wall
/// time from their start until no row is pending.
pub async fn drain(
    queue: &BenchQueue,
    channel: &lapin::Channel,
    label: &str,
    backlog: Backlog,
    relays: usize,
    extra: &[&str],
) -> Drain {
    let pg = pg().await;
    let schema = Schema::create(label, false).await;
    let (n, payload) = (backlog.rows, backlog.payload);
    let filling = Instant::now();
    if backlog.keys == 0 {
        schema
            .fill(&pg, n, payload, &queue.name, backlog.poison_every)
            .await;
    } else {
        schema
            .fill_keyed(&pg, n, payload, &queue.name, backlog.keys)
            .await;
    }
    schema.fill_large(&pg, &queue.name, backlog.large).await;
    let fill = filling.elapsed();
    statements::reset(&pg).await;
    let pg_cpu_before = procfs::postgres_cpu();
    let cpu_before = procfs::cpu_ticks();
    let started = Instant::now();
    let children: Vec<RelayProcess> = (0..relays)
        .map(|_| RelayProcess::spawn(&schema, extra))
        .collect();
    schema.wait_drained(&pg, drain_deadline(n)).await;
    let rate = backlog.good() as f64 / started.elapsed().as_secs_f64();
    let cpu_busy = procfs::cpu_busy(&cpu_before, &procfs::cpu_ticks());
    let pg_cpu = procfs::postgres_cpu().saturating_sub(pg_cpu_before);
    let cost = children[0].cost();
    let relay_backends_cpu = schema.relay_backends_cpu(&pg).await;
    let statements = statements::top(&pg, &schema.name, 8).await;
    for child in children {
        child.stop();
    }
    let dead_tuples = schema.dead_tuples(&pg).await;
    schema.drop_schema(&pg).await;
    queue.purge(channel).await;
    Drain {
        rate,
        fill,
        cost,
        pg_cpu,
        relay_backends_cpu,
        statements,
        dead_tuples,
        cpu_busy,
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: *samples.last().unwrap(),
        }
    }
}

/// What one steady-rate run measured.
#[derive(Debug, Clone, Copy)]
pub struct Steady {
    pub achieved: f64,
    /// Relay + its PostgreSQL backends' CPU per message, µs.
    pub cpu_per_message: f64,
    pub to_ack: Latency,
    pub to_consumer: Latency,
    pub dead_tuples: i64,
}

pub fn epoch_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e3
}

/// Producers commit single-row transactions at `rate` for `secs`; a consumer
/// records arrivals. Latency from each commit's return to the relay's mark
/// after the broker's ack (`sent_at`) and to the consumer's receipt.
pub async fn steady(
    conn: &Connection,
    queue: &BenchQueue,
    rate: u32,
    secs: f64,
    trigger: bool,
    payload: usize,
) -> Steady {
    let pg = pg().await;
    let schema = Schema::create(&format!("steady_{rate}_{trigger}"), trigger).await;
    let relay = RelayProcess::spawn(&schema, &[]);
    let received: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let consumer = tokio::spawn(consume_into(
        conn.create_channel().await.unwrap(),
        queue.name.clone(),
        received.clone(),
    ));
    // Steady state: timing starts once one row has gone through. A relay
    // that has found nothing since it started waits up to --poll-interval
    // for its first rows (with the trigger off), as after any quiet spell.
    let warmup = uuid::Uuid::new_v4().to_string();
    pg.execute(
        &format!(
            "INSERT INTO {} (message_id, routing_key, payload) VALUES ($1, $2, 'warmup')",
            schema.table()
        ),
        &[&warmup, &queue.name],
    )
    .await
    .unwrap();
    until_received(&received, |got| got.contains_key(&warmup)).await;

    let producers = (rate / 250).clamp(1, 16);
    let per_producer = f64::from(rate) / f64::from(producers);
    let committed: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let cpu_before = relay.cost().cpu + schema.relay_backends_cpu(&pg).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            tokio::spawn(produce(
                schema.table(),
                queue.name.clone(),
                per_producer,
                secs,
                payload,
                committed.clone(),
            ))
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let achieved = committed.lock().await.len() as f64 / started.elapsed().as_secs_f64();
    schema.wait_drained(&pg, DRAIN_DEADLINE).await;
    let cpu = (relay.cost().cpu + schema.relay_backends_cpu(&pg).await).saturating_sub(cpu_before);
    let expected = committed.lock().await.len();
    until_received(&received, |got| got.len() >= expected).await;
    consumer.abort();
    relay.stop();

    let sent: HashMap<String, f64> = pg
        .query(
            &format!(
                "SELECT message_id::text, extract(epoch FROM sent_at)::float8 * 1000 FROM {}",
                schema.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let committed = committed.lock().await;
    let received = received.lock().await;
    let since_commit = |times: &HashMap<String, f64>| {
        committed
            .iter()
            .filter_map(|(id, at)| times.get(id).map(|t| (t - at).max(0.0)))
            .collect::<Vec<_>>()
    };
    let result = Steady {
        achieved,
        cpu_per_message: cpu.as_secs_f64() * 1e6 / expected.max(1) as f64,
        to_ack: Latency::of(since_commit(&sent)),
        to_consumer: Latency::of(since_commit(&received)),
        dead_tuples: schema.dead_tuples(&pg).await,
    };
    schema.drop_schema(&pg).await;
    result
}

/// Waits until what the consumer received satisfies `done`, for 30 s at most.
async fn until_received(
    received: &Mutex<HashMap<String, f64>>,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&*received.lock().await) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn produce(
    table: String,
    queue: String,
    rate: f64,
    secs: f64,
    payload: usize,
    committed: Arc<Mutex<HashMap<String, f64>>>,
) {
    let pg = pg().await;
    let insert = pg
        .prepare(&format!(
            "INSERT INTO {table} (message_id, routing_key, payload) VALUES ($1, $2, convert_to(repeat('x', $3), 'UTF8'))"
        ))
        .await
        .unwrap();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        ticks.tick().await;
        // message_id is text (migration 0004): bound as a string.
        let id = uuid::Uuid::new_v4().to_string();
        pg.execute(&insert, &[&id, &queue, &(payload as i32)])
            .await
            .unwrap();
        let at = epoch_ms(SystemTime::now());
        committed.lock().await.insert(id, at);
    }
}

pub async fn consume_into(
    channel: lapin::Channel,
    queue: String,
    received: Arc<Mutex<HashMap<String, f64>>>,
) {
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    while let Some(Ok(delivery)) = consumer.next().await {
        let at = epoch_ms(SystemTime::now());
        if let Some(id) = delivery.properties.message_id() {
            received.lock().await.insert(id.to_string(), at);
        }
    }
}

/// The application's single-row insert throughput (8 connections, as fast as
/// they go, for `secs`) while a relay drains, with the trigger on or off.
pub async fn producer_rate(queue: &BenchQueue, secs: f64, trigger: bool, payload: usize) -> f64 {
    let watcher = pg().await;
    let schema = Schema::create(&format!("producer_{trigger}"), trigger).await;
    let relay = RelayProcess::spawn(&schema, &[]);
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (table, queue, count) = (schema.table(), queue.name.clone(), count.clone());
            tokio::spawn(async move {
                let pg = pg().await;
                let sql = format!("INSERT INTO {table} (routing_key, payload) VALUES ($1, convert_to(repeat('x', $2), 'UTF8'))");
                let insert = pg.prepare(&sql).await.unwrap();
                let end = Instant::now() + Duration::from_secs_f64(secs);
                while Instant::now() < end {
                    pg.execute(&insert, &[&queue, &(payload as i32)]).await.unwrap();
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate =
        count.load(std::sync::atomic::Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    schema.wait_drained(&watcher, DRAIN_DEADLINE).await;
    relay.stop();
    schema.drop_schema(&watcher).await;
    rate
}
