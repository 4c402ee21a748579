//! What the relay consumes for the worker, derived from the services it
//! implements (the [`Catalog`] of its descriptors), and declaring it.
//!
//! | the worker implements | consumed queue | bound |
//! |---|---|---|
//! | unicast `worker_name = W` | `W` | (the default exchange routes to it) |
//! | broadcast `topic_name = T` | `--worker-queue` | to topic exchange `T`, with `service.<package/Service>.<Method>` of each method |
//! | reply | `--worker-queue` | (requesters name it as their reply-to) |
//! | an o5 topic | `--worker-queue` | to the o5 exchange, with each method's routing key |
//!
//! Every consumed queue `Q` gets `Q.retry`, whose messages dead-letter back
//! to `Q` (default exchange, `x-dead-letter-routing-key = Q`) when their
//! per-message TTL (`expiration`) runs out, and `Q.dead`, where messages
//! stay until an operator replays or purges them (`outbox-relay
//! dead-queue`).
//!
//! Invariants owned here: everything is durable and declared idempotently,
//! so every relay of a deployment declares the same, on every (re)start of
//! consuming; a plan that needs `--worker-queue` without one, or a queue
//! whose `.retry` name would not fit 255 bytes, is refused before anything
//! is consumed.

use crate::amqp::{Broker, BrokerError};
use crate::config::MAX_WORKER_QUEUE;
use crate::grpc::topology::{Catalog, Route};
use crate::grpc::{TopologyError, method_route};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use std::collections::{BTreeMap, BTreeSet};

/// Suffix of a consumed queue's retry queue.
pub const RETRY_SUFFIX: &str = ".retry";
/// Suffix of a consumed queue's dead-letter queue.
pub const DEAD_SUFFIX: &str = ".dead";

pub fn retry_queue(queue: &str) -> String {
    format!("{queue}{RETRY_SUFFIX}")
}

pub fn dead_queue(queue: &str) -> String {
    format!("{queue}{DEAD_SUFFIX}")
}

/// Why the worker's services cannot be consumed for.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the worker implements {services}, whose messages arrive on the worker's own queue: set --worker-queue (or --o5-app)"
    )]
    QueueRequired { services: String },
    #[error(
        "{service}: worker_name {queue:?} is {len} bytes; a consumed queue is at most {MAX_WORKER_QUEUE} (its .retry queue must fit 255)"
    )]
    QueueTooLong {
        service: String,
        queue: String,
        len: usize,
    },
    #[error("the worker's descriptors hold no service with a messaging option: nothing to deliver")]
    Nothing,
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

/// A binding of the worker's queue to a topic exchange.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    pub exchange: String,
    pub routing_key: String,
}

/// The queues consumed for the worker and what feeds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Consumed queues, by name.
    pub queues: BTreeSet<String>,
    /// Bindings of each queue (only the worker's own queue has some).
    pub bindings: BTreeMap<String, BTreeSet<Binding>>,
}

impl Plan {
    /// The plan of `catalog`; `worker_queue` is `--worker-queue` (or
    /// `--o5-app`), `o5_exchange` the o5 bridge's exchange.
    pub fn of(
        catalog: &Catalog,
        worker_queue: Option<&str>,
        o5_exchange: &str,
    ) -> Result<Self, PlanError> {
        let mut plan = Self::default();
        let mut needs_queue = BTreeSet::new();
        let mut own = BTreeSet::new();
        for path in catalog.paths() {
            let Some(method) = catalog.lookup(path) else {
                continue;
            };
            let binding = |exchange: &str| Binding {
                exchange: exchange.to_owned(),
                routing_key: method_route(&method.service, &method.method),
            };
            match &method.route {
                Route::Unicast { worker } => {
                    if worker.len() > MAX_WORKER_QUEUE {
                        return Err(PlanError::QueueTooLong {
                            service: method.service.clone(),
                            queue: worker.clone(),
                            len: worker.len(),
                        });
                    }
                    plan.queues.insert(worker.clone());
                    continue;
                }
                Route::Broadcast { topic } => {
                    own.insert(binding(topic));
                }
                Route::O5(_) => {
                    own.insert(binding(o5_exchange));
                }
                Route::Reply { .. } => {}
            }
            needs_queue.insert(method.service.clone());
        }
        if !needs_queue.is_empty() {
            let Some(queue) = worker_queue else {
                let services = needs_queue.into_iter().collect::<Vec<_>>().join(", ");
                return Err(PlanError::QueueRequired { services });
            };
            plan.queues.insert(queue.to_owned());
            plan.bindings
                .entry(queue.to_owned())
                .or_default()
                .extend(own);
        }
        if plan.queues.is_empty() {
            return Err(PlanError::Nothing);
        }
        Ok(plan)
    }

    /// Topic exchanges the bindings need.
    pub fn exchanges(&self) -> BTreeSet<&str> {
        self.bindings
            .values()
            .flatten()
            .map(|b| b.exchange.as_str())
            .collect()
    }
}

/// Declares every exchange, queue and binding of `plan` (idempotent).
pub async fn declare(broker: &Broker, plan: &Plan) -> Result<(), BrokerError> {
    let channel = broker.open_channel().await?;
    crate::amqp::declare::declare_topic_exchanges(&channel, plan.exchanges()).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for queue in &plan.queues {
        let mut retry_args = FieldTable::default();
        retry_args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        retry_args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.as_str().into()),
        );
        for (name, args) in [
            (queue.clone(), FieldTable::default()),
            (retry_queue(queue), retry_args),
            (dead_queue(queue), FieldTable::default()),
        ] {
            channel
                .queue_declare(ShortString::from(name), durable, args)
                .await
                .map_err(BrokerError::Channel)?;
        }
        for binding in plan.bindings.get(queue).into_iter().flatten() {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    binding.exchange.as_str().into(),
                    binding.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(BrokerError::Channel)?;
        }
    }
    let _ = channel.close(200, "declared".into()).await;
    broker.forget_exchanges();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::descriptors::pool_from_files;

    fn catalog(set: &str) -> Catalog {
        let path = std::path::PathBuf::from(env!("OUT_DIR")).join(set);
        Catalog::from_pool(&pool_from_files(&[path]).unwrap()).unwrap()
    }

    #[test]
    fn unicast_consumes_its_worker_name_and_broadcast_binds_the_worker_queue_per_method() {
        let plan = Plan::of(&catalog("test_descriptors.bin"), Some("shop"), "o5").unwrap();
        let queues: Vec<&str> = plan.queues.iter().map(String::as_str).collect();
        assert_eq!(queues, ["shop", "test-billing"]);
        let keys: Vec<(&str, &str)> = plan.bindings["shop"]
            .iter()
            .map(|b| (b.exchange.as_str(), b.routing_key.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("test-orders", "service.test/v1/OrderEvents.Cancelled"),
                ("test-orders", "service.test/v1/OrderEvents.Created"),
            ]
        );
        assert_eq!(
            plan.exchanges().into_iter().collect::<Vec<_>>(),
            ["test-orders"]
        );
    }

    #[test]
    fn a_broadcast_or_reply_service_without_a_worker_queue_is_refused_naming_it() {
        let e = Plan::of(&catalog("test_descriptors.bin"), None, "o5").unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("test.v1.OrderEvents"), "{shown}");
        assert!(shown.contains("test.v1.ChargeReplies"), "{shown}");
        assert!(shown.contains("--worker-queue"), "{shown}");
    }

    #[test]
    fn o5_topics_bind_the_worker_queue_to_the_o5_exchange() {
        let plan = Plan::of(&catalog("o5_descriptors.bin"), Some("shop"), "o5.test").unwrap();
        assert_eq!(plan.queues.len(), 1);
        assert!(
            plan.bindings["shop"]
                .iter()
                .any(|b| b.exchange == "o5.test" && b.routing_key == "service.foo/v1/FooTopic.Bar"),
            "{plan:?}"
        );
    }

    #[test]
    fn descriptors_without_messaging_services_are_nothing_to_deliver() {
        let e = Plan::of(&Catalog::default(), Some("shop"), "o5").unwrap_err();
        assert!(matches!(e, PlanError::Nothing), "{e}");
    }
}
