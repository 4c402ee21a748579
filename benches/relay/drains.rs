//! The drain group: the lapin baseline and the relay's drains (mark and
//! delete) with their cost, pinned (`--pin`) and not; then, on the first
//! queue kind, scale-out, poison rows, metrics, memory with large rows, TLS;
//! and the large backlog (a million rows against 100,000).

use crate::Options;
use crate::affinity::{Pinned, Pinner};
use crate::report::{Report, Row};
use crate::scenarios::{self, Drain};
use crate::statements;
use crate::support::BenchQueue;
use std::time::Duration;

/// Baseline, drains (mark, delete) and their cost, pinned when a pinner is
/// given and then unpinned; on the first queue kind (`first`) the rest of
/// the group.
pub async fn run(
    report: &mut Report,
    conn: &lapin::Connection,
    channel: &lapin::Channel,
    queue: &BenchQueue,
    opts: &Options,
    pinner: Option<&Pinner>,
    first: bool,
) {
    if let Some(pinned) = pin(report, pinner, "the pinned drains") {
        assert!(
            !opts.panic_while_pinned,
            "--panic-while-pinned: the masks must be restored as this unwinds"
        );
        drains(report, conn, channel, queue, opts, true).await;
        drop(pinned);
    }
    drains(report, conn, channel, queue, opts, false).await;
    if !first {
        return;
    }
    let backlog = scenarios::Backlog {
        rows: opts.messages,
        payload: opts.payload,
        poison_every: None,
        keys: 0,
        large: &[],
    };
    scale_out(report, channel, queue, backlog).await;
    poison(report, channel, queue, backlog).await;
    metrics_overhead(report, channel, queue, backlog).await;
    large_rows(report, channel, queue).await;
    if opts.tls {
        tls(report, channel, queue, backlog).await;
    }
}

/// Pins for as long as the result lives; a failure is noted in the report
/// and the run goes on unpinned.
fn pin(report: &mut Report, pinner: Option<&Pinner>, what: &str) -> Option<Pinned> {
    match pinner?.pin() {
        Ok(pinned) => Some(pinned),
        Err(e) => {
            report.note(format!("{what} were skipped: cannot pin ({e})"));
            None
        }
    }
}

/// A row group's name: `drain (pinned)` or `drain`.
fn group(name: &str, pinned: bool) -> String {
    if pinned {
        format!("{name} (pinned)")
    } else {
        name.to_owned()
    }
}

/// For each of mark and delete, the baseline right before the drain it is
/// compared with, the drain, its cost and its statements.
async fn drains(
    report: &mut Report,
    conn: &lapin::Connection,
    channel: &lapin::Channel,
    queue: &BenchQueue,
    opts: &Options,
    pinned: bool,
) {
    let (n, kind) = (opts.messages, queue.kind.name());
    let backlog = scenarios::Backlog {
        rows: n,
        payload: opts.payload,
        poison_every: None,
        keys: 0,
        large: &[],
    };
    let window = scenarios::best_window(conn, queue, n, opts.payload).await;
    for on_sent in ["mark", "delete"] {
        let (base, base_busy) = scenarios::baseline(conn, queue, n, opts.payload, window).await;
        report.add(
            Row::new(
                group("baseline", pinned),
                kind,
                format!("lapin, window {window}"),
            )
            .rate(base)
            .detail(cores_busy(&base_busy)),
        );
        let extra = ["--on-sent", on_sent];
        let label = if pinned {
            format!("{on_sent}_pinned")
        } else {
            on_sent.to_owned()
        };
        let d = scenarios::drain(queue, channel, &label, backlog, 1, &extra).await;
        let case = format!("--on-sent {on_sent}");
        // Pinned, the broker has a core of its own (as on separate
        // machines) and the relay is held to 0.95 of it; unpinned, the
        // relay and PostgreSQL take CPU from the broker.
        let min = if pinned { 0.95 } else { 0.90 };
        report.add(
            Row::new(group("drain", pinned), kind, case.clone())
                .rate(d.rate)
                .ratio(d.rate / base, min)
                .dead_tuples(d.dead_tuples)
                .detail(cores_busy(&d.cpu_busy)),
        );
        cost(report, &group("cost", pinned), kind, &case, &d, n);
        statements_section(
            report,
            &format!("{}, {kind}, {case}", group("drain", pinned)),
            &d,
        );
    }
}

/// Per-core utilisation over a drain: which side (broker or relay and
/// database) was the limit, and whether a side waited on the disk (the
/// broker's message store and PostgreSQL's WAL share it here).
fn cores_busy(busy: &[(f64, f64)]) -> String {
    let each: Vec<String> = busy
        .iter()
        .enumerate()
        .map(|(cpu, (b, io))| format!("cpu{cpu} {:.0}% (iowait {:.0}%)", b * 100.0, io * 100.0))
        .collect();
    format!("busy {}", each.join(", "))
}

/// The relay's and PostgreSQL's CPU per message, their sum, and the
/// relay's peak memory.
fn cost(report: &mut Report, group: &str, kind: &'static str, case: &str, d: &Drain, n: usize) {
    let per_message = |t: Duration| t.as_secs_f64() * 1e6 / n as f64;
    let (relay, pg) = (per_message(d.cost.cpu), per_message(d.pg_cpu));
    let backends = per_message(d.relay_backends_cpu);
    let mib = d.cost.peak_rss_kib as f64 / 1024.0;
    let row = |what: &str| Row::new(group, kind, format!("{what}, {case}"));
    report.add(row("relay CPU per message").value(relay, "µs", 15.0));
    report.add(row("PostgreSQL CPU per message").measure(pg, "µs"));
    report.add(row("PostgreSQL CPU per message, the relay's backends").measure(backends, "µs"));
    report.add(row("relay + PostgreSQL per message").value(relay + pg, "µs", 25.0));
    report.add(row("peak RSS").value(mib, "MiB", 40.0));
}

/// The top statements of a drain as a section of the report.
fn statements_section(report: &mut Report, what: &str, d: &Drain) {
    let body = match &d.statements {
        Some(s) => statements::markdown(s),
        None => "pg_stat_statements is not available (deploy/local/services.sh loads it)\n".into(),
    };
    report.section(format!("Statements: {what}"), body);
}

/// One relay, then two and four on the same backlog.
async fn scale_out(
    report: &mut Report,
    channel: &lapin::Channel,
    queue: &BenchQueue,
    backlog: scenarios::Backlog,
) {
    let mut one_relay = 0.0;
    for relays in [1, 2, 4] {
        let label = format!("scale_{relays}");
        let d = scenarios::drain(queue, channel, &label, backlog, relays, &[]).await;
        if relays == 1 {
            one_relay = d.rate;
        }
        let min = if relays == 2 { 1.0 } else { 0.0 };
        report.add(
            Row::new(
                "scale-out",
                queue.kind.name(),
                format!("{relays} relays vs 1"),
            )
            .rate(d.rate)
            .ratio(d.rate / one_relay, min),
        );
    }
}

/// A drain of a million rows against one of 100,000: claiming and marking
/// must not slow down as the table grows. Pinned when a pinner is given.
/// A consumer empties the queue meanwhile, so that the broker holds few
/// messages in both drains and the ratio is the table's size alone.
pub async fn large_backlog(
    report: &mut Report,
    conn: &lapin::Connection,
    channel: &lapin::Channel,
    queue: &BenchQueue,
    payload: usize,
    pinner: Option<&Pinner>,
) {
    let pinned = pin(report, pinner, "the pinned backlog drains");
    let (name, kind) = (group("backlog", pinned.is_some()), queue.kind.name());
    let mut rates = Vec::new();
    for rows in [100_000, 1_000_000] {
        let backlog = scenarios::Backlog {
            rows,
            payload,
            poison_every: None,
            keys: 0,
            large: &[],
        };
        let consuming = conn.create_channel().await.unwrap();
        let consumer = tokio::spawn(scenarios::discard(consuming.clone(), queue.name.clone()));
        let d = scenarios::drain(queue, channel, &format!("backlog_{rows}"), backlog, 1, &[]).await;
        let _ = consuming.close(200, "done".into()).await;
        consumer.abort();
        report.add(
            Row::new(
                name.clone(),
                kind,
                format!("fill {rows} rows, one INSERT … SELECT"),
            )
            .measure(d.fill.as_secs_f64(), "s"),
        );
        statements_section(report, &format!("{name}, {kind}, {rows}-row drain"), &d);
        rates.push(d.rate);
    }
    report.add(Row::new(name.clone(), kind, "100k-row drain".into()).rate(rates[0]));
    report.add(
        Row::new(name, kind, "1M-row drain vs 100k".into())
            .rate(rates[1])
            .ratio(rates[1] / rates[0], 0.90),
    );
}

/// Peak memory with payloads far above the batch budget in the table:
/// two rows of 100 MiB (above --max-message-size, never loaded) and eight
/// of 10 MiB (each loaded alone) among small rows.
async fn large_rows(report: &mut Report, channel: &lapin::Channel, queue: &BenchQueue) {
    let backlog = scenarios::Backlog {
        rows: 1_000,
        payload: 256,
        poison_every: None,
        keys: 0,
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
