//! Permanent failures go to `<queue>.dead` at once, with the status that
//! sent them there; `outbox-relay dead-queue` lists, replays and purges them.

use super::worker::{Options, ok};
use super::*;
use std::sync::Arc;
use tonic::Status;

/// Runs `outbox-relay dead-queue <action> --queue <queue>`; its JSON lines.
async fn dead_queue(action: &str, queue: &str) -> Vec<serde_json::Value> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args([
            "dead-queue",
            action,
            "--queue",
            queue,
            "--amqp-url",
            AMQP_URL,
        ])
        .env_remove("OUTBOX_AMQP_URL")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dead-queue {action}: {stderr}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn a_permanent_error_sends_the_message_to_the_dead_letter_queue_at_once_and_replay_brings_it_back()
 {
    let env = TestEnv::new("dlv_dead").await;
    let names = Names::new("dead");
    let worker = worker(Options {
        script: Arc::new(|_, _| Err(Status::invalid_argument("amount must be positive"))),
        ..Options::default()
    })
    .await;
    let relay = relay(&env, &names, &worker.url(), &[]).await;
    let body = b"\x10\x7f".to_vec();
    let (properties, id) = named(BILLING, "Charge", &[("tenant", "acme")]);
    publish(&env, "", &names.billing, &body, properties).await;
    let dead = format!("{}.dead", names.billing);
    assert!(wait_ready(&env, &dead, 1).await, "dead-lettered");
    assert_eq!(worker.state.calls_with(&body).len(), 1, "never retried");
    // The copy is confirmed before the original is acked and counted.
    let counted = wait_until(WITHIN, || async { deliveries(&relay, "dead").await == 1.0 }).await;
    assert!(
        counted,
        "outbox_relay_deliveries_total{{outcome=\"dead\"}} is 1"
    );

    let listed = dead_queue("list", &names.billing).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["message_id"], id.as_str());
    assert_eq!(listed[0]["status"], "INVALID_ARGUMENT");
    assert_eq!(listed[0]["error"], "amount must be positive");
    assert_eq!(listed[0]["headers"]["tenant"], "acme");
    assert_eq!(ready(&env, &dead).await, 1, "listing leaves it in place");

    worker.state.answer(ok());
    let replayed = dead_queue("replay", &names.billing).await;
    assert_eq!(replayed[0]["replayed"], 1, "{replayed:?}");
    let again = wait_until(WITHIN, || async {
        worker.state.calls_with(&body).len() == 2
    })
    .await;
    assert!(again, "the replayed message is delivered again");
    relay.stop().await.unwrap();
    let calls = worker.state.calls_with(&body);
    assert_eq!(calls[1].meta("message-id").as_deref(), Some(id.as_str()));
    assert_eq!(calls[1].meta("tenant").as_deref(), Some("acme"));
    assert_eq!(calls[1].meta("x-outbox-attempts"), None, "a fresh budget");
    assert_eq!(calls[1].meta("x-outbox-status"), None);
    assert_all_settled(&env, &names.billing).await;
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn messages_naming_no_method_or_one_the_worker_lacks_are_dead_lettered_without_a_call() {
    let env = TestEnv::new("dlv_unroutable").await;
    let names = Names::new("unroutable");
    let worker = worker(Options::default()).await;
    let relay = relay(&env, &names, &worker.url(), &[]).await;
    let (nameless, _) = named("", "", &[]);
    publish(&env, "", &names.billing, b"no method", nameless).await;
    let (unknown, _) = named(BILLING, "Refund", &[]);
    publish(&env, "", &names.billing, b"no such method", unknown).await;
    let dead = format!("{}.dead", names.billing);
    assert!(wait_ready(&env, &dead, 2).await, "both dead-lettered");
    relay.stop().await.unwrap();
    assert_eq!(worker.state.count(), 0, "the worker was never called");

    let listed = dead_queue("list", &names.billing).await;
    let status_of = |payload: &str| {
        listed
            .iter()
            .find(|m| m["payload"] == payload)
            .map(|m| (m["status"].clone(), m["error"].to_string()))
            .expect(payload)
    };
    let (status, error) = status_of("no method");
    assert_eq!(status, "INVALID_ARGUMENT");
    assert!(error.contains("names no method"), "{error}");
    let (status, error) = status_of("no such method");
    assert_eq!(status, "UNIMPLEMENTED");
    assert!(error.contains("/test.v1.BillingCommands/Refund"), "{error}");

    let purged = dead_queue("purge", &names.billing).await;
    assert_eq!(purged[0]["purged"], 2, "{purged:?}");
    assert_eq!(ready(&env, &dead).await, 0);
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}
