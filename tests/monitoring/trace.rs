//! Trace context end to end without export (the caller's context travels
//! verbatim), and the gRPC ingress's own series.

use super::{WITHIN, scrape_until};
use crate::common::*;
use outbox_relay::proto::outbox::v1::PublishRequest;
use outbox_relay::proto::outbox::v1::publisher_client::PublisherClient;
use std::time::Duration;

const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const STATE: &str = "congo=t61rcWkgMzE";

fn header(d: &lapin::message::Delivery, key: &str) -> Option<String> {
    let headers = outbox_relay::amqp::table_to_json(d.properties.headers().as_ref()?);
    headers.get(key)?.as_str().map(str::to_owned)
}

fn to_queue(env: &TestEnv) -> PublishRequest {
    PublishRequest {
        routing_key: env.queue.clone(),
        payload: b"traced".to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_traceparent_in_grpc_metadata_arrives_unchanged_in_the_amqp_headers() {
    let env = TestEnv::new("trace_grpc").await;
    let relay = Running::start(env.run_args(&[])).await;
    let mut client = PublisherClient::connect(relay.grpc_url()).await.unwrap();
    let mut request = tonic::Request::new(to_queue(&env));
    request
        .metadata_mut()
        .insert("traceparent", PARENT.parse().unwrap());
    request
        .metadata_mut()
        .insert("tracestate", STATE.parse().unwrap());
    client.publish(request).await.expect("published");
    let got = env.consume(1, WITHIN, Duration::ZERO).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(header(&got[0], "traceparent").as_deref(), Some(PARENT));
    assert_eq!(header(&got[0], "tracestate").as_deref(), Some(STATE));
    let stored = env
        .scalar(&format!(
            "SELECT count(*) FROM {{t}} WHERE headers->>'traceparent' = '{PARENT}'"
        ))
        .await;
    assert_eq!(stored, 1, "the row's headers hold it");
    env.drop_schema().await;
}

#[tokio::test]
async fn a_traceparent_written_into_the_row_headers_is_published_and_a_bad_one_is_not_invented() {
    let env = TestEnv::new("trace_row").await;
    let sql = format!(
        "INSERT INTO {} (routing_key, payload, headers) VALUES ($1, 'a', $2), ($1, 'b', '{{}}')",
        env.table()
    );
    let headers = serde_json::json!({ "traceparent": PARENT });
    env.pg.execute(&sql, &[&env.queue, &headers]).await.unwrap();
    let relay = Running::start(env.run_args(&[])).await;
    let got = env.consume(2, WITHIN, Duration::ZERO).await;
    relay.stop().await.unwrap();
    assert_eq!(got.len(), 2);
    for d in &got {
        let expected = (d.data == b"a").then_some(PARENT);
        assert_eq!(header(d, "traceparent").as_deref(), expected);
    }
    env.drop_schema().await;
}

#[tokio::test]
async fn grpc_calls_are_counted_by_method_and_code_and_timed() {
    const OK: usize = 3;
    const PUBLISH: &str = "/outbox.v1.Publisher/Publish";
    let env = TestEnv::new("grpc_metrics").await;
    let relay = Running::start(env.run_args(&[])).await;
    let mut client = PublisherClient::connect(relay.grpc_url()).await.unwrap();
    for _ in 0..OK {
        client.publish(to_queue(&env)).await.expect("published");
    }
    let invalid = PublishRequest {
        message_id: "m".repeat(256),
        ..to_queue(&env)
    };
    let refused = client.publish(invalid).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let unknown = grpc::call_raw(
        tonic::transport::Channel::from_shared(relay.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
        "/no.such.Service/Method",
        tonic::Request::new(bytes::Bytes::new()),
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unimplemented);

    let m = scrape_until(&relay, WITHIN, |m| {
        m.get(
            "outbox_relay_grpc_request_duration_seconds_count",
            &[("method", PUBLISH)],
        ) == Some((OK + 1) as f64)
    })
    .await;
    relay.stop().await.unwrap();
    let calls = |method: &str, code: &str| {
        m.get(
            "outbox_relay_grpc_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(calls(PUBLISH, "OK"), Some(OK as f64));
    assert_eq!(calls(PUBLISH, "INVALID_ARGUMENT"), Some(1.0));
    assert_eq!(
        calls("unknown", "UNIMPLEMENTED"),
        Some(1.0),
        "no label per unknown path"
    );
    assert_eq!(
        m.get(
            "outbox_relay_grpc_request_duration_seconds_count",
            &[("method", PUBLISH)]
        ),
        Some((OK + 1) as f64)
    );
    env.drop_schema().await;
}
