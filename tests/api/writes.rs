//! Writing through the API: inserts that arrive once and are refused as the
//! gRPC Publisher refuses them, replays that arrive, deletes of dead rows only.

use super::*;
use serde_json::json;
use std::collections::HashSet;

#[tokio::test]
async fn a_posted_message_arrives_on_its_queue_and_a_repeated_one_is_stored_once() {
    let env = TestEnv::new("api_insert").await;
    let relay = Running::start(env.run_args(&[])).await;
    let api = Api::of(&relay);
    let message_id = "6f1c1d1e-0000-4000-8000-00000000a001";
    let body = json!({
        "routing_key": env.queue,
        "payload": "{\"order\": 42}",
        "content_type": "application/json",
        "headers": {"tenant": "acme", "attempt": 2},
        "message_id": message_id,
    });
    let (status, first) = api.post("/api/messages", &body).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["message_id"], message_id);
    assert_eq!(first["duplicate"], false);
    let got = env.consume(1, WITHIN, LINGER).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, br#"{"order": 42}"#);
    assert_eq!(message_id_of(&got[0]), message_id);
    let headers = outbox_relay::amqp::table_to_json(got[0].properties.headers().as_ref().unwrap());
    assert_eq!(headers, json!({"tenant": "acme", "attempt": 2}));

    let (status, again) = api.post("/api/messages", &body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(env.scalar("SELECT count(*) FROM {t}").await, 1);

    // A binary payload, delayed: stored as given, not yet due.
    let binary = json!({"routing_key": env.queue, "payload_base64": "/wD+", "delay_seconds": 3600});
    let (status, stored) = api.post("/api/messages", &binary).await;
    assert_eq!(status, 201, "{stored}");
    let (_, row) = api.get(&format!("/api/messages/{}", stored["id"])).await;
    assert_eq!(
        (row["payload"].as_str(), row["state"].as_str()),
        (Some("/wD+"), Some("pending"))
    );
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn any_text_is_a_message_id_found_by_its_exact_text_and_digits_name_a_row_id() {
    let env = TestEnv::new("api_text_id").await;
    let relay = Running::start(env.run_args(&[])).await;
    let api = Api::of(&relay);
    let text_id = "Order 7/v2: ünï";
    let post = |message_id: &str| json!({"routing_key": env.queue, "payload": message_id, "message_id": message_id});
    let (status, first) = api.post("/api/messages", &post(text_id)).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["message_id"], text_id);
    let (status, again) = api.post("/api/messages", &post(text_id)).await;
    assert_eq!((status, &again["id"]), (200, &first["id"]), "{again}");
    let (status, digits) = api.post("/api/messages", &post("42")).await;
    assert_eq!(status, 201, "{digits}");

    // In a path, the id percent-encoded (space, slash and all).
    let (status, row) = api
        .get("/api/messages/Order%207%2Fv2%3A%20%C3%BCn%C3%AF")
        .await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(row["message_id"], text_id);
    assert_eq!(row["id"], first["id"]);
    let (status, row) = api
        .get("/api/messages/order%207%2Fv2%3A%20%C3%BCn%C3%AF")
        .await;
    assert_eq!(status, 404, "compared byte for byte: {row}");
    // Digits are a row id; the filter finds a message_id of digits.
    let (status, row) = api.get(&format!("/api/messages/{}", digits["id"])).await;
    assert_eq!((status, &row["message_id"]), (200, &json!("42")), "{row}");
    let (status, list) = api.get("/api/messages?message_id=42").await;
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["id"], digits["id"]);
    // q finds a message_id as given (a part of one is not a search).
    let (_, list) = api
        .get("/api/messages?q=Order%207%2Fv2%3A%20%C3%BCn%C3%AF")
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let (_, list) = api.get("/api/messages?q=Order%207%2Fv2").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn a_posted_message_is_refused_as_the_grpc_publisher_refuses_it() {
    let env = TestEnv::new("api_insert_checks").await;
    let relay = Running::start(env.run_args(&["--max-message-size", "1KiB"])).await;
    let api = Api::of(&relay);
    let q = env.queue.as_str();
    let deep = (0..20).fold(json!(1), |inner, _| json!({ "d": inner }));
    for (body, status, says) in [
        (
            json!({"routing_key": q, "message_id": "m".repeat(256)}),
            400,
            "at most 255",
        ),
        (json!({"payload": "x"}), 400, "routing_key"),
        (
            json!({"routing_key": q, "delay_seconds": -1}),
            400,
            "negative delay",
        ),
        (
            json!({"routing_key": q, "payload": "x", "payload_base64": "eA=="}),
            400,
            "not both",
        ),
        (
            json!({"routing_key": q, "payload_base64": "***"}),
            400,
            "base64",
        ),
        (
            json!({"routing_key": q, "routingKey": "typo"}),
            400,
            "unknown field",
        ),
        (json!({"routing_key": "k".repeat(256)}), 400, "255"),
        (
            json!({"routing_key": q, "headers": {"n": deep}}),
            400,
            "nested",
        ),
        (
            json!({"routing_key": q, "payload": "x".repeat(2048)}),
            413,
            "--max-message-size",
        ),
    ] {
        let (got, reply) = api.post("/api/messages", &body).await;
        assert_eq!(got, status, "{body}: {reply}");
        let error = reply["error"].as_str().expect("an error message");
        assert!(error.contains(says), "{body}: {error}");
    }
    let reply = api
        .send(
            "POST",
            "/api/messages",
            &[("Content-Type", "application/json")],
            Some(b"{not json"),
        )
        .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(env.scalar("SELECT count(*) FROM {t}").await, 0);
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn a_replayed_dead_row_arrives_and_a_pending_one_is_refused() {
    let env = TestEnv::new("api_replay").await;
    let relay = Running::start(env.run_args(&[])).await;
    let api = Api::of(&relay);
    let (one, one_id) = insert(&env, "", &env.queue, Kind::Dead).await;
    let (pending, _) = insert(&env, "", &env.queue, Kind::Delayed).await;

    let (status, reply) = api
        .write("POST", &format!("/api/messages/{one}/replay"), None)
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["replayed"], json!([one]));
    let got = env.consume(1, WITHIN, LINGER).await;
    assert_eq!(
        got.iter().map(message_id_of).collect::<Vec<_>>(),
        std::slice::from_ref(&one_id)
    );

    let (status, reply) = api
        .write("POST", &format!("/api/messages/{pending}/replay"), None)
        .await;
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("pending"),
        "{reply}"
    );
    let (status, _) = api
        .write("POST", &format!("/api/messages/{one_id}/replay"), None)
        .await;
    assert_eq!(status, 409, "a sent row is not replayed");
    let (status, _) = api
        .write("POST", "/api/messages/999999999/replay", None)
        .await;
    assert_eq!(status, 404);

    // Replay by filter: the dead rows of one route only.
    let mut bulk = Vec::new();
    for _ in 0..3 {
        bulk.push(insert(&env, "", &env.queue, Kind::Dead).await.1);
    }
    let (other, _) = insert(&env, "", "elsewhere", Kind::Dead).await;
    let (status, reply) = api.write("POST", "/api/dead/replay", None).await;
    assert_eq!(
        status, 400,
        "a bulk replay needs a filter or all=true: {reply}"
    );
    let (status, reply) = api
        .write(
            "POST",
            &format!("/api/dead/replay?routing_key={}", env.queue),
            None,
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (reply["count"].as_i64(), reply["more"].as_bool()),
        (Some(3), Some(false))
    );
    let got = env.consume(3, WITHIN, LINGER).await;
    let arrived: HashSet<String> = got.iter().map(message_id_of).collect();
    assert_eq!(arrived, bulk.into_iter().collect::<HashSet<_>>());
    assert_eq!(listed(&api, "state=dead").await, [other]);
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn only_a_dead_row_can_be_deleted() {
    let env = TestEnv::new("api_delete").await;
    let relay = Running::start(env.run_args(&[])).await;
    let api = Api::of(&relay);
    let (pending, _) = insert(&env, "", "k", Kind::Delayed).await;
    let (sent, _) = insert(&env, "", "k", Kind::SentAt("2030-01-01T00:00:00Z")).await;
    let (dead, dead_id) = insert(&env, "", "k", Kind::Dead).await;
    for (id, state) in [(pending, "pending"), (sent, "sent")] {
        let (status, reply) = api
            .write("DELETE", &format!("/api/messages/{id}"), None)
            .await;
        assert_eq!(status, 409, "{reply}");
        assert!(reply["error"].as_str().unwrap().contains(state), "{reply}");
    }
    let (status, reply) = api
        .write("DELETE", &format!("/api/messages/{dead_id}"), None)
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["deleted"], dead);
    let (status, _) = api
        .write("DELETE", &format!("/api/messages/{dead}"), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(listed(&api, "").await, [sent, pending]);
    relay.stop().await.unwrap();
    env.drop_schema().await;
}
