//! `GET /api/health` (the readiness checks of `/readyz` and the workers'
//! liveness of `/livez`, as JSON with their detail, delivery to the worker
//! application's among them) and `GET /api/stats` (the table at a glance,
//! see `crate::outbox::Overview`).
//!
//! The stats' cost follows the backlog (1.2 s for 900,000 pending rows in
//! the API benchmark), and every open console asks for them every few
//! seconds: they are computed by one request at a time and the result is
//! shared for [`StatsCache`]'s freshness, which grows with what the last
//! computation took, so that they never keep a database backend busy more
//! than a tenth of the time however many pages are open. The answer says
//! how old it is (`age_seconds`).

use super::error::ApiError;
use super::{ApiState, json};
use crate::deliver::health::{DeliveryHealth, rfc3339};
use crate::http::{WORKER_CHECK, readiness};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    // Not checks: a down destination's rows wait in the outbox, the pod
    // stays ready.
    let destinations = probes.destinations.states();
    json(
        status,
        &json!({
            "status": if ok { "ok" } else { "failing" },
            "checks": checks,
            "destinations": destinations,
        }),
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

/// Stats are reused for at least this long.
const FRESH_AT_LEAST: Duration = Duration::from_secs(2);
/// ... and for this many times what computing them took ...
const FRESH_PER_COST: u32 = 10;
/// ... but never longer than this.
const FRESH_AT_MOST: Duration = Duration::from_secs(30);

/// The last stats computed, shared until they are stale.
#[derive(Debug, Default)]
pub struct StatsCache {
    last: tokio::sync::Mutex<Option<Computed>>,
}

#[derive(Debug)]
struct Computed {
    at: Instant,
    took: Duration,
    /// A failure is shared too: requests queued behind a computation that
    /// failed (a statement timeout, no free connection) must not each try
    /// again, one after another, keeping a backend busy.
    body: Result<Value, ApiError>,
}

/// How long stats that took `took` to compute are served.
fn freshness(took: Duration) -> Duration {
    (took * FRESH_PER_COST).clamp(FRESH_AT_LEAST, FRESH_AT_MOST)
}

pub async fn stats(State(api): Api) -> Result<Response, ApiError> {
    // Held while computing: concurrent requests wait for that one result.
    let mut last = api.stats.last.lock().await;
    let stale = last
        .as_ref()
        .is_none_or(|c| c.at.elapsed() >= freshness(c.took));
    if stale {
        let start = Instant::now();
        let body = api
            .outbox
            .overview(TOP_ROUTES)
            .await
            .map(|overview| serde_json::to_value(&overview).expect("stats serialize"))
            .map_err(ApiError::from);
        *last = Some(Computed {
            at: start,
            took: start.elapsed(),
            body,
        });
    }
    let computed = last.as_ref().expect("computed above");
    let mut body = computed.body.clone()?;
    body["age_seconds"] = json!(computed.at.elapsed().as_secs_f64());
    body["compute_seconds"] = json!(computed.took.as_secs_f64());
    Ok(json(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_reused_longer_the_more_they_cost() {
        assert_eq!(freshness(Duration::from_millis(3)), FRESH_AT_LEAST);
        assert_eq!(
            freshness(Duration::from_millis(1200)),
            Duration::from_secs(12)
        );
        assert_eq!(freshness(Duration::from_secs(9)), FRESH_AT_MOST);
    }
}
