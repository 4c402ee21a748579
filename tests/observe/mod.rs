//! What an operator's tools see of a running binary: spans exported over
//! OTLP to a collector stand-in (a real OTLP/gRPC trace service in the
//! test), trace ids in JSON logs, `/livez` while a worker is wedged by a
//! failpoint, and `promtool check metrics` on the live `/metrics`. (A module
//! of the `cli` test binary: trace export and failpoints are process-wide,
//! so each case runs its own relay process.)

use super::relay;
use crate::common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use outbox_relay::proto::outbox::v1::PublishRequest;
use outbox_relay::proto::outbox::v1::publisher_client::PublisherClient;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);
/// The caller's context on the gRPC call, and the one written into a row.
const CALL_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const ROW_PARENT: &str = "00-5cf92f3577b34da6a3ce929d0e0e4737-11f067aa0ba902b8-01";
const DEAD_PARENT: &str = "00-6df92f3577b34da6a3ce929d0e0e4738-22f067aa0ba902b9-01";

/// An OTLP trace service that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Self::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    fn find(&self, found: impl Fn(&Span) -> bool) -> Option<Span> {
        self.0.lock().unwrap().iter().find(|s| found(s)).cloned()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        })
}

/// (trace id, span id) of a `traceparent`.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    (parts[1].to_owned(), parts[2].to_owned())
}

/// The address a log line with `message` names in its `addr` field (text or
/// JSON logs).
fn logged_addr(log: &str, message: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains(message))
        .find_map(|line| {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
                return json.get("addr")?.as_str()?.parse().ok();
            }
            let rest = &line[line.find("addr=")? + 5..];
            rest.split_whitespace().next()?.parse().ok()
        })
}

async fn wait_for_addr(log: &Arc<Mutex<String>>, message: &str) -> SocketAddr {
    let mut addr = None;
    let found = wait_until(WITHIN, || {
        addr = logged_addr(&log.lock().unwrap(), message);
        let found = addr.is_some();
        async move { found }
    })
    .await;
    assert!(found, "no `{message}` line: {}", log.lock().unwrap());
    addr.unwrap()
}

/// Kills the relay if the test ends before it was stopped (a failed
/// assertion must not leave a relay running).
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// A relay process, its stderr collected as it comes.
struct Spawned {
    child: Child,
    log: Arc<Mutex<String>>,
    _reap: Reap,
}

/// `outbox-relay <args>` with `env` added to its environment.
fn spawn(args: &[&str], env: &[(&str, String)]) -> Spawned {
    let mut command = relay(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reap = Reap(child.id());
    let log = watch_stderr(&mut child);
    Spawned {
        child,
        log,
        _reap: reap,
    }
}

async fn sigterm(child: Child) -> std::process::ExitStatus {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut child = child;
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

fn traceparent(d: &lapin::message::Delivery) -> String {
    let headers = outbox_relay::amqp::table_to_json(d.properties.headers().as_ref().unwrap());
    headers["traceparent"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_spans_chain_the_caller_the_grpc_call_and_each_published_message() {
    let (collector, collector_addr) = Collector::start().await;
    let env = TestEnv::new("otlp").await;
    let sql = format!(
        "INSERT INTO {} (exchange, routing_key, payload, headers) VALUES ('', $1, 'row', $2), ($3, 'k', 'dead', $4)",
        env.table()
    );
    let (row_headers, dead_headers) = (
        serde_json::json!({ "traceparent": ROW_PARENT }),
        serde_json::json!({ "traceparent": DEAD_PARENT }),
    );
    let missing = unique("no_such_exchange");
    env.pg
        .execute(&sql, &[&env.queue, &row_headers, &missing, &dead_headers])
        .await
        .unwrap();
    let Spawned { child, log, _reap } = spawn(
        &[
            "run",
            "--schema",
            &env.schema,
            "--log-format",
            "json",
            "--max-attempts",
            "1",
        ],
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{collector_addr}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("OTEL_SERVICE_NAME", "outbox-relay-test".to_owned()),
        ],
    );
    let grpc = wait_for_addr(&log, "gRPC ingress listening").await;
    let mut client = PublisherClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut call = tonic::Request::new(PublishRequest {
        routing_key: env.queue.clone(),
        payload: b"call".to_vec(),
        ..Default::default()
    });
    call.metadata_mut()
        .insert("traceparent", CALL_PARENT.parse().unwrap());
    client.publish(call).await.expect("published");
    let got = env.consume(2, WITHIN, Duration::ZERO).await;
    let dead_logged = wait_until(WITHIN, || async {
        log.lock().unwrap().lines().any(|l| {
            l.contains("dead-lettered")
                && l.contains(&format!("\"trace_id\":\"{}\"", ids(DEAD_PARENT).0))
        })
    })
    .await;
    assert_eq!(got.len(), 2, "{}", log.lock().unwrap());
    let by_payload = |p: &[u8]| got.iter().find(|d| d.data == p).expect("delivered");
    let (call_message, row_message) = (by_payload(b"call"), by_payload(b"row"));

    // The gRPC call: caller -> grpc.call -> outbox.send, one trace.
    let (call_trace, caller_span) = ids(CALL_PARENT);
    let (published_trace, send_span) = ids(&traceparent(call_message));
    assert_eq!(published_trace, call_trace, "the caller's trace id travels");
    assert_ne!(send_span, caller_span, "the relay's own span is the parent");
    let exported = |span_id: String| {
        let collector = collector.clone();
        async move {
            let mut span = None;
            wait_until(WITHIN, || {
                span = collector.find(|s| hex(&s.span_id) == span_id);
                let found = span.is_some();
                async move { found }
            })
            .await;
            span.unwrap_or_else(|| panic!("span {span_id} not exported"))
        }
    };
    let send = exported(send_span.clone()).await;
    assert_eq!(send.name, "outbox.send");
    assert_eq!(hex(&send.trace_id), call_trace);
    let message_id = call_message
        .properties
        .message_id()
        .as_ref()
        .unwrap()
        .to_string();
    assert_eq!(
        attribute(&send, "messaging.message.id"),
        Some(message_id.clone())
    );
    let call_span = exported(hex(&send.parent_span_id)).await;
    assert_eq!(call_span.name, "outbox.v1.Publisher/Publish");
    assert_eq!(
        hex(&call_span.parent_span_id),
        caller_span,
        "the call's parent is the caller"
    );
    assert_eq!(
        attribute(&call_span, "rpc.method").as_deref(),
        Some("/outbox.v1.Publisher/Publish")
    );
    assert_eq!(
        attribute(&call_span, "messaging.message.ids"),
        Some(message_id.clone()),
        "the call's span names the message it stored"
    );

    // A row's own traceparent: the row's sender -> outbox.send.
    let (row_trace, row_span) = ids(ROW_PARENT);
    let (published_trace, send_span) = ids(&traceparent(row_message));
    assert_eq!(published_trace, row_trace);
    let send = exported(send_span).await;
    assert_eq!(hex(&send.parent_span_id), row_span);
    assert_eq!(send.links.len(), 1, "linked to its batch's publish span");

    // The batch phases, with the message ids.
    let row_id = row_message
        .properties
        .message_id()
        .as_ref()
        .unwrap()
        .to_string();
    for phase in ["outbox.claim", "outbox.publish", "outbox.mark"] {
        let found = wait_until(WITHIN, || async {
            collector
                .find(|s| {
                    s.name == phase
                        && (phase == "outbox.claim"
                            || attribute(s, "messaging.message.ids")
                                .is_some_and(|ids| ids.contains(&row_id)))
                })
                .is_some()
        })
        .await;
        assert!(found, "no {phase} span with the row's message id");
    }
    let status = sigterm(child).await;
    let log = log.lock().unwrap().clone();
    assert!(
        dead_logged,
        "the dead-letter log line carries the row's trace id: {log}"
    );
    assert!(status.success(), "{log}");
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_is_503_while_a_worker_is_wedged_and_200_once_it_moves_again() {
    let env = TestEnv::new("wedged").await;
    // The worker's first loop iteration blocks for 6 s: past the 1 s window.
    let Spawned { child, log, _reap } = spawn(
        &[
            "run",
            "--schema",
            &env.schema,
            "--concurrency",
            "1",
            "--liveness-window",
            "1s",
        ],
        &[("FAILPOINTS", "relay_worker_loop=1*sleep(6000)".to_owned())],
    );
    let http = wait_for_addr(&log, "HTTP port listening").await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    let wedged = loop {
        let reply = http_get(http, "/livez", None).await;
        if reply.status == 503 || tokio::time::Instant::now() >= deadline {
            break reply;
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    let recovered = wait_until(WITHIN, || async {
        http_get(http, "/livez", None).await.status == 200
    })
    .await;
    let status = sigterm(child).await;
    let log = log.lock().unwrap().clone();
    assert_eq!(wedged.status, 503, "livez never failed: {log}");
    let body = wedged.body;
    assert!(
        body.contains("worker 0"),
        "the reason names the worker: {body}"
    );
    assert!(
        recovered,
        "livez stayed 503 after the worker moved again: {log}"
    );
    assert!(status.success(), "{log}");
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_live_metrics() {
    let env = TestEnv::new("promtool").await;
    env.insert_rows(5).await;
    let Spawned { child, log, _reap } = spawn(&["run", "--schema", &env.schema], &[]);
    let http = wait_for_addr(&log, "HTTP port listening").await;
    let grpc = wait_for_addr(&log, "gRPC ingress listening").await;
    assert!(wait_until(WITHIN, || async { env.count_sent().await == 5 }).await);
    // One gRPC call, so that its families have a series to show.
    let mut client = PublisherClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let refused = client.publish(PublishRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let metrics = http_get(http, "/metrics", None).await;
    let _ = sigterm(child).await;
    assert_eq!(metrics.status, 200);
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool installed (deploy/local/services.sh installs `prometheus`)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success(),
        "promtool: {said}\n{}",
        metrics.body
    );
    assert!(said.trim().is_empty(), "promtool has remarks: {said}");

    // Every series the alerting rules and the dashboard query is served.
    let served: Vec<&str> = metrics
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for file in [
        "deploy/observability/alerts.yml",
        "deploy/observability/dashboard.json",
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        let mut names: Vec<&str> = text
            .match_indices("outbox_relay_")
            .map(|(at, _)| {
                let rest = &text[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        names.dedup();
        for name in names {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            let family = family.strip_suffix("_total").unwrap_or(family);
            assert!(
                served
                    .iter()
                    .any(|s| *s == family || s.strip_suffix("_total") == Some(family)),
                "{file} queries {name}, which /metrics does not serve"
            );
        }
    }
    env.drop_schema().await;
}
