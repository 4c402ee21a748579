//! The relay rides out its services going away: broker connections cut,
//! database backends terminated. Nothing is lost; duplicates are allowed
//! (at-least-once) and bounded.

mod common;

use common::*;
use std::collections::HashSet;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(60);
/// How long the proxy refuses reconnects in the last cut (a fault duration).
const REFUSED_FOR: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_broker_connections_mid_stream_the_relay_reconnects_and_every_row_arrives() {
    let env = TestEnv::new("amqp_cut").await;
    let proxy = proxy::FaultProxy::start(AMQP_ADDR.parse().unwrap()).await;
    let amqp = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    env.insert_rows(3000).await;
    let relay = Running::start(env.run_args_with(
        PG_URL,
        &amqp,
        &["--batch-size", "100", "--concurrency", "2"],
    ))
    .await;

    // Cut every connection three times while the backlog drains; refuse
    // reconnects for a moment the last time, as a broker restart would.
    for round in 0..3 {
        let before = env.count_sent().await;
        assert!(
            wait_until(WITHIN, || async { env.count_sent().await > before }).await,
            "progress before cut {round}"
        );
        if round == 2 {
            proxy.refuse(true);
        }
        proxy.cut().await;
        if round == 2 {
            // A broker restart refuses connections for a while.
            tokio::time::sleep(REFUSED_FOR).await;
            proxy.refuse(false);
        }
    }
    assert!(
        wait_until(WITHIN, || async { env.count_sent().await == 3000 }).await,
        "all marked sent after reconnecting"
    );
    let got = env.consume(3000, WITHIN, Duration::from_millis(300)).await;
    relay.stop().await.unwrap();

    let counts = tally(&got);
    let expected: HashSet<String> = env.all_message_ids().await.into_iter().collect();
    assert!(
        expected.iter().all(|id| counts.contains_key(id)),
        "every row arrived"
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    // At most the batches in flight at each of the 3 cuts can repeat.
    // Each kill may resend what was sent and not yet marked: two workers,
    // each with up to two batches of 100 in flight (the pipelined step).
    assert!(duplicates <= 3 * 2 * 2 * 100, "{duplicates} duplicates");
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_database_backends_are_replaced_and_every_row_arrives() {
    let env = TestEnv::new("db_kill").await;
    let app_name = unique("relay");
    let pg = format!("{PG_URL}?application_name={app_name}");
    env.insert_rows(3000).await;
    let relay = Running::start(env.run_args_with(
        &pg,
        AMQP_URL,
        &["--batch-size", "100", "--concurrency", "2"],
    ))
    .await;

    for round in 0..3 {
        let before = env.count_sent().await;
        assert!(
            wait_until(WITHIN, || async { env.count_sent().await > before }).await,
            "progress before kill {round}"
        );
        // The relay may still be reconnecting from the previous round:
        // terminate as soon as it has sessions again.
        let terminate = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app_name}'"
        );
        let killed = wait_until(WITHIN, || async { env.scalar(&terminate).await > 0 }).await;
        assert!(killed, "the relay's sessions were found and terminated");
    }
    assert!(
        wait_until(WITHIN, || async { env.count_sent().await == 3000 }).await,
        "all marked sent after recovering"
    );
    let got = env.consume(3000, WITHIN, Duration::from_millis(300)).await;
    relay.stop().await.unwrap();

    let counts = tally(&got);
    let expected: HashSet<String> = env.all_message_ids().await.into_iter().collect();
    assert!(
        expected.iter().all(|id| counts.contains_key(id)),
        "every row arrived"
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    // Each kill may resend what was sent and not yet marked: two workers,
    // each with up to two batches of 100 in flight (the pipelined step).
    assert!(duplicates <= 3 * 2 * 2 * 100, "{duplicates} duplicates");
    env.drop_schema().await;
}

#[tokio::test]
async fn a_relay_started_while_the_broker_is_down_buffers_then_delivers() {
    let env = TestEnv::new("broker_down").await;
    let proxy = proxy::FaultProxy::start(AMQP_ADDR.parse().unwrap()).await;
    proxy.refuse(true);
    let amqp = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    env.insert_rows(10).await;
    let relay = Running::start(env.run_args_with(PG_URL, &amqp, &[])).await;
    // While the broker is unreachable nothing is claimed or charged an attempt.
    let mut untouched = true;
    for _ in 0..10 {
        untouched &= env
            .scalar("SELECT count(*) FROM {t} WHERE attempts = 0 AND sent_at IS NULL")
            .await
            == 10;
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert!(untouched, "rows wait untouched while the broker is down");
    proxy.refuse(false);
    let got = env.consume(10, WITHIN, Duration::from_millis(200)).await;
    relay.stop().await.unwrap();
    assert_eq!(tally(&got).len(), 10);
    env.drop_schema().await;
}
