//! Reading through the API: every list filter, keyset pages under concurrent
//! inserts, payload rendering, stats and health, and 400s for bad input.

use super::*;
use serde_json::json;
use std::collections::HashSet;

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
    // q: a case-insensitive part of the routing key, or the message_id.
    assert_eq!(listed(&api, "q=billing").await, [d1, p2]);
    assert_eq!(listed(&api, "q=ORDER.C").await, [s1, p1]);
    assert_eq!(listed(&api, "q=paid&state=sent").await, [s2]);
    assert_eq!(
        listed(&api, "q=order&exchange=orders&state=pending").await,
        [p1]
    );
    assert_eq!(listed(&api, "q=order&routing_key=order.paid").await, [s2]);
    assert_eq!(listed(&api, "state=dead&q=billing").await, [d1]);
    assert_eq!(listed(&api, &format!("q={p2_id}")).await, [p2]);
    let upper = p2_id.to_uppercase();
    assert_eq!(
        listed(&api, &format!("q={upper}")).await,
        [] as [i64; 0],
        "a message_id is compared byte for byte"
    );
    assert_eq!(
        listed(&api, &format!("q={}", &p2_id[9..18])).await,
        [] as [i64; 0],
        "a part of a message_id is not a search"
    );
    // A routing key without its exchange, in every state.
    assert_eq!(listed(&api, "routing_key=Billing.Queue").await, [d1, p2]);
    assert_eq!(
        listed(&api, "routing_key=order.created&state=sent").await,
        [s1]
    );

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
async fn bad_input_is_a_400_with_a_json_error() {
    let env = TestEnv::new("api_bad_input").await;
    let relay = Running::start(env.run_args(&[])).await;
    let api = Api::of(&relay);
    let overlong = "m".repeat(256);
    for path in [
        "/api/messages/%0A",
        &format!("/api/messages/{overlong}"),
        "/api/messages/99999999999999999999",
        "/api/messages?since=yesterday",
        "/api/messages?until=2026-01-31%2012:00:00",
        "/api/messages?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        "/api/messages?limit=501",
        "/api/messages?limit=0",
        "/api/messages?limit=many",
        "/api/messages?state=lost",
        "/api/messages?cursor=bm90IGEgY3Vyc29y",
        "/api/messages?cursor=%%%",
        "/api/messages?message_id=a%09b",
        &format!("/api/messages?message_id={overlong}"),
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
    let (status, reply) = api.write("DELETE", "/api/messages/%7F", None).await;
    assert_eq!(status, 400, "{reply}");
    // Any other text is a message_id: one no row has is not found.
    for path in [
        "/api/messages/abc",
        "/api/messages/12.5",
        "/api/messages/-1",
    ] {
        let (status, reply) = api.get(path).await;
        assert_eq!(status, 404, "{path}: {reply}");
    }
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
    assert_eq!(
        stats["sent_at_least"], false,
        "an exact count below the cap"
    );
    assert_eq!(stats["dead"], 1);
    assert_eq!(
        stats["top_pending"],
        json!([
            {"exchange": "a", "routing_key": "one", "count": 3},
            {"exchange": "b", "routing_key": "two", "count": 1},
        ])
    );
    assert_eq!(stats["rates"]["sent_last_minute"], 2);
    assert_eq!(stats["rates"]["sent_last_hour"], 3);
    // Minute by minute, oldest first: 30 minutes ago and the last minute.
    let mut per_minute = vec![0; 60];
    per_minute[29] = 1;
    per_minute[59] = 2;
    assert_eq!(stats["rates"]["sent_per_minute"], json!(per_minute));
    // Shared between requests for a short while (it says how old it is),
    // then computed again: a new row shows.
    assert!(stats["age_seconds"].as_f64().unwrap() >= 0.0, "{stats}");
    assert!(stats["compute_seconds"].as_f64().unwrap() > 0.0, "{stats}");
    env.pg
        .batch_execute(&format!(
            "INSERT INTO {table} (exchange, routing_key, payload, available_at)
             VALUES ('b', 'two', 'x', now() + interval '1 hour')"
        ))
        .await
        .unwrap();
    let refreshed = wait_until(WITHIN, || async {
        api.get("/api/stats").await.1["pending"]["total"] == 5
    })
    .await;
    assert!(refreshed, "the stats never showed the fifth pending row");

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
