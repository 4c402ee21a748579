//! Who the API answers: loopback without a token (not a rebinding Host),
//! the token when set, same-origin JSON writes, and no `/api` beyond
//! loopback without a token.

use super::*;
use serde_json::json;
use std::collections::HashSet;

#[tokio::test]
async fn on_loopback_without_a_token_the_api_answers_and_describes_itself() {
    let env = TestEnv::new("api_loopback").await;
    let relay = Running::start(env.run_args(&[])).await;
    let api = Api::of(&relay);
    let (status, doc) = api.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: HashSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for path in [
        "/api/health",
        "/api/stats",
        "/api/messages",
        "/api/messages/{key}",
        "/api/messages/{key}/replay",
        "/api/dead/replay",
        "/api/openapi.json",
    ] {
        assert!(paths.contains(path), "{path} missing");
    }
    // A page re-pointed at 127.0.0.1 by its DNS (rebinding) gets nothing.
    let host = [("Host", "evil.example:9464")];
    let rebound = http_request(api.addr, "GET", "/api/stats", &host, None).await;
    assert_eq!(rebound.status, 403, "{rebound:?}");
    let named = [("Host", "localhost")];
    let local = http_request(api.addr, "GET", "/api/stats", &named, None).await;
    assert_eq!(local.status, 200, "{local:?}");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn with_a_token_every_api_request_needs_it_and_writes_must_be_same_origin_json() {
    let env = TestEnv::new("api_token").await;
    let relay = Running::start(env.run_args(&["--admin-token", "s3cret-t0ken"])).await;
    let anonymous = Api::of(&relay);
    let wrong = Api::with_token(&relay, "not-it");
    let right = Api::with_token(&relay, "s3cret-t0ken");
    for api in [&anonymous, &wrong] {
        let (status, reply) = api.get("/api/stats").await;
        assert_eq!(status, 401, "{reply}");
        let (status, _) = api
            .post("/api/messages", &json!({"routing_key": "k"}))
            .await;
        assert_eq!(status, 401);
    }
    let (status, _) = right.get("/api/stats").await;
    assert_eq!(status, 200);
    // The probes and metrics stay open.
    for path in ["/metrics", "/livez", "/readyz"] {
        assert_eq!(relay.get(path, None).await.status, 200, "{path}");
    }

    let body = json!({"routing_key": env.queue, "payload": "hi"}).to_string();
    let json_type = ("Content-Type", "application/json");
    let foreign = right
        .send(
            "POST",
            "/api/messages",
            &[json_type, ("Origin", "http://evil.example")],
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(foreign.status, 403, "{foreign:?}");
    let own_origin = format!("http://{}", right.addr);
    let same = right
        .send(
            "POST",
            "/api/messages",
            &[json_type, ("Origin", &own_origin)],
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(same.status, 201, "{same:?}");
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let reply = right
            .send(
                "POST",
                "/api/messages",
                &[("Content-Type", content_type)],
                Some(body.as_bytes()),
            )
            .await;
        assert_eq!(reply.status, 415, "{content_type}: {reply:?}");
    }
    let untyped = right.send("DELETE", "/api/messages/1", &[], None).await;
    assert_eq!(untyped.status, 415, "{untyped:?}");
    assert_eq!(env.scalar("SELECT count(*) FROM {t}").await, 1);
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn beyond_loopback_without_a_token_there_is_no_api_but_metrics_still_answer() {
    let env = TestEnv::new("api_off").await;
    let relay = Running::start(env.run_args(&["--http-addr", "0.0.0.0:0"])).await;
    let port = relay.http.expect("the HTTP port listens").port();
    let local: SocketAddr = ([127, 0, 0, 1], port).into();
    for path in ["/api/health", "/api/messages", "/api/openapi.json"] {
        assert_eq!(http_get(local, path, None).await.status, 404, "{path}");
    }
    assert_eq!(http_get(local, "/metrics", None).await.status, 200);
    assert_eq!(http_get(local, "/readyz", None).await.status, 200);
    relay.stop().await.unwrap();
    env.drop_schema().await;
}
