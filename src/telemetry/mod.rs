//! Logging and tracing setup. Logs go to stderr so that commands can print
//! results on stdout; `--log-format json` emits one JSON object per line for
//! clusters. Spans are exported over OTLP when the standard `OTEL_*`
//! variables ask for it ([`otel`]); trace context travels with each message
//! ([`context`]).
//!
//! Invariant 9: logging can never stop relaying. Lines are handed to a
//! background thread through a bounded queue (`tracing-appender`, lossy): a
//! stalled log collector costs dropped lines, never a blocked worker, and a
//! closed stderr (`run 2>&1 | head -1`, a collector that went away) costs
//! the lines, never a panic. Both kinds of loss are counted
//! ([`log_lines_dropped`]).

pub mod context;
pub mod otel;

pub use context::TraceContext;

use crate::config::{LogArgs, LogFormat};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Level;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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

/// Keeps the log thread and the trace exporter running; dropping it flushes
/// what is queued (spans first: flushing them may log).
#[must_use = "logs stop when the guard is dropped"]
pub struct LogGuard {
    _export: Option<otel::Export>,
    _logs: WorkerGuard,
}

/// Lines the log queue holds before it drops (and counts) new ones. The
/// queue is allocated and touched whole at start: tracing-appender's
/// default of 128,000 lines is 4 MiB, a tenth of the relay's memory, for
/// bursts no collector needs buffered in the process.
const LOG_QUEUE_LINES: usize = 16_384;

/// Installs the global subscriber, with trace export when the environment
/// asks for it (then a Tokio runtime must be entered). Fails on an invalid
/// filter expression or an unsupported export setting.
pub fn init(args: &LogArgs) -> anyhow::Result<LogGuard> {
    let export = otel::from_env(|name| std::env::var(name).ok()).map_err(anyhow::Error::msg)?;
    let filter = EnvFilter::try_new(&args.log_level)
        .map_err(|e| anyhow::anyhow!("invalid --log-level/OUTBOX_LOG {:?}: {e}", args.log_level))?
        // lapin logs a returned message whole (payload and headers) at WARN:
        // payloads are data, never logged above DEBUG (the relay logs the
        // failure itself, without the body).
        .add_directive("lapin::returned_messages=error".parse()?);
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("outbox-relay-log")
        .finish(Stderr);
    let _ = QUEUE_DROPS.set(writer.error_counter());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        // The default reports a failed write with eprintln!, which panics
        // when stderr is closed.
        .log_internal_errors(false)
        // Colour codes only for a person at a terminal, never in collected logs.
        .with_ansi(std::io::stderr().is_terminal());
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match args.log_format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let (export, spans) = match export {
        None => (None, None),
        Some(config) => {
            let (export, tracer) = otel::install(&config)?;
            // The relay's own spans only, whatever the log level: the
            // libraries' spans (hyper, h2, lapin) would drown them.
            let spans = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Targets::new().with_target(env!("CARGO_CRATE_NAME"), Level::INFO));
            (Some((export, config)), Some(spans))
        }
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(spans)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    let export = export.map(|(export, config)| {
        tracing::info!(endpoint = %config.endpoint, "exporting traces over OTLP/gRPC");
        export
    });
    Ok(LogGuard {
        _export: export,
        _logs: guard,
    })
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
