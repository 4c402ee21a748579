//! Each topology end to end: a message sent through the relay's own ingress
//! and one published by a plain AMQP publisher both reach the worker's
//! method once, the body byte for byte, the message_id as `message-id`.

use super::worker::{Call, Options};
use super::*;
use crate::common::grpc::call_raw;
use outbox_relay::grpc::MESSAGE_ID_METADATA;
use outbox_relay::grpc::o5::j5json;
use outbox_relay::proto::o5::messaging::v1::message::{self as o5, Extension};
use outbox_relay::proto::o5::messaging::v1::{Any, Message};
use tonic::Request;

/// A ChargeCommand / OrderCreated-shaped request whose bytes a decode and
/// re-encode would change: field 2 before field 1, and an unknown field 15.
fn odd_bytes(id: &str) -> Vec<u8> {
    let mut bytes = vec![0x10, 0xe7, 0x07, 0x0a, id.len() as u8];
    bytes.extend_from_slice(id.as_bytes());
    bytes.extend_from_slice(&[0x78, 0x01]);
    bytes
}

/// Calls `path` through the relay's ingress with `message_id`.
async fn send_through_ingress(relay: &Running, path: &str, body: &[u8], message_id: &str) {
    let mut request = Request::new(bytes::Bytes::copy_from_slice(body));
    request
        .metadata_mut()
        .insert(MESSAGE_ID_METADATA, message_id.parse().unwrap());
    call_raw(crate::channel(relay).await, path, request)
        .await
        .expect("the ingress stores the call");
}

/// Waits until the worker has `n` calls, then stops the relay (settling
/// everything) and returns the calls.
async fn calls_once_settled(relay: Running, worker: &TestWorker, n: usize) -> Vec<Call> {
    let arrived = wait_until(WITHIN, || async { worker.state.count() >= n }).await;
    assert!(arrived, "{} of {n} calls arrived", worker.state.count());
    relay.stop().await.expect("the relay stops cleanly");
    worker.state.calls()
}

fn assert_one(calls: &[Call], path: &str, body: &[u8], message_id: &str) -> Call {
    let matching: Vec<&Call> = calls.iter().filter(|c| c.body.as_ref() == body).collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one call with the body: {calls:?}"
    );
    let call = matching[0].clone();
    assert_eq!(call.path, path);
    assert_eq!(call.meta(MESSAGE_ID_METADATA).as_deref(), Some(message_id));
    call
}

#[tokio::test]
async fn a_unicast_message_from_the_ingress_or_a_plain_publisher_reaches_the_worker_once_byte_for_byte()
 {
    let env = TestEnv::new("dlv_unicast").await;
    let names = Names::new("unicast");
    let worker = worker(Options::default()).await;
    let relay = relay(&env, &names, &worker.url(), &[]).await;
    let path = format!("/{BILLING}/Charge");

    let (via_ingress, ingress_id) = (odd_bytes("order-1"), uuid::Uuid::new_v4().to_string());
    send_through_ingress(&relay, &path, &via_ingress, &ingress_id).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (properties, plain_id) = named(
        BILLING,
        "Charge",
        &[("traceparent", traceparent), ("tenant", "acme")],
    );
    let via_amqp = odd_bytes("order-2");
    publish(&env, "", &names.billing, &via_amqp, properties).await;

    let ok_before_stop =
        wait_until(WITHIN, || async { deliveries(&relay, "ok").await >= 2.0 }).await;
    assert!(
        ok_before_stop,
        "outbox_relay_deliveries_total{{outcome=\"ok\"}} counts both"
    );
    let calls = calls_once_settled(relay, &worker, 2).await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_one(&calls, &path, &via_ingress, &ingress_id);
    let plain = assert_one(&calls, &path, &via_amqp, &plain_id);
    assert_eq!(plain.meta("traceparent").as_deref(), Some(traceparent));
    assert_eq!(plain.meta("tenant").as_deref(), Some("acme"));
    assert!(plain.meta("grpc-service").is_none());
    assert_all_settled(&env, &names.billing).await;
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn a_broadcast_message_reaches_the_worker_through_its_own_queue_bound_to_the_topic() {
    let env = TestEnv::new("dlv_broadcast").await;
    let names = Names::new("broadcast");
    let worker = worker(Options::default()).await;
    let relay = relay(&env, &names, &worker.url(), &[]).await;
    let path = format!("/{ORDERS}/Created");

    let (via_ingress, ingress_id) = (odd_bytes("order-1"), uuid::Uuid::new_v4().to_string());
    send_through_ingress(&relay, &path, &via_ingress, &ingress_id).await;
    let (properties, plain_id) = named(ORDERS, "Created", &[]);
    let via_amqp = odd_bytes("order-2");
    let key = "service.test/v1/OrderEvents.Created";
    publish(&env, &names.topic, key, &via_amqp, properties).await;

    let calls = calls_once_settled(relay, &worker, 2).await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_one(&calls, &path, &via_ingress, &ingress_id);
    assert_one(&calls, &path, &via_amqp, &plain_id);
    assert_all_settled(&env, &names.own).await;
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn a_reply_reaches_the_worker_that_its_reply_to_names_with_services_read_from_reflection() {
    let env = TestEnv::new("dlv_reply").await;
    let names = Names::new("reply");
    let worker = worker(Options {
        reflection: Some(names.set_bytes.clone()),
        ..Options::default()
    })
    .await;
    let url = worker.url();
    let flags = [
        "--descriptor-set",
        names.set(),
        "--declare-topology",
        "--worker-addr",
        &url,
        "--worker-reflection",
        "--worker-queue",
        &names.own,
    ];
    let relay = crate::sidecar(&env, &flags).await;
    // ChargeResult { request: { reply_to: <own queue> }, ok: true }, then
    // an unknown field 9.
    let mut reply = vec![0x0a, names.own.len() as u8 + 2, 0x0a, names.own.len() as u8];
    reply.extend_from_slice(names.own.as_bytes());
    reply.extend_from_slice(&[0x10, 0x01, 0x48, 0x07]);
    let id = uuid::Uuid::new_v4().to_string();
    let path = format!("/{REPLIES}/Charged");
    send_through_ingress(&relay, &path, &reply, &id).await;
    let calls = calls_once_settled(relay, &worker, 1).await;
    let calls: Vec<Call> = calls.into_iter().filter(|c| c.path == path).collect();
    assert_one(&calls, &path, &reply, &id);
    assert_all_settled(&env, &names.own).await;
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn an_o5_message_is_unwrapped_and_its_body_delivered_to_the_method_it_names() {
    let env = TestEnv::new("dlv_o5").await;
    let names = Names::new("o5");
    let worker = worker(Options::default()).await;
    let relay = relay(&env, &names, &worker.url(), &[]).await;
    let inner = odd_bytes("order-o5");
    let id = uuid::Uuid::new_v4().to_string();
    let message = Message {
        message_id: id.clone(),
        grpc_service: ORDERS.into(),
        grpc_method: "Cancelled".into(),
        body: Some(Any {
            type_url: "type.googleapis.com/test.v1.OrderCancelled".into(),
            value: inner.clone(),
            encoding: 0,
        }),
        ..Message::default()
    };
    let properties = BasicProperties::default()
        .with_message_id(id.as_str().into())
        .with_content_type(j5json::CONTENT_TYPE.into());
    let json = j5json::encode(&message).unwrap();
    publish(&env, "", &names.own, &json, properties).await;
    let calls = calls_once_settled(relay, &worker, 1).await;
    assert_one(&calls, &format!("/{ORDERS}/Cancelled"), &inner, &id);
    assert_all_settled(&env, &names.own).await;
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn an_o5_topic_call_through_the_ingress_reaches_the_worker_unwrapped_byte_for_byte() {
    let env = TestEnv::new("dlv_o5_topic").await;
    let worker = worker(Options::default()).await;
    let (exchange, own) = (unique("dlv_o5_exchange"), unique("dlv_o5_own"));
    let url = worker.url();
    let set = crate::o5topics::O5_DESCRIPTORS;
    let flags = [
        "--descriptor-set",
        set,
        "--declare-topology",
        "--o5-exchange",
        &exchange,
        "--worker-addr",
        &url,
        "--worker-descriptor-set",
        set,
        "--worker-queue",
        &own,
    ];
    let relay = crate::sidecar(&env, &flags).await;
    // foo.v1.BarMessage { text: "hi" }, then an unknown field 9.
    let body = [0x0a, 0x02, b'h', b'i', 0x48, 0x07];
    let id = uuid::Uuid::new_v4().to_string();
    let path = "/foo.v1.FooTopic/Bar";
    send_through_ingress(&relay, path, &body, &id).await;
    let calls = calls_once_settled(relay, &worker, 1).await;
    assert_one(&calls, path, &body, &id);
    assert_all_settled(&env, &own).await;
    clean_up(&env.channel, &[&own], &exchange).await;
    worker.stop().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn an_o5_reply_reaches_only_the_application_its_reply_to_names() {
    let env = TestEnv::new("dlv_o5_reply").await;
    let worker = worker(Options::default()).await;
    let (exchange, own) = (unique("dlv_o5r_exchange"), unique("dlv_o5r_own"));
    let url = worker.url();
    let set = crate::o5topics::O5_DESCRIPTORS;
    let flags = [
        "--o5-exchange",
        &exchange,
        "--o5-env",
        "test",
        "--o5-app",
        "shop",
        "--worker-addr",
        &url,
        "--worker-descriptor-set",
        set,
        "--worker-queue",
        &own,
    ];
    let relay = crate::sidecar(&env, &flags).await;
    let reply = |to: &str, body: &[u8]| {
        let message = Message {
            message_id: uuid::Uuid::new_v4().to_string(),
            grpc_service: "j5test.v1.GreetingReplyTopic".into(),
            grpc_method: "Greeted".into(),
            body: Some(Any {
                type_url: "type.googleapis.com/j5test.v1.GreetedMessage".into(),
                value: body.to_vec(),
                encoding: 0,
            }),
            extension: Some(Extension::Reply(o5::Reply {
                reply_to: to.into(),
            })),
            ..Message::default()
        };
        let properties = BasicProperties::default()
            .with_message_id(message.message_id.as_str().into())
            .with_content_type(j5json::CONTENT_TYPE.into());
        (j5json::encode(&message).unwrap(), properties)
    };
    let (other, properties) = reply("test/other", b"\x12\x05other");
    publish(&env, "", &own, &other, properties).await;
    let (ours, properties) = reply("test/shop", b"\x12\x04ours");
    publish(&env, "", &own, &ours, properties).await;
    let both = wait_until(WITHIN, || async {
        deliveries(&relay, "skipped").await == 1.0 && deliveries(&relay, "ok").await == 1.0
    })
    .await;
    assert!(both, "one skipped, one delivered");
    relay.stop().await.unwrap();
    let calls = worker.state.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].body.as_ref(), b"\x12\x04ours");
    assert_all_settled(&env, &own).await;
    clean_up(&env.channel, &[&own], &exchange).await;
    worker.stop().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn a_worker_implementing_a_broadcast_service_without_a_worker_queue_is_refused_at_start() {
    let env = TestEnv::new("dlv_no_queue").await;
    let args = env.run_args(&[
        "--worker-addr",
        "http://127.0.0.1:1",
        "--worker-descriptor-set",
        TEST_DESCRIPTORS,
    ]);
    let e = outbox_relay::App::build(args).await.err().expect("refused");
    assert!(
        e.downcast_ref::<outbox_relay::deliver::PlanError>()
            .is_some(),
        "a configuration error (exit status 2): {e:#}"
    );
    let shown = format!("{e:#}");
    assert!(shown.contains("test.v1.OrderEvents"), "{shown}");
    assert!(shown.contains("--worker-queue"), "{shown}");
    env.drop_schema().await;
}
