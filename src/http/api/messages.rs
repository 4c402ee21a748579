//! `GET /api/messages` (a filtered page, newest first), `GET
//! /api/messages/{key}` (one row with its payload) and `POST /api/messages`
//! (insert one, checked as the gRPC Publisher checks it: the same
//! functions, the same codes).
//!
//! A payload is shown as text when it is valid UTF-8 and at most
//! [`PAYLOAD_SHOWN`] bytes; otherwise as base64 of its first
//! [`PAYLOAD_SHOWN`] bytes, with `payload_truncated` and the full `size`.
//! Neither the list nor the detail ever reads more of a payload than that.

use super::error::ApiError;
use super::params::{encode_cursor, list_query, row_key};
use super::{ApiState, json};
use crate::grpc::publisher::{check_route, parse_message_id};
use crate::grpc::sink::admit;
use crate::grpc::status::IngressError;
use crate::outbox::check_ordering_key;
use crate::outbox::{Inserted, Listed, MessageId, NewMessage, RowKey};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The most payload bytes one answer shows.
pub const PAYLOAD_SHOWN: usize = 64 * 1024;
/// A request body's room beyond the payload (names, headers, JSON).
const BODY_OVERHEAD: usize = 64 * 1024;

type Api = State<Arc<ApiState>>;

pub async fn list(State(api): Api, uri: Uri) -> Result<Response, ApiError> {
    let (filter, page) = list_query(uri.query())?;
    let mut items = api
        .outbox
        .list(
            &filter,
            crate::outbox::Page {
                limit: page.limit + 1,
                ..page
            },
        )
        .await?;
    // One row more than asked says whether another page follows.
    let more = items.len() as i64 > page.limit;
    items.truncate(usize::try_from(page.limit).unwrap_or(usize::MAX));
    let next_cursor = more
        .then(|| items.last().map(|row| encode_cursor(row.id)))
        .flatten();
    let lanes = &api.probes.destinations;
    let items: Vec<Routed<'_>> = items
        .iter()
        .map(|row| Routed {
            destination: lanes.destination_of(&row.exchange),
            row,
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &json!({ "items": items, "next_cursor": next_cursor }),
    ))
}

/// A row with the destination its exchange routes to (by this relay's
/// rules: `amqp` is the default broker).
#[derive(Debug, serde::Serialize)]
struct Routed<'a> {
    #[serde(flatten)]
    row: &'a Listed,
    destination: &'a str,
}

/// One row with its payload.
#[derive(Debug, serde::Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    row: Routed<'a>,
    /// `text` or `base64`.
    payload_encoding: &'static str,
    payload: String,
    /// Only the first [`PAYLOAD_SHOWN`] bytes of `size` are shown.
    payload_truncated: bool,
}

pub async fn detail(State(api): Api, Path(key): Path<String>) -> Result<Response, ApiError> {
    let key = row_key(&key)?;
    let Some(found) = api.outbox.detail(&key, PAYLOAD_SHOWN).await? else {
        return Err(not_found(&key));
    };
    let whole = usize::try_from(found.row.size).is_ok_and(|size| size == found.payload.len());
    let (payload_encoding, payload) = match std::str::from_utf8(&found.payload) {
        Ok(text) if whole => ("text", text.to_owned()),
        _ => ("base64", STANDARD.encode(&found.payload)),
    };
    let shown = Shown {
        row: Routed {
            destination: api.probes.destinations.destination_of(&found.row.exchange),
            row: &found.row,
        },
        payload_encoding,
        payload,
        payload_truncated: !whole,
    };
    Ok(json(StatusCode::OK, &shown))
}

pub fn not_found(key: &RowKey) -> ApiError {
    ApiError::not_found(format!("no row with {key}"))
}

/// The body of `POST /api/messages`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Submitted {
    #[serde(default)]
    exchange: String,
    #[serde(default)]
    routing_key: String,
    /// The payload as UTF-8 text...
    payload: Option<String>,
    /// ...or as standard base64 (binary payloads).
    payload_base64: Option<String>,
    content_type: Option<String>,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
    /// Any text of 1 to 255 bytes, kept verbatim; generated when absent or
    /// empty. A repeated one is stored once.
    message_id: Option<String>,
    delay_seconds: Option<i64>,
    /// Messages with the same key are published in their commit order, one
    /// at a time; 1 to 256 bytes. Absent: no key.
    ordering_key: Option<String>,
}

impl Submitted {
    /// The message, checked by the gRPC Publisher's own rules.
    fn into_message(self, api: &ApiState) -> Result<NewMessage, ApiError> {
        let payload = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give payload (text) or payload_base64, not both",
                ));
            }
            (Some(text), None) => text.into_bytes(),
            (None, Some(encoded)) => STANDARD.decode(encoded).map_err(|e| {
                ApiError::bad_request(format!("payload_base64 is not standard base64: {e}"))
            })?,
            (None, None) => Vec::new(),
        };
        let delay = match self.delay_seconds {
            None => Duration::ZERO,
            Some(seconds) => Duration::from_secs(
                u64::try_from(seconds).map_err(|_| IngressError::NegativeDelay)?,
            ),
        };
        let mut message = NewMessage {
            message_id: parse_message_id(self.message_id.as_deref().unwrap_or_default())?,
            exchange: self.exchange,
            routing_key: self.routing_key,
            payload,
            content_type: self.content_type.filter(|c| !c.is_empty()),
            headers: self.headers,
            delay,
            ordering_key: self.ordering_key,
        };
        if let Some(key) = &message.ordering_key {
            check_ordering_key(key).map_err(IngressError::from)?;
        }
        check_route(&message)?;
        // Stored, not published here: the envelope is only the check.
        admit(&mut message, api.broker.limits(api.max_message_size), 0)?;
        Ok(message)
    }
}

pub async fn insert(
    State(api): Api,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Bodies are buffered a few at a time: memory stays bounded by
    // configuration (invariant 10), not by how many clients write at once.
    let _permit = api
        .writers
        .acquire()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let limit = api.max_message_size.saturating_mul(4) / 3 + BODY_OVERHEAD;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes (a payload above --max-message-size)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    let submitted: Submitted = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not the expected JSON: {e}")))?;
    let message = submitted.into_message(&api)?;
    let stored = api
        .outbox
        .insert(&message)
        .await
        .map_err(IngressError::Store)?;
    // `admit` gave the message its id.
    let message_id = message
        .message_id
        .clone()
        .unwrap_or_else(MessageId::generate);
    let (status, id, duplicate) = match stored {
        Inserted::New(id, _) => {
            if message.delay.is_zero() {
                api.wake.notify_one();
            }
            (StatusCode::CREATED, Some(id.0), false)
        }
        Inserted::Duplicate => {
            let key = RowKey::MessageId(message_id.clone());
            let existing = api.outbox.detail(&key, 0).await?;
            (StatusCode::OK, existing.map(|found| found.row.id), true)
        }
    };
    tracing::info!(action = "insert", %peer, id, %message_id, duplicate,
        exchange = message.exchange, routing_key = message.routing_key,
        size = message.payload.len(), "API: message inserted");
    Ok(json(
        status,
        &json!({ "id": id, "message_id": message_id, "duplicate": duplicate }),
    ))
}
