//! outbox-relay: a transactional outbox relay from PostgreSQL to RabbitMQ.
//!
//! Applications insert messages into `<schema>.outbox` in their own
//! transactions; the relay claims pending rows with `FOR UPDATE SKIP LOCKED`,
//! publishes them with publisher confirms and marks them sent only after the
//! broker confirmed them, in the transaction that holds the claim. Delivery is
//! at-least-once; every message carries a stable `message_id`.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | `main.rs` | thin: parse CLI, start telemetry, dispatch the subcommand, map errors to exit codes |
//! | [`config`] | clap derive; every flag also an `OUTBOX_*` env var; typed values; `validate()`; secrets redacted; TLS parameters of the URLs |
//! | [`tls`] | rustls client configurations (ring) for both services: roots, client certificates, verification modes |
//! | [`telemetry`] | tracing subscriber (text or JSON) on a lossy background writer: logging never blocks or stops relaying; OTLP trace export when `OTEL_*` asks (`otel.rs`); W3C trace context carried from calls and rows to messages (`context.rs`) |
//! | [`health`] | the workers' own health: last iteration, systemic fault, panics and restarts |
//! | [`app`] | `App::build(config)` / `run_until_stopped(CancellationToken)`: wires the parts |
//! | [`commands`] | one-shot subcommands: `migrate`, `send`, `stats`, `show`, `dead`, `replay`, `tail`, `dead-queue` |
//! | [`manual`] | the command line's completion scripts and man pages (`completions`, `man`), generated from the clap definition |
//! | [`metrics`] | the Prometheus registry: the relay's counters and histograms (cheap label handles), the table's gauges refreshed in the background, what health and the broker count read at scrape time |
//! | [`http`] | the HTTP port: `/livez`, `/readyz`, `/metrics` (axum); `http::api`, the JSON API under `/api` (handlers, the OpenAPI document); the console at `/` (`console/`: the embedded page, its login); admission of both (`auth.rs`: token, loopback, same-origin, CSRF) and the console's sessions (`session.rs`) |
//! | [`outbox`] | the table: row types decoded defensively, all SQL (operators' browsing and stats included), the claim as an object (`Claim::finish` marks and commits), errors with PostgreSQL's words, migrations, LISTEN wake-ups; an o5 application's table (`outbox::o5`: its shape, claim and SQL) |
//! | [`relay`] | the step: claim → publish → await confirms → mark; the pipelined worker step (the next batch sent while the previous one settles); the o5 table's step (`O5Relay`: claim → convert → publish → delete); backoff; dead-lettering; the worker loop over either (`Step`) with its adaptive idle poll, systemic-fault pauses and its supervisor; retention |
//! | [`amqp`] | lapin connection and channels, encoding, confirm handling, reconnect, topology declaration |
//! | [`destination`] | destinations other than the broker (NATS JetStream, Redis Streams, HTTP webhooks) behind one `Destination` trait with the AMQP path's contract; routing by exchange; a breaker and metrics per destination |
//! | [`grpc`] | the gRPC ingress: publisher, topic services, o5 bridge, health, admission (metadata size, token), the connection-limited listener; conversion to `tonic::Status` in one place |
//! | [`deliver`] | the receiving side: consume the worker application's queues, call its gRPC methods (plaintext or TLS) with the raw bodies, ack / retry (`<queue>.retry`) / dead-letter (`<queue>.dead`); its state for the health endpoints; the `dead-queue` command's operations |
//! | [`proto`] | Rust code generated from `proto/` by `build.rs` (protox, no `protoc`) |
//! | `sql/` | versioned migrations `NNNN_name.sql`, psql-compatible; `sql/o5/` those of an o5 application's table (`migrate --table-format o5`) |
//! | `proto/` | the gRPC contract and the messaging options (ours, and the o5 / j5 / pentops forms we accept) |
//! | `tests/` | integration tests against the real PostgreSQL and RabbitMQ; `tests/faults/` counts what faults do |
//! | `benches/` | the benchmark harness |
//! | `deploy/` | container image, Kubernetes sidecar manifests, local scripts |

/// A kill point for the fault-injection suite: with the `failpoints` feature
/// and `FAILPOINTS=<name>=return` the process aborts here, as a crash would;
/// without the feature it compiles to nothing.
macro_rules! kill_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| std::process::abort());
    };
}

pub mod amqp;
pub mod app;
pub mod commands;
pub mod config;
pub mod deliver;
pub mod destination;
pub mod grpc;
pub mod health;
pub mod http;
pub mod manual;
pub mod metrics;
pub mod outbox;
pub mod proto;
pub mod relay;
pub mod telemetry;
pub mod tls;

pub use app::App;
