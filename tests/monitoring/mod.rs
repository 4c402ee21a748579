//! The HTTP port against the real services: `/metrics` parsed with a
//! Prometheus text parser after a known workload, the backlog gauges, and
//! what `/readyz` and `/livez` follow. (A module of the `relay` test binary,
//! so that it links once.)

use crate::common::proxy::FaultProxy;
use crate::common::*;
use prometheus_parse::{Scrape, Value};
use std::time::Duration;
use tokio::time::Instant;

mod trace;

/// Rows reach their final state within this.
const WITHIN: Duration = Duration::from_secs(30);
/// The table gauges refresh every 5 s: a few rounds.
const GAUGES_WITHIN: Duration = Duration::from_secs(30);
/// The age given to the backlog's due rows.
const BACKLOG_AGE_SECS: f64 = 100.0;

/// One parsed scrape of `/metrics`.
struct Metrics(Scrape);

impl Metrics {
    /// The value of the series `name` whose labels include `labels`; a
    /// histogram's `_count` / `_sum` are series of their own.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .and_then(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
    }
}

async fn scrape(relay: &Running) -> Metrics {
    let reply = relay.get("/metrics", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.content_type.starts_with("text/plain; version=0.0.4"),
        "{reply:?}"
    );
    let lines = reply.body.lines().map(|l| Ok(l.to_owned()));
    Metrics(Scrape::parse(lines).expect("a valid Prometheus exposition"))
}

/// Scrapes until `done` holds or `within` passes; returns the last scrape
/// (the caller's assertions then say what did not hold).
async fn scrape_until(
    relay: &Running,
    within: Duration,
    done: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + within;
    loop {
        let metrics = scrape(relay).await;
        if done(&metrics) || Instant::now() >= deadline {
            return metrics;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// GETs `path` until `done` holds or [`WITHIN`] passes; returns the last
/// reply.
async fn get_until(relay: &Running, path: &str, done: impl Fn(&HttpReply) -> bool) -> HttpReply {
    let deadline = Instant::now() + WITHIN;
    loop {
        let reply = relay.get(path, None).await;
        if done(&reply) || Instant::now() >= deadline {
            return reply;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// `count` rows for `exchange` / `routing_key`.
async fn insert_to(env: &TestEnv, exchange: &str, routing_key: &str, count: i32) {
    let sql = format!(
        "INSERT INTO {} (exchange, routing_key, payload) SELECT $1, $2, 'x' FROM generate_series(1, $3)",
        env.table()
    );
    env.pg
        .execute(&sql, &[&exchange, &routing_key, &count])
        .await
        .expect("insert rows");
}

/// An AMQP URL at a port nothing listens on.
async fn closed_broker_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("amqp://guest:guest@{addr}/%2f")
}

#[tokio::test]
async fn metrics_count_exactly_the_rows_sent_dead_lettered_and_returned() {
    const SENT: i64 = 20;
    const MISSING: i64 = 3;
    const RETURNED: i64 = 2;
    let env = TestEnv::new("metrics_counts").await;
    env.insert_rows(SENT as usize).await;
    insert_to(&env, &unique("no_such_exchange"), "k", MISSING as i32).await;
    insert_to(&env, "", &unique("no_such_queue"), RETURNED as i32).await;
    // One attempt each: every row ends sent or dead after exactly one try.
    let relay = Running::start(env.run_args(&["--max-attempts", "1"])).await;
    let dead = || env.scalar("SELECT count(*) FROM {t} WHERE dead_at IS NOT NULL");
    let settled = wait_until(WITHIN, || async {
        env.count_sent().await == SENT && dead().await == MISSING + RETURNED
    })
    .await;
    assert!(settled, "the workload did not settle");

    let m = scrape_until(&relay, GAUGES_WITHIN, |m| {
        m.get("outbox_relay_messages_dead_lettered_total", &[]) == Some(5.0)
            && m.get("outbox_relay_dead_messages", &[]) == Some(5.0)
    })
    .await;
    let published = [("exchange", "amq.default")];
    assert_eq!(
        m.get("outbox_relay_messages_published_total", &published),
        Some(SENT as f64)
    );
    assert_eq!(
        m.get("outbox_relay_messages_dead_lettered_total", &[]),
        Some((MISSING + RETURNED) as f64)
    );
    for reason in outbox_relay::metrics::FailReason::ALL {
        let expected = match reason.as_str() {
            "exchange_missing" => MISSING,
            "returned" => RETURNED,
            _ => 0,
        };
        let series = m.get(
            "outbox_relay_messages_failed_total",
            &[("reason", reason.as_str())],
        );
        assert_eq!(series, Some(expected as f64), "reason {}", reason.as_str());
    }
    // Every row was claimed once; every batch timed in its three phases.
    let batches = m
        .get("outbox_relay_batch_size_count", &[])
        .expect("batch_size");
    assert_eq!(
        m.get("outbox_relay_batch_size_sum", &[]),
        Some((SENT + MISSING + RETURNED) as f64)
    );
    for phase in ["claim", "publish", "mark"] {
        let timed = m.get(
            "outbox_relay_batch_duration_seconds_count",
            &[("phase", phase)],
        );
        assert_eq!(timed, Some(batches), "phase {phase}");
    }
    assert_eq!(
        m.get("outbox_relay_delivery_latency_seconds_count", &[]),
        Some(SENT as f64)
    );
    assert_eq!(
        m.get("outbox_relay_pending_messages", &[("due", "true")]),
        Some(0.0)
    );
    assert_eq!(
        m.get("outbox_relay_pending_messages", &[("due", "false")]),
        Some(0.0)
    );
    assert_eq!(
        m.get("outbox_relay_oldest_pending_age_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(m.get("outbox_relay_worker_restarts_total", &[]), Some(0.0));
    assert_eq!(m.get("outbox_relay_workers_faulted", &[]), Some(0.0));
    assert_eq!(
        m.get("outbox_relay_reconnects_total", &[("service", "broker")]),
        Some(0.0)
    );
    assert!(m.get("outbox_relay_log_lines_dropped_total", &[]).is_some());
    assert!(m.get("outbox_relay_table_dead_tuples", &[]).is_some());
    assert!(
        m.get("outbox_relay_table_last_autovacuum_timestamp_seconds", &[])
            .is_some()
    );
    // The commit is the one checked out (build.rs asks git), not `unknown`.
    let commit = commit::checked_out_commit();
    let build = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", commit.as_str()),
    ];
    assert_eq!(m.get("outbox_relay_build_info", &build), Some(1.0));

    let open = relay
        .get(
            "/metrics",
            Some("application/openmetrics-text; version=1.0.0"),
        )
        .await;
    assert!(
        open.content_type
            .starts_with("application/openmetrics-text"),
        "{open:?}"
    );
    assert!(open.body.ends_with("# EOF\n"));
    assert!(
        open.body
            .contains("outbox_relay_messages_dead_lettered_total 5"),
        "{}",
        open.body
    );
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn the_backlog_gauges_follow_a_backlog_up_and_down() {
    let env = TestEnv::new("metrics_backlog").await;
    let proxy = FaultProxy::start(AMQP_ADDR.parse().unwrap()).await;
    let amqp = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let relay = Running::start(env.run_args_with(PG_URL, &amqp, &[])).await;
    env.insert_rows(1).await;
    assert!(wait_until(WITHIN, || async { env.count_sent().await == 1 }).await);

    // The broker goes away; a backlog builds: 7 rows due (created 100 s
    // ago), 3 delayed by an hour.
    proxy.refuse(true);
    proxy.cut().await;
    let table = env.table();
    let due = format!(
        "INSERT INTO {table} (routing_key, payload, created_at) SELECT $1, 'due', now() - interval '{BACKLOG_AGE_SECS} seconds' FROM generate_series(1, 7)"
    );
    env.pg.execute(&due, &[&env.queue]).await.unwrap();
    let later = format!(
        "INSERT INTO {table} (routing_key, payload, available_at) SELECT $1, 'later', now() + interval '1 hour' FROM generate_series(1, 3)"
    );
    env.pg.execute(&later, &[&env.queue]).await.unwrap();
    let up = scrape_until(&relay, GAUGES_WITHIN, |m| {
        m.get("outbox_relay_pending_messages", &[("due", "true")]) == Some(7.0)
            && m.get("outbox_relay_pending_messages", &[("due", "false")]) == Some(3.0)
    })
    .await;
    assert_eq!(
        up.get("outbox_relay_pending_messages", &[("due", "true")]),
        Some(7.0)
    );
    assert_eq!(
        up.get("outbox_relay_pending_messages", &[("due", "false")]),
        Some(3.0)
    );
    let age = up
        .get("outbox_relay_oldest_pending_age_seconds", &[])
        .unwrap();
    assert!(
        (BACKLOG_AGE_SECS..BACKLOG_AGE_SECS + WITHIN.as_secs_f64() * 2.0).contains(&age),
        "{age}"
    );

    // The broker is back: the due rows drain, the delayed ones stay.
    proxy.refuse(false);
    assert!(wait_until(WITHIN, || async { env.count_sent().await == 8 }).await);
    let down = scrape_until(&relay, GAUGES_WITHIN, |m| {
        m.get("outbox_relay_pending_messages", &[("due", "true")]) == Some(0.0)
    })
    .await;
    assert_eq!(
        down.get("outbox_relay_pending_messages", &[("due", "true")]),
        Some(0.0)
    );
    assert_eq!(
        down.get("outbox_relay_pending_messages", &[("due", "false")]),
        Some(3.0)
    );
    assert_eq!(
        down.get("outbox_relay_oldest_pending_age_seconds", &[]),
        Some(0.0)
    );
    let reconnects = down.get("outbox_relay_reconnects_total", &[("service", "broker")]);
    assert!(reconnects.is_some_and(|n| n >= 1.0), "{reconnects:?}");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn readiness_follows_the_database_and_not_the_broker_in_outbox_mode() {
    let env = TestEnv::new("readyz_outbox").await;
    let database = FaultProxy::start(PG_ADDR.parse().unwrap()).await;
    let pg = format!("postgres://root@{}/test", database.addr);
    let relay = Running::start(env.run_args_with(&pg, &closed_broker_url().await, &[])).await;

    let ready = relay.get("/readyz", None).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "database: ok\n"));
    let live = relay.get("/livez", None).await;
    assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));

    database.refuse(true);
    database.cut().await;
    let unready = get_until(&relay, "/readyz", |r| r.status == 503).await;
    assert!(unready.body.starts_with("database: failed"), "{unready:?}");

    database.refuse(false);
    let ready_again = wait_until(WITHIN, || async {
        relay.get("/readyz", None).await.status == 200
    })
    .await;
    assert!(ready_again);
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn a_direct_mode_sidecar_is_ready_only_while_its_broker_is_connected() {
    let env = TestEnv::new("readyz_direct").await;
    let broker = FaultProxy::start(AMQP_ADDR.parse().unwrap()).await;
    broker.refuse(true);
    let amqp = format!("amqp://guest:guest@{}/%2f", broker.addr);
    let args = env.run_args_with(PG_URL, &amqp, &["--ingress-mode", "direct"]);
    let relay = Running::start(args).await;

    let unready = relay.get("/readyz", None).await;
    assert_eq!(unready.status, 503, "{unready:?}");
    assert!(
        unready.body.contains("database: ok\nbroker: failed"),
        "{unready:?}"
    );

    broker.refuse(false);
    let ready = wait_until(WITHIN, || async {
        relay.get("/readyz", None).await.status == 200
    })
    .await;
    assert!(ready);
    let reply = relay.get("/readyz", None).await;
    assert_eq!(reply.body, "database: ok\nbroker: ok\n");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn liveness_reports_a_systemic_fault_with_its_reason_until_it_is_fixed() {
    let env = TestEnv::new("livez_fault").await;
    let relay = Running::start(env.run_args(&[])).await;
    let live = relay.get("/livez", None).await;
    assert_eq!(live.status, 200, "{live:?}");

    // The relay's role loses its grip on the table: no retry can cure that.
    let rename = format!("ALTER TABLE {} RENAME TO outbox_away", env.table());
    env.pg.batch_execute(&rename).await.unwrap();
    let faulted = get_until(&relay, "/livez", |r| r.status == 503).await;
    assert!(faulted.body.contains("paused"), "{faulted:?}");
    let m = scrape(&relay).await;
    assert!(
        m.get("outbox_relay_workers_faulted", &[])
            .is_some_and(|n| n >= 1.0)
    );

    // Fixed, and a batch goes through: alive again.
    let back = format!(
        "ALTER TABLE \"{}\".outbox_away RENAME TO outbox",
        env.schema
    );
    env.pg.batch_execute(&back).await.unwrap();
    env.insert_rows(1).await;
    let alive = wait_until(WITHIN, || async {
        relay.get("/livez", None).await.status == 200
    })
    .await;
    assert!(alive, "{:?}", relay.get("/livez", None).await);
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn database_reconnects_are_counted_when_the_relays_connections_are_killed() {
    let env = TestEnv::new("db_reconnects").await;
    let app_name = unique("reconnects");
    let url = format!("{PG_URL}?application_name={app_name}");
    let relay = Running::start(env.run_args_with(&url, AMQP_URL, &[])).await;
    env.insert_rows(5).await;
    assert!(wait_until(WITHIN, || async { env.count_sent().await == 5 }).await);
    let m = scrape(&relay).await;
    assert_eq!(
        m.get("outbox_relay_reconnects_total", &[("service", "database")]),
        Some(0.0)
    );
    let killed = env
        .scalar(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app_name}'"
        ))
        .await;
    assert!(killed > 0, "the relay holds connections");
    env.insert_rows(5).await;
    assert!(wait_until(WITHIN, || async { env.count_sent().await == 10 }).await);
    let m = scrape_until(&relay, WITHIN, |m| {
        m.get("outbox_relay_reconnects_total", &[("service", "database")])
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    relay.stop().await.unwrap();
    let reconnects = m
        .get("outbox_relay_reconnects_total", &[("service", "database")])
        .unwrap();
    assert!(
        (1.0..=killed as f64).contains(&reconnects),
        "{reconnects} reconnects after {killed} connections were killed"
    );
    env.drop_schema().await;
}
