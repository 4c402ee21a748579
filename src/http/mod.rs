//! The HTTP port (`--http-addr`): what the kubelet and Prometheus reach.
//!
//! - `GET /metrics`: the Prometheus text exposition, or OpenMetrics when the
//!   `Accept` header asks for `application/openmetrics-text`;
//! - `GET /livez`: 200 while every worker iterates within
//!   `--liveness-window` and none is dead or paused by a systemic fault;
//!   503 with the reasons otherwise, so that a wedged sidecar is restarted;
//! - `GET /readyz`: 200 when the sidecar can take work from its
//!   application: the database answers (outbox mode), and the broker is
//!   connected (direct ingress mode only: in outbox mode a broker outage is
//!   what the outbox buffers through, and an unready sidecar would take the
//!   application out of its Service); and, with `--worker-addr`, that
//!   delivery to the worker application consumes (`worker`: the worker
//!   accepts connections and the consumers are up). The body lists each
//!   check. `?exclude=<check>` (repeatable, as the Kubernetes API server's
//!   own `/readyz` takes it) leaves a check out of the answer: a native
//!   sidecar's startup probe must not wait for the worker application,
//!   which the kubelet starts only after that probe passed.
//!
//! - `/api/...`: the JSON API ([`api`]) and `/` the console ([`console`]),
//!   a web page over that API, only with `--admin-token` or on a loopback
//!   address; both admitted by [`auth`] (a bearer token or the console's
//!   login session of [`session`]). Both read the relay's own table format:
//!   with `--table-format o5`, `/api/...` answers 501 and says so
//!   ([`HttpPort::refusing_api`]).
//!
//! The probes and `/metrics` need no token: they serve no data, only health
//! and counts. The port keeps answering while the workers drain at shutdown
//! (`/readyz` then says so with 503) and closes once they are done.

pub mod api;
mod auth;
mod console;
mod session;
mod throttle;

use crate::amqp::Broker;
use crate::health::Health;
use crate::metrics::{Format, Metrics};
use crate::outbox::Outbox;
use anyhow::Context;
use api::ApiSettings;
use auth::Gate;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a readiness check waits for a service: well inside the
/// kubelet's default probe timeout (1 s).
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// What the probes and `/metrics` read.
#[derive(Clone)]
pub struct Probes {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub liveness_window: Duration,
    /// The probes' own connections, apart from the workers' pool, so that
    /// busy workers never make the sidecar look unready.
    pub database: Outbox,
    /// Checked by `/readyz` in direct ingress mode only.
    pub broker: Option<Arc<Broker>>,
    /// Cancelled when shutdown begins: `/readyz` answers 503 from then on.
    pub stopping: CancellationToken,
    /// Destinations besides the broker: named by `/readyz` and
    /// `/api/health` when down, without making the pod unready (the outbox
    /// buffers their rows).
    pub destinations: crate::destination::Lanes,
}

/// A bound, not yet serving, HTTP port.
pub struct HttpPort {
    listener: TcpListener,
    probes: Probes,
    /// The API's settings and the admission of the API and the console.
    api: Option<(ApiSettings, Arc<Gate>)>,
    /// Why there is no API, answered on `/api/...` when set.
    api_refusal: Option<&'static str>,
}

impl HttpPort {
    /// Binds `addr` now, so that a taken port fails the start and port 0 is
    /// known before serving. `api` is served as [`api::served`] allows.
    pub async fn bind(
        addr: SocketAddr,
        probes: Probes,
        api: Option<ApiSettings>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP port (--http-addr) to {addr}"))?;
        let api = match api {
            Some(settings) => {
                let gate = Gate::new(settings.token.as_deref())
                    .context("keying the console's login sessions")?;
                Some((settings, Arc::new(gate)))
            }
            None => None,
        };
        Ok(Self {
            listener,
            probes,
            api,
            api_refusal: None,
        })
    }

    /// Without an API, answers `/api/...` with 501 and `reason` instead of
    /// 404, so that a script or the console's user learns why.
    pub fn refusing_api(mut self, reason: &'static str) -> Self {
        self.api_refusal = Some(reason);
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `stop`, then lets requests in progress finish.
    pub async fn serve(self, stop: CancellationToken) -> std::io::Result<()> {
        let addr = self.local_addr();
        let probes = Arc::new(self.probes);
        let mut router = Router::new()
            .route("/metrics", get(metrics))
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .with_state(probes.clone());
        let api = match self.api {
            Some((api, gate)) if api::served(addr, api.token.is_some()) => {
                let token = api.token.is_some();
                router = router
                    .merge(api::router(api, probes, gate.clone()))
                    .merge(console::router(gate));
                if token { "token" } else { "loopback, no token" }
            }
            Some(_) => {
                tracing::warn!(%addr, fix = "set --admin-token (OUTBOX_ADMIN_TOKEN or OUTBOX_ADMIN_TOKEN_FILE), or bind --http-addr to 127.0.0.1",
                    "the JSON API (/api) and the console (/) are off: the HTTP port listens beyond loopback and no --admin-token is set");
                "off"
            }
            None => match self.api_refusal {
                Some(reason) => {
                    let refuse = move || async move {
                        let body = serde_json::json!({ "error": reason }).to_string();
                        let json = HeaderValue::from_static("application/json");
                        (
                            StatusCode::NOT_IMPLEMENTED,
                            [(header::CONTENT_TYPE, json)],
                            body,
                        )
                    };
                    router = router
                        .route("/api", axum::routing::any(refuse))
                        .route("/api/{*rest}", axum::routing::any(refuse));
                    "refused"
                }
                None => "off",
            },
        };
        tracing::info!(%addr, api, "HTTP port listening (/livez, /readyz, /metrics; /api and the console at / unless api=off)");
        axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    }
}

type Shared = State<Arc<Probes>>;

async fn metrics(State(probes): Shared, headers: HeaderMap) -> Response {
    let format = if accepts_openmetrics(&headers) {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    };
    let body = probes.metrics.encode(format);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        body,
    )
        .into_response()
}

/// True when the scraper lists OpenMetrics among what it accepts
/// (Prometheus does, ahead of the classic text format).
fn accepts_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let mut parts = media.split(';').map(str::trim);
            let refused = |param: &str| {
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            };
            parts.next() == Some("application/openmetrics-text") && !parts.any(refused)
        })
}

async fn livez(State(probes): Shared) -> (StatusCode, String) {
    let problems = probes.health.problems(probes.liveness_window);
    if problems.is_empty() {
        return (StatusCode::OK, "ok\n".to_owned());
    }
    let mut body = String::new();
    for problem in problems {
        let _ = writeln!(body, "{problem}");
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

/// The name of the check of delivery to the worker application.
pub(crate) const WORKER_CHECK: &str = "worker";

/// One check of readiness: a service the sidecar needs, or shutdown.
pub(crate) struct Check {
    pub name: &'static str,
    pub result: Result<(), String>,
}

/// What `/readyz` (and `/api/health`) check: the database, the broker in
/// direct ingress mode, delivery to the worker with `--worker-addr`, and
/// that shutdown has not begun.
pub(crate) async fn readiness(probes: &Probes) -> Vec<Check> {
    let mut checks = Vec::with_capacity(4);
    let database = match tokio::time::timeout(CHECK_TIMEOUT, probes.database.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer to SELECT 1 within {CHECK_TIMEOUT:?}")),
    };
    checks.push(Check {
        name: "database",
        result: database,
    });
    if let Some(broker) = &probes.broker {
        let connected = match tokio::time::timeout(CHECK_TIMEOUT, broker.is_connected()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err("not connected (direct ingress mode needs it)".to_owned()),
            Err(_) => Err("connecting (direct ingress mode needs it)".to_owned()),
        };
        checks.push(Check {
            name: "broker",
            result: connected,
        });
    }
    if let Some(delivery) = probes.health.delivery() {
        checks.push(Check {
            name: WORKER_CHECK,
            result: delivery.pod_readiness(),
        });
    }
    if probes.stopping.is_cancelled() {
        checks.push(Check {
            name: "shutdown",
            result: Err("shutting down".to_owned()),
        });
    }
    checks
}

async fn readyz(State(probes): Shared, RawQuery(query): RawQuery) -> (StatusCode, String) {
    let excluded = excluded(query.as_deref());
    let checks = readiness(&probes).await;
    let ready = checks
        .iter()
        .all(|check| check.result.is_ok() || excluded.contains(&check.name));
    let mut body = String::new();
    for lane in probes.destinations.states() {
        let _ = match &lane.error {
            None => writeln!(body, "destination {}: ok", lane.name),
            Some(e) => writeln!(
                body,
                "destination {}: down, its rows wait in the outbox (not a readiness check): {e}",
                lane.name
            ),
        };
    }
    for Check { name, result } in checks {
        let mark = if excluded.contains(&name) {
            " (excluded)"
        } else {
            ""
        };
        let _ = match result {
            Ok(()) => writeln!(body, "{name}: ok{mark}"),
            Err(e) => writeln!(body, "{name}: failed{mark}: {e}"),
        };
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// The checks a query's `exclude=<name>` pairs leave out (names of no
/// check are ignored: `exclude=worker` holds without `--worker-addr` too).
fn excluded(query: Option<&str>) -> Vec<&str> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("exclude="))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_pairs_name_the_checks_left_out() {
        assert!(excluded(None).is_empty());
        assert_eq!(excluded(Some("exclude=worker")), ["worker"]);
        assert_eq!(
            excluded(Some("verbose&exclude=worker&exclude=database&x=1")),
            ["worker", "database"]
        );
    }

    fn accept(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn openmetrics_is_served_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert!(accepts_openmetrics(&accept(prometheus)));
        assert!(!accepts_openmetrics(&accept("text/plain;version=0.0.4")));
        assert!(!accepts_openmetrics(&accept("*/*")));
        assert!(!accepts_openmetrics(&HeaderMap::new()));
        assert!(!accepts_openmetrics(&accept(
            "application/openmetrics-text;q=0, text/plain"
        )));
    }
}
