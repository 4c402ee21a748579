//! The relay against a hostile environment (issue: no single row, pipe or
//! privilege can stop it): a closed log pipe, signals, a role without
//! privileges or on a read-only session, a worker that panics, payloads far
//! above every limit, secrets in bad configuration, a flood of connections
//! and oversized metadata at the gRPC door. Each scenario asserts that good
//! messages keep flowing, that the fault is reported where an operator
//! looks, and (for child processes) that SIGTERM still exits 0.

use crate::common::*;
use crate::ledger::Produced;
use crate::{BIN, RelayChild, Run, SERVICES, WITHIN, report};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a paused relay is watched for republishing.
const OBSERVE_PAUSE: Duration = Duration::from_secs(6);
/// How often a child's exit is checked.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// SIGTERM, then the exit status within `within` (the child is killed and
/// the test fails if it ignores the signal).
fn terminate_within(mut relay: RelayChild, within: Duration) -> std::process::ExitStatus {
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(relay.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = relay.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "SIGTERM ignored for {within:?}");
        std::thread::sleep(POLL_EVERY);
    }
}

fn signal(relay: &RelayChild, signal: i32) {
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(relay.0.id() as i32, signal) };
}

/// A log file for a child's stderr, and its contents so far.
struct LogFile(std::path::PathBuf);

impl LogFile {
    fn new(name: &str) -> (Self, Stdio) {
        let path = std::env::temp_dir().join(format!("{}.log", unique(name)));
        let file = std::fs::File::create(&path).unwrap();
        (Self(path), Stdio::from(file))
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_log_pipe_loses_lines_not_messages_and_sigterm_still_works() {
    let _serial = SERVICES.lock().await;
    let run = Run::start("closed_stderr", 2, 1_000).await;
    let mut relay =
        RelayChild::spawn_with(&run.env, &["--log-level", "debug"], None, Stdio::piped());
    // The reader goes away at once, as `run 2>&1 | head -1` or a log
    // collector that died would.
    drop(relay.0.stderr.take());
    run.progress(0, 1).await;
    assert!(relay.alive(), "the relay survives a closed stderr");
    let status = terminate_within(relay, WITHIN);
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
    let relay = RelayChild::spawn(&run.env, &[], None);
    run.verify(0, 0).await;
    assert!(terminate_within(relay, WITHIN).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_sigusr_are_ignored_and_sigterm_stops_cleanly() {
    let _serial = SERVICES.lock().await;
    let run = Run::start("signals", 1, 500).await;
    let mut relay = RelayChild::spawn(&run.env, &[], None);
    // Once it relays, its handlers are installed (before `run` connects).
    run.progress(0, 1).await;
    for sig in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGHUP] {
        signal(&relay, sig);
    }
    assert!(
        relay.alive(),
        "SIGHUP/SIGUSR1/SIGUSR2 do not kill the relay"
    );
    run.verify(0, 0).await;
    assert!(relay.alive());
    assert!(terminate_within(relay, WITHIN).success());
}

/// A login role for one test; `setup` is run as a superuser after creating it.
async fn role(env: &TestEnv, name: &str, grants: &str) -> (String, String) {
    let role = unique(name);
    let sql = format!(
        "CREATE ROLE {role} LOGIN;
         GRANT USAGE ON SCHEMA \"{schema}\" TO {role};
         GRANT {grants} ON {table} TO {role};",
        schema = env.schema,
        table = env.table(),
    );
    env.pg.batch_execute(&sql).await.unwrap();
    let url = format!("postgres://{role}@127.0.0.1:5432/test");
    (role, url)
}

async fn drop_role(env: &TestEnv, role: &str) {
    let _ = env
        .pg
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}"))
        .await;
}

/// A channel whose connection the server has answered a health check on.
async fn served_channel(addr: std::net::SocketAddr) -> Option<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(channel)
}

async fn grpc_status(addr: std::net::SocketAddr) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(answer.into_inner().status).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_privilege_pauses_every_worker_reports_unhealthy_and_does_not_flood_the_broker() {
    let _serial = SERVICES.lock().await;
    let started = Instant::now();
    let env = TestEnv::new("no_delete").await;
    env.insert_rows(50).await;
    // UPDATE (for FOR UPDATE) but no DELETE: the claim and the publish
    // succeed, the delete after the confirms fails.
    let (role, url) = role(&env, "outbox_nodelete", "SELECT, INSERT, UPDATE").await;
    let relay = Running::start(env.run_args_with(
        &url,
        AMQP_URL,
        &["--on-sent", "delete", "--batch-size", "50"],
    ))
    .await;
    let addr = relay.grpc.unwrap();
    assert!(
        wait_until(WITHIN, || async { relay.health.faulted() > 0 }).await,
        "the fault is reported to health"
    );
    let problems = relay.health.problems(Duration::MAX);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("permission denied") && p.contains("grant")),
        "{problems:?}"
    );
    assert!(
        wait_until(WITHIN, || async {
            grpc_status(addr).await == Some(ServingStatus::NotServing)
        })
        .await,
        "gRPC health says NOT_SERVING"
    );
    let before = crate::ledger::queue_depth(&env.queue).await.unwrap();
    tokio::time::sleep(OBSERVE_PAUSE).await;
    let republished = crate::ledger::queue_depth(&env.queue).await.unwrap() - before;
    // Once per pause (1 s, 2 s, 4 s, with jitter), one batch of 50: before
    // the pause it was ~160 a second.
    assert!(
        republished <= 50 * 5,
        "{republished} messages republished in {OBSERVE_PAUSE:?}"
    );

    env.pg
        .batch_execute(&format!("GRANT DELETE ON {} TO {role}", env.table()))
        .await
        .unwrap();
    assert!(
        wait_until(WITHIN, || async {
            env.scalar("SELECT count(*) FROM {t}").await == 0
        })
        .await,
        "once granted, every row is relayed and deleted"
    );
    assert!(
        wait_until(WITHIN, || async {
            relay.health.faulted() == 0 && grpc_status(addr).await == Some(ServingStatus::Serving)
        })
        .await,
        "healthy again"
    );
    relay.stop().await.unwrap();
    let depth = crate::ledger::queue_depth(&env.queue).await.unwrap() as usize;
    assert!(depth >= 50, "every row arrived at least once ({depth})");
    report::record(
        "missing_privilege",
        &crate::ledger::Tally {
            messages: 50,
            lost: 0,
            phantom: 0,
            duplicates: depth - 50,
        },
        1,
        50 * 8,
        started.elapsed(),
    );
    drop_role(&env, &role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_is_logged_with_its_cause_and_fix_and_relaying_resumes() {
    let _serial = SERVICES.lock().await;
    let run = Run::start("read_only", 1, 300).await;
    let (role, url) = role(&run.env, "outbox_ro", "SELECT, INSERT, UPDATE, DELETE").await;
    run.env
        .pg
        .batch_execute(&format!(
            "ALTER ROLE {role} SET default_transaction_read_only = on"
        ))
        .await
        .unwrap();
    let (log, stderr) = LogFile::new("read_only");
    let mut relay = RelayChild::spawn_with(
        &run.env,
        &["--database-url", &url, "--log-level", "info"],
        None,
        stderr,
    );
    let said = || {
        let text = log.text();
        text.contains("read-only transaction")
            && text.contains("point --database-url at the primary")
    };
    let deadline = Instant::now() + WITHIN;
    while !said() {
        assert!(Instant::now() < deadline, "no clear error: {}", log.text());
        std::thread::sleep(POLL_EVERY);
    }
    let text = log.text();
    assert!(!text.contains("db error"), "{text}");
    assert_eq!(
        text.matches("retrying cannot cure").count(),
        1,
        "logged once a minute, not per attempt: {text}"
    );
    assert_eq!(run.sent().await, 0);
    run.env
        .pg
        .batch_execute(&format!(
            "ALTER ROLE {role} RESET default_transaction_read_only"
        ))
        .await
        .unwrap();
    // Nothing else is done: the relay's sessions are still read-only, and
    // its next claim fails on one and closes every idle one, so that the
    // claim after the pause connects afresh and sees the fixed setting.
    // (Terminating the sessions here instead would be a fault of its own: a
    // session opened after the reset could be cut between publish and mark.)
    assert!(relay.alive());
    run.verify(1, 0).await;
    assert!(terminate_within(relay, WITHIN).success());
    let pg = pg_client().await;
    let _ = pg
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_is_restarted_and_logged_and_nothing_is_lost() {
    let _serial = SERVICES.lock().await;
    let run = Run::start("worker_panic", 2, 1_000).await;
    let (log, stderr) = LogFile::new("worker_panic");
    let relay = RelayChild::spawn_with(
        &run.env,
        &["--log-level", "warn"],
        Some("relay_worker_loop=2*panic"),
        stderr,
    );
    run.verify(0, 0).await;
    let text = log.text();
    assert!(text.contains("relay worker panicked"), "{text}");
    assert!(terminate_within(relay, WITHIN).success());
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_far_above_the_limits_are_never_loaded_and_memory_stays_under_the_pod_limit() {
    let _serial = SERVICES.lock().await;
    let mut run = Run::start("memory", 1, 500).await;
    let insert = format!(
        "INSERT INTO {} (routing_key, payload) VALUES ($1, convert_to(repeat('x', $2), 'UTF8'))
         RETURNING message_id::text",
        run.env.table()
    );
    // Two rows of 100 MiB: above --max-message-size, never sent, never loaded.
    let mut huge = Vec::new();
    for _ in 0..2 {
        let row = run
            .env
            .pg
            .query_one(&insert, &[&run.env.queue, &(100i32 << 20)])
            .await
            .unwrap();
        huge.push(row.get::<_, String>(0));
    }
    // Eight of 10 MiB: sent, through the large-message lane one at a time.
    let mut large = Produced::default();
    for _ in 0..8 {
        let row = run
            .env
            .pg
            .query_one(&insert, &[&run.env.queue, &(10i32 << 20)])
            .await
            .unwrap();
        large.committed.insert(row.get::<_, String>(0));
    }
    run.produced.committed.extend(large.committed);
    let relay = RelayChild::spawn(
        &run.env,
        &["--max-attempts", "2", "--max-message-size", "16MiB"],
        None,
    );
    let pid = relay.0.id();
    let dead = format!(
        "SELECT count(*) FROM {} WHERE dead_at IS NOT NULL AND last_error LIKE '%above --max-message-size%'",
        run.env.table()
    );
    assert!(
        wait_until(WITHIN, || async {
            run.env
                .pg
                .query_one(&dead, &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 2
        })
        .await,
        "the 100 MiB rows are dead-lettered as too large"
    );
    let env_table = run.env.table();
    run.verify(2, 0).await;
    let rss = peak_rss(pid);
    assert!(
        rss < 128 << 20,
        "peak RSS {} MiB with 100 MiB rows in {env_table}",
        rss >> 20
    );
    assert!(terminate_within(relay, WITHIN).success());
}

#[tokio::test]
async fn secrets_in_bad_configuration_never_print() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "OUTBOX_AMQP_URL",
            "amqp://guest:Pw1#Secret2@127.0.0.1:5672/%2f",
            "Secret2",
        ),
        (
            "OUTBOX_DATABASE_URL",
            "postgres://app:p@ss-Secret3@127.0.0.1:5432/test",
            "Secret3",
        ),
        ("OUTBOX_GRPC_TOKEN", "tok-Secret4\n", "Secret4"),
    ];
    for (var, value, secret) in cases {
        for via_flag in [false, true] {
            let mut cmd = Command::new(BIN);
            cmd.arg("run")
                .env("OUTBOX_GRPC_ADDR", "none")
                .env("OUTBOX_HTTP_ADDR", "none");
            if via_flag {
                let flag = format!(
                    "--{}",
                    var["OUTBOX_".len()..].to_lowercase().replace('_', "-")
                );
                cmd.args([flag.as_str(), value]);
            } else {
                cmd.env(var, value);
            }
            let out = cmd.output().unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(2), "{var}: {all}");
            assert!(!all.contains(secret), "{var} printed its secret: {all}");
            assert!(
                all.contains("not shown") || all.contains("%40"),
                "{var}: {all}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_message_is_logged_without_its_payload() {
    let _serial = SERVICES.lock().await;
    let env = TestEnv::new("returned_log").await;
    let sql = format!(
        "INSERT INTO {} (routing_key, payload) VALUES ('no-such-queue-anywhere', convert_to('PAYLOAD-Secret5', 'UTF8'))",
        env.table()
    );
    env.pg.batch_execute(&sql).await.unwrap();
    let (log, stderr) = LogFile::new("returned_log");
    let relay = RelayChild::spawn_with(&env, &["--log-level", "info"], None, stderr);
    assert!(
        wait_until(WITHIN, || async {
            env.scalar("SELECT count(*) FROM {t} WHERE attempts >= 2")
                .await
                == 1
        })
        .await,
        "the returned row is retried"
    );
    assert!(terminate_within(relay, WITHIN).success());
    let text = log.text();
    assert!(text.contains("returned by the broker"), "{text}");
    assert!(!text.contains("Secret5"), "{text}");
}

#[tokio::test]
async fn tail_refuses_a_long_queue_name_and_stops_quietly_when_its_reader_goes() {
    let long = "q".repeat(300);
    let out = Command::new(BIN)
        .args(["tail", "--queue", &long])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("255"));

    let env = TestEnv::new("tail_pipe").await;
    let mut child = Command::new(BIN)
        .args(["tail", "--queue", &env.queue])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    publish_plain(&env, b"first").await;
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout); // `| head -c1`
    for _ in 0..3 {
        publish_plain(&env, b"more").await;
    }
    let deadline = Instant::now() + WITHIN;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "tail kept running");
        std::thread::sleep(POLL_EVERY);
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

async fn publish_plain(env: &TestEnv, body: &[u8]) {
    env.channel
        .basic_publish(
            "".into(),
            env.queue.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default().with_message_id(unique("m").into()),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_system_schema_is_refused() {
    for schema in ["information_schema", "pg_catalog", "PG_toast"] {
        let out = Command::new(BIN)
            .args(["stats", "--schema", schema])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{schema}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("system schema"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_door_limits_connections_and_answers_oversized_metadata_with_resource_exhausted() {
    let env = TestEnv::new("grpc_door").await;
    let relay = Running::start(env.run_args(&["--grpc-max-connections", "8"])).await;
    let addr = relay.grpc.unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(std::net::TcpStream::connect(addr).unwrap());
    }
    // The ninth is accepted and closed at once: it reads end-of-stream.
    let mut ninth = std::net::TcpStream::connect(addr).unwrap();
    ninth.set_read_timeout(Some(WITHIN)).unwrap();
    let _ = ninth.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let mut buf = [0u8; 64];
    let read = ninth.read(&mut buf);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "a connection past the limit is closed: {read:?}"
    );
    drop(held);
    // The server frees their slots once it reads their end, a moment later;
    // until then a new connection is past the limit and closed at once.
    // The oversized call goes on a connection the server has answered on.
    let deadline = std::time::Instant::now() + WITHIN;
    let channel = loop {
        if let Some(channel) = served_channel(addr).await {
            break channel;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connections are served again once the held ones are closed"
        );
        tokio::time::sleep(POLL_EVERY).await;
    };
    let mut client =
        outbox_relay::proto::outbox::v1::publisher_client::PublisherClient::new(channel);
    let mut request = tonic::Request::new(outbox_relay::proto::outbox::v1::PublishRequest {
        routing_key: env.queue.clone(),
        payload: b"x".to_vec(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-big", "v".repeat(100_000).parse().unwrap());
    let status = client.publish(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(env.scalar("SELECT count(*) FROM {t}").await, 0);
    relay.stop().await.unwrap();
}

/// JSON text of any shape a jsonb column holds, including what JSON parsers
/// do not (numbers beyond f64, nesting beyond 128 levels).
fn any_jsonb() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|u| u.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        Just("1e400".to_owned()),
        Just("-1e-400".to_owned()),
        Just("123456789012345678901234567890.5".to_owned()),
        "\\PC{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        (1usize..300_000).prop_map(|n| serde_json::to_string(&"s".repeat(n)).unwrap()),
    ];
    let tree = leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("\\PC{0,300}", inner), 0..5).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    prop_oneof![
        4 => tree.clone().prop_map(|v| format!("{{\"h\":{v}}}")),
        1 => tree,
        1 => (100usize..300).prop_map(|d| format!("{{\"d\":{}1{}}}", "[".repeat(d), "]".repeat(d))),
    ]
}

const EXTREME_TIMES: &[&str] = &[
    "now",
    "infinity",
    "-infinity",
    "4713-01-01 00:00:00+00 BC",
    "294276-12-31 23:59:59+00",
    "1969-12-31 23:59:59+00",
    "epoch",
];

/// Whatever a row's headers and created_at hold, one relay step publishes
/// it or fails it alone with a reason: never an error for the batch.
#[test]
fn any_jsonb_headers_and_any_timestamp_publish_or_fail_alone() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (env, app) = runtime.block_on(async {
        let env = TestEnv::new("any_jsonb").await;
        let app = outbox_relay::App::build(env.run_args(&["--max-attempts", "1"]))
            .await
            .unwrap();
        (env, app)
    });
    let relay = tokio::sync::Mutex::new(app.relay());
    let insert = format!(
        "INSERT INTO {} (routing_key, payload, headers, created_at)
         VALUES ($1, 'p', $2::text::jsonb, $3::text::timestamptz) RETURNING id",
        env.table()
    );
    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    let rows = prop::collection::vec((any_jsonb(), prop::sample::select(EXTREME_TIMES)), 1..6);
    runner
        .run(&rows, |rows| {
            runtime.block_on(async {
                let mut ids = Vec::new();
                for (headers, created) in &rows {
                    match env
                        .pg
                        .query_one(&insert, &[&env.queue, headers, created])
                        .await
                    {
                        Ok(row) => ids.push(row.get::<_, i64>(0)),
                        // Not a value the column holds (e.g. a NUL escape).
                        Err(e) => prop_assume!(e.as_db_error().is_some()),
                    }
                }
                let outcome = relay.lock().await.relay_batch().await;
                prop_assert!(outcome.is_ok(), "{outcome:?}");
                let check = format!(
                    "SELECT count(*) FROM {} WHERE id = ANY($1)
                       AND (sent_at IS NOT NULL OR (dead_at IS NOT NULL AND last_error <> ''))",
                    env.table()
                );
                let done: i64 = env.pg.query_one(&check, &[&ids]).await.unwrap().get(0);
                prop_assert_eq!(done, ids.len() as i64, "rows {:?} left pending", ids);
                Ok(())
            })
        })
        .unwrap();
    runtime.block_on(env.drop_schema());
}

#[tokio::test]
async fn replay_leaves_and_does_not_list_rows_that_were_sent() {
    let env = TestEnv::new("replay_sent").await;
    let sql = format!(
        "INSERT INTO {} (routing_key, payload, sent_at, dead_at) VALUES ($1, 'p', now(), now()), ($1, 'p', NULL, now()) RETURNING id",
        env.table()
    );
    let ids: Vec<i64> = env
        .pg
        .query(&sql, &[&env.queue])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let out = Command::new(BIN)
        .args(["replay", "--all", "--schema", &env.schema])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout.trim(),
        format!("{{\"replayed\":[{}]}}", ids[1]),
        "only the dead, unsent row"
    );
    env.drop_schema().await;
}
