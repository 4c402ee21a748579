//! The relay's benchmark: `cargo bench --bench relay [-- --quick]`.
//!
//! Every figure is set against a baseline measured in the same run: plain
//! lapin publishing with confirms to the same kind of queue, which is the
//! ceiling any relay works under (for the `deliver` group, the receiving
//! side: a plain lapin consumer acking the queue the relay delivers from).
//! Needs the local services
//! (`deploy/local/services.sh`). Prints a table and one JSON line per
//! scenario, and writes the table as Markdown to `target/bench/relay.md`.

mod affinity;
mod api;
mod deliver;
#[allow(dead_code)] // shared with the tests, which use more of it
#[path = "../../tests/common/descriptors.rs"]
mod descriptors;
mod destinations;
mod drains;
mod ingress;
mod ordered;
mod procfs;
mod report;
mod scenarios;
mod statements;
mod support;
mod webhook;
mod worker;

use affinity::{PinMode, Pinner};
use clap::{Parser, ValueEnum};
use report::{Report, Row};
use std::time::Duration;
use support::{BenchQueue, QueueKind};

/// Benchmark of `outbox-relay run` against plain lapin on the same broker.
#[derive(Debug, Parser)]
struct Options {
    /// Rows per drain (and messages per baseline).
    #[arg(long, default_value = "200000")]
    messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value = "256")]
    payload: usize,
    /// Queue kinds to measure drains on (repeatable).
    #[arg(long = "queue", value_enum, default_values = ["classic", "quorum"])]
    queues: Vec<QueueKind>,
    /// Seconds each steady-rate run produces for.
    #[arg(long, default_value = "10")]
    steady_secs: f64,
    /// Seconds each producer-impact run inserts for.
    #[arg(long, default_value = "5")]
    producer_secs: f64,
    /// Scenario groups to run (repeatable): drain (baseline, drains, cost,
    /// scale-out; and large-backlog unless --quick), large-backlog (1M rows
    /// vs 100k, full size even with --quick), steady, producer, ingress
    /// (gRPC Publish vs direct inserts), deliver (the receiving side: the
    /// relay delivering a queue to a gRPC worker vs a plain consumer),
    /// destinations (NATS JetStream and Redis Streams drains vs their plain
    /// clients; not in the default set).
    #[arg(long = "only", value_enum, default_values = ["drain", "steady", "producer", "ingress", "deliver"])]
    only: Vec<Group>,
    /// Pin RabbitMQ to CPU 0 and PostgreSQL, this process and the relays to
    /// the other CPUs for the baseline and drain rows, which are then
    /// measured both pinned and not: as if the broker had its own machine.
    /// Every mask is restored afterwards.
    #[arg(long, value_enum, default_value = "on")]
    pin: PinMode,
    /// Panics once pinned, for checking that the masks are restored.
    #[arg(long, hide = true)]
    panic_while_pinned: bool,
    /// Also drain over TLS to both services (verify-full, amqps; the test PKI
    /// of deploy/local/tls.sh) against the same drain in plaintext.
    #[arg(long)]
    tls: bool,
    /// A short run for checking the harness: 20,000 messages, 3 s steady runs.
    #[arg(long)]
    quick: bool,
    /// Where the Markdown table goes.
    #[arg(long, default_value = "target/bench/relay.md")]
    out: std::path::PathBuf,
    /// Messages queued for the `deliver` group (for the ceiling, and again
    /// for the relay).
    #[arg(long, default_value = "50000")]
    deliver_messages: usize,
    /// Prefetch of the `deliver` group: the ceiling consumer's and the
    /// relay's `--worker-prefetch` (whose default is 32).
    #[arg(long, default_value = "32", value_parser = clap::value_parser!(u16).range(1..))]
    deliver_prefetch: u16,
    /// Rows per drain of the `destinations` group (and messages per plain
    /// client run).
    #[arg(long, default_value = "100000")]
    destination_messages: usize,
    /// Rows of the `api` group's table.
    #[arg(long, default_value = "10000000")]
    api_rows: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    Drain,
    LargeBacklog,
    /// The HTTP API on a table of --api-rows rows (not in the default set).
    Api,
    Steady,
    /// The idle relay's cost alone (also measured by `steady`).
    Idle,
    Producer,
    Ingress,
    /// The receiving side: `run --worker-addr` delivering a queue to a tonic
    /// worker, against a plain lapin consumer of the same queue.
    Deliver,
    /// Rows over 1, 100 and 10,000 ordering keys vs the unordered drain (not
    /// in the default set).
    Ordered,
    /// NATS JetStream, Redis Streams and HTTP webhooks: the relay's drain
    /// against a plain client of each (not in the default set).
    Destinations,
}

#[tokio::main]
async fn main() {
    let mut opts = Options::parse();
    if opts.quick {
        opts.messages = opts.messages.min(20_000);
        opts.steady_secs = opts.steady_secs.min(3.0);
        opts.producer_secs = opts.producer_secs.min(2.0);
        opts.deliver_messages = opts.deliver_messages.min(20_000);
        opts.destination_messages = opts.destination_messages.min(20_000);
    }
    let mut report = Report::new(&opts_line(&opts)).await;
    let pinner = match Pinner::new(opts.pin) {
        Ok(pinner) => {
            report.note(pinner.describe());
            Some(pinner)
        }
        Err(why) => {
            report.note(format!("unpinned: {why}"));
            None
        }
    };
    let pg = support::pg().await;
    support::drop_stale_schemas(&pg).await;
    if let Err(why) = statements::prepare(&pg).await {
        report.note(why);
    }
    drop(pg);
    let conn = support::amqp().await;
    let channel = conn.create_channel().await.unwrap();
    let drain = opts.only.contains(&Group::Drain);
    for (i, kind) in opts.queues.iter().enumerate() {
        let backlog =
            i == 0 && (opts.only.contains(&Group::LargeBacklog) || (drain && !opts.quick));
        if !(drain || backlog) {
            continue;
        }
        let queue = BenchQueue::declare(&channel, *kind).await;
        if drain {
            let p = pinner.as_ref();
            drains::run(&mut report, &conn, &channel, &queue, &opts, p, i == 0).await;
        }
        if backlog {
            let p = pinner.as_ref();
            drains::large_backlog(&mut report, &conn, &channel, &queue, opts.payload, p).await;
        }
        queue.delete(&channel).await;
    }
    let queue = BenchQueue::declare(&channel, QueueKind::Classic).await;
    if opts.only.contains(&Group::Steady) {
        steady(&mut report, &conn, &queue, &opts).await;
    }
    if opts.only.contains(&Group::Steady) || opts.only.contains(&Group::Idle) {
        idle(&mut report, &opts).await;
    }
    if opts.only.contains(&Group::Producer) {
        producer_impact(&mut report, &channel, &queue, &opts).await;
    }
    if opts.only.contains(&Group::Ingress) {
        ingress(&mut report, &conn, &channel, &queue, &opts).await;
    }
    if opts.only.contains(&Group::Deliver) {
        deliver::run(&mut report, &conn, &opts).await;
    }
    if opts.only.contains(&Group::Ordered) {
        ordered::run(&mut report, &channel, &queue, &opts).await;
    }
    if opts.only.contains(&Group::Destinations) {
        destinations::run(&mut report, opts.destination_messages, opts.payload).await;
    }
    if opts.only.contains(&Group::Api) {
        api::run(&mut report, opts.api_rows).await;
    }
    queue.delete(&channel).await;
    report.finish(&opts.out);
}

fn opts_line(o: &Options) -> String {
    format!(
        "messages {}, payload {} B, queues {:?}, steady {} s, deliver {} at prefetch {}, --pin {}",
        o.messages,
        o.payload,
        o.queues,
        o.steady_secs,
        o.deliver_messages,
        o.deliver_prefetch,
        o.pin
            .to_possible_value()
            .map_or("?".into(), |v| v.get_name().to_owned())
    )
}

/// Steady rates, with and without the wake-up trigger.
async fn steady(report: &mut Report, conn: &lapin::Connection, queue: &BenchQueue, opts: &Options) {
    for trigger in [true, false] {
        for rate in [100, 1_000, 5_000] {
            let s =
                scenarios::steady(conn, queue, rate, opts.steady_secs, trigger, opts.payload).await;
            let label = format!("{rate}/s, trigger {}", if trigger { "on" } else { "off" });
            let mut row = Row::new("steady", queue.kind.name(), label)
                .rate(s.achieved)
                .measure(s.cpu_per_message, "µs CPU/msg (relay + PostgreSQL)")
                .latency(s.to_ack, s.to_consumer)
                .dead_tuples(s.dead_tuples);
            if rate == 1_000 {
                // With or without the trigger: the adaptive poll looks again
                // within milliseconds while rows keep coming (issue 14).
                row = row.p99_target(15.0);
            }
            report.add(row);
        }
    }
}

/// What a relay costs while there is nothing to send (issue 14): its own
/// CPU and its PostgreSQL backends' per second of an empty table, measured
/// over the steady runs' length once the adaptive poll has backed off to
/// `--poll-interval` (an indexed existence check per worker per interval).
async fn idle(report: &mut Report, opts: &Options) {
    /// The poll backs off from 5 ms to --poll-interval (default 1 s)
    /// within this.
    const SETTLE: Duration = Duration::from_secs(3);
    let pg = support::pg().await;
    let schema = support::Schema::create("idle", false).await;
    let relay = support::RelayProcess::spawn(&schema, &[]);
    tokio::time::sleep(SETTLE).await;
    let (relay_before, pg_before) = (relay.cost().cpu, schema.relay_backends_cpu(&pg).await);
    let window = Duration::from_secs_f64(opts.steady_secs);
    tokio::time::sleep(window).await;
    let relay_cpu = relay.cost().cpu.saturating_sub(relay_before);
    let pg_cpu = schema
        .relay_backends_cpu(&pg)
        .await
        .saturating_sub(pg_before);
    relay.stop();
    schema.drop_schema(&pg).await;
    let per_second = |cpu: Duration| cpu.as_secs_f64() * 1e3 / window.as_secs_f64();
    report.add(
        Row::new(
            "idle",
            "-",
            format!(
                "relay + PostgreSQL CPU per idle second (relay {:.2}, PostgreSQL {:.2} ms/s), empty table, defaults",
                per_second(relay_cpu),
                per_second(pg_cpu)
            ),
        )
        .measure(per_second(relay_cpu + pg_cpu), "ms/s"),
    );
}

/// Insert throughput with the trigger installed vs not.
async fn producer_impact(
    report: &mut Report,
    channel: &lapin::Channel,
    queue: &BenchQueue,
    opts: &Options,
) {
    let without = scenarios::producer_rate(queue, opts.producer_secs, false, opts.payload).await;
    queue.purge(channel).await;
    let with = scenarios::producer_rate(queue, opts.producer_secs, true, opts.payload).await;
    queue.purge(channel).await;
    report.add(
        Row::new(
            "producer",
            queue.kind.name(),
            "8 inserters, trigger off".into(),
        )
        .rate(without),
    );
    report.add(
        Row::new(
            "producer",
            queue.kind.name(),
            "8 inserters, trigger on".into(),
        )
        .rate(with)
        .ratio(with / without, 0.0),
    );
}

/// The gRPC ingress (outbox mode) against 8 connections inserting straight
/// into the table, each with the relay draining: 8 callers (the same
/// concurrency: each call adds two hops to the insert) and 64 (a busy
/// application, where group commit shares transactions between calls).
async fn ingress(
    report: &mut Report,
    conn: &lapin::Connection,
    channel: &lapin::Channel,
    queue: &BenchQueue,
    opts: &Options,
) {
    let kind = queue.kind.name();
    let direct = scenarios::producer_rate(queue, opts.producer_secs, false, opts.payload).await;
    queue.purge(channel).await;
    report.add(Row::new("ingress", kind, "8 inserters, direct SQL".into()).rate(direct));
    for callers in [8, 64] {
        let via =
            ingress::publish_rate(conn, queue, opts.producer_secs, opts.payload, callers).await;
        queue.purge(channel).await;
        report.add(
            Row::new(
                "ingress",
                kind,
                format!("{callers} gRPC callers, Publish, outbox mode"),
            )
            .rate(via.rate)
            .ratio(via.rate / direct, 0.0)
            .latency_named(("call to OK", "OK to consumer"), via.call, via.to_consumer),
        );
    }
}
