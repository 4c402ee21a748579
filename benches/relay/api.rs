//! The HTTP API on a large table (issue 15): how long `GET /api/messages`
//! (each filter, and the next page through the cursor) and `GET /api/stats`
//! take on a table of `--api-rows` rows (default 10,000,000: 90% sent, 9%
//! pending, 1% dead, over 100 routes of 20 exchanges and 50 routing keys,
//! plus three sent rows of a rare route, the oldest), through the real
//! relay's HTTP port on loopback. The relay's broker is unreachable, so
//! nothing is drained meanwhile and the table stays as filled.

use crate::report::{Report, Row};
use crate::support::{RelayProcess, Schema, pg};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Each request is timed this many times; the median is reported.
const TIMES: usize = 5;
/// The target of each request.
const TARGET_MS: f64 = 100.0;

pub async fn run(report: &mut Report, rows: usize) {
    let pg = pg().await;
    let schema = Schema::create("api", false).await;
    let table = schema.table();
    let filled = Instant::now();
    let span_ms = 10;
    // The worst case of a route filter that walks rows newest first: three
    // rows of their own route, the oldest in the table.
    pg.batch_execute(&format!(
        "INSERT INTO {table} (exchange, routing_key, payload, created_at, available_at, sent_at)
         SELECT 'ex-rare', 'rk-rare', 'rare', t, t, t
         FROM generate_series(1, 3), LATERAL (SELECT now() - interval '2 days' AS t) AS at"
    ))
    .await
    .expect("the rare route's rows");
    pg.batch_execute(&format!(
        "INSERT INTO {table} (exchange, routing_key, payload, created_at, available_at,
                              sent_at, dead_at, attempts, last_error)
         SELECT 'ex' || (g % 20), 'rk' || (g % 50), convert_to('payload ' || g, 'UTF8'), t, t,
                CASE WHEN g % 100 < 90 THEN t END,
                CASE WHEN g % 100 = 99 THEN t END,
                CASE WHEN g % 100 = 99 THEN 10 ELSE 0 END,
                CASE WHEN g % 100 = 99 THEN 'exchange \"ex\" does not exist' END
         FROM generate_series(1, {rows}) AS g,
              LATERAL (SELECT now() - ({rows} - g) * interval '{span_ms} milliseconds' AS t) AS at"
    ))
    .await
    .expect("fill the API table");
    // Separate statements: VACUUM cannot run in the implicit transaction
    // of a multi-statement string.
    for maintenance in [format!("VACUUM ANALYZE {table}"), "CHECKPOINT".to_owned()] {
        pg.batch_execute(&maintenance)
            .await
            .expect("vacuum the API table");
    }
    let fill = filled.elapsed();
    report.add(
        Row::new(
            "api",
            "-",
            format!("fill {rows} rows (90% sent, 9% pending, 1% dead)"),
        )
        .measure(fill.as_secs_f64(), "s"),
    );
    let middle: String = pg
        .query_one(
            &format!("SELECT message_id::text FROM {table} WHERE id = $1"),
            &[&i64::try_from(rows / 2).unwrap_or(1).max(1)],
        )
        .await
        .unwrap()
        .get(0);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Nothing listens on port 1: the workers back off, nothing is drained.
    let relay = RelayProcess::spawn(
        &schema,
        &[
            "--http-addr",
            &addr,
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        ],
    );
    let ready = Instant::now();
    while get(&addr, "/readyz").0 != 200 {
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "the relay's HTTP port is not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let since = pg
        .query_one("SELECT to_char((now() - interval '1 hour') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    let first_page = get(&addr, "/api/messages?state=sent&limit=50").1;
    let cursor = serde_json::from_str::<serde_json::Value>(&first_page)
        .ok()
        .and_then(|v| {
            v.get("next_cursor")
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let requests = [
        ("newest, any state", "/api/messages?limit=50".to_owned()),
        (
            "sent, newest",
            "/api/messages?state=sent&limit=50".to_owned(),
        ),
        (
            "sent, next page (cursor)",
            format!("/api/messages?state=sent&limit=50&cursor={cursor}"),
        ),
        (
            "pending, by exchange + routing key",
            "/api/messages?state=pending&exchange=ex3&routing_key=rk13&limit=50".to_owned(),
        ),
        (
            "sent, by exchange + routing key",
            "/api/messages?state=sent&exchange=ex3&routing_key=rk13&limit=50".to_owned(),
        ),
        (
            "dead, newest",
            "/api/messages?state=dead&limit=50".to_owned(),
        ),
        (
            "sent in the last hour",
            format!("/api/messages?state=sent&since={since}&limit=50"),
        ),
        (
            "by message_id",
            format!("/api/messages?message_id={middle}"),
        ),
        (
            "one message with payload",
            format!("/api/messages/{middle}"),
        ),
        (
            "sent, by exchange + routing key, a rare route",
            "/api/messages?state=sent&exchange=ex-rare&routing_key=rk-rare&limit=50".to_owned(),
        ),
        (
            "any state, by routing key alone, a rare route",
            "/api/messages?routing_key=rk-rare&limit=50".to_owned(),
        ),
        (
            "any state, by routing key alone",
            "/api/messages?routing_key=rk13&limit=50".to_owned(),
        ),
        (
            "dead, by exchange + routing key",
            "/api/messages?state=dead&exchange=ex19&routing_key=rk49&limit=50".to_owned(),
        ),
        (
            "q = part of a routing key, a rare route",
            "/api/messages?q=RARE&limit=50".to_owned(),
        ),
        ("q = a message_id", format!("/api/messages?q={middle}")),
        (
            "stats, shared (within 10x its cost)",
            "/api/stats".to_owned(),
        ),
    ];
    // The stats' computation, timed once: later requests share its result.
    let computed = Instant::now();
    let status = get(&addr, "/api/stats").0;
    let label = if status == 200 {
        format!("{rows} rows: GET stats, computed")
    } else {
        format!("{rows} rows: GET stats, computed (status {status})")
    };
    report.add(Row::new("api", "-", label).measure(computed.elapsed().as_secs_f64() * 1e3, "ms"));
    for (label, path) in requests {
        let mut times = Vec::with_capacity(TIMES);
        let mut status = 0;
        for _ in 0..TIMES {
            let started = Instant::now();
            status = get(&addr, &path).0;
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let median = times[TIMES / 2];
        let case = if status == 200 {
            format!("{rows} rows: GET {label}")
        } else {
            format!("{rows} rows: GET {label} (status {status})")
        };
        report.add(Row::new("api", "-", case).value(median, "ms", TARGET_MS));
    }
    relay.stop();
    schema.drop_schema(&pg).await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A plain HTTP/1.1 GET: the status and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
