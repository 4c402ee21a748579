//! The JSON API (`/api`) against the real services, through a running
//! relay's HTTP port: every filter of the list, keyset pages while rows are
//! being inserted, payloads as text or base64, inserts that arrive (once),
//! replays that arrive, deletes of dead rows only, 400s for bad input, and
//! the admission rules (token, loopback, same-origin JSON writes). (A
//! module of the `relay` test binary, so that it links once.)

mod admission;
mod browse;
mod writes;

use crate::common::*;
use serde_json::Value;
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

/// The message_id a delivery carries.
fn message_id_of(delivery: &lapin::message::Delivery) -> String {
    crate::common::message_id(delivery)
}
