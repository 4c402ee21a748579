//! Flags of the gRPC ingress (`outbox-relay run`): where it listens, how it
//! stores what it accepts, which application services it serves, and who may
//! call it.

use super::values::{Secret, parse_size};
use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "gRPC ingress")]
pub struct GrpcArgs {
    /// Address the gRPC ingress listens on (host:port; port 0 picks a free
    /// one), or `none` to turn it off. Loopback by default: a sidecar is
    /// called by its own pod.
    #[arg(long, env = "OUTBOX_GRPC_ADDR", default_value = DEFAULT_GRPC_ADDR)]
    pub grpc_addr: GrpcListen,
    /// `outbox`: a call returns once its message is committed to the outbox
    /// table (a broker outage does not fail it); `direct`: once the broker
    /// confirmed it (UNAVAILABLE when it cannot). Delayed messages always go
    /// through the outbox.
    #[arg(long, env = "OUTBOX_INGRESS_MODE", value_enum, default_value_t = IngressMode::Outbox)]
    pub ingress_mode: IngressMode,
    /// FileDescriptorSet files (`protoc --include_imports --descriptor_set_out`,
    /// `buf build -o`) whose services carry `(outbox.messaging.v1.config)`:
    /// each such service is served at its own path. Repeatable; the
    /// environment variable takes a comma-separated list.
    #[arg(
        long = "descriptor-set",
        env = "OUTBOX_DESCRIPTOR_SET",
        value_delimiter = ','
    )]
    pub descriptor_sets: Vec<PathBuf>,
    /// Read the application's service descriptors from its gRPC server
    /// reflection at this URL (e.g. http://127.0.0.1:8080), retrying until
    /// the application answers; its topic services are served from then on.
    #[arg(long, env = "OUTBOX_DESCRIPTOR_REFLECTION")]
    pub descriptor_reflection: Option<ReflectionUrl>,
    /// Declare, at start, the durable exchanges (and unicast input queues)
    /// that the served topologies publish to, and the o5 exchange.
    #[arg(long, env = "OUTBOX_DECLARE_TOPOLOGY")]
    pub declare_topology: bool,
    /// Topic exchange of the o5 bridge (`o5.messaging.v1.topic.MessageBridgeTopic`).
    #[arg(long, env = "OUTBOX_O5_EXCHANGE", default_value = "o5-messaging")]
    pub o5_exchange: String,
    /// Largest gRPC request accepted, e.g. 4MiB; larger ones get
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "OUTBOX_GRPC_MAX_REQUEST_SIZE", default_value = "4MiB", value_parser = parse_size)]
    pub grpc_max_request_size: usize,
    /// Most gRPC connections open at once; past it new ones are closed at
    /// once (and logged). Idle connections are closed after 5 minutes.
    #[arg(long, env = "OUTBOX_GRPC_MAX_CONNECTIONS", default_value = "256")]
    pub grpc_max_connections: std::num::NonZeroUsize,
    /// Require `authorization: Bearer <token>` on every call but health
    /// checks (compared in constant time).
    #[arg(long, env = "OUTBOX_GRPC_TOKEN", hide_env_values = true)]
    pub grpc_token: Option<Secret>,
    /// Read the bearer token from this file instead (a mounted Secret;
    /// trailing newlines are trimmed).
    #[arg(
        long,
        env = "OUTBOX_GRPC_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "grpc_token"
    )]
    pub grpc_token_file: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain (with --grpc-tls-key).
    #[arg(long, env = "OUTBOX_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// The PEM private key of --grpc-tls-cert.
    #[arg(long, env = "OUTBOX_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only clients with a certificate signed by this PEM CA.
    #[arg(long, env = "OUTBOX_GRPC_TLS_CLIENT_CA", requires = "grpc_tls_cert")]
    pub grpc_tls_client_ca: Option<PathBuf>,
}

/// How the ingress stores what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IngressMode {
    /// Commit to the outbox table; the relay loop publishes it.
    Outbox,
    /// Publish with confirms and answer after the broker's ack.
    Direct,
}

/// `--grpc-addr`: an address, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcListen {
    Off,
    On(SocketAddr),
}

impl FromStr for GrpcListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(Self::Off);
        }
        s.parse().map(Self::On).map_err(|_| {
            format!("{s:?} is not host:port (e.g. 127.0.0.1:50051, 0.0.0.0:50051) or `none`")
        })
    }
}

/// `--descriptor-reflection`: an http(s) URL of the application's server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReflectionUrl(pub String);

impl FromStr for ReflectionUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = url::Url::parse(s).map_err(|e| {
            format!("{e}; expected http://host:port (the application's gRPC server)")
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{s:?}: expected http://host:port or https://host:port"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}
