//! The reliability table: each scenario writes its row to
//! `target/reliability/<scenario>.row`, then the whole table is rebuilt from
//! every row file into `target/reliability.md`, so one full run of the suite
//! leaves the complete table (the README shows one).

use crate::ledger::Tally;
use std::path::PathBuf;
use std::time::Duration;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/reliability")
}

/// Records one scenario's outcome and rebuilds the table.
pub fn record(scenario: &str, tally: &Tally, faults: usize, bound: usize, took: Duration) {
    let dir = dir();
    std::fs::create_dir_all(&dir).unwrap();
    let row = format!(
        "| {scenario} | {} | {faults} | {} | {} | {} (≤ {bound}) | {:.1} s |\n",
        tally.messages,
        tally.lost,
        tally.phantom,
        tally.duplicates,
        took.as_secs_f64()
    );
    let file = dir.join(format!("{}.row", scenario.replace(' ', "_")));
    std::fs::write(file, row).unwrap();
    rebuild(&dir);
}

fn rebuild(dir: &std::path::Path) {
    let mut rows: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "row"))
        .filter_map(|p| std::fs::read_to_string(&p).ok().map(|s| (p, s)))
        .collect();
    rows.sort();
    let mode = if soak() { "soak" } else { "bounded" };
    let mut table = format!(
        "Fault-injection suite ({mode} mode, `cargo test --all-features --test faults`)\n\n\
         | scenario | messages | faults injected | lost | phantom | duplicates (bound) | duration |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for (_, row) in rows {
        table.push_str(&row);
    }
    let _ = std::fs::write(dir.with_extension("md"), table);
}

/// `OUTBOX_SOAK=1`: the same scenarios, ten times the messages and more faults.
pub fn soak() -> bool {
    std::env::var_os("OUTBOX_SOAK").is_some_and(|v| v != "0")
}

/// Scales a count for soak mode.
pub fn scaled(n: usize) -> usize {
    if soak() { n * 10 } else { n }
}
