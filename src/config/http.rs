//! Flags of the HTTP port (`outbox-relay run`): where the probes,
//! `/metrics`, the JSON API and the console listen, how long a worker may go
//! without an iteration before `/livez` calls the process wedged, and the
//! token the API and the console require (`--admin-token`, or
//! `--admin-token-file`; see `crate::http::auth` for the rules).

use super::values::{Secret, parse_duration};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:9464";

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP port (probes and metrics)")]
pub struct HttpArgs {
    /// Address of the HTTP port serving `/livez`, `/readyz` and `/metrics`
    /// and the JSON API under `/api` (host:port; port 0 picks a free one),
    /// or `none` to turn it off. On all interfaces by default, unlike the
    /// gRPC ingress: the kubelet's probes and Prometheus reach a pod on its
    /// own IP, not on loopback. The probes and `/metrics` take no token;
    /// `/api` and the console (`/`) are served only with --admin-token or
    /// on a loopback address.
    /// 9464 is the port conventionally used by Prometheus exporters.
    #[arg(long, env = "OUTBOX_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: HttpListen,
    /// `/livez` answers 503 when a worker has not completed a loop
    /// iteration (or reported a live wait on a service) for this long, e.g.
    /// 60s, so that the kubelet restarts a wedged sidecar. Keep it well
    /// above --confirm-timeout: a worker waiting for its confirms is alive.
    #[arg(long, env = "OUTBOX_LIVENESS_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub liveness_window: Duration,
    /// Require `Authorization: Bearer <token>` on the JSON API (`/api`),
    /// or a login with it on the console (`/`), compared in constant time.
    /// Without it the API and the console are served only when
    /// --http-addr is a loopback address.
    #[arg(long, env = "OUTBOX_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// Read the API's token from this file instead (a mounted Secret;
    /// trailing newlines are trimmed).
    #[arg(
        long,
        env = "OUTBOX_ADMIN_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,
}

/// `--http-addr`: an address, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpListen {
    Off,
    On(SocketAddr),
}

impl FromStr for HttpListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(Self::Off);
        }
        s.parse().map(Self::On).map_err(|_| {
            format!("{s:?} is not host:port (e.g. 0.0.0.0:9464, 127.0.0.1:0) or `none`")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_address_takes_host_port_or_none() {
        assert_eq!("none".parse(), Ok(HttpListen::Off));
        assert_eq!(
            "127.0.0.1:0".parse(),
            Ok(HttpListen::On("127.0.0.1:0".parse().unwrap()))
        );
        let e = "localhost".parse::<HttpListen>().unwrap_err();
        assert!(e.contains("0.0.0.0:9464"), "{e}");
    }
}
