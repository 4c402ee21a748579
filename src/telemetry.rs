//! Logging setup. Logs go to stderr so that commands can print results on
//! stdout; `--log-format json` emits one JSON object per line for clusters.
//!
//! Invariant 9: logging can never stop relaying. Lines are handed to a
//! background thread through a bounded queue (`tracing-appender`, lossy): a
//! stalled log collector costs dropped lines, never a blocked worker, and a
//! closed stderr (`run 2>&1 | head -1`, a collector that went away) costs
//! the lines, never a panic. Both kinds of loss are counted
//! ([`log_lines_dropped`]).

use crate::config::{LogArgs, LogFormat};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines lost to a closed or failing stderr. Process-wide like the log
/// subscriber it belongs to.
static WRITE_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Lines lost to a full queue, once the subscriber is installed.
static QUEUE_DROPS: std::sync::OnceLock<ErrorCounter> = std::sync::OnceLock::new();

/// Log lines that never reached stderr: its queue was full (the reader is
/// too slow) or the write failed (the reader is gone).
pub fn log_lines_dropped() -> u64 {
    WRITE_FAILURES.load(Ordering::Relaxed)
        + QUEUE_DROPS.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Keeps the log thread running; dropping it flushes what is queued.
#[must_use = "logs stop when the guard is dropped"]
pub struct LogGuard(#[allow(dead_code)] WorkerGuard);

/// Installs the global subscriber. Fails on an invalid filter expression.
pub fn init(args: &LogArgs) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_new(&args.log_level)
        .map_err(|e| anyhow::anyhow!("invalid --log-level/OUTBOX_LOG {:?}: {e}", args.log_level))?
        // lapin logs a returned message whole (payload and headers) at WARN:
        // payloads are data, never logged above DEBUG (the relay logs the
        // failure itself, without the body).
        .add_directive("lapin::returned_messages=error".parse()?);
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("outbox-relay-log")
        .finish(Stderr);
    let _ = QUEUE_DROPS.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // The default reports a failed write with eprintln!, which panics
        // when stderr is closed.
        .log_internal_errors(false)
        // Colour codes only for a person at a terminal, never in collected logs.
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    Ok(LogGuard(guard))
}

/// stderr that never fails: a write error drops (and counts) the line.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
