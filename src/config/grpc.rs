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
    /// With --table-format o5 the ingress is off unless this is given
    /// (which is refused: see --table-format).
    #[arg(long, env = "OUTBOX_GRPC_ADDR", default_value = DEFAULT_GRPC_ADDR)]
    pub grpc_addr: GrpcListen,
    /// Set after parsing: --grpc-addr is the built-in default.
    #[arg(skip)]
    pub addr_defaulted: bool,
    /// `outbox`: a call returns once its message is committed to the outbox
    /// table (a broker outage does not fail it); `direct`: once the broker
    /// confirmed it (UNAVAILABLE when it cannot). Delayed messages always go
    /// through the outbox.
    #[arg(long, env = "OUTBOX_INGRESS_MODE", value_enum, default_value_t = IngressMode::Outbox)]
    pub ingress_mode: IngressMode,
    /// FileDescriptorSet files (`protoc --include_imports --descriptor_set_out`,
    /// `buf build -o`) whose services carry a messaging option
    /// (`(outbox.messaging.v1.config)`, or an o5 form: `(pentops|j5|o5
    /// .messaging.v1.config)`, `(j5|o5.messaging.v1.service)`): each such
    /// service is served at its own path. Repeatable; the environment
    /// variable takes a comma-separated list.
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
    /// Default: `o5.<--o5-env>` (the exchange o5 workers subscribe to) with
    /// --o5-env, else `o5-messaging`. Read it with [`GrpcArgs::o5_exchange`].
    #[arg(
        long = "o5-exchange",
        env = "OUTBOX_O5_EXCHANGE",
        value_name = "EXCHANGE"
    )]
    pub o5_exchange_flag: Option<String>,
    /// The o5 application this sidecar runs beside: the o5 bridge writes it
    /// to each message's `source_app` (else the sender's value is kept) and,
    /// with --o5-env, a request's `reply_to` becomes `<env>/<app>`.
    #[arg(long, env = "OUTBOX_O5_APP")]
    pub o5_app: Option<String>,
    /// The o5 environment (its full name): written to each message's
    /// `source_env`, and the default --o5-exchange becomes `o5.<env>`.
    #[arg(long, env = "OUTBOX_O5_ENV")]
    pub o5_env: Option<String>,
    /// What the o5 bridge publishes: `j5json`, the whole
    /// `o5.messaging.v1.Message` as J5 JSON with content type
    /// `application/o5-message` (what o5 workers read); `protobuf`, the
    /// message's bytes as the client sent them (`application/protobuf`).
    #[arg(long, env = "OUTBOX_O5_WIRE", value_enum, default_value_t = O5Wire::J5json)]
    pub o5_wire: O5Wire,
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

/// The o5 exchange when --o5-exchange is not given and --o5-env is not set.
pub const DEFAULT_O5_EXCHANGE: &str = "o5-messaging";

impl GrpcArgs {
    /// The o5 bridge's exchange: --o5-exchange when given, else `o5.<env>`
    /// with --o5-env (as o5's own publisher names it), else
    /// [`DEFAULT_O5_EXCHANGE`].
    pub fn o5_exchange(&self) -> String {
        match (&self.o5_exchange_flag, &self.o5_env) {
            (Some(exchange), _) => exchange.clone(),
            (None, Some(env)) => format!("o5.{env}"),
            (None, None) => DEFAULT_O5_EXCHANGE.to_owned(),
        }
    }
}

/// The body the o5 bridge publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum O5Wire {
    /// The whole `o5.messaging.v1.Message` as J5 JSON (`application/o5-message`).
    J5json,
    /// The `Message` bytes as sent (`application/protobuf`).
    Protobuf,
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
            format!("{e}; expected http://host:port or https://host:port (the application's gRPC server)")
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{s:?}: expected http://host:port or https://host:port"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command, ConfigError, RunArgs};
    use super::*;
    use clap::Parser;

    fn run(extra: &[&str]) -> RunArgs {
        let argv = ["outbox-relay", "run"].iter().chain(extra);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Run(args) => *args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_o5_exchange_is_the_flag_else_o5_dot_env_else_the_default() {
        assert_eq!(run(&[]).grpc.o5_exchange(), DEFAULT_O5_EXCHANGE);
        assert_eq!(run(&["--o5-env", "prod"]).grpc.o5_exchange(), "o5.prod");
        let both = run(&["--o5-env", "prod", "--o5-exchange", "events"]);
        assert_eq!(both.grpc.o5_exchange(), "events");
        assert_eq!(
            run(&["--o5-exchange", "events"]).grpc.o5_exchange(),
            "events"
        );
    }

    #[test]
    fn the_o5_wire_is_j5_json_unless_protobuf_is_asked_for() {
        assert_eq!(run(&[]).grpc.o5_wire, O5Wire::J5json);
        let protobuf = run(&["--o5-wire", "protobuf"]);
        assert_eq!(protobuf.grpc.o5_wire, O5Wire::Protobuf);
        let argv = ["outbox-relay", "run", "--o5-wire", "json"];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn empty_o5_names_and_oversized_exchanges_are_refused() {
        for (flags, want) in [
            (vec!["--o5-app", ""], ConfigError::O5Empty("o5-app")),
            (vec!["--o5-env", ""], ConfigError::O5Empty("o5-env")),
            (vec!["--o5-exchange", ""], ConfigError::O5Exchange(0)),
        ] {
            assert_eq!(run(&flags).validate(), Err(want), "{flags:?}");
        }
        let long_env = "e".repeat(253);
        let e = run(&["--o5-env", &long_env]).validate().unwrap_err();
        assert_eq!(e, ConfigError::O5Exchange(256));
        run(&["--o5-app", "shop", "--o5-env", "prod"])
            .validate()
            .unwrap();
    }
}
