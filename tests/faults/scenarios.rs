//! The scenarios of the fault-injection suite.

use crate::common::*;
use crate::{BATCH, RelayChild, Run, SERVICES, WINDOW, WITHIN, report};
use std::process::Command;
use std::time::Duration;

/// How often the stalled-broker scenario samples the relay's transactions.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How long the proxy scenario freezes the database connection (a fault
/// duration, not a wait for anything).
const DB_STALL: Duration = Duration::from_millis(500);

fn kills() -> usize {
    if report::soak() { 25 } else { 5 }
}

/// A random amount of progress to wait for before the next fault.
fn some_rows() -> i64 {
    fastrand::i64(BATCH as i64..(6 * BATCH) as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_process_killed_at_random_moments_loses_nothing() {
    let _serial = SERVICES.lock().await;
    let run = Run::start("sigkill", 4, 2_500).await;
    let mut relay = RelayChild::spawn(&run.env, &[], None);
    let mut sent = 0;
    for _ in 0..kills() {
        sent = run.progress(sent, some_rows()).await;
        relay.kill9();
        relay = RelayChild::spawn(&run.env, &[], None);
    }
    run.verify(kills(), WINDOW).await;
    relay.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_with_one_killed_repeatedly_lose_nothing() {
    let _serial = SERVICES.lock().await;
    let run = Run::start("three_relays", 4, 2_500).await;
    let steady = [
        RelayChild::spawn(&run.env, &[], None),
        RelayChild::spawn(&run.env, &[], None),
    ];
    let mut victim = RelayChild::spawn(&run.env, &[], None);
    let mut sent = 0;
    for _ in 0..kills() {
        sent = run.progress(sent, some_rows()).await;
        victim.kill9();
        victim = RelayChild::spawn(&run.env, &[], None);
    }
    run.verify(kills(), WINDOW).await;
    victim.terminate();
    steady.into_iter().for_each(RelayChild::terminate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_database_sessions_terminated_repeatedly_lose_nothing() {
    let _serial = SERVICES.lock().await;
    let run = Run::start("db_terminate", 4, 2_500).await;
    let app = unique("faults_relay");
    let url = format!("{PG_URL}?application_name={app}");
    let relay = RelayChild::spawn(&run.env, &["--database-url", &url], None);
    let mut sent = 0;
    for _ in 0..kills() {
        sent = run.progress(sent, some_rows()).await;
        // Right after the previous round the relay may still be
        // reconnecting: terminate as soon as it has sessions again.
        let terminate = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"
        );
        let killed = wait_until(WITHIN, || async { run.env.scalar(&terminate).await > 0 }).await;
        assert!(killed, "the relay's sessions were terminated");
    }
    run.verify(kills(), WINDOW).await;
    relay.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_holding_low_ids_is_not_skipped_once_it_commits() {
    let _serial = SERVICES.lock().await;
    let mut holder = pg_client().await;
    let mut run = Run::start("low_ids", 1, 0).await;
    // The open transaction takes the lowest ids; later rows commit first.
    let tx = holder.transaction().await.unwrap();
    let mut held = Vec::new();
    for _ in 0..20 {
        let id = uuid::Uuid::new_v4().to_string();
        tx.execute(
            &format!(
                "INSERT INTO {} (message_id, routing_key, payload) VALUES ($1, $2, 'held')",
                run.env.table()
            ),
            &[&id, &run.env.queue],
        )
        .await
        .unwrap();
        held.push(id);
    }
    let later = crate::ledger::produce(&run.env, 2, 500).await;
    run.produced
        .committed
        .extend(later.committed.iter().cloned());
    run.produced.rolled_back.extend(later.rolled_back);
    let relay = RelayChild::spawn(&run.env, &[], None);
    let want = later.committed.len() as i64;
    assert!(wait_until(WITHIN, || async { run.sent().await >= want }).await);
    let low_sent = run
        .env
        .scalar("SELECT count(*) FROM {t} WHERE payload = 'held' AND sent_at IS NOT NULL")
        .await;
    assert_eq!(low_sent, 0, "uncommitted rows are invisible to the relay");
    tx.commit().await.unwrap();
    run.produced.committed.extend(held);
    // The held transaction is the fault; it may duplicate nothing.
    run.verify(1, 0).await;
    relay.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let _serial = SERVICES.lock().await;
    let run = Run::start("broker_restart", 4, 2_500).await;
    let relay = RelayChild::spawn(&run.env, &[], None);
    let sent = run.progress(0, some_rows()).await;
    // stop_app returns once the broker has closed every connection; the
    // guard's drop starts it again.
    drop(BrokerStopped::stop());
    run.progress(sent, 1).await;
    run.verify(1, WINDOW).await;
    relay.terminate();
}

/// `rabbitmqctl stop_app`; dropping it starts the broker again and waits
/// until it answers, even when the test failed in between.
struct BrokerStopped;

impl BrokerStopped {
    fn stop() -> Self {
        rabbitmqctl(&["stop_app"]);
        Self
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
}

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl").arg("-q").args(args).status();
    assert!(status.is_ok_and(|s| s.success()), "rabbitmqctl {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_mid_stream_loses_nothing() {
    let _serial = SERVICES.lock().await;
    let run = Run::start("db_restart", 4, 2_500).await;
    let relay = RelayChild::spawn(&run.env, &[], None);
    run.progress(0, some_rows()).await;
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max()
        .expect("a PostgreSQL cluster");
    let status = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "database restarted");
    // The test's own connections died with the restart; verify opens new ones.
    let pg = pg_client().await;
    let table = run.env.table();
    assert!(
        wait_until(WITHIN, || async {
            let sql = format!("SELECT count(*) FROM {table} WHERE sent_at IS NULL");
            pg.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) == 0
        })
        .await,
        "the relay reconnected and drained"
    );
    run.verify(1, WINDOW).await;
    relay.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_frozen_past_the_confirm_timeout_holds_no_claim_beyond_the_bound() {
    let _serial = SERVICES.lock().await;
    let run = Run::start("broker_stall", 4, 1_500).await;
    let proxy = proxy::FaultProxy::start(AMQP_ADDR.parse().unwrap()).await;
    let app = unique("stall_relay");
    let pg = format!("{PG_URL}?application_name={app}");
    let amqp = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let args = [
        "--database-url",
        &pg,
        "--amqp-url",
        &amqp,
        "--confirm-timeout",
        "1s",
        "--shutdown-timeout",
        "5s",
    ];
    let relay = RelayChild::spawn(&run.env, &args, None);
    run.progress(0, some_rows()).await;
    proxy.stall();
    // Frozen for three confirm timeouts: sample the relay's transactions.
    let oldest = format!(
        "SELECT COALESCE(max(extract(epoch FROM now() - xact_start)), 0)::float8
         FROM pg_stat_activity WHERE application_name = '{app}' AND xact_start IS NOT NULL"
    );
    let mut worst: f64 = 0.0;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        let age: f64 = run.env.pg.query_one(&oldest, &[]).await.unwrap().get(0);
        worst = worst.max(age);
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    proxy.resume();
    // The claim bound: the 1 s confirm timeout plus the time to record the
    // failures and commit; the stall itself lasted 3 s.
    assert!(
        worst < 2.5,
        "a claim outlived the confirm timeout by far: {worst:.2}s"
    );
    run.verify(1, WINDOW).await;
    relay.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxies_on_both_services_delay_reset_and_cut_and_lose_nothing() {
    let _serial = SERVICES.lock().await;
    let run = Run::start("proxy_faults", 4, 2_500).await;
    let pg_proxy = proxy::FaultProxy::start(PG_ADDR.parse().unwrap()).await;
    let mq_proxy = proxy::FaultProxy::start(AMQP_ADDR.parse().unwrap()).await;
    let pg = format!("postgres://root@{}/test", pg_proxy.addr);
    let amqp = format!("amqp://guest:guest@{}/%2f", mq_proxy.addr);
    let args = [
        "--database-url",
        &pg,
        "--amqp-url",
        &amqp,
        "--confirm-timeout",
        "2s",
        "--shutdown-timeout",
        "5s",
    ];
    let relay = RelayChild::spawn(&run.env, &args, None);
    let mut faults = 0;
    let mut sent = run.progress(0, some_rows()).await;
    pg_proxy.delay(Duration::from_millis(5));
    mq_proxy.delay(Duration::from_millis(5));
    sent = run.progress(sent, some_rows()).await;
    pg_proxy.delay(Duration::ZERO);
    mq_proxy.delay(Duration::ZERO);
    for proxy in [&mq_proxy, &pg_proxy] {
        proxy.reset().await;
        faults += 1;
        sent = run.progress(sent, some_rows()).await;
    }
    // Connections opened now die after 64 KiB: the relay keeps reconnecting.
    mq_proxy.cut_after(Some(64 * 1024));
    mq_proxy.cut().await;
    let before = mq_proxy.connections();
    sent = run.progress(sent, some_rows()).await;
    mq_proxy.cut_after(None);
    mq_proxy.cut().await;
    faults += mq_proxy.connections() - before + 1;
    pg_proxy.stall();
    tokio::time::sleep(DB_STALL).await;
    pg_proxy.resume();
    faults += 1;
    run.progress(sent, 1).await;
    run.verify(faults, WINDOW).await;
    relay.terminate();
}

#[cfg(feature = "failpoints")]
mod kill_points {
    use super::*;
    use crate::IN_FLIGHT;

    /// Aborts the relay at `point` in its third batch, restarts it, and
    /// checks which rows came twice. One worker keeps up to two batches
    /// unmarked: the one it settles and the next, sent before it (the
    /// pipelined step). Only sent rows can come twice.
    async fn crash_at(point: &'static str, name: &'static str, expect: Expect) {
        let _serial = SERVICES.lock().await;
        let run = Run::start(name, 1, 1_000).await;
        let one = ["--concurrency", "1"];
        let mut crashing =
            RelayChild::spawn(&run.env, &one, Some(&format!("{point}=2*off->return")));
        let status = tokio::task::spawn_blocking(move || crashing.0.wait().unwrap())
            .await
            .unwrap();
        assert!(
            !status.success(),
            "the kill point aborted the relay: {status}"
        );
        let relay = RelayChild::spawn(&run.env, &one, None);
        let tally = run.verify(1, IN_FLIGHT * BATCH).await;
        let (least, most) = match expect {
            Expect::AtMostBatch => (0, BATCH),
            Expect::AtMostBatches => (0, IN_FLIGHT * BATCH),
            Expect::OneOrTwoBatches => (BATCH, IN_FLIGHT * BATCH),
        };
        assert!(
            (least..=most).contains(&tally.duplicates),
            "{name}: {} duplicates, expected {least}..={most}",
            tally.duplicates
        );
        relay.terminate();
    }

    enum Expect {
        /// Claimed only: the previous batch may be in flight.
        AtMostBatch,
        /// Sent: itself and the previous batch.
        AtMostBatches,
        /// Confirmed: itself for sure, and the next, sent before it settled.
        OneOrTwoBatches,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_after_claiming_duplicates_at_most_the_batch_in_flight() {
        crash_at("relay_after_claim", "kill_after_claim", Expect::AtMostBatch).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_after_publishing_duplicates_at_most_the_two_batches_in_flight() {
        crash_at(
            "relay_after_publish",
            "kill_after_publish",
            Expect::AtMostBatches,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_after_the_confirms_duplicates_the_batch_and_at_most_the_next() {
        crash_at(
            "relay_after_confirm",
            "kill_after_confirm",
            Expect::OneOrTwoBatches,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_during_commit_duplicates_the_batch_and_at_most_the_next() {
        crash_at(
            "relay_before_commit",
            "kill_before_commit",
            Expect::OneOrTwoBatches,
        )
        .await;
    }
}

/// Ordering keys through faults: rows over 200 keys (and rows without
/// one), three relays of which one is SIGKILLed repeatedly, then a broker
/// restart. Besides the ledger's verdict (lost 0, duplicates bounded), for
/// every key the order in which the consumer first saw its messages is the
/// key's commit order (`ordering_seq`): a crash or a lost connection may
/// send a key's rows again, never one before the row it follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_keys_keep_their_order_through_kills_and_a_broker_restart() {
    let _serial = SERVICES.lock().await;
    let env = TestEnv::new("ordered_faults").await;
    let started = std::time::Instant::now();
    let produced = crate::ledger::produce_ordered(&env, 4, report::scaled(2_000), 200).await;
    let consumer = crate::ledger::Consumer::start(&env.queue);
    let first_seen = consumer.first_seen();
    let keys: std::collections::HashMap<String, (String, i64)> = env
        .pg
        .query(
            &format!(
                "SELECT message_id, ordering_key, ordering_seq FROM {} WHERE ordering_key IS NOT NULL",
                env.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let run = Run {
        name: "ordered_faults",
        env,
        produced,
        consumer,
        started,
    };
    let steady = [
        RelayChild::spawn(&run.env, &[], None),
        RelayChild::spawn(&run.env, &[], None),
    ];
    let mut victim = RelayChild::spawn(&run.env, &[], None);
    let mut sent = 0;
    for _ in 0..kills() {
        sent = run.progress(sent, some_rows()).await;
        victim.kill9();
        victim = RelayChild::spawn(&run.env, &[], None);
    }
    sent = run.progress(sent, some_rows()).await;
    drop(BrokerStopped::stop());
    run.progress(sent, 1).await;
    run.verify(kills() + 1, WINDOW).await;
    victim.terminate();
    steady.into_iter().for_each(RelayChild::terminate);
    let order = first_seen.lock().await;
    let mut by_key: std::collections::HashMap<&str, Vec<i64>> = Default::default();
    for id in order.iter() {
        if let Some((key, seq)) = keys.get(id) {
            by_key.entry(key).or_default().push(*seq);
        }
    }
    assert!(by_key.len() >= 190, "{} keys", by_key.len());
    for (key, seqs) in &by_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} was first seen out of its commit order: {seqs:?}"
        );
    }
}
