//! `GET /api/health` (the readiness checks of `/readyz` and the workers'
//! liveness of `/livez`, as JSON with their detail) and `GET /api/stats`
//! (the table at a glance, see `crate::outbox::Overview`).

use super::error::ApiError;
use super::{ApiState, json};
use crate::http::readiness;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// How many routes of the backlog `/api/stats` lists.
pub const TOP_ROUTES: i64 = 10;

type Api = State<Arc<ApiState>>;

/// 200 when every check passes, 503 otherwise; the body says which failed.
pub async fn health(State(api): Api) -> Response {
    let probes = &api.probes;
    let mut checks = Map::new();
    for check in readiness(probes).await {
        let value = match check.result {
            Ok(()) => json!({ "ok": true }),
            Err(e) => json!({ "ok": false, "error": e }),
        };
        checks.insert(check.name.to_owned(), value);
    }
    let problems = probes.health.problems(probes.liveness_window);
    checks.insert(
        "workers".to_owned(),
        json!({
            "ok": problems.is_empty(),
            "problems": problems,
            "faulted": probes.health.faulted(),
            "restarts": probes.health.restarts(),
        }),
    );
    let ok = checks
        .values()
        .all(|check| check["ok"] == Value::Bool(true));
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &json!({ "status": if ok { "ok" } else { "failing" }, "checks": checks }),
    )
}

pub async fn stats(State(api): Api) -> Result<Response, ApiError> {
    let overview = api.outbox.overview(TOP_ROUTES).await?;
    Ok(json(StatusCode::OK, &overview))
}
