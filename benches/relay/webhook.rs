//! Webhook rows: a backlog drained by `outbox-relay run` to an HTTP
//! receiver, against plain HTTP POSTs (one keep-alive client) to the same
//! receiver at the same concurrency, the relay's `max_in_flight`.
//!
//! The receiver runs in this process (axum, HTTP/1.1, counting and
//! answering 204), in both runs alike, twice over: answering at once, where
//! both sides are bound by the machine's two cores and the ratio is the
//! relay's CPU (claiming, signing, marking: several times a bare POST's)
//! against the client's; and taking [`SERVICE_TIME`] per request, as a
//! receiver that commits what it gets does, where both are bound by the
//! calls in flight and the ratio says whether the relay keeps the receiver
//! as busy as a client that does nothing else. The CPU per message of the
//! relay (from /proc), PostgreSQL and the receiver is reported for the
//! first.

use crate::procfs;
use crate::report::{Report, Row};
use crate::scenarios::drain_deadline;
use crate::support::{RelayProcess, Schema, pg};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Calls in flight: the relay's default `max_in_flight`, and the
/// baseline's concurrency.
const IN_FLIGHT: usize = 32;
/// Baseline and drain in turn, this many times.
const ROUNDS: usize = 2;
/// The slower receiver's time per request (a timer, not CPU).
const SERVICE_TIME: Duration = Duration::from_millis(2);
/// A fixed key (the benchmark checks nothing with it): 32 bytes, whsec_ form.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYqr";

/// The receiver: counts messages, answers 204.
struct Receiver {
    port: u16,
    received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Answers each request after `delay`.
    async fn start(delay: Duration) -> Self {
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let app = axum::Router::new().route(
            "/in",
            axum::routing::post(move |body: axum::body::Bytes| {
                let counter = counter.clone();
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if !body.is_empty() {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            port,
            received,
            task,
        }
    }

    fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/in", self.port)
    }
}

/// This process's CPU time so far (the receiver's, and the baseline's client).
fn own_cpu() -> Duration {
    procfs::Stat::of(std::process::id() as i32)
        .map_or(Duration::ZERO, |s| procfs::ticks(s.own_ticks))
}

/// The webhook group's rows, for a receiver answering at once and one
/// taking [`SERVICE_TIME`]: the baseline, the relay's drain and ratio; for
/// the first, the CPU per message of the relay, PostgreSQL and the
/// receiver. Baseline and drain are interleaved [`ROUNDS`] times and
/// averaged, so that drift on a shared machine hits both alike; each
/// round's ratio is shown too.
pub async fn webhook_rows(report: &mut Report, rows: usize, payload: usize) {
    for delay in [Duration::ZERO, SERVICE_TIME] {
        let receiver = Receiver::start(delay).await;
        let answers = if delay.is_zero() {
            "receiver answering at once".to_owned()
        } else {
            format!("receiver taking {delay:?}")
        };
        let (mut base, mut base_cpu, mut rate) = (0.0, Duration::ZERO, 0.0);
        let mut rounds = Vec::new();
        let mut last = None;
        for _ in 0..ROUNDS {
            let (plain, plain_cpu) = plain_posts(&receiver, rows, payload).await;
            let drain = relay_drain(&receiver, rows, payload).await;
            rounds.push(format!("{:.2}", drain.rate / plain));
            base += plain / ROUNDS as f64;
            base_cpu += plain_cpu / ROUNDS as u32;
            rate += drain.rate / ROUNDS as f64;
            last = Some(drain);
        }
        report.add(
            Row::new(
                "webhook",
                "http",
                format!("plain POSTs, one keep-alive client, {IN_FLIGHT} in flight, {answers}"),
            )
            .rate(base)
            .detail(format!(
                "client + receiver {:.1} µs CPU/msg",
                per_message(base_cpu, rows)
            )),
        );
        report.add(
            Row::new(
                "webhook",
                "http",
                format!("relay drain, signed, max_in_flight {IN_FLIGHT}, {answers}"),
            )
            .rate(rate)
            .ratio(rate / base, 0.90)
            .detail(format!("rounds {}", rounds.join(", "))),
        );
        if delay.is_zero() {
            cost(report, &last.expect("at least one round"), rows);
        }
        receiver.task.abort();
    }
}

/// The CPU per message of a drain to the receiver answering at once.
fn cost(report: &mut Report, drain: &WebhookDrain, rows: usize) {
    let row = |what: &str| {
        Row::new(
            "webhook cost",
            "http",
            format!("{what}, receiver answering at once, last round"),
        )
    };
    report.add(row("relay CPU per message").measure(per_message(drain.relay_cpu, rows), "µs"));
    report.add(row("PostgreSQL CPU per message").measure(per_message(drain.pg_cpu, rows), "µs"));
    report.add(
        row("receiver CPU per message (this process)")
            .measure(per_message(drain.receiver_cpu, rows), "µs"),
    );
    report.add(row("relay peak RSS").measure(drain.peak_rss_kib as f64 / 1024.0, "MiB"));
}

fn per_message(cpu: Duration, rows: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / rows as f64
}

/// `rows` POSTs of `payload` bytes from [`IN_FLIGHT`] tasks sharing one
/// client; msgs/s and this process's CPU over the run.
async fn plain_posts(receiver: &Receiver, rows: usize, payload: usize) -> (f64, Duration) {
    // reqwest is built without a provider of its own (no aws-lc).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .unwrap();
    let body = bytes::Bytes::from(vec![b'x'; payload]);
    let next = Arc::new(AtomicU64::new(0));
    let before = (receiver.count(), own_cpu());
    let started = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (client, url, body, next) =
                (client.clone(), receiver.url(), body.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < rows as u64 {
                    let answer = client
                        .post(&url)
                        .header("content-type", "application/octet-stream")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("the receiver answers");
                    assert!(answer.status().is_success());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        receiver.count() - before.0,
        rows as u64,
        "every POST arrived"
    );
    (rate, own_cpu().saturating_sub(before.1))
}

struct WebhookDrain {
    rate: f64,
    relay_cpu: Duration,
    pg_cpu: Duration,
    receiver_cpu: Duration,
    peak_rss_kib: u64,
}

/// A backlog of `rows` webhook rows drained by one relay with the
/// defaults (4 workers, batches of 500) and `max_in_flight` [`IN_FLIGHT`].
async fn relay_drain(receiver: &Receiver, rows: usize, payload: usize) -> WebhookDrain {
    let pg = pg().await;
    let schema = Schema::create("webhook", false).await;
    let sql = format!(
        "INSERT INTO {} (exchange, routing_key, payload, content_type, headers)
         SELECT 'hooks.bench', 'k', convert_to(repeat('x', $1), 'UTF8'),
                'application/octet-stream', jsonb_build_object('seq', g)
         FROM generate_series(1, $2) g",
        schema.table()
    );
    pg.execute(&sql, &[&(payload as i32), &(rows as i32)])
        .await
        .expect("fill the outbox");
    pg.batch_execute(&format!("VACUUM ANALYZE {}", schema.table()))
        .await
        .unwrap();
    pg.batch_execute("CHECKPOINT").await.unwrap();
    let secret = std::env::temp_dir().join(format!("{}.whsec", schema.name));
    std::fs::write(&secret, SECRET).unwrap();
    let destination = format!(
        "bench={}#secret_file={}&max_in_flight={IN_FLIGHT}",
        receiver.url(),
        secret.display()
    );
    let extra = ["--destination", &destination, "--route", "hooks.*=bench"];
    let before = (receiver.count(), own_cpu(), procfs::postgres_cpu());
    let started = Instant::now();
    let relay = RelayProcess::spawn(&schema, &extra);
    schema.wait_drained(&pg, drain_deadline(rows)).await;
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    let (receiver_cpu, pg_cpu) = (
        own_cpu().saturating_sub(before.1),
        procfs::postgres_cpu().saturating_sub(before.2),
    );
    let cost = relay.cost();
    relay.stop();
    let dead = pg
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE dead_at IS NOT NULL",
                schema.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(dead, 0, "no webhook row dead-lettered");
    assert!(
        receiver.count() - before.0 >= rows as u64,
        "every row arrived"
    );
    schema.drop_schema(&pg).await;
    let _ = std::fs::remove_file(&secret);
    WebhookDrain {
        rate,
        relay_cpu: cost.cpu,
        pg_cpu,
        receiver_cpu,
        peak_rss_kib: cost.peak_rss_kib,
    }
}
