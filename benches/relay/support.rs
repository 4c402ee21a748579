//! The benchmark's plumbing: services, schemas, queues, and the relay as a
//! child process whose CPU time and peak memory are read from /proc.

use crate::procfs;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");

pub fn pg_url() -> String {
    std::env::var("OUTBOX_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// The database URL for a relay, naming its connections after `app`
/// (`application_name`, which the relay keeps when the URL sets it), so that
/// its backends can be told from every other client of the server.
pub fn relay_pg_url(app: &str) -> String {
    let url = pg_url();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}application_name={app}")
    } else {
        format!("{url} application_name={app}")
    }
}

pub fn amqp_url() -> String {
    std::env::var("OUTBOX_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL reachable (run deploy/local/services.sh)");
    tokio::spawn(conn);
    client
}

pub async fn amqp() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ reachable (run deploy/local/services.sh)")
}

/// The kind of queue the relay (and the baseline) publish to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueKind {
    Classic,
    Quorum,
}

impl QueueKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

/// A durable queue of one kind, deleted on `delete`.
pub struct BenchQueue {
    pub name: String,
    pub kind: QueueKind,
}

impl BenchQueue {
    pub async fn declare(channel: &Channel, kind: QueueKind) -> Self {
        let name = format!("bench_{}_{}", kind.name(), std::process::id());
        let mut args = FieldTable::default();
        if kind == QueueKind::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .expect("declare the bench queue");
        Self { name, kind }
    }

    pub async fn purge(&self, channel: &Channel) {
        channel
            .queue_purge(self.name.as_str().into(), QueuePurgeOptions::default())
            .await
            .expect("purge the bench queue");
    }

    pub async fn delete(self, channel: &Channel) {
        let _ = channel
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// A migrated outbox schema of its own, dropped on `drop_schema`.
pub struct Schema {
    pub name: String,
}

impl Schema {
    pub async fn create(label: &str, trigger: bool) -> Self {
        let name = format!("bench_{label}_{}", std::process::id());
        let pg = pg().await;
        pg.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
            .await
            .unwrap();
        let state = if trigger { "enable" } else { "disable" };
        let out = Command::new(RELAY)
            .args(["migrate", "--schema", &name, "--wakeup-trigger", state])
            .args(["--database-url", &pg_url(), "--log-level", "warn"])
            .output()
            .expect("run outbox-relay migrate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    pub fn table(&self) -> String {
        format!("\"{}\".outbox", self.name)
    }

    /// `n` pending rows of `payload` bytes routed to `queue` (each with a
    /// content type and a one-entry header, as the baseline's messages);
    /// with `poison_every`, every such row instead has headers the relay
    /// cannot encode (dead-lettered after --max-attempts). One statement,
    /// whatever `n` (a million rows take seconds). Then VACUUM ANALYZE so
    /// the drain starts from a table in its steady shape, and a CHECKPOINT
    /// so that it does not pay for writing out the fill.
    pub async fn fill(
        &self,
        pg: &tokio_postgres::Client,
        n: usize,
        payload: usize,
        queue: &str,
        poison_every: Option<usize>,
    ) {
        let sql = format!(
            "INSERT INTO {} (routing_key, payload, content_type, headers)
             SELECT $1, convert_to(repeat('x', $2), 'UTF8'), 'application/octet-stream',
                    CASE WHEN $4 > 0 AND g % $4 = 0 THEN '[\"poison\"]'::jsonb
                         ELSE jsonb_build_object('seq', g) END
             FROM generate_series(1, $3) g",
            self.table()
        );
        let every = poison_every.unwrap_or(0) as i32;
        pg.execute(&sql, &[&queue, &(payload as i32), &(n as i32), &every])
            .await
            .expect("fill the outbox");
        // Two statements: VACUUM cannot run in a multi-statement string.
        pg.batch_execute(&format!("VACUUM ANALYZE {}", self.table()))
            .await
            .unwrap();
        pg.batch_execute("CHECKPOINT").await.unwrap();
    }

    /// Like [`Self::fill`] (no poison rows), each row with one of `keys`
    /// ordering keys, picked at random. In transactions of 1,000 rows: a
    /// transaction holds one lock per distinct key it inserts (migration
    /// 0007), and ten thousand would exhaust the server's lock table.
    pub async fn fill_keyed(
        &self,
        pg: &tokio_postgres::Client,
        n: usize,
        payload: usize,
        queue: &str,
        keys: usize,
    ) {
        let sql = format!(
            "INSERT INTO {} (routing_key, payload, content_type, headers, ordering_key)
             SELECT $1, convert_to(repeat('x', $2), 'UTF8'), 'application/octet-stream',
                    jsonb_build_object('seq', g),
                    'key-' || ((hashint4(g) & 2147483647) % $5::int)
             FROM generate_series($3::int, $4::int) g",
            self.table()
        );
        let (keys, payload) = (keys as i32, payload as i32);
        for start in (1..=n).step_by(1_000) {
            let end = (start + 999).min(n);
            pg.execute(
                &sql,
                &[&queue, &payload, &(start as i32), &(end as i32), &keys],
            )
            .await
            .expect("fill the outbox with keyed rows");
        }
        pg.batch_execute(&format!("VACUUM ANALYZE {}", self.table()))
            .await
            .unwrap();
        pg.batch_execute("CHECKPOINT").await.unwrap();
    }

    /// Adds `large` rows: (count, MiB) pairs of one-byte-repeated payloads.
    pub async fn fill_large(
        &self,
        pg: &tokio_postgres::Client,
        queue: &str,
        large: &[(usize, usize)],
    ) {
        let sql = format!(
            "INSERT INTO {} (routing_key, payload)
             SELECT $1, convert_to(repeat('x', $2), 'UTF8') FROM generate_series(1, $3)",
            self.table()
        );
        for &(count, mib) in large {
            let bytes = (mib << 20) as i32;
            pg.execute(&sql, &[&queue, &bytes, &(count as i32)])
                .await
                .unwrap();
        }
    }

    /// Waits until no row is pending. Polls every 50 ms for the first
    /// pending row at or above the one the previous poll found, through the
    /// pending index: a check from the lowest id (or a sequential scan, the
    /// plan an EXISTS gets) walks every row sent so far, milliseconds a poll
    /// on a million-row table, which loads the database the relay is
    /// measured on. Only when nothing is pending above that row does it look
    /// again from the lowest id (rows retried later, relays out of order).
    pub async fn wait_drained(&self, pg: &tokio_postgres::Client, within: Duration) {
        let sql = format!(
            "SELECT id FROM {} WHERE sent_at IS NULL AND dead_at IS NULL AND id >= $1
             ORDER BY id LIMIT 1",
            self.table()
        );
        let deadline = Instant::now() + within;
        let mut from = 0_i64;
        loop {
            match pg.query_opt(&sql, &[&from]).await.unwrap() {
                Some(row) => from = row.get(0),
                None if from == 0 => return,
                None => {
                    from = 0;
                    continue;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not drained within {within:?}",
                self.table()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Dead tuples of the outbox table as the statistics collector last saw them.
    pub async fn dead_tuples(&self, pg: &tokio_postgres::Client) -> i64 {
        pg.query_one(
            "SELECT COALESCE(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relid = $1::text::regclass",
            &[&self.table()],
        )
        .await
        .unwrap()
        .get(0)
    }

    /// CPU of the PostgreSQL backends serving the relays on this schema
    /// (named after it by [`relay_pg_url`]) since each one started.
    pub async fn relay_backends_cpu(&self, pg: &tokio_postgres::Client) -> Duration {
        let pids: Vec<i32> = pg
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                &[&self.name],
            )
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        procfs::ticks(
            pids.into_iter()
                .filter_map(procfs::Stat::of)
                .map(|s| s.own_ticks)
                .sum(),
        )
    }

    pub async fn drop_schema(self, pg: &tokio_postgres::Client) {
        let _ = pg
            .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", self.name))
            .await;
    }
}

/// Drops the schemas of benchmark runs that are no longer running (an
/// interrupted run leaves its table behind, a whole backlog): those
/// named `bench_..._<pid>` whose process is gone.
pub async fn drop_stale_schemas(pg: &tokio_postgres::Client) {
    let Ok(rows) = pg
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname ~ '^bench_.*_[0-9]+$'",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let pid = name.rsplit('_').next().unwrap_or_default();
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = pg
                .batch_execute(&format!("DROP SCHEMA \"{name}\" CASCADE"))
                .await;
        }
    }
}

/// `outbox-relay run` as a child process.
pub struct RelayProcess {
    child: Child,
}

/// What the child cost, read before it was stopped.
#[derive(Debug, Clone, Copy)]
pub struct ProcessCost {
    pub cpu: Duration,
    pub peak_rss_kib: u64,
}

impl RelayProcess {
    pub fn spawn(schema: &Schema, extra: &[&str]) -> Self {
        let mut command = Command::new(RELAY);
        command
            .args(["run", "--schema", &schema.name, "--log-level", "warn"])
            .args(["--grpc-addr", "none"])
            .args(["--database-url", &relay_pg_url(&schema.name)])
            .args(["--amqp-url", &amqp_url()]);
        if !extra.contains(&"--http-addr") {
            // Several relays run side by side in some scenarios.
            command.args(["--http-addr", "127.0.0.1:0"]);
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        // The relays end with the benchmark, however it ends (an interrupted
        // run must not leave them draining into the next one).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn outbox-relay run");
        Self { child }
    }

    /// User + system CPU time and peak RSS so far, from /proc.
    pub fn cost(&self) -> ProcessCost {
        let pid = self.child.id() as i32;
        let stat = procfs::Stat::of(pid).expect("the relay is running");
        ProcessCost {
            cpu: procfs::ticks(stat.own_ticks),
            peak_rss_kib: procfs::peak_rss_kib(pid),
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        // SAFETY: kill with a pid we own and a valid signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for the relay");
        assert!(status.success(), "the relay exited with {status}");
    }
}
