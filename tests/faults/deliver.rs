//! The receiving side under SIGKILL: a relay delivering a queue to a worker
//! application (`--worker-addr`) is killed mid-delivery and restarted.
//! Every message reaches the worker (lost 0); a message is acked only after
//! the worker's OK, so at each kill what the worker has not received is
//! still in the queue; duplicates (answered OK but killed before the ack
//! reached the broker, or called and killed before the answer) are
//! messages unacked at the kill, at most the prefetch per kill.

use crate::common::descriptors::{BILLING_SERVICE, billing_only_set};
use crate::common::*;
use crate::ledger::{Produced, Tally, queue_depth};
use crate::worker::{Options, TestWorker};
use crate::{RelayChild, SERVICES, WITHIN, report};
use lapin::BasicProperties;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Messages queued for the worker before the relay starts.
const MESSAGES: usize = 10_000;
/// `--worker-prefetch`: what one kill may leave unacked.
const PREFETCH: usize = 32;
const KILLS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_killed_mid_delivery_to_the_worker_loses_nothing_and_acks_nothing_early() {
    let _serial = SERVICES.lock().await;
    let started = Instant::now();
    let env = TestEnv::new("deliver_kill").await;
    let queue = unique("deliver_kill_worker");
    let set = std::env::temp_dir().join(format!("{queue}.bin"));
    std::fs::write(&set, billing_only_set(&queue)).unwrap();
    let worker = TestWorker::start(Options::default()).await;
    let total = report::scaled(MESSAGES);
    let published = publish(&env, &queue, total).await;
    let (url, prefetch) = (worker.url(), PREFETCH.to_string());
    let flags = [
        "--worker-addr",
        url.as_str(),
        "--worker-descriptor-set",
        set.to_str().unwrap(),
        "--worker-prefetch",
        prefetch.as_str(),
    ];
    let mut relay = RelayChild::spawn(&env, &flags, None);
    for kill in 1..=KILLS {
        let at = total * kill / (KILLS + 1) + fastrand::usize(..total / 20);
        let reached = wait_until(WITHIN, || async { worker.state.count() >= at }).await;
        assert!(reached, "kill {kill}: the worker got {at} calls");
        relay.kill9();
        let received = seen(&worker).len();
        assert!(
            received < total,
            "kill {kill} came mid-delivery: {received} of {total} received"
        );
        // Acked only after OK: what the worker has not received is still in
        // the queue, once the broker has taken back the dead relay's unacked.
        let ready = || async { queue_depth(&queue).await.unwrap_or(0) as usize };
        let held = wait_until(WITHIN, || async { ready().await + received >= total }).await;
        assert!(
            held,
            "kill {kill}: {} ready + {received} received < {total}: a message was acked before the worker had it",
            ready().await
        );
        println!(
            "deliver_sigkill: kill {kill} at {received} of {total} received, {} ready",
            ready().await
        );
        relay = RelayChild::spawn(&env, &flags, None);
    }
    let all = wait_until(WITHIN, || async {
        let seen = seen(&worker);
        published.iter().all(|id| seen.contains_key(id))
    })
    .await;
    relay.terminate();
    let seen = seen(&worker);
    let produced = Produced {
        committed: published,
        rolled_back: HashSet::new(),
    };
    let tally = Tally::of(&produced, &seen);
    let bound = PREFETCH * KILLS;
    println!("deliver_sigkill: {tally:?}, duplicates bound {bound}");
    let name = "deliver_sigkill";
    report::record(name, &tally, KILLS, bound, started.elapsed());
    assert!(all, "{} of {total} reached the worker", seen.len());
    assert_eq!(tally.lost, 0, "lost");
    assert_eq!(tally.phantom, 0, "phantom: an unknown message arrived");
    assert!(tally.duplicates <= bound, "{tally:?} above {bound}");
    for name in [
        queue.clone(),
        format!("{queue}.retry"),
        format!("{queue}.dead"),
    ] {
        assert_eq!(queue_depth(&name).await, Some(0), "{name} is empty");
        let _ = env
            .channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = std::fs::remove_file(&set);
    worker.stop().await;
    env.drop_schema().await;
}

/// How many calls each message_id got.
fn seen(worker: &TestWorker) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for call in worker.state.calls() {
        let id = call
            .meta("message-id")
            .expect("a message-id with each call");
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

/// Declares `queue` as the relay does (durable, no arguments) and puts `n`
/// persistent BillingCommands/Charge messages in it, each confirmed;
/// returns their message_ids.
async fn publish(env: &TestEnv, queue: &str, n: usize) -> HashSet<String> {
    let channel = env.fresh_channel().await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .expect("declare the worker's queue");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let service = format!("test.v1.{BILLING_SERVICE}");
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("grpc-service", service.as_str()),
        ("grpc-method", "Charge"),
    ] {
        headers.insert(
            ShortString::from(k),
            AMQPValue::LongString(v.as_bytes().to_vec().into()),
        );
    }
    let mandatory = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let mut ids = HashSet::new();
    let mut confirms = Vec::with_capacity(n);
    for i in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        let properties = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_delivery_mode(2)
            .with_headers(headers.clone());
        // ChargeCommand { order_id: "m<i>" }
        let order = format!("m{i:07}");
        let mut body = vec![0x0a, order.len() as u8];
        body.extend_from_slice(order.as_bytes());
        let confirm = channel
            .basic_publish("".into(), queue.into(), mandatory, &body, properties)
            .await
            .expect("publish");
        confirms.push(confirm);
        ids.insert(id);
    }
    for confirm in confirms {
        assert!(matches!(
            confirm.await.expect("confirm"),
            lapin::Confirmation::Ack(None)
        ));
    }
    let _ = channel.close(200, "published".into()).await;
    ids
}
