//! Bad input at every door: rows the relay cannot publish, configuration it
//! refuses, and garbage and oversized requests on the gRPC port.

use crate::common::*;
use crate::ledger::{Produced, Tally};
use crate::{BIN, RelayChild, Run, SERVICES, WITHIN, report};
use bytes::Bytes;
use outbox_relay::proto::outbox::v1::PublishRequest;
use outbox_relay::proto::outbox::v1::publisher_client::PublisherClient;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Request};

/// A poison row of each kind, and the `last_error` it must end with.
const POISON: &[(&str, &str)] = &[
    // 80 KiB, above the 64 KiB --max-message-size of the test relay.
    (
        "('', $1, convert_to(repeat('x', 81920), 'UTF8'), '{}')",
        "above --max-message-size",
    ),
    ("('', $1, 'p', '[1, 2]')", "headers must be a JSON object"),
    (
        "('', $1, 'p', '{\"n\": 18446744073709551615}')",
        "does not fit a signed 64-bit",
    ),
    ("(repeat('e', 300), $1, 'p', '{}')", "exchange is 300 bytes"),
    (
        "('no_such_exchange_anywhere', $1, 'p', '{}')",
        "does not exist",
    ),
    // Valid jsonb beyond what JSON parsers hold: a number beyond f64, and
    // nesting deeper than 128 levels.
    (
        "('', $1, 'p', '{\"x\": 1e400}')",
        "column headers cannot be read",
    ),
    (
        "('', $1, 'p', ('{\"k\": ' || repeat('[', 200) || repeat(']', 200) || '}')::jsonb)",
        "column headers cannot be read",
    ),
    // A header value bigger than the broker's frame: the broker would close
    // the connection under the whole batch.
    (
        "('', $1, 'p', jsonb_build_object('big', repeat('h', 200000)))",
        "frame size",
    ),
    // A NULL where the table was altered to allow one.
    (
        "('', CASE WHEN $1::text IS NULL THEN $1 END, 'p', '{}')",
        "column routing_key is NULL",
    ),
    // An internal exchange: the broker closes the channel (403).
    (
        "('outbox_test_internal', $1, 'p', '{}')",
        "refuses messages for exchange",
    ),
];

/// Declares the internal exchange the poison rows publish to.
async fn declare_internal_exchange(env: &TestEnv) {
    env.channel
        .exchange_declare(
            "outbox_test_internal".into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions {
                internal: true,
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_are_dead_lettered_and_the_good_rows_around_them_all_arrive() {
    let _serial = SERVICES.lock().await;
    let mut run = Run::start("poison", 1, 0).await;
    let args = ["--max-attempts", "3", "--max-message-size", "64KiB"];
    let good = report::scaled(3_000);
    declare_internal_exchange(&run.env).await;
    run.env
        .pg
        .batch_execute(&format!(
            "ALTER TABLE {} ALTER COLUMN routing_key DROP NOT NULL",
            run.env.table()
        ))
        .await
        .unwrap();
    // Timestamps at the ends of what a column holds are good rows: they
    // publish (without an AMQP timestamp when infinite).
    for created in ["infinity", "-infinity", "4713-01-01 BC", "294276-12-31"] {
        let id: String = run
            .env
            .pg
            .query_one(
                &format!(
                    "INSERT INTO {} (routing_key, payload, created_at) VALUES ($1, 'p', $2::text::timestamptz) RETURNING message_id::text",
                    run.env.table()
                ),
                &[&run.env.queue, &created],
            )
            .await
            .unwrap()
            .get(0);
        run.produced.committed.insert(id);
    }

    // Good rows with poison rows mixed in (their pace against a clean drain
    // is a benchmark figure: `cargo bench --bench relay`, scenario poison).
    let (mixed, poison_ids) = produce_with_poison(&run, good).await;
    let relay = RelayChild::spawn(&run.env, &args, None);
    let mixed_ids: Vec<String> = mixed.committed.iter().cloned().collect();
    wait_sent(&run.env, &mixed_ids).await;
    assert!(
        wait_until(WITHIN, || async {
            let sql = "SELECT count(*) FROM {t} WHERE dead_at IS NOT NULL";
            run.env.scalar(sql).await == poison_ids.len() as i64
        })
        .await,
        "every poison row dead-lettered"
    );

    for (id, expected) in &poison_ids {
        let row = run
            .env
            .pg
            .query_one(
                &format!("SELECT dead_at IS NOT NULL, attempts, last_error FROM {} WHERE message_id = $1", run.env.table()),
                &[id],
            )
            .await
            .unwrap();
        let (dead, attempts, error): (bool, i32, String) = (row.get(0), row.get(1), row.get(2));
        assert!(
            dead && attempts == 3,
            "{id}: dead {dead}, attempts {attempts}"
        );
        assert!(
            error.contains(expected),
            "{id}: last_error {error:?} lacks {expected:?}"
        );
    }
    run.produced.committed.extend(mixed.committed);
    run.produced.rolled_back.extend(mixed.rolled_back);
    // Poison rows fail before they are published and duplicate nothing,
    // except the internal exchange's: the broker closes the channel under
    // the batches in flight on it (two, pipelined), and rows it had
    // enqueued without confirming are sent again. The refusal is then
    // remembered for 5 s, so that happens at most once per internal-exchange
    // row (three of them).
    run.verify(3, crate::IN_FLIGHT * crate::BATCH).await;
    relay.terminate();
}

/// How often a child's exit is checked.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Runs `cmd`, which must exit on its own; a relay that started instead is
/// killed and the test fails.
fn refused_within(mut cmd: Command, within: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} started instead of refusing its configuration");
        }
        std::thread::sleep(POLL_EVERY);
    }
    child.wait_with_output().unwrap()
}

async fn wait_sent(env: &TestEnv, ids: &[String]) {
    let sql = format!(
        "SELECT count(*) FROM {} WHERE message_id::text = ANY($1) AND sent_at IS NOT NULL",
        env.table()
    );
    assert!(
        wait_until(WITHIN, || async {
            env.pg
                .query_one(&sql, &[&ids])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == ids.len() as i64
        })
        .await,
        "good rows all sent"
    );
}

/// `good` good rows in transactions of ten, with a poison row after every
/// hundred.
async fn produce_with_poison(run: &Run, good: usize) -> (Produced, Vec<(String, &'static str)>) {
    let mut produced = Produced::default();
    let mut poison = Vec::new();
    for chunk in 0..good / 100 {
        let rows = crate::ledger::produce_on(&run.env, 0, 100).await;
        produced.committed.extend(rows.committed);
        produced.rolled_back.extend(rows.rolled_back);
        let (values, expected) = POISON[chunk % POISON.len()];
        let sql = format!(
            "INSERT INTO {} (exchange, routing_key, payload, headers) VALUES {values} RETURNING message_id::text",
            run.env.table()
        );
        let id: String = run
            .env
            .pg
            .query_one(&sql, &[&run.env.queue])
            .await
            .unwrap()
            .get(0);
        poison.push((id, expected));
    }
    (produced, poison)
}

#[tokio::test]
async fn malformed_configuration_is_refused_and_changes_nothing() {
    let _serial = SERVICES.lock().await;
    let started = Instant::now();
    let env = TestEnv::new("bad_config").await;
    env.insert_rows(100).await;
    let cases: &[(&str, &str, &str)] = &[
        ("OUTBOX_BATCH_SIZE", "lots", "--batch-size"),
        ("OUTBOX_BATCH_SIZE", "0", "--batch-size"),
        ("OUTBOX_POLL_INTERVAL", "-5s", "--poll-interval"),
        ("OUTBOX_ON_SENT", "maybe", "--on-sent"),
        (
            "OUTBOX_MAX_MESSAGE_SIZE",
            "12 parsecs",
            "--max-message-size",
        ),
        ("OUTBOX_AMQP_URL", "http://guest@localhost/", "amqp://"),
        (
            "OUTBOX_DATABASE_URL",
            "mysql://root@localhost/test",
            "postgres://",
        ),
        ("OUTBOX_SCHEMA", "app; DROP TABLE x", "--schema"),
        ("OUTBOX_CONFIRM_TIMEOUT", "1h", "--shutdown-timeout"),
    ];
    for (var, value, says) in cases {
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .env("OUTBOX_GRPC_ADDR", "127.0.0.1:0")
            .env("OUTBOX_HTTP_ADDR", "127.0.0.1:0")
            .env("OUTBOX_SCHEMA", &env.schema)
            .env(var, value);
        let out = refused_within(cmd, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(says),
            "{var}={value}: {stderr:?} should mention {says}"
        );
    }
    let untouched = env
        .scalar(
            "SELECT count(*) FROM {t} WHERE attempts = 0 AND sent_at IS NULL AND dead_at IS NULL",
        )
        .await;
    assert_eq!(untouched, 100, "refused configurations changed nothing");
    let tally = Tally {
        messages: 100,
        lost: 0,
        phantom: 0,
        duplicates: 0,
    };
    report::record(
        "bad_configuration",
        &tally,
        cases.len(),
        0,
        started.elapsed(),
    );
    env.drop_schema().await;
}

/// Largest gRPC request the relay of the gRPC scenario accepts.
const GRPC_LIMIT: usize = 64 << 10;

/// The gRPC door: while the relay drains the ledger's rows and takes good
/// calls, its port gets garbage, oversized requests, bytes that decode as
/// nothing, invalid messages and unknown paths. Each gets its clear answer,
/// the process stays up, nothing refused is stored or published, and
/// nothing accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_requests_on_the_grpc_port_lose_nothing() {
    let _serial = SERVICES.lock().await;
    let mut run = Run::start("grpc_bad_input", 2, 1_000).await;
    let addr = free_local_addr();
    let limit = format!("{GRPC_LIMIT}");
    let args = [
        "--grpc-addr",
        &addr.to_string(),
        "--grpc-max-request-size",
        &limit,
    ];
    let mut relay = RelayChild::spawn(&run.env, &args, None);
    let channel = connect_grpc(addr).await;
    let mut client = PublisherClient::new(channel.clone());
    let message = |id: &str, payload: Vec<u8>| PublishRequest {
        routing_key: run.env.queue.clone(),
        payload,
        message_id: id.to_owned(),
        ..Default::default()
    };

    let mut faults = 0;
    let mut refused = Vec::new();
    for round in 0..report::scaled(5) {
        for i in 0..20 {
            let id = uuid::Uuid::new_v4().to_string();
            let body = format!("grpc-{round}-{i}").into_bytes();
            client
                .publish(message(&id, body))
                .await
                .expect("a good call is stored");
            run.produced.committed.insert(id);
        }
        for bytes in grpc::garbage() {
            assert!(
                grpc::closes_garbage(addr, &bytes, WITHIN).await,
                "the relay closes a garbage connection"
            );
            faults += 1;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let e = client
            .publish(message(&id, vec![7; GRPC_LIMIT + 1]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "oversized: {e:?}");
        assert!(e.message().contains("--grpc-max-request-size"), "{e:?}");
        refused.push(id);
        let bad_id = PublishRequest {
            exchange: "e".repeat(300),
            ..message("", b"x".to_vec())
        };
        let e = client.publish(bad_id).await.unwrap_err();
        assert_eq!(
            e.code(),
            Code::InvalidArgument,
            "a 300-byte exchange: {e:?}"
        );
        // Field 1 (exchange, a string) whose length runs past the end.
        let truncated = Request::new(Bytes::from_static(&[0x0a, 0x7f, 0x41]));
        let e = grpc::call_raw(channel.clone(), "/outbox.v1.Publisher/Publish", truncated)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "undecodable: {e:?}");
        let nowhere = Request::new(Bytes::from_static(b"\x0a\x01x"));
        let e = grpc::call_raw(channel.clone(), "/outbox.v1.Publisher/Nope", nowhere)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented, "unknown method: {e:?}");
        faults += 4;
        assert!(relay.alive(), "the relay survives round {round}");
    }
    for id in &refused {
        let sql = "SELECT count(*) FROM {t} WHERE message_id = '".to_owned() + id + "'";
        assert_eq!(run.env.scalar(&sql).await, 0, "refused {id} was not stored");
    }
    // Anything refused that still arrived would count as a phantom.
    run.verify(faults, 0).await;
    relay.terminate();
}

/// A loopback address with a port that was free a moment ago.
fn free_local_addr() -> std::net::SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    probe.local_addr().unwrap()
}

/// Connects to the relay's gRPC ingress once it listens.
async fn connect_grpc(addr: std::net::SocketAddr) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
    let deadline = Instant::now() + WITHIN;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) if Instant::now() >= deadline => {
                panic!("the gRPC ingress listens on {addr}: {e}")
            }
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}
