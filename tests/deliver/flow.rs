//! How hard the worker is driven: never more calls in flight than the
//! prefetch; nothing lost and no flood while it is down; calls in flight at
//! shutdown finish or go back to their queue.

use super::worker::{Options, TestWorker};
use super::*;
use std::collections::HashSet;
use std::time::Duration;

/// Simulated work per call, so that calls overlap.
const WORK: Duration = Duration::from_millis(20);
/// How long a paused relay is watched for taking messages it should not.
const OBSERVE: Duration = Duration::from_millis(500);
/// Messages queued while the worker is down (the figure).
const QUEUED: u32 = 10_000;
/// They all reach the worker within this once it is back (a debug build
/// on a loaded CI core delivers some hundreds a second).
const CATCH_UP: Duration = Duration::from_secs(120);

/// Publishes `n` messages for BillingCommands/Charge on one confirm
/// channel; returns their message_ids.
async fn publish_many(env: &TestEnv, queue: &str, n: usize) -> HashSet<String> {
    wait_declared(env, queue).await;
    let channel = env.fresh_channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut ids = HashSet::new();
    let mut confirms = Vec::new();
    for i in 0..n {
        let (properties, id) = named(BILLING, "Charge", &[]);
        ids.insert(id);
        let body = format!("\x0a\x08m{i:07}");
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body.as_bytes(),
                properties,
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(matches!(
            confirm.await.expect("confirm"),
            lapin::Confirmation::Ack(None)
        ));
    }
    ids
}

fn delivered_ids(worker: &TestWorker) -> HashSet<String> {
    worker
        .state
        .calls()
        .iter()
        .filter_map(|c| c.meta("message-id"))
        .collect()
}

#[tokio::test]
async fn the_worker_never_has_more_calls_in_flight_than_the_prefetch() {
    let env = TestEnv::new("dlv_prefetch").await;
    let names = Names::new("prefetch");
    let worker = worker(Options {
        work: WORK,
        ..Options::default()
    })
    .await;
    let relay = relay(&env, &names, &worker.url(), &["--worker-prefetch", "4"]).await;
    let ids = publish_many(&env, &names.billing, 60).await;
    let all = wait_until(WITHIN, || async { delivered_ids(&worker) == ids }).await;
    assert!(all, "{} of 60 delivered", delivered_ids(&worker).len());
    relay.stop().await.unwrap();
    assert_eq!(
        worker.state.max_in_flight(),
        4,
        "the prefetch is used, never exceeded"
    );
    assert_all_settled(&env, &names.billing).await;
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn a_worker_down_for_a_while_gets_all_10000_queued_messages_once_it_is_back_and_none_is_lost()
{
    let env = TestEnv::new("dlv_down").await;
    let names = Names::new("down");
    // The worker's port, with nothing listening on it yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}");
    let relay = relay(&env, &names, &url, &[]).await;
    let ids = publish_many(&env, &names.billing, QUEUED as usize).await;
    let found = wait_until(WITHIN, || async {
        let (status, line) = worker_readiness(&relay).await;
        status == 503 && line.contains("cannot be reached")
    })
    .await;
    assert!(found, "the relay found the worker down");
    assert!(
        wait_ready(&env, &names.billing, QUEUED).await,
        "paused, every message waits in the queue: {}",
        ready(&env, &names.billing).await
    );
    // Paused: it probes the worker, but takes no message while it is down.
    let taken = wait_until(OBSERVE, || async {
        ready(&env, &names.billing).await < QUEUED
    })
    .await;
    assert!(
        !taken,
        "a paused relay takes no message while the worker is down"
    );
    let worker = TestWorker::start_at(addr, Options::default()).await;
    let all = wait_until(CATCH_UP, || async { delivered_ids(&worker) == ids }).await;
    assert!(
        all,
        "{} of {QUEUED} delivered",
        delivered_ids(&worker).len()
    );
    relay.stop().await.unwrap();
    assert_eq!(worker.state.count(), QUEUED as usize, "each once");
    assert_all_settled(&env, &names.billing).await;
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn on_shutdown_calls_that_do_not_finish_in_time_go_back_to_their_queue() {
    let env = TestEnv::new("dlv_shutdown").await;
    let names = Names::new("shutdown");
    let worker = worker(Options {
        hang: true,
        ..Options::default()
    })
    .await;
    let flags = [
        "--worker-prefetch",
        "3",
        "--shutdown-timeout",
        "2s",
        "--confirm-timeout",
        "1s",
    ];
    let relay = relay(&env, &names, &worker.url(), &flags).await;
    publish_many(&env, &names.billing, 5).await;
    let busy = wait_until(WITHIN, || async { worker.state.in_flight() == 3 }).await;
    assert!(busy, "three calls in flight");
    relay.stop().await.expect("stops within --shutdown-timeout");
    assert_eq!(worker.state.count(), 3, "no call started while stopping");
    assert_eq!(
        ready(&env, &names.billing).await,
        5,
        "all five back in the queue"
    );
    for suffix in [".retry", ".dead"] {
        assert_eq!(ready(&env, &format!("{}{suffix}", names.billing)).await, 0);
    }
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}
