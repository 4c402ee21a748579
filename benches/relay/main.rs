//! The relay's benchmark: `cargo bench --bench relay [-- --quick]`.
//!
//! Every figure is set against a baseline measured in the same run: plain
//! lapin publishing with confirms to the same kind of queue, which is the
//! ceiling any relay works under. Needs the local services
//! (`deploy/local/services.sh`). Prints a table and one JSON line per
//! scenario, and writes the table as Markdown to `target/bench/relay.md`.

mod ingress;
mod report;
mod scenarios;
mod support;

use clap::Parser;
use report::{Report, Row};
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
    /// scale-out), steady, producer, ingress (gRPC Publish vs direct inserts).
    #[arg(long = "only", value_enum, default_values = ["drain", "steady", "producer", "ingress"])]
    only: Vec<Group>,
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
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    Drain,
    Steady,
    Producer,
    Ingress,
}

#[tokio::main]
async fn main() {
    let mut opts = Options::parse();
    if opts.quick {
        opts.messages = opts.messages.min(20_000);
        opts.steady_secs = opts.steady_secs.min(3.0);
        opts.producer_secs = opts.producer_secs.min(2.0);
    }
    let mut report = Report::new(&opts_line(&opts)).await;
    let conn = support::amqp().await;
    let channel = conn.create_channel().await.unwrap();
    for (i, kind) in opts.queues.iter().enumerate() {
        if opts.only.contains(&Group::Drain) {
            let queue = BenchQueue::declare(&channel, *kind).await;
            drains(&mut report, &conn, &channel, &queue, &opts, i == 0).await;
            queue.delete(&channel).await;
        }
    }
    let queue = BenchQueue::declare(&channel, QueueKind::Classic).await;
    if opts.only.contains(&Group::Steady) {
        steady(&mut report, &conn, &queue, &opts).await;
    }
    if opts.only.contains(&Group::Producer) {
        producer_impact(&mut report, &channel, &queue, &opts).await;
    }
    if opts.only.contains(&Group::Ingress) {
        ingress(&mut report, &conn, &channel, &queue, &opts).await;
    }
    queue.delete(&channel).await;
    report.finish(&opts.out);
}

fn opts_line(o: &Options) -> String {
    format!(
        "messages {}, payload {} B, queues {:?}, steady {} s",
        o.messages, o.payload, o.queues, o.steady_secs
    )
}

/// Baseline, drains (mark, delete), cost, and on the first queue kind scale-out.
async fn drains(
    report: &mut Report,
    conn: &lapin::Connection,
    channel: &lapin::Channel,
    queue: &BenchQueue,
    opts: &Options,
    scale_out: bool,
) {
    let (n, kind) = (opts.messages, queue.kind.name());
    let backlog = scenarios::Backlog {
        rows: n,
        payload: opts.payload,
        poison_every: None,
        large: &[],
    };
    let window = scenarios::best_window(conn, queue, n, opts.payload).await;
    for on_sent in ["mark", "delete"] {
        let base = scenarios::baseline(conn, queue, n, opts.payload, window).await;
        report.add(Row::new("baseline", kind, format!("lapin, window {window}")).rate(base));
        let extra = ["--on-sent", on_sent];
        let d = scenarios::drain(queue, channel, on_sent, backlog, 1, &extra).await;
        report.add(
            Row::new("drain", kind, format!("--on-sent {on_sent}"))
                .rate(d.rate)
                .ratio(d.rate / base, 0.90)
                .dead_tuples(d.dead_tuples),
        );
        let us = d.cost.cpu.as_secs_f64() * 1e6 / n as f64;
        let mib = d.cost.peak_rss_kib as f64 / 1024.0;
        let case = |what: &str| format!("{what}, --on-sent {on_sent}");
        report.add(Row::new("cost", kind, case("CPU per message")).value(us, "µs", 15.0));
        report.add(Row::new("cost", kind, case("peak RSS")).value(mib, "MiB", 40.0));
    }
    if scale_out {
        let mut one_relay = 0.0;
        for relays in [1, 2, 4] {
            let label = format!("scale_{relays}");
            let d = scenarios::drain(queue, channel, &label, backlog, relays, &[]).await;
            if relays == 1 {
                one_relay = d.rate;
            }
            let min = if relays == 2 { 1.0 } else { 0.0 };
            report.add(
                Row::new("scale-out", kind, format!("{relays} relays vs 1"))
                    .rate(d.rate)
                    .ratio(d.rate / one_relay, min),
            );
        }
        poison(report, channel, queue, backlog).await;
        metrics_overhead(report, channel, queue, backlog).await;
        large_rows(report, channel, queue).await;
        if opts.tls {
            tls(report, channel, queue, backlog).await;
        }
    }
}

/// Peak memory with payloads far above the batch budget in the table:
/// two rows of 100 MiB (above --max-message-size, never loaded) and eight
/// of 10 MiB (each loaded alone) among small rows.
async fn large_rows(report: &mut Report, channel: &lapin::Channel, queue: &BenchQueue) {
    let backlog = scenarios::Backlog {
        rows: 1_000,
        payload: 256,
        poison_every: None,
        large: &[(2, 100), (8, 10)],
    };
    let extra = ["--max-attempts", "1"];
    let d = scenarios::drain(queue, channel, "large_rows", backlog, 1, &extra).await;
    let mib = d.cost.peak_rss_kib as f64 / 1024.0;
    report.add(
        Row::new(
            "memory",
            queue.kind.name(),
            "peak RSS, 2×100 MiB + 8×10 MiB rows".into(),
        )
        .value(mib, "MiB", 128.0),
    );
}

/// The same drain in plaintext and over verified TLS to both services.
async fn tls(
    report: &mut Report,
    channel: &lapin::Channel,
    queue: &BenchQueue,
    backlog: scenarios::Backlog,
) {
    const CA: &str = "/etc/outbox-relay-test/tls/ca.pem";
    let plain_pg = "postgres://root@127.0.0.1:5432/test?sslmode=disable".to_owned();
    let plain_mq = "amqp://guest:guest@localhost:5672/%2f".to_owned();
    let tls_pg =
        format!("postgres://root@localhost:5432/test?sslmode=verify-full&sslrootcert={CA}");
    let tls_mq = format!("amqps://guest:guest@localhost:5671/%2f?cacertfile={CA}");
    let mut rates = Vec::new();
    for (label, pg, mq) in [
        ("tls_off", &plain_pg, &plain_mq),
        ("tls_on", &tls_pg, &tls_mq),
    ] {
        let extra = ["--database-url", pg.as_str(), "--amqp-url", mq.as_str()];
        rates.push(
            scenarios::drain(queue, channel, label, backlog, 1, &extra)
                .await
                .rate,
        );
    }
    report.add(
        Row::new("tls", queue.kind.name(), "TLS to both vs plaintext".into())
            .rate(rates[1])
            .ratio(rates[1] / rates[0], 0.80),
    );
}

/// The drain with metrics recorded (the HTTP port on, the default) against
/// the same drain recording none (`--http-addr none`), interleaved twice so
/// that drift on the machine hits both alike.
async fn metrics_overhead(
    report: &mut Report,
    channel: &lapin::Channel,
    queue: &BenchQueue,
    backlog: scenarios::Backlog,
) {
    let (mut on, mut off) = (0.0, 0.0);
    for round in 0..2 {
        let d = scenarios::drain(
            queue,
            channel,
            &format!("metrics_off_{round}"),
            backlog,
            1,
            &["--http-addr", "none"],
        )
        .await;
        off += d.rate / 2.0;
        let d = scenarios::drain(
            queue,
            channel,
            &format!("metrics_on_{round}"),
            backlog,
            1,
            &[],
        )
        .await;
        on += d.rate / 2.0;
    }
    report.add(
        Row::new(
            "metrics",
            queue.kind.name(),
            "drain, metrics on vs off".into(),
        )
        .rate(on)
        .ratio(on / off, 0.95),
    );
}

/// Good rows' pace with 1% poison rows (headers that cannot be encoded,
/// dead-lettered after 3 attempts) against the same drain without them.
async fn poison(
    report: &mut Report,
    channel: &lapin::Channel,
    queue: &BenchQueue,
    backlog: scenarios::Backlog,
) {
    let extra = [
        "--max-attempts",
        "3",
        "--backoff-base",
        "10ms",
        "--backoff-max",
        "50ms",
    ];
    let clean = scenarios::drain(queue, channel, "poison_none", backlog, 1, &extra).await;
    let poisoned = scenarios::Backlog {
        poison_every: Some(100),
        ..backlog
    };
    let mixed = scenarios::drain(queue, channel, "poison_1pct", poisoned, 1, &extra).await;
    report.add(
        Row::new("poison", queue.kind.name(), "1% poison rows vs none".into())
            .rate(mixed.rate)
            .ratio(mixed.rate / clean.rate, 0.90),
    );
}

/// Steady rates, with and without the wake-up trigger.
async fn steady(report: &mut Report, conn: &lapin::Connection, queue: &BenchQueue, opts: &Options) {
    const POLL_MS: f64 = 500.0;
    for trigger in [true, false] {
        for rate in [100, 1_000, 5_000] {
            let s =
                scenarios::steady(conn, queue, rate, opts.steady_secs, trigger, opts.payload).await;
            let label = format!("{rate}/s, trigger {}", if trigger { "on" } else { "off" });
            let mut row = Row::new("steady", queue.kind.name(), label)
                .rate(s.achieved)
                .latency(s.to_ack, s.to_consumer)
                .dead_tuples(s.dead_tuples);
            if rate == 1_000 {
                let bound = if trigger { 15.0 } else { POLL_MS + 5.0 };
                row = row.p99_target(bound);
            }
            report.add(row);
        }
    }
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
