//! The JSON API of the HTTP port, under `/api`: health and stats, browsing
//! the outbox (filters, keyset pages, one row with its payload), inserting a
//! message, and replaying or deleting dead rows. Its contract is
//! `openapi.json` (served at `/api/openapi.json`).
//!
//! Invariants owned here:
//! - the API is served only with `--admin-token`, or when the port is bound
//!   to loopback ([`served`]); elsewhere `/api` does not exist (404) and
//!   `run` warns how to enable it. Admission rules (token or console
//!   session, loopback host, same-origin JSON writes, CSRF) are
//!   `crate::http::auth`'s, shared with the console;
//! - it reads and writes through its own small pool, so browsing never
//!   takes the probes' or the workers' connections; its SQL is the
//!   `outbox` module's (bound values, index paths, a statement timeout);
//! - a message it inserts passes the gRPC Publisher's own checks and maps
//!   their codes onto statuses in one place (`error`);
//! - it changes dead rows only, and logs every change at info (audit).

mod actions;
mod error;
mod messages;
mod openapi;
mod overview;
mod params;

pub use error::{ApiError, http_status};
pub use params::{DEFAULT_LIMIT, MAX_LIMIT};

use super::Probes;
use super::auth::{self, Gate};
use crate::amqp::Broker;
use crate::outbox::Outbox;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{Notify, Semaphore};

/// Write bodies buffered at once (each up to about 4/3 of
/// `--max-message-size`): as many as the API has connections.
pub const API_WRITERS: usize = 2;

/// Every path, as the router and `openapi.json` name them.
pub const PATHS: &[&str] = &[
    "/api/health",
    "/api/stats",
    "/api/messages",
    "/api/messages/{key}",
    "/api/messages/{key}/replay",
    "/api/dead/replay",
    "/api/openapi.json",
];

/// What the API works with (see `App::build`).
pub struct ApiSettings {
    /// Its own connections to the table.
    pub outbox: Outbox,
    /// For the message checks (the negotiated frame size).
    pub broker: Arc<Broker>,
    /// Wakes idle workers after an insert or a replay.
    pub wake: Arc<Notify>,
    /// `--max-message-size`.
    pub max_message_size: usize,
    /// `--admin-token`.
    pub token: Option<String>,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("outbox", &self.outbox)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// The handlers' shared state.
pub(crate) struct ApiState {
    outbox: Outbox,
    broker: Arc<Broker>,
    wake: Arc<Notify>,
    max_message_size: usize,
    probes: Arc<Probes>,
    writers: Semaphore,
    stats: overview::StatsCache,
}

/// Whether the API is served on `addr`: with a token anywhere, without one
/// on loopback only (where only the pod's or host's own processes reach it).
pub fn served(addr: SocketAddr, token: bool) -> bool {
    token || addr.ip().is_loopback()
}

/// The `/api` routes, behind admission by `gate`.
pub(crate) fn router(settings: ApiSettings, probes: Arc<Probes>, gate: Arc<Gate>) -> Router {
    let state = Arc::new(ApiState {
        outbox: settings.outbox,
        broker: settings.broker,
        wake: settings.wake,
        max_message_size: settings.max_message_size,
        probes,
        writers: Semaphore::new(API_WRITERS),
        stats: overview::StatsCache::default(),
    });
    Router::new()
        .route(PATHS[0], get(overview::health))
        .route(PATHS[1], get(overview::stats))
        .route(PATHS[2], get(messages::list).post(messages::insert))
        .route(PATHS[3], get(messages::detail).delete(actions::delete))
        .route(PATHS[4], post(actions::replay_one))
        .route(PATHS[5], post(actions::replay_dead))
        .route(PATHS[6], get(openapi::document))
        .route("/api/{*rest}", any(unknown))
        .route_layer(axum::middleware::from_fn_with_state(gate, auth::admit))
        .with_state(state)
}

async fn unknown() -> ApiError {
    ApiError::not_found("no such API path; see /api/openapi.json")
}

/// A JSON answer.
pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the answer cannot be written as JSON: {e}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_is_served_with_a_token_or_on_loopback_only() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(served(addr("127.0.0.1:9464"), false));
        assert!(served(addr("[::1]:9464"), false));
        assert!(!served(addr("0.0.0.0:9464"), false));
        assert!(!served(addr("10.1.2.3:9464"), false));
        assert!(served(addr("0.0.0.0:9464"), true));
    }
}
