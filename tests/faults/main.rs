//! Prove it loses nothing: real faults injected while the relay drains, and
//! every message counted. Each scenario ends with lost = 0, phantom = 0
//! (no rolled-back row arrives), duplicates ≤ faults × in-flight window,
//! no row pending and the queue drained, and writes its row of the
//! reliability table (`target/reliability.md`). The receiving side too
//! (`deliver.rs`): a relay delivering a queue to a worker application,
//! killed mid-delivery, loses nothing and acks nothing the worker has not
//! answered OK.
//!
//! The scenarios restart and freeze shared services, so they run one at a
//! time (`SERVICES`); `OUTBOX_SOAK=1` runs the same code with ten times the
//! messages and more faults.

#[path = "../common/mod.rs"]
mod common;
mod deliver;
mod hostile;
mod input;
mod ledger;
mod report;
mod scenarios;
#[allow(dead_code)] // the delivery tests' worker; this suite uses a part of it
#[path = "../deliver/worker.rs"]
mod worker;

use common::*;
use ledger::{Consumer, Produced, Tally};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Serialises the scenarios: they stop, freeze and restart shared services.
static SERVICES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WITHIN: Duration = Duration::from_secs(120);
const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");
/// Relay settings most scenarios use: four workers, batches of 100.
const BATCH: usize = 100;
const CONCURRENCY: usize = 4;
/// Batches a worker has claimed and not yet marked: the pipelined step
/// sends the next batch before it settles the previous one.
const IN_FLIGHT: usize = 2;
/// What one fault may duplicate: everything sent and not yet marked.
const WINDOW: usize = BATCH * IN_FLIGHT * CONCURRENCY;

/// `outbox-relay run` as a child process, to be killed like a crash would.
struct RelayChild(std::process::Child);

impl RelayChild {
    /// The relay's warnings go to [`relay_log`] (appended: a scenario may
    /// start several), shown if the scenario loses a message; with
    /// `TEST_LOG` set, to the terminal.
    fn spawn(env: &TestEnv, extra: &[&str], failpoints: Option<&str>) -> Self {
        let stderr = if std::env::var_os("TEST_LOG").is_none() {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(relay_log(env))
                .map_or_else(|_| Stdio::null(), Stdio::from)
        } else {
            Stdio::inherit()
        };
        Self::spawn_with(env, extra, failpoints, stderr)
    }

    /// Like `spawn`, with the child's stderr going to `stderr`.
    fn spawn_with(env: &TestEnv, extra: &[&str], failpoints: Option<&str>, stderr: Stdio) -> Self {
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars() {
            if key.starts_with("OUTBOX_") || key == "FAILPOINTS" {
                cmd.env_remove(key);
            }
        }
        cmd.args(["run", "--schema", &env.schema, "--log-level", "warn"])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args([
                "--batch-size",
                &BATCH.to_string(),
                "--concurrency",
                &CONCURRENCY.to_string(),
            ])
            .args([
                "--poll-interval",
                "50ms",
                "--backoff-base",
                "20ms",
                "--backoff-max",
                "100ms",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(fp) = failpoints {
            cmd.env("FAILPOINTS", fp);
        }
        Self(cmd.spawn().expect("spawn outbox-relay run"))
    }

    /// Whether the process is still running (it did not crash).
    fn alive(&mut self) -> bool {
        self.0.try_wait().expect("query the child").is_none()
    }

    fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn terminate(mut self) {
        // SAFETY: signalling a child we own.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let status = self.0.wait().unwrap();
        assert!(status.success(), "clean exit on SIGTERM, got {status}");
    }
}

impl Drop for RelayChild {
    /// A failed test must not leave its relay running.
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A fault scenario in progress: its private schema and queue, what the
/// producers committed, and the independent consumer.
struct Run {
    name: &'static str,
    env: TestEnv,
    produced: Produced,
    consumer: Consumer,
    started: Instant,
}

impl Run {
    async fn start(name: &'static str, producers: usize, per_producer: usize) -> Self {
        let env = TestEnv::new(name).await;
        let started = Instant::now();
        let produced = ledger::produce(&env, producers, report::scaled(per_producer)).await;
        let consumer = Consumer::start(&env.queue);
        Self {
            name,
            env,
            produced,
            consumer,
            started,
        }
    }

    async fn sent(&self) -> i64 {
        self.env.count_sent().await
    }

    /// Waits until `sent` has grown by at least `by` since `from`.
    async fn progress(&self, from: i64, by: i64) -> i64 {
        assert!(
            wait_until(WITHIN, || async { self.sent().await >= from + by }).await,
            "{}: the relay made progress",
            self.name
        );
        self.sent().await
    }

    /// Waits for the end state, counts, records and asserts.
    async fn verify(self, faults: usize, window: usize) -> Tally {
        let pg = pg_client().await;
        let pending = format!(
            "SELECT count(*) FROM {} WHERE sent_at IS NULL AND dead_at IS NULL",
            self.env.table()
        );
        let drained = wait_until(WITHIN, || async {
            pg.query_one(&pending, &[]).await.unwrap().get::<_, i64>(0) == 0
        })
        .await;
        assert!(drained, "{}: every row sent or dead", self.name);
        let seen = self
            .consumer
            .finish(&self.env.queue, &self.produced.committed, WITHIN)
            .await;
        let tally = Tally::of(&self.produced, &seen);
        let bound = faults * window;
        report::record(self.name, &tally, faults, bound, self.started.elapsed());
        if tally.lost > 0 {
            explain_loss(self.name, &self.env, &pg).await;
        }
        assert_eq!(tally.lost, 0, "{}: lost", self.name);
        assert_eq!(
            tally.phantom, 0,
            "{}: phantom (a rolled-back or unknown row arrived)",
            self.name
        );
        assert!(
            tally.duplicates <= bound,
            "{}: {tally:?} above {bound}",
            self.name
        );
        assert_eq!(
            ledger::queue_depth(&self.env.queue).await,
            Some(0),
            "queue drained"
        );
        let _ = pg
            .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", self.env.schema))
            .await;
        let _ = std::fs::remove_file(relay_log(&self.env));
        tally
    }
}

/// Prints what a loss needs to be told apart: rows the relay gave up on
/// (dead-lettered, with their errors) or messages still in the queue
/// that the ledger's consumer never got.
async fn explain_loss(name: &str, env: &TestEnv, pg: &tokio_postgres::Client) {
    let errors = format!(
        "SELECT count(*)::text || ' dead: ' || coalesce(last_error, '') FROM {} \
         WHERE dead_at IS NOT NULL GROUP BY last_error ORDER BY count(*) DESC LIMIT 5",
        env.table()
    );
    for row in pg.query(&errors, &[]).await.unwrap_or_default() {
        eprintln!("{}: {}", name, row.get::<_, String>(0));
    }
    eprintln!(
        "{}: ready in the queue: {:?}",
        name,
        ledger::queue_depth(&env.queue).await
    );
    let log = std::fs::read_to_string(relay_log(env)).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    eprintln!("{name}: the relay's last warnings:");
    for line in &lines[lines.len().saturating_sub(40)..] {
        eprintln!("  {line}");
    }
}

/// Where a scenario's relays write their warnings.
fn relay_log(env: &TestEnv) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("outbox-faults-{}.log", env.schema))
}
