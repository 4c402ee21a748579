//! The `ordered` group (issue 24): the drain of rows spread over 1, 100 and
//! 10,000 ordering keys against the unordered drain of the same size, in the
//! same run, with the relay's and PostgreSQL's CPU per message for each.
//!
//! A key's rows go one at a time (the next is claimed once the previous is
//! confirmed and marked), so a drain over few keys is bound by round trips,
//! not by the broker: 1 key is reported, not judged.

use crate::Options;
use crate::report::{Report, Row};
use crate::scenarios::{self, Backlog, Drain};
use crate::support::BenchQueue;

/// Rows of the one-key drain (at most): it is bound by round trips.
const ONE_KEY_ROWS: usize = 2_000;

/// Unordered first, then each key count; each drain on a fresh table.
pub async fn run(
    report: &mut Report,
    channel: &lapin::Channel,
    queue: &BenchQueue,
    opts: &Options,
) {
    let kind = queue.kind.name();
    let backlog = |keys, rows| Backlog {
        rows,
        payload: opts.payload,
        poison_every: None,
        keys,
        large: &[],
    };
    let unordered = scenarios::drain(
        queue,
        channel,
        "ordered_none",
        backlog(0, opts.messages),
        1,
        &[],
    )
    .await;
    cost_row(report, kind, "unordered", &unordered, opts.messages);
    report.add(Row::new("ordered", kind, "unordered drain".into()).rate(unordered.rate));
    for (keys, min) in [(10_000, 0.9), (100, 0.8), (1, 0.0)] {
        let label = format!("ordered_{keys}");
        // One key goes one row at a time: a few thousand rows measure it.
        let rows = if keys == 1 {
            opts.messages.min(ONE_KEY_ROWS)
        } else {
            opts.messages
        };
        let d = scenarios::drain(queue, channel, &label, backlog(keys, rows), 1, &[]).await;
        report.add(
            Row::new(
                "ordered",
                kind,
                format!("{keys} keys vs unordered ({rows} rows)"),
            )
            .rate(d.rate)
            .ratio(d.rate / unordered.rate, min),
        );
        cost_row(report, kind, &format!("{keys} keys"), &d, rows);
    }
}

/// Relay + PostgreSQL CPU per message of one drain, with its parts.
fn cost_row(report: &mut Report, kind: &'static str, case: &str, d: &Drain, n: usize) {
    let per_message = |t: std::time::Duration| t.as_secs_f64() * 1e6 / n as f64;
    let (relay, pg) = (per_message(d.cost.cpu), per_message(d.pg_cpu));
    report.add(
        Row::new(
            "ordered cost",
            kind,
            format!(
                "relay + PostgreSQL CPU per message, {case} (relay {relay:.1}, PostgreSQL {pg:.1} µs)"
            ),
        )
        .measure(relay + pg, "µs"),
    );
}
