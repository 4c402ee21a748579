//! Wake-ups: with the trigger enabled, an idle relay (whose poll interval is
//! far longer than the test's deadline) publishes a new row at once; the
//! LISTEN connection survives having its backend terminated.

mod common;

use common::*;
use outbox_relay::outbox::{Identifier, migrate};
use std::time::Duration;

/// Longer than any deadline below: only a wake-up can deliver in time.
const SLOW_POLL: &str = "120s";
const WITHIN: Duration = Duration::from_secs(20);

async fn enable_trigger(env: &TestEnv) {
    let schema = Identifier::parse(&env.schema).unwrap();
    migrate::set_wakeup_trigger(&env.pg, &schema, true)
        .await
        .unwrap();
    assert!(
        migrate::wakeup_trigger_enabled(&env.pg, &schema)
            .await
            .unwrap()
    );
}

/// The pid of the session LISTENing for `app`'s wake-ups, once it listens.
async fn listener_pid(env: &TestEnv, app: &str) -> Option<i32> {
    env.pg
        .query_opt(
            "SELECT pid FROM pg_stat_activity
             WHERE application_name = $1 AND query LIKE 'LISTEN %' LIMIT 1",
            &[&app],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

async fn insert_one(env: &TestEnv) {
    env.pg
        .execute(
            &format!(
                "INSERT INTO {} (routing_key, payload) VALUES ($1, 'wake')",
                env.table()
            ),
            &[&env.queue],
        )
        .await
        .unwrap();
}

async fn start_idle_relay(env: &TestEnv, app: &str) -> (Running, i32) {
    let pg = format!("{PG_URL}?application_name={app}");
    let relay = Running::start(env.run_args_with(
        &pg,
        AMQP_URL,
        &["--poll-interval", SLOW_POLL, "--concurrency", "2"],
    ))
    .await;
    assert!(
        wait_until(WITHIN, || async { listener_pid(env, app).await.is_some() }).await,
        "the relay listens for wake-ups"
    );
    let pid = listener_pid(env, app).await.expect("still listening");
    (relay, pid)
}

#[tokio::test]
async fn an_idle_relay_publishes_a_new_row_at_once_when_the_trigger_is_enabled() {
    let env = TestEnv::new("wake").await;
    enable_trigger(&env).await;
    let app = unique("wake");
    let (relay, _) = start_idle_relay(&env, &app).await;

    for round in 1..=3 {
        insert_one(&env).await;
        let got = env.consume(1, WITHIN, Duration::ZERO).await;
        assert_eq!(
            got.len(),
            1,
            "round {round}: woken well before the {SLOW_POLL} poll"
        );
    }
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn the_listener_reconnects_after_its_backend_is_terminated() {
    let env = TestEnv::new("wake_kill").await;
    enable_trigger(&env).await;
    let app = unique("wake_kill");
    let (relay, first) = start_idle_relay(&env, &app).await;

    env.pg
        .execute("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .unwrap();
    assert!(
        wait_until(WITHIN, || async {
            listener_pid(&env, &app)
                .await
                .is_some_and(|pid| pid != first)
        })
        .await,
        "a new LISTEN session replaces the terminated one"
    );
    insert_one(&env).await;
    let got = env.consume(1, WITHIN, Duration::ZERO).await;
    assert_eq!(got.len(), 1, "woken through the new connection");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}
