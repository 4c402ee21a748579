//! An o5 application's own outbox table (`--table-format o5`): the table and
//! trigger o5's migrations create, rows inserted as o5's sender library
//! inserts them, `migrate --table-format o5` run with rows present, then
//! the relay: what arrives (the o5 bridge's conversion, the row's id as the
//! message's id), what is deleted, what is dead-lettered, and when delayed
//! rows go out.

use super::*;
use common::proxy::FaultProxy;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use outbox_relay::grpc::o5::{VERSION_HEADER, j5json};
use outbox_relay::outbox::Identifier;
use outbox_relay::outbox::migrate::{self, MigrateError};
use outbox_relay::proto::o5::messaging::v1::message::{Event, Extension, Request};
use outbox_relay::proto::o5::messaging::v1::{Any, Message, WireEncoding};
use std::collections::HashMap;
use std::time::SystemTime;

/// What o5-messaging's `outbox.Sender` writes to the headers column.
const SENDER_HEADERS: &str = "Content-Type=application%2Fjson";
const SERVICE: &str = "shop.v1.topic.OrderTopic";
const ROUTE: &str = "service.shop/v1/topic/OrderTopic.OrderPlaced";

/// A schema holding the outbox table and trigger as o5's migrations create
/// them (o5-runtime-sidecar's `testdata/db` and `db_delayed`).
async fn o5_schema(env: &TestEnv, delayed: bool) -> String {
    let schema = unique("o5t");
    let send_after = if delayed {
        ", send_after timestamptz NOT NULL"
    } else {
        ""
    };
    env.pg
        .batch_execute(&format!(
            r#"CREATE SCHEMA "{schema}";
CREATE TABLE "{schema}".outbox (id uuid PRIMARY KEY, data jsonb NOT NULL, headers text NOT NULL{send_after});
CREATE FUNCTION "{schema}".outbox_notify() RETURNS TRIGGER AS $$ BEGIN NOTIFY outboxmessage; RETURN NEW; END; $$ LANGUAGE plpgsql;
CREATE TRIGGER outbox_notify AFTER INSERT ON "{schema}".outbox EXECUTE PROCEDURE "{schema}".outbox_notify();"#
        ))
        .await
        .expect("o5's table");
    schema
}

/// An order message as an o5 application sends it, with `extension`.
fn order(extension: Extension) -> Message {
    Message {
        message_id: uuid::Uuid::new_v4().to_string(),
        grpc_service: SERVICE.into(),
        grpc_method: "OrderPlaced".into(),
        body: Some(Any {
            type_url: "type.googleapis.com/shop.v1.topic.OrderPlacedMessage".into(),
            value: br#"{"orderId":"42"}"#.to_vec(),
            encoding: WireEncoding::Protojson as i32,
        }),
        headers: [("tenant".to_owned(), "acme".to_owned())].into(),
        extension: Some(extension),
        ..Default::default()
    }
}

/// Inserts a row as o5's sender does (`INSERT INTO outbox (id, headers,
/// data)`); `data` is the message's JSON, as `protojson.Marshal` writes it.
async fn send(env: &TestEnv, schema: &str, id: &str, data: &str) {
    env.pg
        .execute(
            &format!(r#"INSERT INTO "{schema}".outbox (id, headers, data) VALUES ($1::text::uuid, $2, $3::text::jsonb)"#),
            &[&id, &SENDER_HEADERS, &data],
        )
        .await
        .expect("o5's insert");
}

fn json_of(message: &Message) -> String {
    String::from_utf8(j5json::encode(message).unwrap()).unwrap()
}

/// What o5's sidecar makes of a row holding `sent` with id `id`, leaving
/// app `shop` in env `test`.
fn relayed(sent: &Message, id: &str) -> Message {
    let mut want = sent.clone();
    want.message_id = id.to_owned();
    want.source_app = "shop".into();
    want.source_env = "test".into();
    want.headers
        .insert(VERSION_HEADER.into(), env!("CARGO_PKG_VERSION").into());
    if let Some(Extension::Request(request)) = &mut want.extension {
        request.reply_to = "test/shop".into();
    }
    want
}

/// `run --table-format o5` on `schema`, publishing to `exchange`.
fn o5_args<'a>(schema: &'a str, exchange: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--schema",
        schema,
        "--table-format",
        "o5",
        "--o5-app",
        "shop",
        "--o5-env",
        "test",
        "--o5-exchange",
        exchange,
        "--grpc-addr",
        "none",
    ];
    args.extend_from_slice(extra);
    args
}

async fn scalar(env: &TestEnv, schema: &str, sql: &str) -> i64 {
    let sql = sql.replace("{t}", &format!("\"{schema}\".outbox"));
    env.pg.query_one(&sql, &[]).await.expect(&sql).get(0)
}

/// Every row's id, data and headers, as o5 reads them.
async fn o5_rows(env: &TestEnv, schema: &str) -> Vec<(String, String, String)> {
    let sql = format!(r#"SELECT id::text, data::text, headers FROM "{schema}".outbox ORDER BY id"#);
    let rows = env.pg.query(&sql, &[]).await.unwrap();
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn drop_schemas(env: TestEnv, schema: &str) {
    let _ = env
        .pg
        .batch_execute(&format!(r#"DROP SCHEMA "{schema}" CASCADE"#))
        .await;
    env.drop_schema().await;
}

#[tokio::test]
async fn rows_o5_senders_wrote_before_and_after_the_migration_arrive_once_each_and_bad_ones_are_dead_lettered()
 {
    let env = TestEnv::new("o5t_drain").await;
    let exchange = super::o5::o5_exchange(&env).await;
    let schema = o5_schema(&env, false).await;
    let sent: Vec<(String, Message)> = [
        order(Extension::Event(Event {
            entity_name: "shop.v1.order".into(),
        })),
        order(Extension::Request(Request {
            reply_to: "whatever-the-sender-said".into(),
        })),
        order(Extension::Event(Event::default())),
    ]
    .into_iter()
    .map(|m| (uuid::Uuid::new_v4().to_string(), m))
    .collect();
    for (id, message) in &sent {
        send(&env, &schema, id, &json_of(message)).await;
    }
    // JSON, but not a Message; and o5's own tests' `{}`, which names no
    // service to route to.
    let (not_a_message, empty) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    send(&env, &schema, &not_a_message, r#"{"orderId": "42"}"#).await;
    send(&env, &schema, &empty, "{}").await;

    // The relay's own migrations refuse the o5 table and change nothing.
    let id = Identifier::parse(&schema).unwrap();
    let mut migrator = pg_client().await;
    let before = o5_rows(&env, &schema).await;
    let refused = migrate::migrate(&mut migrator, &id).await.unwrap_err();
    assert!(
        matches!(refused, MigrateError::WrongFormat { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("--table-format o5"),
        "{refused}"
    );

    let report = migrate::migrate_o5(&mut migrator, &id)
        .await
        .expect("migrates");
    assert_eq!(report.applied, ["o5_0001_relay_columns"]);
    let again = migrate::migrate_o5(&mut migrator, &id).await.unwrap();
    assert_eq!((again.applied.len(), again.already_applied.len()), (0, 1));
    assert_eq!(o5_rows(&env, &schema).await, before, "rows untouched");
    assert_eq!(
        scalar(
            &env,
            &schema,
            "SELECT count(*) FROM {t} WHERE attempts = 0 AND dead_at IS NULL"
        )
        .await,
        5
    );

    // o5's insert still works, and its trigger still fires.
    let late: Vec<(String, Message)> = (0..2)
        .map(|_| {
            let message = order(Extension::Request(Request::default()));
            (uuid::Uuid::new_v4().to_string(), message)
        })
        .collect();
    for (id, message) in &late {
        send(&env, &schema, id, &json_of(message)).await;
    }

    let relay = Running::start(env.run_args(&o5_args(&schema, &exchange, &[]))).await;
    let got = env.consume(5, WITHIN, LINGER).await;
    let api = relay.get("/api/rows", None).await;
    let all_gone = wait_until(WITHIN, || async {
        scalar(
            &env,
            &schema,
            "SELECT count(*) FROM {t} WHERE dead_at IS NULL",
        )
        .await
            == 0
    })
    .await;
    relay.stop().await.unwrap();

    let counts = tally(&got);
    assert_eq!(got.len(), 5, "each message once: {counts:?}");
    for (id, message) in sent.iter().chain(&late) {
        assert_eq!(counts.get(id), Some(&1), "row {id}");
        let d = got.iter().find(|d| common::message_id(d) == *id).unwrap();
        assert_eq!(d.exchange.as_str(), exchange);
        assert_eq!(d.routing_key.as_str(), ROUTE);
        assert_eq!(content_type(d).as_deref(), Some("application/o5-message"));
        assert_eq!(
            header(d, VERSION_HEADER).as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(header(d, "tenant").as_deref(), Some("acme"));
        let body = j5json::decode(&d.data).expect("the body is J5 JSON");
        assert_eq!(
            body,
            relayed(message, id),
            "the row's id is the message's id"
        );
    }
    assert!(all_gone, "confirmed rows are deleted");
    let dead = env
        .pg
        .query(
            &format!(r#"SELECT id::text, last_error, attempts FROM "{schema}".outbox WHERE dead_at IS NOT NULL"#),
            &[],
        )
        .await
        .unwrap();
    let dead: HashMap<String, (String, i32)> = dead
        .iter()
        .map(|r| {
            (
                r.get(0),
                (r.get::<_, Option<String>>(1).unwrap_or_default(), r.get(2)),
            )
        })
        .collect();
    assert_eq!(dead.len(), 2, "kept, dead: {dead:?}");
    let (error, attempts) = &dead[&not_a_message];
    assert!(error.contains("unknown field `orderId`"), "{error}");
    assert_eq!(*attempts, 1, "dead at once: no retry changes it");
    assert!(
        dead[&empty].0.contains("grpc_service is required"),
        "{:?}",
        dead[&empty]
    );
    assert_eq!(api.status, 501, "{}", api.body);
    assert!(api.body.contains("--table-format o5"), "{}", api.body);
    drop_schemas(env, &schema).await;
}

/// Consumes `expected` deliveries, each with when it arrived.
async fn consume_timed(env: &TestEnv, expected: usize) -> Vec<(lapin::message::Delivery, f64)> {
    let tag = unique("timed");
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = env
        .channel
        .basic_consume(
            env.queue.as_str().into(),
            tag.as_str().into(),
            options,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while got.len() < expected {
        let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, consumer.next()).await
        else {
            break;
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        got.push((delivery, now.as_secs_f64()));
    }
    let _ = env
        .channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    got
}

#[tokio::test]
async fn rows_of_the_delayed_variant_go_out_once_their_send_after_has_passed_not_before() {
    let env = TestEnv::new("o5t_delay").await;
    let exchange = super::o5::o5_exchange(&env).await;
    let schema = o5_schema(&env, true).await;
    migrate::migrate_o5(&mut pg_client().await, &Identifier::parse(&schema).unwrap())
        .await
        .expect("migrates");
    let relay = Running::start(env.run_args(&o5_args(&schema, &exchange, &[]))).await;
    let mut ids = Vec::new();
    for after in ["-1 second", "0 seconds", "2 seconds", "3 seconds"] {
        let id = uuid::Uuid::new_v4().to_string();
        let data = json_of(&order(Extension::Event(Event::default())));
        let sql = format!(
            r#"INSERT INTO "{schema}".outbox (id, data, headers, send_after)
               VALUES ($1::text::uuid, $2::text::jsonb, '', now() + $3::text::interval)"#
        );
        env.pg.execute(&sql, &[&id, &data, &after]).await.unwrap();
        ids.push(id);
    }
    let due: HashMap<String, f64> = env
        .pg
        .query(
            &format!(
                r#"SELECT id::text, extract(epoch FROM send_after)::float8 FROM "{schema}".outbox"#
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let got = consume_timed(&env, 4).await;
    let emptied = wait_until(WITHIN, || async {
        scalar(&env, &schema, "SELECT count(*) FROM {t}").await == 0
    })
    .await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 4);
    for id in &ids {
        let (_, arrived) = got
            .iter()
            .find(|(d, _)| common::message_id(d) == *id)
            .expect("each row arrives");
        let send_after = due[id];
        assert!(
            *arrived >= send_after,
            "{id} arrived {:.3}s before its send_after",
            send_after - arrived
        );
    }
    assert!(emptied, "every row deleted");
    drop_schemas(env, &schema).await;
}

#[tokio::test]
async fn a_row_the_broker_keeps_refusing_is_dead_lettered_at_max_attempts_and_the_loop_goes_on() {
    let env = TestEnv::new("o5t_attempts").await;
    let schema = o5_schema(&env, false).await;
    migrate::migrate_o5(&mut pg_client().await, &Identifier::parse(&schema).unwrap())
        .await
        .unwrap();
    let missing = unique("no_such_exchange");
    let args = o5_args(&schema, &missing, &["--max-attempts", "3"]);
    let relay = Running::start(env.run_args(&args)).await;
    let message = order(Extension::Event(Event::default()));
    for _ in 0..2 {
        send(
            &env,
            &schema,
            &uuid::Uuid::new_v4().to_string(),
            &json_of(&message),
        )
        .await;
    }
    let dead = "SELECT count(*) FROM {t} WHERE dead_at IS NOT NULL AND attempts = 3";
    let both = wait_until(WITHIN, || async { scalar(&env, &schema, dead).await == 2 }).await;
    // The loop goes on: a row written after them meets the same fate.
    send(
        &env,
        &schema,
        &uuid::Uuid::new_v4().to_string(),
        &json_of(&message),
    )
    .await;
    let third = wait_until(WITHIN, || async { scalar(&env, &schema, dead).await == 3 }).await;
    relay.stop().await.unwrap();
    assert!(both && third, "dead after 3 attempts each");
    let error: String = env
        .pg
        .query_one(
            &format!(r#"SELECT last_error FROM "{schema}".outbox LIMIT 1"#),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        error.contains(&missing) && error.contains("does not exist"),
        "{error}"
    );
    drop_schemas(env, &schema).await;
}

#[tokio::test]
async fn with_the_broker_down_rows_wait_in_the_o5_table_and_flow_once_it_is_back() {
    let env = TestEnv::new("o5t_down").await;
    let exchange = super::o5::o5_exchange(&env).await;
    let schema = o5_schema(&env, false).await;
    migrate::migrate_o5(&mut pg_client().await, &Identifier::parse(&schema).unwrap())
        .await
        .unwrap();
    let broker = FaultProxy::start(AMQP_ADDR.parse().unwrap()).await;
    broker.refuse(true);
    let amqp = format!("amqp://guest:guest@{}/%2f", broker.addr);
    let relay =
        Running::start(env.run_args_with(PG_URL, &amqp, &o5_args(&schema, &exchange, &[]))).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = uuid::Uuid::new_v4().to_string();
        send(
            &env,
            &schema,
            &id,
            &json_of(&order(Extension::Event(Event::default()))),
        )
        .await;
        ids.push(id);
    }
    let early = env.consume(1, Duration::from_secs(1), Duration::ZERO).await;
    assert!(
        early.is_empty(),
        "nothing is published while the broker is down"
    );
    let untouched = "SELECT count(*) FROM {t} WHERE attempts = 0 AND dead_at IS NULL";
    assert_eq!(
        scalar(&env, &schema, untouched).await,
        3,
        "nothing claimed, nothing counted"
    );

    broker.refuse(false);
    let got = env.consume(3, WITHIN, LINGER).await;
    let emptied = wait_until(WITHIN, || async {
        scalar(&env, &schema, "SELECT count(*) FROM {t}").await == 0
    })
    .await;
    relay.stop().await.unwrap();
    let counts = tally(&got);
    assert_eq!(got.len(), 3, "each once: {counts:?}");
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1));
    }
    assert!(emptied);
    drop_schemas(env, &schema).await;
}

#[tokio::test]
async fn migrate_for_o5_refuses_a_schema_without_an_o5_table_and_says_why() {
    let env = TestEnv::new("o5t_none").await;
    let mut migrator = pg_client().await;
    let missing = Identifier::parse(&unique("o5t_missing")).unwrap();
    let e = migrate::migrate_o5(&mut migrator, &missing)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    // The relay's own table is no o5 table either.
    let ours = Identifier::parse(&env.schema).unwrap();
    let e = migrate::migrate_o5(&mut migrator, &ours).await.unwrap_err();
    assert!(e.to_string().contains("no data column"), "{e}");
    env.drop_schema().await;
}

#[tokio::test]
async fn claims_load_data_within_the_byte_budget_and_a_row_above_the_size_limit_is_dead() {
    let env = TestEnv::new("o5t_bytes").await;
    let exchange = super::o5::o5_exchange(&env).await;
    let schema = o5_schema(&env, false).await;
    migrate::migrate_o5(&mut pg_client().await, &Identifier::parse(&schema).unwrap())
        .await
        .unwrap();
    let sized = |bytes: usize| {
        let mut message = order(Extension::Event(Event::default()));
        message.headers.insert("padding".into(), "p".repeat(bytes));
        message
    };
    // Each about 700 bytes: a 1 KiB budget loads one or two a claim.
    let mut ids = Vec::new();
    for _ in 0..6 {
        let id = uuid::Uuid::new_v4().to_string();
        send(&env, &schema, &id, &json_of(&sized(500))).await;
        ids.push(id);
    }
    let huge = uuid::Uuid::new_v4().to_string();
    send(&env, &schema, &huge, &json_of(&sized(3000))).await;
    let limits = ["--batch-max-bytes", "1KiB", "--max-message-size", "2KiB"];
    let relay = Running::start(env.run_args(&o5_args(&schema, &exchange, &limits))).await;
    let got = env.consume(6, WITHIN, LINGER).await;
    let only_dead = wait_until(WITHIN, || async {
        scalar(
            &env,
            &schema,
            "SELECT count(*) FROM {t} WHERE dead_at IS NULL",
        )
        .await
            == 0
    })
    .await;
    relay.stop().await.unwrap();
    let counts = tally(&got);
    assert_eq!(got.len(), 6, "each once: {counts:?}");
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1));
    }
    assert!(only_dead);
    let error: String = env
        .pg
        .query_one(
            &format!(r#"SELECT last_error FROM "{schema}".outbox WHERE id = $1::text::uuid AND dead_at IS NOT NULL"#),
            &[&huge],
        )
        .await
        .expect("the large row is kept, dead")
        .get(0);
    assert!(error.contains("above --max-message-size 2048"), "{error}");
    drop_schemas(env, &schema).await;
}
