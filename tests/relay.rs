//! The relay core against the real PostgreSQL and RabbitMQ: what arrives,
//! what is retried, what is dead-lettered, and what is never published;
//! and, as modules, the JSON API, the console and the monitoring.

mod api;
mod common;
mod console;
mod monitoring;
mod ordering;

use common::*;
use lapin::types::{AMQPValue, FieldTable};
use outbox_relay::App;
use outbox_relay::relay::Outcome;
use std::collections::HashSet;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);
const LINGER: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_committed_row_arrives_once_with_payload_headers_and_ids_intact() {
    let env = TestEnv::new("arrives").await;
    let sql = format!(
        "INSERT INTO {} (routing_key, payload, content_type, headers) VALUES ($1, $2, 'application/json', $3) RETURNING message_id::text, extract(epoch from created_at)::bigint",
        env.table()
    );
    let headers = serde_json::json!({"tenant": "acme", "attempt": 3, "nested": {"ok": true}});
    let row = env
        .pg
        .query_one(&sql, &[&env.queue, &br#"{"order":42}"#.to_vec(), &headers])
        .await
        .unwrap();
    let (message_id, created): (String, i64) = (row.get(0), row.get(1));

    let relay = Running::start(env.run_args(&[])).await;
    let got = env.consume(1, WITHIN, LINGER).await;
    relay.stop().await.unwrap();

    assert_eq!(got.len(), 1, "exactly one delivery");
    let d = &got[0];
    assert_eq!(d.data, br#"{"order":42}"#);
    assert_eq!(common::message_id(d), message_id);
    assert_eq!(
        d.properties.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*d.properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(*d.properties.timestamp(), Some(created as u64));
    let received = outbox_relay::amqp::table_to_json(d.properties.headers().as_ref().unwrap());
    assert_eq!(received, headers);
    assert_eq!(
        env.scalar("SELECT count(*) FROM {t} WHERE sent_at IS NOT NULL AND attempts = 0")
            .await,
        1
    );
    env.drop_schema().await;
}

#[tokio::test]
async fn a_rolled_back_insert_never_arrives() {
    let mut env = TestEnv::new("rollback").await;
    let table = env.table();
    let queue = env.queue.clone();
    let tx = env.pg.transaction().await.unwrap();
    tx.execute(
        &format!("INSERT INTO {table} (routing_key, payload) VALUES ($1, 'ghost')"),
        &[&queue],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    env.pg
        .execute(
            &format!("INSERT INTO {table} (routing_key, payload) VALUES ($1, 'real')"),
            &[&queue],
        )
        .await
        .unwrap();

    let relay = Running::start(env.run_args(&[])).await;
    let got = env.consume(1, WITHIN, Duration::from_millis(500)).await;
    relay.stop().await.unwrap();

    let payloads: Vec<&[u8]> = got.iter().map(|d| d.data.as_slice()).collect();
    assert_eq!(payloads, vec![b"real".as_slice()]);
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_inserted_concurrently_all_arrive_none_twice() {
    let env = TestEnv::new("tenk").await;
    let relay = Running::start(env.run_args(&["--concurrency", "4"])).await;
    // Eight producers, each committing many small transactions while the relay drains.
    let mut producers = Vec::new();
    for p in 0..8 {
        let table = env.table();
        let queue = env.queue.clone();
        producers.push(tokio::spawn(async move {
            let mut client = pg_client().await;
            for chunk in 0..25 {
                let tx = client.transaction().await.unwrap();
                let sql = format!("INSERT INTO {table} (routing_key, payload) SELECT $1, convert_to($2 || '-' || g, 'UTF8') FROM generate_series(1, 50) g");
                tx.execute(&sql, &[&queue, &format!("p{p}c{chunk}")]).await.unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    let got = env.consume(10_000, Duration::from_secs(90), LINGER).await;
    relay.stop().await.unwrap();

    let counts = tally(&got);
    let expected: HashSet<String> = env.all_message_ids().await.into_iter().collect();
    assert_eq!(expected.len(), 10_000);
    assert_eq!(counts.len(), 10_000, "every row arrived");
    assert!(counts.keys().all(|k| expected.contains(k)));
    assert!(counts.values().all(|&n| n == 1), "no row arrived twice");
    assert_eq!(env.count_sent().await, 10_000);
    env.drop_schema().await;
}

#[tokio::test]
async fn an_unroutable_row_is_retried_then_dead_lettered_and_kept() {
    let env = TestEnv::new("unroutable").await;
    let table = env.table();
    env.pg
        .execute(
            &format!(
                "INSERT INTO {table} (routing_key, payload) VALUES ('no-such-queue-anywhere', 'x')"
            ),
            &[],
        )
        .await
        .unwrap();
    let app = App::build(env.run_args(&["--max-attempts", "3"]))
        .await
        .unwrap();
    let mut relay = app.relay();

    // First attempt: returned as unroutable, so not marked sent.
    let attempted: f64 = env
        .pg
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await
        .unwrap()
        .get(0);
    let outcome = relay.relay_batch().await.unwrap();
    let Outcome::Relayed(report) = outcome else {
        panic!("expected a batch, got {outcome:?}")
    };
    assert_eq!((report.sent, report.retried, report.dead), (0, 1, 0));
    let row = env
        .pg
        .query_one(
            &format!(
                "SELECT attempts, last_error, sent_at IS NULL,
                        extract(epoch FROM available_at)::float8 > $1 FROM {table}"
            ),
            &[&attempted],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    let error: String = row.get(1);
    assert!(
        error.contains("unroutable") && error.contains("312"),
        "{error}"
    );
    assert!(row.get::<_, bool>(2), "not marked sent");
    // Compared with the attempt's start, not with a later now(): the
    // backoff here is only 20 ms and may have passed by the time we look.
    assert!(row.get::<_, bool>(3), "backed off beyond the attempt");

    // Retries come back after their backoff, until the third attempt dead-letters it.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while env
        .scalar("SELECT count(*) FROM {t} WHERE dead_at IS NOT NULL")
        .await
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead-lettered within the deadline"
        );
        if relay.relay_batch().await.unwrap() == Outcome::Empty {
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    let row = env
        .pg
        .query_one(
            &format!("SELECT attempts, sent_at IS NULL FROM {table}"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 3);
    assert!(
        row.get::<_, bool>(1),
        "still in the table, never marked sent"
    );
    assert_eq!(
        relay.relay_batch().await.unwrap(),
        Outcome::Empty,
        "dead rows are not claimed"
    );

    // Replay makes it pending again with a fresh budget.
    let replayed = app.outbox().replay(None).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(
        env.scalar("SELECT count(*) FROM {t} WHERE dead_at IS NULL AND attempts = 0")
            .await,
        1
    );
    relay.close().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn a_nacked_publish_is_not_marked_sent() {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let env = TestEnv::with_queue_args("nack", args).await;
    env.insert_rows(3).await;
    let app = App::build(env.run_args(&["--max-attempts", "5"]))
        .await
        .unwrap();
    let mut relay = app.relay();

    let Outcome::Relayed(report) = relay.relay_batch().await.unwrap() else {
        panic!("no batch")
    };
    assert_eq!(report.claimed, 3);
    assert_eq!(report.sent, 1, "the queue holds one message");
    assert_eq!(report.retried, 2, "the broker nacked the other two");
    let errors: Vec<String> = env
        .pg
        .query(
            &format!(
                "SELECT last_error FROM {} WHERE sent_at IS NULL",
                env.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(errors.len(), 2);
    assert!(
        errors.iter().all(|e| e.contains("negatively acknowledged")),
        "{errors:?}"
    );
    assert_eq!(env.count_sent().await, 1);
    relay.close().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn a_delayed_row_is_not_published_early() {
    let env = TestEnv::new("delayed").await;
    let table = env.table();
    env.pg.execute(&format!("INSERT INTO {table} (routing_key, payload, available_at) VALUES ($1, 'later', now() + interval '2 seconds')"), &[&env.queue]).await.unwrap();
    env.pg
        .execute(
            &format!("INSERT INTO {table} (routing_key, payload) VALUES ($1, 'now')"),
            &[&env.queue],
        )
        .await
        .unwrap();

    let relay = Running::start(env.run_args(&[])).await;
    let early = env.consume(1, WITHIN, Duration::from_millis(700)).await;
    let early_payloads: Vec<&[u8]> = early.iter().map(|d| d.data.as_slice()).collect();
    assert_eq!(
        early_payloads,
        vec![b"now".as_slice()],
        "only the due row before its time"
    );
    let due_at_publish = env
        .scalar("SELECT count(*) FROM {t} WHERE payload = 'later' AND sent_at IS NULL")
        .await;
    assert_eq!(due_at_publish, 1);

    let later = env.consume(1, WITHIN, Duration::ZERO).await;
    relay.stop().await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].data, b"later");
    let on_time = env
        .scalar("SELECT count(*) FROM {t} WHERE payload = 'later' AND sent_at >= available_at")
        .await;
    assert_eq!(on_time, 1, "published no earlier than available_at");
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_table_publish_every_row_exactly_once() {
    let env = TestEnv::new("two_relays").await;
    env.insert_rows(4000).await;
    let a = Running::start(env.run_args(&["--batch-size", "50", "--concurrency", "2"])).await;
    let b = Running::start(env.run_args(&["--batch-size", "50", "--concurrency", "2"])).await;
    let got = env.consume(4000, WITHIN, Duration::from_millis(500)).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();

    let counts = tally(&got);
    assert_eq!(counts.len(), 4000);
    assert!(
        counts.values().all(|&n| n == 1),
        "a row was published twice"
    );
    assert_eq!(env.count_sent().await, 4000);
    env.drop_schema().await;
}

#[tokio::test]
async fn a_malformed_row_fails_alone_and_its_batch_flows() {
    let env = TestEnv::new("poison").await;
    let table = env.table();
    env.insert_rows(5).await;
    env.pg.execute(&format!("INSERT INTO {table} (routing_key, payload, headers) VALUES ($1, 'bad headers', '[1,2]')"), &[&env.queue]).await.unwrap();
    env.pg.execute(&format!("INSERT INTO {table} (exchange, routing_key, payload) VALUES ('no_such_exchange_x', 'k', 'bad exchange')"), &[]).await.unwrap();
    env.pg
        .execute(
            &format!("INSERT INTO {table} (routing_key, payload) VALUES ($1, $2)"),
            &[&"r".repeat(300), &b"long key".to_vec()],
        )
        .await
        .unwrap();
    env.insert_rows(5).await;
    let app = App::build(env.run_args(&["--max-attempts", "1"]))
        .await
        .unwrap();
    let mut relay = app.relay();

    let Outcome::Relayed(report) = relay.relay_batch().await.unwrap() else {
        panic!("no batch")
    };
    assert_eq!((report.claimed, report.sent, report.dead), (13, 10, 3));
    let errors: Vec<String> = env
        .pg
        .query(
            &format!("SELECT last_error FROM {table} WHERE dead_at IS NOT NULL ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        errors[0].contains("headers must be a JSON object"),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("does not exist"), "{}", errors[1]);
    assert!(
        errors[2].contains("routing_key is 300 bytes"),
        "{}",
        errors[2]
    );
    let got = env.consume(10, WITHIN, LINGER).await;
    assert_eq!(got.len(), 10, "the good rows of the batch arrived");
    relay.close().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn on_sent_delete_removes_confirmed_rows_and_mark_purges_after_retention() {
    let env = TestEnv::new("on_sent").await;
    env.insert_rows(20).await;
    let relay = Running::start(env.run_args(&["--on-sent", "delete"])).await;
    assert_eq!(env.consume(20, WITHIN, Duration::ZERO).await.len(), 20);
    assert!(
        wait_until(WITHIN, || async {
            env.scalar("SELECT count(*) FROM {t}").await == 0
        })
        .await
    );
    relay.stop().await.unwrap();

    env.insert_rows(20).await;
    let relay = Running::start(env.run_args(&["--on-sent", "mark", "--retention", "1s"])).await;
    assert_eq!(env.consume(20, WITHIN, Duration::ZERO).await.len(), 20);
    // Marked first, then purged once older than the retention.
    assert!(
        wait_until(WITHIN, || async {
            env.scalar("SELECT count(*) FROM {t}").await == 0
        })
        .await,
        "purged"
    );
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn a_stalled_broker_times_out_the_batch_and_releases_its_claim() {
    let env = TestEnv::new("stall").await;
    let proxy = proxy::FaultProxy::start(AMQP_ADDR.parse().unwrap()).await;
    let amqp = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    env.insert_rows(3).await;
    let app = App::build(env.run_args_with(PG_URL, &amqp, &["--confirm-timeout", "1s"]))
        .await
        .unwrap();
    let mut relay = app.relay();
    // Open the channel first, then freeze the broker.
    assert!(matches!(relay.relay_batch().await.unwrap(), Outcome::Relayed(r) if r.sent == 3));
    env.insert_rows(3).await;
    proxy.stall();
    let started = std::time::Instant::now();
    let Outcome::Relayed(report) = relay.relay_batch().await.unwrap() else {
        panic!("no batch")
    };
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the confirm timeout"
    );
    assert_eq!((report.sent, report.retried), (0, 3));
    let errors = env.scalar("SELECT count(*) FROM {t} WHERE sent_at IS NULL AND attempts = 1 AND last_error LIKE 'no confirm within%'").await;
    assert_eq!(errors, 3);
    let idle = env.scalar(&format!("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND query LIKE '%{}%'", env.schema)).await;
    assert_eq!(idle, 0, "no session left idle in transaction");
    proxy.resume();
    relay.close().await;
    env.drop_schema().await;
}

/// The test schema's outbox on a pool of one connection of its own.
fn outbox_of(env: &TestEnv) -> outbox_relay::outbox::Outbox {
    use outbox_relay::outbox::{Identifier, Outbox};
    Outbox::new(pool_at(PG_URL, 1), Identifier::parse(&env.schema).unwrap())
}

/// A pool of `max_size` connections to `url`, built by the relay's `connect_pool`.
fn pool_at(url: &str, max_size: usize) -> deadpool_postgres::Pool {
    use outbox_relay::outbox::{PoolOptions, connect_pool};
    let url: outbox_relay::config::DatabaseUrl = url.parse().unwrap();
    connect_pool(
        url.config().clone(),
        url.tls(),
        PoolOptions {
            max_size,
            timeout: Duration::from_secs(5),
        },
    )
    .unwrap()
}

/// Invariant 4 on the server's side: a claim whose relay hangs (it holds
/// the transaction and sends nothing) is ended by the database after the
/// claim's idle bound, set with SET LOCAL in its own transaction, and its
/// rows can be claimed again.
#[tokio::test]
async fn the_database_ends_a_claim_left_idle_past_its_bound() {
    use outbox_relay::outbox::ClaimLimits;
    let env = TestEnv::new("idle_claim").await;
    env.insert_rows(5).await;
    let outbox = outbox_of(&env);
    let claim = outbox
        .claim(&ClaimLimits {
            rows: 10,
            max_payload: 1 << 20,
            batch_bytes: 1 << 20,
            idle_timeout: Duration::from_millis(300),
        })
        .await
        .unwrap();
    assert_eq!(claim.rows.len(), 5);
    let lockable = "SELECT count(*) FROM (SELECT id FROM {t} FOR UPDATE SKIP LOCKED) s";
    assert_eq!(env.scalar(lockable).await, 0, "the claim holds its rows");
    let released = wait_until(Duration::from_secs(10), || async {
        env.scalar(lockable).await == 5
    })
    .await;
    assert!(
        released,
        "the server ended the idle claim and freed its rows"
    );
    drop(claim);
    env.drop_schema().await;
}

/// A read-only database (a standby, `default_transaction_read_only`) is a
/// state a session takes on when it connects: a claim that meets it closes
/// the pool's idle sessions with its own, so that once the database is
/// fixed the next claim connects afresh and succeeds, rather than meeting
/// one stale session after another, each costing a systemic pause.
#[tokio::test]
async fn a_read_only_claim_closes_the_pools_idle_sessions() {
    use outbox_relay::outbox::{ClaimLimits, Identifier, Outbox};
    let env = TestEnv::new("ro_pool").await;
    env.insert_rows(2).await;
    let role = unique("ro_pool");
    env.pg
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA \"{s}\" TO {role}; \
             GRANT SELECT, UPDATE ON \"{s}\".outbox TO {role}; \
             ALTER ROLE {role} SET default_transaction_read_only = on",
            s = env.schema
        ))
        .await
        .unwrap();
    let pool = pool_at(&format!("postgres://{role}@127.0.0.1:5432/test"), 3);
    // Two idle sessions in the pool, both read-only.
    let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    drop((a, b));
    assert_eq!(pool.status().size, 2);
    let outbox = Outbox::new(pool.clone(), Identifier::parse(&env.schema).unwrap());
    let limits = ClaimLimits {
        rows: 10,
        max_payload: 1 << 20,
        batch_bytes: 1 << 20,
        idle_timeout: Duration::from_secs(5),
    };
    let error = outbox.claim(&limits).await.unwrap_err();
    assert!(error.is_systemic(), "{error}");
    assert!(error.to_string().contains("read-only"), "{error}");
    assert_eq!(pool.status().size, 0, "every session closed");
    let sessions = format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'");
    assert!(
        wait_until(WITHIN, || async {
            env.pg
                .query_one(&sessions, &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 0
        })
        .await,
        "the server saw every session go"
    );
    env.pg
        .batch_execute(&format!(
            "ALTER ROLE {role} RESET default_transaction_read_only"
        ))
        .await
        .unwrap();
    let claim = outbox.claim(&limits).await.expect("a fresh session claims");
    assert_eq!(claim.rows.len(), 2);
    drop(claim);
    drop((outbox, pool));
    let _ = env
        .pg
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}"))
        .await;
    env.drop_schema().await;
}

/// Claims call the schema's claim function (migration 0006, planned once
/// per session) when it exists, and send the statement it replaces when
/// it does not (a table migrated by an earlier version). The function is a
/// copy of the statement: both give the same rows, column for column,
/// payloads withheld past the batch's byte budget included.
#[tokio::test]
async fn claims_call_the_claim_function_and_fall_back_to_the_statement_without_it() {
    use outbox_relay::outbox::{ClaimLimits, Claimed, OnSent};
    let env = TestEnv::new("claim_fn").await;
    // Payloads "m1", "m2", "m3": a budget of 4 bytes loads the first two.
    env.insert_rows(3).await;
    let limits = ClaimLimits {
        rows: 10,
        max_payload: 1 << 20,
        batch_bytes: 4,
        idle_timeout: Duration::from_secs(5),
    };
    let loaded = |rows: &[Claimed]| {
        rows.iter()
            .filter(|c| matches!(c, Claimed::Row(r) if r.payload.is_some()))
            .count()
    };
    let with_function = outbox_of(&env);
    with_function.ensure_table().await.unwrap();
    let claim = with_function.claim(&limits).await.unwrap();
    assert_eq!((claim.rows.len(), loaded(&claim.rows)), (3, 2));
    let through_function = format!("{:?}", claim.rows);
    claim.finish(&[], OnSent::Mark, &[]).await.unwrap();

    // Renamed away, the function this relay found at start is gone: its
    // claim fails, which shows that it called the function.
    env.pg
        .batch_execute(&format!(
            "ALTER FUNCTION \"{}\".outbox_claim(bigint, bigint, bigint, bigint, bigint, boolean) RENAME TO old_claim",
            env.schema
        ))
        .await
        .unwrap();
    let error = with_function.claim(&limits).await.unwrap_err();
    assert!(error.to_string().contains("outbox_claim"), "{error}");

    // A relay started on a schema without it sends the statement.
    let without = outbox_of(&env);
    without.ensure_table().await.unwrap();
    let claim = without.claim(&limits).await.unwrap();
    assert_eq!(format!("{:?}", claim.rows), through_function);
    claim.finish(&[], OnSent::Mark, &[]).await.unwrap();
    env.drop_schema().await;
}

/// The relay asks the broker for 32 KiB frames (lapin buffers 32 frames
/// each way per connection: 2 MiB instead of 8 MiB at RabbitMQ's 128 KiB),
/// and `?frame_max=` in the URL overrides it. A message above the frame
/// still travels: its body spans frames.
#[tokio::test]
async fn connections_ask_for_32_kib_frames_unless_the_url_says_otherwise() {
    use outbox_relay::amqp::{FRAME_MAX, connect};
    use outbox_relay::config::AmqpUrl;
    let frame_max = |url: String| async move {
        let url: AmqpUrl = url.parse().unwrap();
        let conn = connect(&url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let negotiated = conn.configuration().frame_max();
        let _ = conn.close(200, "done".into()).await;
        negotiated
    };
    assert_eq!(FRAME_MAX, 32_768);
    assert_eq!(frame_max(AMQP_URL.to_owned()).await, FRAME_MAX);
    assert_eq!(
        frame_max(format!("{AMQP_URL}?frame_max=131072")).await,
        131_072
    );

    let env = TestEnv::new("frames").await;
    let big = vec![b'b'; 3 * FRAME_MAX as usize];
    env.pg
        .execute(
            &format!(
                "INSERT INTO {} (routing_key, payload) VALUES ($1, $2)",
                env.table()
            ),
            &[&env.queue, &big],
        )
        .await
        .unwrap();
    let app = App::build(env.run_args(&[])).await.unwrap();
    let mut relay = app.relay();
    assert!(matches!(relay.relay_batch().await.unwrap(), Outcome::Relayed(r) if r.sent == 1));
    let got = env.consume(1, WITHIN, LINGER).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, big, "the body arrives whole across frames");
    relay.close().await;
    env.drop_schema().await;
}
