//! The JSON API (`/api`) against the real services, through a running
//! relay's HTTP port: every filter of the list, keyset pages while rows are
//! being inserted, payloads as text or base64, inserts that arrive (once),
//! replays that arrive, deletes of dead rows only, 400s for bad input, and
//! the admission rules (token, loopback, same-origin JSON writes). (A
//! module of the `relay` test binary, so that it links once.)

use crate::common::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

/// Rows reach their final state within this.
const WITHIN: Duration = Duration::from_secs(30);
/// After the expected messages arrived, listen this long for duplicates.
const LINGER: Duration = Duration::from_millis(300);

/// A client of one relay's API.
struct Api {
    addr: SocketAddr,
    token: Option<String>,
}

impl Api {
    fn of(relay: &Running) -> Self {
        Self {
            addr: relay.http.expect("the HTTP port listens"),
            token: None,
        }
    }

    fn with_token(relay: &Running, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..Self::of(relay)
        }
    }

    /// A request with the token (if any) and `headers`.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpReply {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(bearer) = &bearer {
            all.push(("Authorization", bearer));
        }
        http_request(self.addr, method, path, &all, body).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        parsed(self.send("GET", path, &[], None).await)
    }

    /// A JSON write, as a same-origin client sends it.
    async fn write(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string().into_bytes());
        let json_type = [("Content-Type", "application/json")];
        parsed(self.send(method, path, &json_type, body.as_deref()).await)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.write("POST", path, Some(body)).await
    }
}

/// Status and JSON body (`null` for an empty one).
fn parsed(reply: HttpReply) -> (u16, Value) {
    if reply.body.is_empty() {
        return (reply.status, Value::Null);
    }
    assert!(
        reply.content_type.starts_with("application/json"),
        "{reply:?}"
    );
    let body = serde_json::from_str(&reply.body).expect("a JSON body");
    (reply.status, body)
}

/// How a test row is stored.
#[derive(Clone, Copy)]
enum Kind {
    /// Pending, but due in an hour: the running relay leaves it alone.
    Delayed,
    /// Sent at this RFC 3339 time.
    SentAt(&'static str),
    Dead,
}

/// Inserts one row; returns its id and message_id.
async fn insert(env: &TestEnv, exchange: &str, routing_key: &str, kind: Kind) -> (i64, String) {
    let (available, dead, attempts, error) = match kind {
        Kind::Delayed => ("now() + interval '1 hour'", "NULL", 0, "NULL"),
        Kind::SentAt(_) => ("now()", "NULL", 0, "NULL"),
        Kind::Dead => ("now()", "now()", 3, "'NOT_FOUND'"),
    };
    let sent_at = match kind {
        Kind::SentAt(at) => Some(at),
        _ => None,
    };
    let sql = format!(
        "INSERT INTO {} (exchange, routing_key, payload, available_at, sent_at, dead_at, attempts, last_error)
         VALUES ($1, $2, 'x', {available}, $3::text::timestamptz, {dead}, {attempts}, {error})
         RETURNING id, message_id::text",
        env.table()
    );
    let row = env
        .pg
        .query_one(&sql, &[&exchange, &routing_key, &sent_at])
        .await
        .expect(&sql);
    (row.get(0), row.get(1))
}

/// The ids of a list reply, in order.
fn ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["id"].as_i64().expect("an id"))
        .collect()
}

async fn listed(api: &Api, query: &str) -> Vec<i64> {
    let (status, page) = api.get(&format!("/api/messages?{query}")).await;
    assert_eq!(status, 200, "{query}: {page}");
    ids(&page)
}

#[tokio::test]
async fn the_list_filters_by_state_route_message_id_time_and_search() {
    let env = TestEnv::new("api_filters").await;
    let relay = Running::start(env.run_args(&[])).await;
    let api = Api::of(&relay);
    let (p1, _) = insert(&env, "orders", "order.created", Kind::Delayed).await;
    let (p2, p2_id) = insert(&env, "", "Billing.Queue", Kind::Delayed).await;
    let (s1, _) = insert(
        &env,
        "orders",
        "order.created",
        Kind::SentAt("2030-01-01T10:00:00Z"),
    )
    .await;
    let (s2, _) = insert(
        &env,
        "orders",
        "order.paid",
        Kind::SentAt("2030-01-01T12:00:00Z"),
    )
    .await;
    let (d1, _) = insert(&env, "", "Billing.Queue", Kind::Dead).await;

    assert_eq!(listed(&api, "").await, [d1, s2, s1, p2, p1]);
    assert_eq!(listed(&api, "state=pending").await, [p2, p1]);
    assert_eq!(listed(&api, "state=sent").await, [s2, s1]);
    assert_eq!(listed(&api, "state=dead").await, [d1]);
    assert_eq!(listed(&api, "exchange=orders").await, [s2, s1, p1]);
    // An empty exchange is the default exchange, not "any".
    assert_eq!(listed(&api, "exchange=").await, [d1, p2]);
    assert_eq!(
        listed(&api, "exchange=orders&routing_key=order.created").await,
        [s1, p1]
    );
    assert_eq!(listed(&api, "routing_key=order.paid").await, [s2]);
    assert_eq!(listed(&api, &format!("message_id={p2_id}")).await, [p2]);
    // Sent rows are bounded by sent_at; since inclusive, until exclusive.
    assert_eq!(
        listed(
            &api,
            "state=sent&since=2030-01-01T10:00:00Z&until=2030-01-01T12:00:00Z"
        )
        .await,
        [s1]
    );
    assert_eq!(
        listed(&api, "state=sent&since=2030-01-01T12:30:00%2B01:00").await,
        [s2]
    );
    // Pending and dead rows by their created_at / dead_at (just now).
    assert_eq!(
        listed(&api, "until=2000-01-01T00:00:00Z").await,
        [] as [i64; 0]
    );
    assert_eq!(
        listed(
            &api,
            "since=2000-01-01T00:00:00Z&until=2029-01-01T00:00:00Z"
        )
        .await,
        [d1, p2, p1]
    );
    // q: a case-insensitive substring of the routing key, or of the message_id.
    assert_eq!(listed(&api, "q=billing").await, [d1, p2]);
    assert_eq!(listed(&api, "q=ORDER.C").await, [s1, p1]);
    assert_eq!(listed(&api, &format!("q={}", &p2_id[9..18])).await, [p2]);
    assert_eq!(listed(&api, "state=dead&q=billing").await, [d1]);

    let (_, page) = api.get("/api/messages?state=dead").await;
    let dead = &page["items"][0];
    assert_eq!(dead["state"], "dead");
    assert_eq!(dead["exchange"], "");
    assert_eq!(dead["routing_key"], "Billing.Queue");
    assert_eq!(dead["size"], 1);
    assert_eq!(dead["attempts"], 3);
    assert_eq!(dead["last_error"], "NOT_FOUND");
    assert_eq!(dead["headers"], json!({}));
    assert!(dead["dead_at"].as_str().unwrap().ends_with('Z'), "{dead}");
    assert!(dead["sent_at"].is_null());
    assert_eq!(page["next_cursor"], Value::Null);
    let (_, sent) = api.get(&format!("/api/messages/{s1}")).await;
    assert_eq!(sent["sent_at"], "2030-01-01T10:00:00.000000Z");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn pages_hold_every_row_once_while_rows_are_inserted_concurrently() {
    const ROWS: usize = 120;
    const PAGE: usize = 7;
    let env = TestEnv::new("api_pages").await;
    let relay = Running::start(env.run_args(&[])).await;
    let api = Api::of(&relay);
    let fill = format!(
        "INSERT INTO {} (exchange, routing_key, payload, available_at) SELECT 'paged', 'k', 'x', now() + interval '1 hour' FROM generate_series(1, {ROWS})",
        env.table()
    );
    env.pg.batch_execute(&fill).await.unwrap();
    let before: HashSet<i64> = listed(&api, "exchange=paged&limit=500")
        .await
        .into_iter()
        .collect();
    assert_eq!(before.len(), ROWS);

    // Another writer keeps inserting rows of the same route meanwhile.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let (stop, table) = (stop.clone(), env.table());
        async move {
            let pg = pg_client().await;
            let insert = format!(
                "INSERT INTO {table} (exchange, routing_key, payload, available_at) VALUES ('paged', 'k', 'new', now() + interval '1 hour')"
            );
            let mut inserted = 0;
            while !stop.is_cancelled() {
                pg.batch_execute(&insert).await.unwrap();
                inserted += 1;
            }
            inserted
        }
    });
    let writing = wait_until(WITHIN, || async {
        env.scalar("SELECT count(*) FROM {t}").await > ROWS as i64
    })
    .await;
    assert!(writing, "the writer did not start");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("exchange=paged&state=pending&limit={PAGE}&cursor={c}"),
            None => format!("exchange=paged&state=pending&limit={PAGE}"),
        };
        let (status, page) = api.get(&format!("/api/messages?{query}")).await;
        assert_eq!(status, 200, "{page}");
        let got = ids(&page);
        assert!(got.len() <= PAGE);
        seen.extend(got);
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    stop.cancel();
    let inserted_meanwhile = writer.await.unwrap();
    assert!(inserted_meanwhile > 0, "the writer inserted nothing");
    assert!(pages > ROWS / PAGE, "{pages} pages");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeat: {seen:?}"
    );
    let seen_set: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen_set.len(), seen.len(), "a row was repeated");
    assert!(
        before.is_subset(&seen_set),
        "rows were missed: {:?}",
        before.difference(&seen_set)
    );
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn a_payload_is_shown_as_text_when_it_is_short_utf8_and_as_base64_otherwise() {
    let env = TestEnv::new("api_detail").await;
    let relay = Running::start(env.run_args(&[])).await;
    let api = Api::of(&relay);
    let sql = format!(
        "INSERT INTO {} (routing_key, payload, content_type, headers, available_at) VALUES ('k', $1, 'text/plain', '{{\"tenant\": \"acme\", \"n\": 3}}', now() + interval '1 hour') RETURNING id, message_id::text",
        env.table()
    );
    let store = |payload: Vec<u8>| {
        let sql = sql.clone();
        let pg = &env.pg;
        async move {
            let row = pg.query_one(&sql, &[&payload]).await.unwrap();
            (row.get::<_, i64>(0), row.get::<_, String>(1))
        }
    };
    let (text, text_id) = store("héllo, wörld".as_bytes().to_vec()).await;
    let (binary, _) = store(vec![0xff, 0x00, 0xfe]).await;
    let large_len = 100 * 1024;
    let (large, _) = store(vec![b'a'; large_len]).await;

    for key in [text.to_string(), text_id.clone()] {
        let (status, row) = api.get(&format!("/api/messages/{key}")).await;
        assert_eq!(status, 200, "{row}");
        assert_eq!(row["id"], text);
        assert_eq!(row["message_id"], text_id.as_str());
        assert_eq!(row["payload_encoding"], "text");
        assert_eq!(row["payload"], "héllo, wörld");
        assert_eq!(row["payload_truncated"], false);
        assert_eq!(row["size"], "héllo, wörld".len());
        assert_eq!(row["content_type"], "text/plain");
        assert_eq!(row["headers"], json!({"tenant": "acme", "n": 3}));
        assert_eq!(row["state"], "pending");
    }
    let (_, row) = api.get(&format!("/api/messages/{binary}")).await;
    assert_eq!(row["payload_encoding"], "base64");
    assert_eq!(row["payload"], "/wD+");
    assert_eq!(row["payload_truncated"], false);
    let (_, row) = api.get(&format!("/api/messages/{large}")).await;
    assert_eq!(row["payload_encoding"], "base64");
    assert_eq!(row["payload_truncated"], true);
    assert_eq!(row["size"], large_len);
    let shown = row["payload"].as_str().unwrap();
    assert_eq!(
        shown.len(),
        (64 * 1024usize).div_ceil(3) * 4,
        "64 KiB in base64"
    );

    let (status, body) = api.get("/api/messages/999999999").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api
        .get("/api/messages/0b9d6f3e-4a7c-4d0e-9a51-3f2c8e7b1d20")
        .await;
    assert_eq!(status, 404, "{body}");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

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

fn message_id_of(delivery: &lapin::message::Delivery) -> String {
    crate::common::message_id(delivery)
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
            json!({"routing_key": q, "message_id": "42"}),
            400,
            "not a UUID",
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

#[tokio::test]
async fn bad_input_is_a_400_with_a_json_error() {
    let env = TestEnv::new("api_bad_input").await;
    let relay = Running::start(env.run_args(&[])).await;
    let api = Api::of(&relay);
    for path in [
        "/api/messages/abc",
        "/api/messages/12.5",
        "/api/messages?since=yesterday",
        "/api/messages?until=2026-01-31%2012:00:00",
        "/api/messages?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        "/api/messages?limit=501",
        "/api/messages?limit=0",
        "/api/messages?limit=many",
        "/api/messages?state=lost",
        "/api/messages?cursor=bm90IGEgY3Vyc29y",
        "/api/messages?cursor=%%%",
        "/api/messages?message_id=42",
        "/api/messages?routingkey=typo",
        "/api/messages?state=sent&state=dead",
    ] {
        let (status, reply) = api.get(path).await;
        assert_eq!(status, 400, "{path}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {reply}"
        );
    }
    let (_, reply) = api.get("/api/messages?limit=501").await;
    assert!(reply["error"].as_str().unwrap().contains("500"), "{reply}");
    let (status, reply) = api.write("DELETE", "/api/messages/abc", None).await;
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = api
        .write("POST", "/api/dead/replay?state=pending&all=true", None)
        .await;
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = api.get("/api/nothing/here").await;
    assert_eq!(status, 404, "{reply}");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn stats_count_the_backlog_its_busiest_routes_and_the_send_rates() {
    let env = TestEnv::new("api_stats").await;
    let relay = Running::start(env.run_args(&[])).await;
    let api = Api::of(&relay);
    let table = env.table();
    let rows = format!(
        "INSERT INTO {table} (exchange, routing_key, payload, available_at, sent_at, dead_at) VALUES
         ('a', 'one', 'x', now() + interval '1 hour', NULL, NULL),
         ('a', 'one', 'x', now() + interval '1 hour', NULL, NULL),
         ('a', 'one', 'x', now() + interval '1 hour', NULL, NULL),
         ('b', 'two', 'x', now() + interval '1 hour', NULL, NULL),
         ('c', 'k', 'x', now(), now() - interval '10 seconds', NULL),
         ('c', 'k', 'x', now(), now() - interval '20 seconds', NULL),
         ('c', 'k', 'x', now(), now() - interval '30 minutes', NULL),
         ('c', 'k', 'x', now(), now() - interval '2 hours', NULL),
         ('d', 'k', 'x', now(), NULL, now())"
    );
    env.pg.batch_execute(&rows).await.unwrap();
    let (status, stats) = api.get("/api/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["pending"]["total"], 4);
    assert_eq!(stats["pending"]["due"], 0);
    assert_eq!(stats["pending"]["delayed"], 4);
    assert!(stats["pending"]["oldest_age_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(stats["sent"], 4);
    assert_eq!(stats["dead"], 1);
    assert_eq!(
        stats["top_pending"],
        json!([
            {"exchange": "a", "routing_key": "one", "count": 3},
            {"exchange": "b", "routing_key": "two", "count": 1},
        ])
    );
    assert_eq!(
        stats["rates"],
        json!({"sent_last_minute": 2, "sent_last_hour": 3})
    );

    let (status, health) = api.get("/api/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["checks"]["database"]["ok"], true);
    assert_eq!(health["checks"]["workers"]["ok"], true);
    assert!(
        health["checks"].get("broker").is_none(),
        "outbox mode: {health}"
    );
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

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
