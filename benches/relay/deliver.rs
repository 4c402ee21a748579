//! The `deliver` group: the receiving side (`outbox-relay run
//! --worker-addr`) emptying a durable queue into a worker application,
//! against the ceiling of a plain lapin consumer acking the same queue.
//!
//! The queue is the one the relay declares for a unicast worker (its
//! `worker_name`, durable, no arguments; the relay adds `.retry` and
//! `.dead`), filled with `--deliver-messages` persistent messages naming
//! `test.v1.BillingCommands/Charge` (the test protos, with only that
//! service and its worker renamed: `tests/common/descriptors.rs`). The
//! ceiling consumes it with the same prefetch and acks each message; then
//! it is filled again and the relay, the release binary as in the other
//! scenarios, delivers it to [`BenchWorker`], which answers at once. Both
//! rates are timed from the first message taken to the last one settled
//! (the ceiling's last ack; the worker's last call), without start-up.

use crate::Options;
use crate::procfs;
use crate::report::{Report, Row};
use crate::scenarios::{DRAIN_DEADLINE, Latency};
use crate::support::{RelayProcess, Schema, pg};
use crate::worker::BenchWorker;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Publishes in flight while filling the queue.
const FILL_WINDOW: usize = 1024;
/// The relay's histogram of worker calls (`/metrics`).
const CALL_HISTOGRAM: &str = "outbox_relay_delivery_call_duration_seconds_bucket";
const DELIVERED_OK: &str = "outbox_relay_deliveries_total{outcome=\"ok\"}";

/// Ceiling, relay, ratio, latency and CPU rows.
pub async fn run(report: &mut Report, conn: &Connection, opts: &Options) {
    let (n, prefetch) = (opts.deliver_messages, opts.deliver_prefetch);
    let queue = format!("bench_deliver_{}", std::process::id());
    let channel = conn.create_channel().await.unwrap();
    declare(&channel, &queue).await;
    report.note(format!(
        "deliver: unpinned, {n} messages of {} B, prefetch {prefetch}; the tonic worker runs in the benchmark process",
        opts.payload
    ));

    fill(conn, &queue, n, opts.payload).await;
    let beam = broker_cpu();
    let ceiling = ceiling(conn, &queue, n, prefetch).await;
    let ceiling_beam = broker_cpu().saturating_sub(beam);

    fill(conn, &queue, n, opts.payload).await;
    let relay = relay(&queue, n, prefetch).await;

    let kind = "classic";
    let per_message = |t: Duration| t.as_secs_f64() * 1e6 / n as f64;
    report.add(
        Row::new(
            "deliver",
            kind,
            format!("ceiling: lapin consumer, prefetch {prefetch}, ack each"),
        )
        .rate(ceiling),
    );
    report.add(
        Row::new(
            "deliver",
            kind,
            format!("outbox-relay run --worker-addr, tonic worker answering Empty, prefetch {prefetch}"),
        )
        .rate(relay.rate)
        .ratio(relay.rate / ceiling, 0.8)
        .latency_one(
            "worker call as the relay sees it (its delivery_call_duration_seconds, interpolated in ×2 buckets)",
            relay.call,
        ),
    );
    let row = |what: &str| Row::new("deliver", kind, what.to_owned());
    report.add(
        row("relay CPU per delivered message (whole run, with start-up)")
            .measure(per_message(relay.relay_cpu), "µs"),
    );
    report.add(
        row("benchmark process CPU per message in the relay run (the tonic worker, polling)")
            .measure(per_message(relay.bench_cpu), "µs"),
    );
    report.add(row("RabbitMQ CPU per message, ceiling").measure(per_message(ceiling_beam), "µs"));
    report.add(row("RabbitMQ CPU per message, relay").measure(per_message(relay.broker_cpu), "µs"));
    for name in [
        queue.clone(),
        format!("{queue}.retry"),
        format!("{queue}.dead"),
    ] {
        let _ = channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel.close(200, "done".into()).await;
}

/// Declares `queue` as the relay does: durable, no arguments.
async fn declare(channel: &Channel, queue: &str) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .expect("declare the deliver queue");
}

/// Puts `n` persistent messages for BillingCommands/Charge in `queue`, with
/// confirms; each a `ChargeCommand` whose order_id fills `payload` bytes.
async fn fill(conn: &Connection, queue: &str, n: usize, payload: usize) {
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("grpc-service", "test.v1.BillingCommands"),
        ("grpc-method", "Charge"),
    ] {
        headers.insert(
            ShortString::from(k),
            AMQPValue::LongString(v.as_bytes().to_vec().into()),
        );
    }
    let order = payload.saturating_sub(3).max(1);
    let mut body = vec![0x0a];
    prost::encoding::encode_varint(order as u64, &mut body);
    body.resize(body.len() + order, b'x');
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..n {
        if in_flight.len() >= FILL_WINDOW {
            confirmed(in_flight.next().await.unwrap());
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_headers(headers.clone());
        let confirm = channel
            .basic_publish("".into(), queue.into(), options, &body, properties)
            .await
            .unwrap();
        in_flight.push(confirm);
    }
    while let Some(c) = in_flight.next().await {
        confirmed(c);
    }
    let _ = channel.close(200, "filled".into()).await;
}

fn confirmed(confirmation: lapin::Result<Confirmation>) {
    match confirmation {
        Ok(Confirmation::Ack(None)) => {}
        other => panic!("filling the deliver queue: not confirmed: {other:?}"),
    }
}

/// A plain consumer with `prefetch` acking each of `n` messages; msgs/s
/// from the first delivery to the last ack.
async fn ceiling(conn: &Connection, queue: &str, n: usize, prefetch: u16) -> f64 {
    let channel = conn.create_channel().await.unwrap();
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bench-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut first = None;
    for _ in 0..n {
        let delivery = tokio::time::timeout(DRAIN_DEADLINE, consumer.next())
            .await
            .expect("the ceiling consumer stalled")
            .expect("the consumer ended")
            .expect("a delivery");
        first.get_or_insert_with(Instant::now);
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let took = first.map_or(Duration::ZERO, |t| t.elapsed());
    let _ = channel
        .basic_cancel("bench-ceiling".into(), BasicCancelOptions::default())
        .await;
    let _ = channel.close(200, "done".into()).await;
    n as f64 / took.as_secs_f64()
}

/// What the relay's run measured.
struct RelayRun {
    rate: f64,
    call: Latency,
    relay_cpu: Duration,
    bench_cpu: Duration,
    broker_cpu: Duration,
}

/// The relay delivers the `n` queued messages to a [`BenchWorker`].
async fn relay(queue: &str, n: usize, prefetch: u16) -> RelayRun {
    let pg = pg().await;
    let schema = Schema::create("deliver", false).await;
    let set = std::env::temp_dir().join(format!("{queue}.bin"));
    std::fs::write(&set, crate::descriptors::billing_only_set(queue)).unwrap();
    let worker = BenchWorker::start(n).await;
    let http = free_local_addr();
    let (url, prefetch) = (worker.url(), prefetch.to_string());
    let flags = [
        "--worker-addr",
        url.as_str(),
        "--worker-descriptor-set",
        set.to_str().unwrap(),
        "--worker-prefetch",
        prefetch.as_str(),
        "--http-addr",
        http.as_str(),
    ];
    let (bench, beam) = (own_cpu(), broker_cpu());
    let child = RelayProcess::spawn(&schema, &flags);
    let deadline = Instant::now() + DRAIN_DEADLINE;
    let span = loop {
        if let Some(span) = worker.calls.span() {
            break span;
        }
        assert!(
            Instant::now() < deadline,
            "the relay delivered {} of {n} within {DRAIN_DEADLINE:?}",
            worker.calls.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Every call answered; wait for the acks (the OK count) before reading.
    let metrics = loop {
        let text = scrape(&http).await;
        if series(&text, DELIVERED_OK).unwrap_or(0.0) >= n as f64 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the relay settled fewer than {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let relay_cpu = child.cost().cpu;
    let (bench, beam) = (
        own_cpu().saturating_sub(bench),
        broker_cpu().saturating_sub(beam),
    );
    child.stop();
    assert_eq!(worker.calls.count(), n, "each message called once");
    worker.stop().await;
    let _ = std::fs::remove_file(&set);
    schema.drop_schema(&pg).await;
    RelayRun {
        rate: n as f64 / span.as_secs_f64(),
        call: histogram_latency(&metrics, CALL_HISTOGRAM),
        relay_cpu,
        bench_cpu: bench,
        broker_cpu: beam,
    }
}

fn free_local_addr() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().unwrap().to_string()
}

/// The relay's `/metrics` (empty while it is not listening yet).
async fn scrape(addr: &str) -> String {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    // HTTP/1.0: the answer is not chunked and ends with the connection.
    let request = "GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    answer
}

/// The value of one series of a Prometheus text exposition.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// Percentiles of a histogram, in ms, interpolated linearly within its
/// cumulative buckets (as `histogram_quantile` does); `max` is the upper
/// bound of the highest bucket with a sample.
fn histogram_latency(text: &str, buckets: &str) -> Latency {
    let prefix = format!("{buckets}{{le=\"");
    let mut cumulative: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let (le, count) = l.strip_prefix(&prefix)?.split_once("\"}")?;
            Some((le.parse().ok()?, count.trim().parse().ok()?))
        })
        .collect();
    cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(_, total)) = cumulative.last() else {
        return Latency::default();
    };
    let quantile = |q: f64| {
        let rank = q * total;
        let mut below = (0.0, 0.0);
        for &(le, count) in &cumulative {
            if count >= rank {
                if le.is_infinite() {
                    return below.0;
                }
                let share = (rank - below.1) / (count - below.1).max(1.0);
                return below.0 + (le - below.0) * share;
            }
            below = (le, count);
        }
        below.0
    };
    let max = cumulative
        .iter()
        .scan(0.0, |previous, &(le, count)| {
            let grew = count > *previous;
            *previous = count;
            Some((le, grew))
        })
        .filter(|&(le, grew)| grew && le.is_finite())
        .map(|(le, _)| le)
        .fold(0.0, f64::max);
    Latency {
        p50: quantile(0.50) * 1e3,
        p90: quantile(0.90) * 1e3,
        p99: quantile(0.99) * 1e3,
        max: max * 1e3,
    }
}

/// CPU of this process (every thread) so far.
fn own_cpu() -> Duration {
    let stat = procfs::Stat::of(std::process::id() as i32).expect("/proc/self");
    procfs::ticks(stat.own_ticks)
}

/// CPU of RabbitMQ's Erlang VM so far.
fn broker_cpu() -> Duration {
    procfs::ticks(
        procfs::processes()
            .iter()
            .filter(|p| p.comm == "beam.smp")
            .map(|p| p.own_ticks)
            .sum(),
    )
}
