//! What the database did during a drain, statement by statement, from
//! `pg_stat_statements` (loaded by deploy/local/services.sh): reset before
//! the drain, read after it. Without the extension loaded, the report says
//! so and the benchmark goes on.

use std::fmt::Write;

/// One normalised statement's totals over a drain.
#[derive(Debug, Clone)]
pub struct Statement {
    pub query: String,
    pub calls: i64,
    pub rows: i64,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub blks_hit: i64,
    pub blks_read: i64,
    /// WAL the statement wrote: records, full-page images, bytes.
    pub wal_records: i64,
    pub wal_fpi: i64,
    pub wal_bytes: f64,
}

impl Statement {
    /// Execution time per row returned or changed, in µs.
    pub fn us_per_row(&self) -> Option<f64> {
        (self.rows > 0).then(|| self.total_ms * 1e3 / self.rows as f64)
    }

    /// WAL bytes written per row returned or changed.
    pub fn wal_per_row(&self) -> Option<f64> {
        (self.rows > 0).then(|| self.wal_bytes / self.rows as f64)
    }

    /// The relay's claim: the pending rows it takes, skipping locked ones,
    /// as a statement or through the claim function (migration 0006).
    fn is_claim(&self) -> bool {
        let q = self.query.to_ascii_lowercase();
        (q.contains("skip locked") && !q.trim_start().starts_with("delete"))
            || q.contains(".outbox_claim(")
    }

    /// The relay's mark: `sent_at` set, or the row deleted (`--on-sent delete`),
    /// by id, for the rows the broker confirmed.
    fn is_mark(&self) -> bool {
        let q = self.query.to_ascii_lowercase();
        q.contains("set sent_at")
            || (q.trim_start().starts_with("delete") && !q.contains("skip locked"))
    }
}

/// Makes sure the extension exists in the benchmark's database; the error
/// says why the statements cannot be reported.
pub async fn prepare(pg: &tokio_postgres::Client) -> Result<(), String> {
    pg.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
         SELECT pg_stat_statements_reset()",
    )
    .await
    .map_err(|e| {
        let why = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        format!("pg_stat_statements unavailable ({why}); deploy/local/services.sh loads it")
    })
}

pub async fn reset(pg: &tokio_postgres::Client) {
    let _ = pg.batch_execute("SELECT pg_stat_statements_reset()").await;
}

/// The statements that name `schema` (the drain's table: the relay's, and
/// this benchmark's polling), by total execution time, most first; `None`
/// without the extension. Other clients of the same server (tests on their
/// own schemas) are left out.
pub async fn top(pg: &tokio_postgres::Client, schema: &str, limit: i64) -> Option<Vec<Statement>> {
    let rows = pg
        .query(
            "SELECT query, calls, rows, total_exec_time, mean_exec_time,
                    shared_blks_hit, shared_blks_read,
                    wal_records, wal_fpi, wal_bytes::float8
             FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND strpos(query, $2) > 0
             ORDER BY total_exec_time DESC
             LIMIT $1",
            &[&limit, &schema],
        )
        .await
        .ok()?;
    Some(
        rows.iter()
            .map(|r| Statement {
                query: r.get(0),
                calls: r.get(1),
                rows: r.get(2),
                total_ms: r.get(3),
                mean_ms: r.get(4),
                blks_hit: r.get(5),
                blks_read: r.get(6),
                wal_records: r.get(7),
                wal_fpi: r.get(8),
                wal_bytes: r.get(9),
            })
            .collect(),
    )
}

/// The statements as Markdown: the claim's and the mark's time per row,
/// then the table.
pub fn markdown(statements: &[Statement]) -> String {
    let per_row = |name: &str, s: Option<&Statement>| match s {
        Some(s) => format!(
            "{name}: {} and {} of WAL per row ({} calls, {} rows, {:.1} ms)",
            s.us_per_row()
                .map_or_else(|| "-".into(), |us| format!("{us:.2} µs")),
            s.wal_per_row()
                .map_or_else(|| "-".into(), |b| format!("{b:.0} B")),
            s.calls,
            s.rows,
            s.total_ms
        ),
        None => format!("{name}: not among these statements"),
    };
    let mut md = format!(
        "{}; {}\n\n| statement | calls | rows | mean ms | total ms | µs per row | shared blks hit | shared blks read | WAL records | WAL full pages | WAL bytes per row |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        per_row("claim", statements.iter().find(|s| s.is_claim())),
        per_row("mark", statements.iter().find(|s| s.is_mark())),
    );
    for s in statements {
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {:.3} | {:.1} | {} | {} | {} | {} | {} | {} |",
            abbreviate(&s.query, 90),
            s.calls,
            s.rows,
            s.mean_ms,
            s.total_ms,
            s.us_per_row()
                .map_or_else(String::new, |us| format!("{us:.2}")),
            s.blks_hit,
            s.blks_read,
            s.wal_records,
            s.wal_fpi,
            s.wal_per_row()
                .map_or_else(String::new, |b| format!("{b:.0}"))
        );
    }
    md
}

/// One line, at most `max` characters, safe in a Markdown table cell.
fn abbreviate(query: &str, max: usize) -> String {
    let line = query
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
        .replace('`', "'");
    match line.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}
