//! Transient failures: a message the worker answers UNAVAILABLE is retried
//! through `<queue>.retry` after a backoff, with its attempt count, until
//! the worker takes it or `--max-attempts` sends it to `<queue>.dead`.

use super::worker::Options;
use super::*;
use std::sync::Arc;
use tonic::Status;

const FAILURES: usize = 3;

#[tokio::test]
async fn a_worker_failing_n_times_with_unavailable_gets_the_message_n_plus_one_times_and_it_is_acked_once()
 {
    let env = TestEnv::new("dlv_retry").await;
    let names = Names::new("retry");
    let worker = worker(Options {
        script: Arc::new(|_, earlier| {
            if earlier < FAILURES {
                Err(Status::unavailable("warming up"))
            } else {
                Ok(())
            }
        }),
        ..Options::default()
    })
    .await;
    let relay = relay(&env, &names, &worker.url(), &[]).await;
    let body = b"\x0a\x05retry".to_vec();
    let (properties, id) = named(BILLING, "Charge", &[]);
    publish(&env, "", &names.billing, &body, properties).await;

    let taken = wait_until(WITHIN, || async { deliveries(&relay, "ok").await >= 1.0 }).await;
    assert!(taken, "delivered after {} calls", worker.state.count());
    let retried = wait_until(WITHIN, || async {
        deliveries(&relay, "retry").await == FAILURES as f64
    })
    .await;
    assert!(retried, "each failure counted as a retry");
    relay.stop().await.unwrap();
    let calls = worker.state.calls_with(&body);
    assert_eq!(calls.len(), FAILURES + 1, "{calls:?}");
    for (n, call) in calls.iter().enumerate() {
        assert_eq!(call.meta("message-id").as_deref(), Some(id.as_str()));
        let attempts = call.meta("x-outbox-attempts");
        let expected = (n > 0).then(|| n.to_string());
        assert_eq!(attempts, expected, "call {n} carries the failures so far");
    }
    assert_all_settled(&env, &names.billing).await;
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn a_message_that_keeps_failing_goes_to_the_dead_letter_queue_after_max_attempts() {
    let env = TestEnv::new("dlv_exhausted").await;
    let names = Names::new("exhausted");
    let worker = worker(Options {
        script: Arc::new(|_, _| Err(Status::resource_exhausted("too busy"))),
        ..Options::default()
    })
    .await;
    let relay = relay(&env, &names, &worker.url(), &["--max-attempts", "3"]).await;
    let body = b"\x0a\x04busy".to_vec();
    let (properties, id) = named(BILLING, "Charge", &[]);
    publish(&env, "", &names.billing, &body, properties).await;

    let dead = format!("{}.dead", names.billing);
    assert!(wait_ready(&env, &dead, 1).await, "dead-lettered");
    relay.stop().await.unwrap();
    assert_eq!(worker.state.calls_with(&body).len(), 3);
    let channel = env.fresh_channel().await;
    let listed = outbox_relay::deliver::dead_queue::list(&channel, &names.billing, 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["message_id"], id.as_str());
    assert_eq!(listed[0]["attempts"], 3);
    assert_eq!(listed[0]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(listed[0]["error"], "too busy");
    assert_eq!(ready(&env, &dead).await, 1, "listing leaves it in place");
    assert_eq!(ready(&env, &names.billing).await, 0);
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}
