//! Delivery to the worker application (`--worker-addr`), against the real
//! RabbitMQ and a real tonic worker server ([`worker`]): each topology end
//! to end, from the relay's own ingress and from a plain AMQP publisher;
//! retries, dead letters and their replay; the prefetch bound; a worker
//! down for a while; shutdown with calls in flight; what readiness and
//! gRPC health say about delivery; TLS to the worker.
//!
//! Each test gets its own copy of the test protos' descriptor set
//! (`tests/proto/test/v1/topics.proto`) in which the broadcast topic and the
//! unicast worker are renamed to names of its own, so that tests running at
//! once (and the ingress tests, which use the protos' own names) never
//! consume each other's messages.

mod dead;
mod flow;
mod health;
mod retry;
mod tls;
mod topologies;
pub mod worker;

use super::{TEST_DESCRIPTORS, WITHIN};
use crate::common::*;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use std::path::PathBuf;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use worker::{Options, TestWorker};

pub const ORDERS: &str = "test.v1.OrderEvents";
pub const BILLING: &str = "test.v1.BillingCommands";
pub const REPLIES: &str = "test.v1.ChargeReplies";

/// The names one test's services use on the broker.
pub struct Names {
    /// The broadcast topic (OrderEvents).
    pub topic: String,
    /// The unicast worker (BillingCommands): its input queue.
    pub billing: String,
    /// `--worker-queue`: broadcast subscriptions and replies.
    pub own: String,
    /// The renamed descriptor set.
    pub set: PathBuf,
    /// Its bytes (for a worker serving reflection).
    pub set_bytes: Vec<u8>,
}

impl Names {
    pub fn new(test: &str) -> Self {
        let topic = unique(&format!("dlv_topic_{test}"));
        let billing = unique(&format!("dlv_billing_{test}"));
        let own = unique(&format!("dlv_own_{test}"));
        let set_bytes = descriptors::renamed_set(&topic, &billing);
        let set = std::env::temp_dir().join(format!("{}.bin", unique("dlv_set")));
        std::fs::write(&set, &set_bytes).unwrap();
        Self {
            topic,
            billing,
            own,
            set,
            set_bytes,
        }
    }

    pub fn set(&self) -> &str {
        self.set.to_str().unwrap()
    }

    /// `run` flags: the ingress serving the set, delivery to `worker`.
    pub fn relay_flags<'a>(&'a self, worker: &'a str) -> Vec<&'a str> {
        vec![
            "--descriptor-set",
            self.set(),
            "--declare-topology",
            "--worker-addr",
            worker,
            "--worker-descriptor-set",
            self.set(),
            "--worker-queue",
            &self.own,
        ]
    }

    /// Deletes what the relay declared for this test.
    pub async fn clean_up(self, channel: &Channel) {
        clean_up(channel, &[&self.billing, &self.own], &self.topic).await;
        let _ = std::fs::remove_file(&self.set);
    }
}

/// Deletes consumed `queues` with their retry and dead-letter queues, and
/// `exchange`.
pub async fn clean_up(channel: &Channel, queues: &[&str], exchange: &str) {
    for queue in queues {
        for name in [
            queue.to_string(),
            format!("{queue}.retry"),
            format!("{queue}.dead"),
        ] {
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}

/// A relay with its ingress and delivery to `worker`, plus `extra` flags.
pub async fn relay(env: &TestEnv, names: &Names, worker: &str, extra: &[&str]) -> Running {
    let mut flags = names.relay_flags(worker);
    flags.extend_from_slice(extra);
    super::sidecar(env, &flags).await
}

/// A test worker with `options`.
pub async fn worker(options: Options) -> TestWorker {
    TestWorker::start(options).await
}

/// Publishes `body` with `properties` (mandatory) and waits for the
/// broker's confirm; publishes again while it is returned unroutable (the
/// relay declares its queues and bindings as it starts).
pub async fn publish(
    env: &TestEnv,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    // A fresh channel per try: publishing to a missing exchange closes it.
    let routed = wait_until(WITHIN, || async {
        let channel = env.fresh_channel().await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let sent = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties.clone(),
            )
            .await;
        let confirmed = match sent {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        };
        let _ = channel.close(200, "published".into()).await;
        matches!(confirmed, Ok(lapin::Confirmation::Ack(None)))
    })
    .await;
    assert!(routed, "{exchange:?} {routing_key:?} routes to a queue");
}

/// Properties naming `service`/`method` as the ingress does, with a fresh
/// message_id (returned) and `extra` string headers.
pub fn named(service: &str, method: &str, extra: &[(&str, &str)]) -> (BasicProperties, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let mut headers = FieldTable::default();
    for (k, v) in [("grpc-service", service), ("grpc-method", method)]
        .iter()
        .chain(extra)
    {
        headers.insert(
            ShortString::from(*k),
            AMQPValue::LongString(v.as_bytes().to_vec().into()),
        );
    }
    let properties = BasicProperties::default()
        .with_message_id(id.as_str().into())
        .with_delivery_mode(2)
        .with_headers(headers);
    (properties, id)
}

/// Messages ready in `queue` (not counting those delivered and unacked);
/// `None` when there is no such queue.
pub async fn count(env: &TestEnv, queue: &str) -> Option<u32> {
    let channel = env.fresh_channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let count = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .map(|q| q.message_count())
        .ok();
    let _ = channel.close(200, "counted".into()).await;
    count
}

/// Messages ready in `queue`, which must exist.
pub async fn ready(env: &TestEnv, queue: &str) -> u32 {
    count(env, queue)
        .await
        .unwrap_or_else(|| panic!("no queue {queue}"))
}

/// Waits until `queue` exists and holds exactly `n` ready messages.
pub async fn wait_ready(env: &TestEnv, queue: &str, n: u32) -> bool {
    wait_until(WITHIN, || async { count(env, queue).await == Some(n) }).await
}

/// Waits until the relay has declared `queue`.
pub async fn wait_declared(env: &TestEnv, queue: &str) {
    let declared = wait_until(WITHIN, || async { count(env, queue).await.is_some() }).await;
    assert!(declared, "the relay declares {queue}");
}

/// Asserts that `queue`, its retry and its dead-letter queue are empty
/// (after the relay stopped, so nothing is unacked).
pub async fn assert_all_settled(env: &TestEnv, queue: &str) {
    for name in [
        queue.to_owned(),
        format!("{queue}.retry"),
        format!("{queue}.dead"),
    ] {
        assert_eq!(ready(env, &name).await, 0, "{name} is not empty");
    }
}

/// `/readyz`'s status and its `worker` line (empty when there is none).
pub async fn worker_readiness(relay: &Running) -> (u16, String) {
    let reply = relay.get("/readyz", None).await;
    let line = reply
        .body
        .lines()
        .find(|l| l.starts_with("worker: "))
        .unwrap_or_default()
        .to_owned();
    (reply.status, line)
}

/// The gRPC health status of `service` at the relay's ingress; `None` when
/// the check fails (an unknown service, no connection).
pub async fn grpc_health(relay: &Running, service: &str) -> Option<ServingStatus> {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let mut client = HealthClient::new(super::channel(relay).await);
    let reply = client.check(request).await.ok()?;
    Some(reply.into_inner().status())
}

/// The `worker` check of `/api/health`.
pub async fn worker_check(relay: &Running) -> serde_json::Value {
    let reply = relay.get("/api/health", None).await;
    let body: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    body["checks"]["worker"].clone()
}

/// The value of one series in the relay's `/metrics`.
pub async fn metric(relay: &Running, series: &str) -> f64 {
    let text = relay.get("/metrics", None).await.body;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `outbox_relay_deliveries_total{outcome="<outcome>"}`.
pub async fn deliveries(relay: &Running, outcome: &str) -> f64 {
    metric(
        relay,
        &format!("outbox_relay_deliveries_total{{outcome=\"{outcome}\"}}"),
    )
    .await
}
