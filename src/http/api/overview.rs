//! `GET /api/health` (the readiness checks of `/readyz` and the workers'
//! liveness of `/livez`, as JSON with their detail, delivery to the worker
//! application's among them) and `GET /api/stats` (the table at a glance,
//! see `crate::outbox::Overview`).

use super::error::ApiError;
use super::{ApiState, json};
use crate::deliver::health::{DeliveryHealth, rfc3339};
use crate::http::{WORKER_CHECK, readiness};
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
    if let (Some(delivery), Some(Value::Object(check))) =
        (probes.health.delivery(), checks.get_mut(WORKER_CHECK))
    {
        check.extend(delivery_detail(delivery));
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

/// The state of delivery to the worker: what it does since when, on which
/// queues, and its latest failure.
fn delivery_detail(delivery: &DeliveryHealth) -> Map<String, Value> {
    let state = delivery.snapshot();
    let mut detail = Map::new();
    detail.insert("addr".into(), json!(delivery.addr()));
    detail.insert("state".into(), json!(state.phase.as_str()));
    if let crate::deliver::health::Phase::Starting { step } = state.phase {
        detail.insert("step".into(), json!(step));
    }
    detail.insert("since".into(), json!(rfc3339(state.since)));
    detail.insert("queues".into(), json!(state.queues));
    detail.insert("last_error".into(), json!(state.last_error));
    detail
}

pub async fn stats(State(api): Api) -> Result<Response, ApiError> {
    let overview = api.outbox.overview(TOP_ROUTES).await?;
    Ok(json(StatusCode::OK, &overview))
}
