//! Topic services declared with `(outbox.messaging.v1.config)`, served at
//! their real paths from a descriptor set or the application's reflection,
//! called with their own generated clients.

use super::test_v1::billing_commands_client::BillingCommandsClient;
use super::test_v1::charge_replies_client::ChargeRepliesClient;
use super::test_v1::order_events_client::OrderEventsClient;
use super::test_v1::{ChargeCommand, ChargeResult, OrderCreated, RequestMetadata};
use super::*;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::FieldTable;
use prost::Message;
use tonic::Code;

const TOPIC: &str = "test-orders";
const WORKER: &str = "test-billing";

fn topics_args() -> Vec<&'static str> {
    vec!["--descriptor-set", TEST_DESCRIPTORS, "--declare-topology"]
}

/// Waits until the relay has declared `exchange`, then binds `queue` to it.
async fn bind(env: &TestEnv, queue: &str, exchange: &str, pattern: &str) {
    let declared = wait_until(WITHIN, || async {
        let channel = env.fresh_channel().await;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
            .is_ok()
    })
    .await;
    assert!(
        declared,
        "exchange {exchange} declared by --declare-topology"
    );
    declare_queue(&env.channel, queue, FieldTable::default()).await;
    env.channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
}

/// Consumes from `queue` until a delivery satisfies `wanted`.
async fn receive(
    env: &TestEnv,
    queue: &str,
    wanted: impl Fn(&lapin::message::Delivery) -> bool,
) -> Vec<lapin::message::Delivery> {
    consume(
        &env.channel,
        queue,
        usize::MAX,
        Duration::from_secs(3),
        LINGER,
    )
    .await
    .into_iter()
    .filter(|d| wanted(d))
    .collect()
}

#[tokio::test]
async fn a_broadcast_reaches_every_worker_bound_to_its_topic_byte_for_byte() {
    let env = TestEnv::new("grpc_broadcast").await;
    let relay = sidecar(&env, &topics_args()).await;
    let workers = [unique("q_orders_a"), unique("q_orders_b")];
    for worker in &workers {
        bind(&env, worker, TOPIC, "service.test/v1/OrderEvents.*").await;
    }
    let order = OrderCreated {
        order_id: unique("order"),
        amount_cents: 4200,
        items: vec!["tea".into(), "cake".into()],
    };
    OrderEventsClient::new(channel(&relay).await)
        .created(order.clone())
        .await
        .expect("stored");
    let expected = order.encode_to_vec();
    for worker in &workers {
        let got = receive(&env, worker, |d| d.data == expected).await;
        assert_eq!(got.len(), 1, "worker {worker} gets exactly one copy");
        let d = &got[0];
        assert_eq!(d.exchange.as_str(), TOPIC);
        assert_eq!(
            d.routing_key.as_str(),
            "service.test/v1/OrderEvents.Created"
        );
        assert_eq!(content_type(d).as_deref(), Some("application/protobuf"));
        assert_eq!(
            header(d, "grpc-service").as_deref(),
            Some("test.v1.OrderEvents")
        );
        assert_eq!(header(d, "grpc-method").as_deref(), Some("Created"));
        assert_eq!(
            header(d, "proto-type").as_deref(),
            Some("test.v1.OrderCreated")
        );
        assert_eq!(OrderCreated::decode(d.data.as_slice()).unwrap(), order);
    }
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn a_unicast_message_goes_to_its_workers_input_queue_once() {
    let env = TestEnv::new("grpc_unicast").await;
    let relay = sidecar(&env, &topics_args()).await;
    let command = ChargeCommand {
        order_id: unique("order"),
        amount_cents: 999,
        request: Some(RequestMetadata {
            reply_to: "test-shop".into(),
            context: vec![1, 2, 3],
        }),
    };
    let id = uuid::Uuid::new_v4().to_string();
    let mut client = BillingCommandsClient::new(channel(&relay).await);
    for _ in 0..2 {
        // A retry with the same message-id is stored once.
        let mut request = tonic::Request::new(command.clone());
        request
            .metadata_mut()
            .insert(outbox_relay::grpc::MESSAGE_ID_METADATA, id.parse().unwrap());
        client.charge(request).await.expect("stored");
    }
    assert_eq!(rows(&env).await, 1);
    // The relay declared the worker's durable input queue: nobody else did.
    let expected = command.encode_to_vec();
    let got = wait_for_one(&env, WORKER, &expected).await;
    assert_eq!(common::message_id(&got), id);
    assert_eq!(got.exchange.as_str(), "");
    assert_eq!(got.routing_key.as_str(), WORKER);
    assert_eq!(header(&got, "grpc-method").as_deref(), Some("Charge"));
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

/// The one delivery on `queue` whose body is `expected` (other test runs may
/// have left messages of their own there).
async fn wait_for_one(env: &TestEnv, queue: &str, expected: &[u8]) -> lapin::message::Delivery {
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut got = Vec::new();
    while got.is_empty() && tokio::time::Instant::now() < deadline {
        got = receive(env, queue, |d| d.data == expected).await;
    }
    assert_eq!(got.len(), 1, "exactly one delivery on {queue}");
    got.remove(0)
}

#[tokio::test]
async fn a_reply_goes_to_the_input_queue_of_the_requester_it_names() {
    let env = TestEnv::new("grpc_reply").await;
    let relay = sidecar(&env, &topics_args()).await;
    let requester = env.queue.clone();
    let reply = ChargeResult {
        request: Some(RequestMetadata {
            reply_to: requester.clone(),
            context: b"ctx".to_vec(),
        }),
        ok: true,
    };
    let mut client = ChargeRepliesClient::new(channel(&relay).await);
    client.charged(reply.clone()).await.expect("stored");
    let got = env.consume(1, WITHIN, LINGER).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, reply.encode_to_vec());
    assert_eq!(got[0].routing_key.as_str(), requester);

    let nobody = ChargeResult {
        request: None,
        ok: false,
    };
    let e = client.charged(nobody).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("request.reply_to"), "{e:?}");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

/// A call of `client` with `message-id` metadata `id` (none when `None`).
async fn charged(
    client: &mut ChargeRepliesClient<Channel>,
    reply: &ChargeResult,
    id: Option<&str>,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(reply.clone());
    if let Some(id) = id {
        request
            .metadata_mut()
            .insert(outbox_relay::grpc::MESSAGE_ID_METADATA, id.parse().unwrap());
    }
    client.charged(request).await.map(|_| ())
}

#[tokio::test]
async fn a_non_uuid_message_id_metadata_is_stored_once_and_published_verbatim() {
    let env = TestEnv::new("grpc_topic_text_id").await;
    let relay = sidecar(&env, &topics_args()).await;
    let reply = |ok| ChargeResult {
        request: Some(RequestMetadata {
            reply_to: env.queue.clone(),
            context: Vec::new(),
        }),
        ok,
    };
    // Metadata is printable ASCII.
    let id = format!("Charge {}/retry-safe", unique("c"));
    let mut client = ChargeRepliesClient::new(channel(&relay).await);
    for _ in 0..2 {
        charged(&mut client, &reply(true), Some(&id))
            .await
            .expect("stored");
    }
    assert_eq!(rows_with_id(&env, &id).await, 1, "a retry is stored once");
    // An empty message-id is none: one is generated.
    charged(&mut client, &reply(false), Some(""))
        .await
        .expect("stored");
    let e = charged(&mut client, &reply(false), Some(&"m".repeat(256)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("256 bytes"), "{e:?}");
    assert_eq!(rows(&env).await, 2);
    let got = env.consume(2, WITHIN, LINGER).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 2);
    let with_id = got
        .iter()
        .find(|d| d.data == reply(true).encode_to_vec())
        .unwrap();
    assert_eq!(common::message_id(with_id), id, "verbatim");
    let without = got
        .iter()
        .find(|d| d.data == reply(false).encode_to_vec())
        .unwrap();
    let made = common::message_id(without);
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
    env.drop_schema().await;
}

#[tokio::test]
async fn topic_calls_get_the_status_their_failure_calls_for() {
    let env = TestEnv::new("grpc_topic_errors").await;
    let relay = sidecar(
        &env,
        &[&topics_args()[..], &["--grpc-max-request-size", "8KiB"]].concat(),
    )
    .await;
    let ch = channel(&relay).await;
    let call = |path: &'static str, body: Vec<u8>| {
        grpc::call_raw(ch.clone(), path, tonic::Request::new(body.into()))
    };

    let e = call("/test.v1.OrderEvents/Shipped", vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "unknown method: {e:?}");
    let e = call("/test.v1.Unrelated/Ping", vec![]).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unimplemented,
        "a service without the option: {e:?}"
    );
    // Field 1 (order_id, a string) sent as a varint: not an OrderCreated.
    let e = call("/test.v1.OrderEvents/Created", vec![0x08, 0x01])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("test.v1.OrderCreated"), "{e:?}");
    // A length that runs past the end.
    let e = call("/test.v1.OrderEvents/Created", vec![0x0a, 0x7f, 0x41])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let big = OrderCreated {
        order_id: "x".repeat(9 << 10),
        ..Default::default()
    }
    .encode_to_vec();
    let e = call("/test.v1.OrderEvents/Created", big).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let mut bad_id = tonic::Request::new(OrderCreated::default().encode_to_vec().into());
    bad_id.metadata_mut().insert(
        outbox_relay::grpc::MESSAGE_ID_METADATA,
        "m".repeat(256).parse().unwrap(),
    );
    let e = grpc::call_raw(ch.clone(), "/test.v1.OrderEvents/Created", bad_id)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(rows(&env).await, 0, "nothing refused was stored");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn a_service_whose_rpc_does_not_return_empty_is_refused_at_start() {
    let env = TestEnv::new("grpc_refused").await;
    let e = outbox_relay::App::build(env.run_args(&["--descriptor-set", BAD_DESCRIPTORS]))
        .await
        .err()
        .expect("refused");
    assert!(
        e.downcast_ref::<outbox_relay::grpc::TopologyError>()
            .is_some(),
        "{e:#}"
    );
    let shown = format!("{e:#}");
    assert!(
        shown.contains("bad.v1.Lookups/Find returns bad.v1.Answer"),
        "{shown}"
    );
    assert!(shown.contains("google.protobuf.Empty"), "{shown}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["run", "--schema", &env.schema, "--grpc-addr", "127.0.0.1:0"])
        .args(["--descriptor-set", BAD_DESCRIPTORS])
        .env_remove("OUTBOX_GRPC_ADDR")
        .env("OUTBOX_HTTP_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.v1.Lookups/Find"), "{stderr}");

    let e = outbox_relay::App::build(env.run_args(&["--descriptor-set", "/nonexistent.bin"]))
        .await
        .err()
        .expect("refused");
    assert!(format!("{e:#}").contains("/nonexistent.bin"), "{e:#}");
    env.drop_schema().await;
}

#[tokio::test]
async fn topic_services_are_read_from_the_applications_reflection_once_it_answers() {
    let env = TestEnv::new("grpc_reflect").await;
    // The application's port is chosen now but served only later, as when
    // the sidecar starts before the application.
    let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!("http://{}", app_listener.local_addr().unwrap());
    let relay = sidecar(&env, &["--descriptor-reflection", &app_url]).await;
    let mut client = ChargeRepliesClient::new(channel(&relay).await);
    let reply = ChargeResult {
        request: Some(RequestMetadata {
            reply_to: env.queue.clone(),
            context: vec![],
        }),
        ok: true,
    };
    let e = client.charged(reply.clone()).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unavailable,
        "before the application answers: {e:?}"
    );

    let descriptors = std::fs::read(TEST_DESCRIPTORS).unwrap();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&descriptors)
        .build_v1()
        .unwrap();
    let app_stop = tokio_util::sync::CancellationToken::new();
    let app = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(reflection)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(app_listener),
                app_stop.clone().cancelled_owned(),
            ),
    );
    let served = wait_until(WITHIN, || {
        let mut client = client.clone();
        let reply = reply.clone();
        async move { client.charged(reply).await.is_ok() }
    })
    .await;
    assert!(
        served,
        "the topic service is served once reflection answered"
    );
    let got = env.consume(1, WITHIN, LINGER).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, reply.encode_to_vec());
    app_stop.cancel();
    app.await.unwrap().unwrap();
    relay.stop().await.unwrap();
    env.drop_schema().await;
}
