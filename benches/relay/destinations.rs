//! The destinations group (`--only destinations`): for NATS JetStream and
//! Redis Streams, a drain of `--destination-messages` rows (100,000 of
//! 256 B by default) through `outbox-relay run` against a plain client of
//! the same destination in the same run, each writing the same messages
//! (payload, content type, a `seq` header, a UUID message id) with the
//! relay's window in flight: the relay's default workers × two batches ×
//! its batch size. NATS: async-nats publishing to a file-backed stream and
//! awaiting the acks as they come, `window` outstanding. Redis: `XADD`
//! pipelined in batches of the relay's batch size, as many pipelines in
//! flight as the relay has batches. Rows: the rates, the ratio (target
//! ≥ 0.9), the relay's CPU per message, and the server's per message in
//! each run (what the relay adds to it: the message id, headers as JSON).
//!
//! Needs nats-server with JetStream on 4222 and redis-server on 6379
//! (`deploy/local/services.sh`); the streams are this run's own and are
//! deleted afterwards.

use crate::procfs;
use crate::report::{Report, Row};
use crate::support::{RelayProcess, Schema, pg};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::time::{Duration, Instant};

const NATS_URL: &str = "nats://127.0.0.1:4222";
const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// The relay's defaults (`--batch-size`, `--concurrency`) and its two
/// batches in flight per worker.
const BATCH: usize = 500;
const WORKERS: usize = 4;
const WINDOW: usize = BATCH * WORKERS * 2;

/// One side's run: its rate and what it cost.
#[derive(Default)]
struct Run {
    rate: f64,
    /// The relay's CPU (none for the plain client).
    relay_cpu: Option<Duration>,
    /// The CPU of the relay's PostgreSQL backends (none for the plain client).
    pg_cpu: Option<Duration>,
    /// This process's CPU: the plain client's (none for the relay's drain).
    client_cpu: Option<Duration>,
    /// The destination server's CPU over the run.
    server_cpu: Duration,
    /// How busy each CPU was over the run.
    busy: Vec<(f64, f64)>,
}

pub async fn run(report: &mut Report, n: usize, payload: usize) {
    report.note(format!(
        "destinations: {n} messages of {payload} B, window {WINDOW} (relay defaults: \
         {WORKERS} workers × 2 batches × {BATCH}), unpinned"
    ));
    let base = nats_plain(n, payload).await;
    let relay = relay_drain("nats", NATS_URL, n, payload).await;
    rows(
        report,
        "jetstream",
        "async-nats, acks awaited as they come",
        n,
        &base,
        &relay,
    );
    let base = redis_plain(n, payload).await;
    let relay = relay_drain("redis", REDIS_URL, n, payload).await;
    rows(
        report,
        "redis",
        "redis-rs, pipelined XADD",
        n,
        &base,
        &relay,
    );
    crate::webhook::webhook_rows(report, n, payload).await;
}

fn rows(report: &mut Report, kind: &'static str, plain: &str, n: usize, base: &Run, relay: &Run) {
    let per_message = |t: Duration| t.as_secs_f64() * 1e6 / n as f64;
    let server = |run: &Run| {
        let mut parts = vec![format!("server {:.1}", per_message(run.server_cpu))];
        if let Some(client) = run.client_cpu {
            parts.push(format!("client {:.1}", per_message(client)));
        }
        if let Some(pg) = run.pg_cpu {
            parts.push(format!(
                "relay's PostgreSQL backends {:.1}",
                per_message(pg)
            ));
        }
        let busy: Vec<String> = run
            .busy
            .iter()
            .enumerate()
            .map(|(cpu, (b, _))| format!("cpu{cpu} {:.0}%", b * 100.0))
            .collect();
        format!("{} µs CPU/msg; busy {}", parts.join(", "), busy.join(", "))
    };
    report.add(
        Row::new("destinations", kind, format!("{plain}, window {WINDOW}"))
            .rate(base.rate)
            .detail(server(base)),
    );
    report.add(
        Row::new("destinations", kind, "relay drain vs plain client".into())
            .rate(relay.rate)
            .ratio(relay.rate / base.rate, 0.90)
            .detail(server(relay)),
    );
    if let Some(cpu) = relay.relay_cpu {
        report.add(
            Row::new("destinations", kind, "relay CPU per message".into())
                .measure(per_message(cpu), "µs"),
        );
    }
}

/// This process's CPU so far.
fn own_cpu() -> Duration {
    procfs::Stat::of(std::process::id() as i32)
        .map_or(Duration::ZERO, |s| procfs::ticks(s.own_ticks))
}

/// CPU of every process named `comm` (the destination's server).
fn server_cpu(comm: &str) -> Duration {
    let ticks = procfs::processes()
        .iter()
        .filter(|p| p.comm == comm)
        .map(|p| p.own_ticks)
        .sum();
    procfs::ticks(ticks)
}

fn server_comm(kind: &str) -> &'static str {
    if kind == "nats" {
        "nats-server"
    } else {
        "redis-server"
    }
}

/// The exchange (NATS subject prefix, Redis key prefix) of one run.
fn exchange(kind: &str, side: &str) -> String {
    format!("bench.{kind}_{side}_{}", std::process::id())
}

async fn jetstream_context() -> jetstream::Context {
    let client = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("nats-server with JetStream on 4222 (deploy/local/services.sh)");
    jetstream::ContextBuilder::new()
        .max_ack_inflight(WINDOW * 2)
        .build(client)
}

/// A file-backed stream taking every subject under `exchange`.
async fn nats_stream(js: &jetstream::Context, exchange: &str) -> String {
    let name = exchange.replace('.', "_");
    let _ = js.delete_stream(&name).await;
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{exchange}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create the bench stream");
    name
}

async fn nats_plain(n: usize, payload: usize) -> Run {
    let js = jetstream_context().await;
    let exchange = exchange("nats", "plain");
    let name = nats_stream(&js, &exchange).await;
    let subject = format!("{exchange}.x");
    let body = bytes::Bytes::from(vec![b'x'; payload]);
    let cpu_before = server_cpu("nats-server");
    let client_before = own_cpu();
    let ticks_before = procfs::cpu_ticks();
    let started = Instant::now();
    let mut acks: FuturesUnordered<_> = FuturesUnordered::new();
    let check = |ack: Result<jetstream::publish::PublishAck, _>| {
        let _: jetstream::publish::PublishAck = ack.expect("acked");
    };
    for seq in 0..n {
        if acks.len() >= WINDOW {
            check(acks.next().await.unwrap());
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
        headers.insert("Content-Type", "application/octet-stream");
        headers.insert("seq", seq.to_string().as_str());
        let message = jetstream::message::PublishMessage::build()
            .payload(body.clone())
            .headers(headers);
        let ack = js.send_publish(subject.clone(), message).await.unwrap();
        acks.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(ack) = acks.next().await {
        check(ack);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let server_cpu = server_cpu("nats-server").saturating_sub(cpu_before);
    let client_cpu = Some(own_cpu().saturating_sub(client_before));
    let busy = procfs::cpu_busy(&ticks_before, &procfs::cpu_ticks());
    let _ = js.delete_stream(&name).await;
    Run {
        rate,
        server_cpu,
        client_cpu,
        busy,
        ..Run::default()
    }
}

async fn redis_connection() -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("redis-server on 6379 (deploy/local/services.sh)")
}

async fn redis_plain(n: usize, payload: usize) -> Run {
    let conn = redis_connection().await;
    let key = format!("{}:x", exchange("redis", "plain"));
    let body = vec![b'x'; payload];
    let cpu_before = server_cpu("redis-server");
    let client_before = own_cpu();
    let ticks_before = procfs::cpu_ticks();
    let started = Instant::now();
    let mut pipelines = FuturesUnordered::new();
    for first in (0..n).step_by(BATCH) {
        if pipelines.len() >= WINDOW / BATCH {
            let done: redis::RedisResult<Vec<redis::Value>> = pipelines.next().await.unwrap();
            done.expect("XADD");
        }
        let mut pipe = redis::pipe();
        for seq in first..(first + BATCH).min(n) {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("payload")
                .arg(&body[..])
                .arg("message_id")
                .arg(uuid::Uuid::new_v4().to_string())
                .arg("headers")
                .arg(format!("{{\"seq\":\"{seq}\"}}"))
                .arg("content_type")
                .arg("application/octet-stream");
        }
        let mut conn = conn.clone();
        pipelines.push(async move { pipe.query_async(&mut conn).await });
    }
    while let Some(done) = pipelines.next().await {
        done.expect("XADD");
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let server_cpu = server_cpu("redis-server").saturating_sub(cpu_before);
    let client_cpu = Some(own_cpu().saturating_sub(client_before));
    let busy = procfs::cpu_busy(&ticks_before, &procfs::cpu_ticks());
    delete_key(&key).await;
    Run {
        rate,
        server_cpu,
        client_cpu,
        busy,
        ..Run::default()
    }
}

async fn delete_key(key: &str) {
    let mut conn = redis_connection().await;
    let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
}

/// `n` rows for `exchange`, as [`Schema::fill`] makes them for the broker.
async fn fill(
    schema: &Schema,
    pg: &tokio_postgres::Client,
    exchange: &str,
    n: usize,
    payload: usize,
) {
    let sql = format!(
        "INSERT INTO {} (exchange, routing_key, payload, content_type, headers)
         SELECT $1, 'x', convert_to(repeat('x', $2), 'UTF8'), 'application/octet-stream',
                jsonb_build_object('seq', g)
         FROM generate_series(1, $3) g",
        schema.table()
    );
    pg.execute(&sql, &[&exchange, &(payload as i32), &(n as i32)])
        .await
        .expect("fill the outbox");
    pg.batch_execute(&format!("VACUUM ANALYZE {}", schema.table()))
        .await
        .unwrap();
    pg.batch_execute("CHECKPOINT").await.unwrap();
}

/// The relay draining `n` rows routed to destination `kind` at `url`.
async fn relay_drain(kind: &str, url: &str, n: usize, payload: usize) -> Run {
    let pg = pg().await;
    let exchange = exchange(kind, "relay");
    let stream = if kind == "nats" {
        let js = jetstream_context().await;
        let name = nats_stream(&js, &exchange).await;
        Some((js, name))
    } else {
        None
    };
    let schema = Schema::create(&format!("dest_{kind}"), false).await;
    fill(&schema, &pg, &exchange, n, payload).await;
    let destination = format!("bus={url}");
    let route = format!("{exchange}=bus");
    let extra = [
        "--destination",
        destination.as_str(),
        "--route",
        route.as_str(),
    ];
    let comm = server_comm(kind);
    let cpu_before = server_cpu(comm);
    let ticks_before = procfs::cpu_ticks();
    let started = Instant::now();
    let relay = RelayProcess::spawn(&schema, &extra);
    schema
        .wait_drained(&pg, crate::scenarios::drain_deadline(n))
        .await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let server_cpu = server_cpu(comm).saturating_sub(cpu_before);
    // The relay's own backends (connected as it started): the rest of
    // PostgreSQL's CPU may be other clients'.
    let pg_cpu = schema.relay_backends_cpu(&pg).await;
    let busy = procfs::cpu_busy(&ticks_before, &procfs::cpu_ticks());
    let relay_cpu = relay.cost().cpu;
    relay.stop();
    let dead = pg
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE dead_at IS NOT NULL",
                schema.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(dead, 0, "{kind}: no row dead-lettered in the drain");
    schema.drop_schema(&pg).await;
    let key = format!("{exchange}:x");
    let arrived = match &stream {
        Some((js, name)) => {
            let mut stream = js.get_stream(name).await.expect("the bench stream");
            let messages = stream.info().await.expect("stream info").state.messages;
            let _ = js.delete_stream(name).await;
            messages
        }
        None => {
            let mut conn = redis_connection().await;
            let len: u64 = redis::cmd("XLEN")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            delete_key(&key).await;
            len
        }
    };
    assert!(
        arrived >= n as u64,
        "{kind}: {arrived} of {n} messages arrived"
    );
    Run {
        rate,
        relay_cpu: Some(relay_cpu),
        pg_cpu: Some(pg_cpu),
        server_cpu,
        busy,
        ..Run::default()
    }
}
