//! Flags of the receiving side (`outbox-relay run --worker-addr ...`): where
//! the worker application's gRPC server is, which of its services it
//! implements, the queue its broadcast subscriptions and replies arrive on,
//! and how hard it may be driven; and the `dead-queue` subcommand's flags.
//!
//! Delivery is off unless `--worker-addr` is given; the other `--worker-*`
//! flags require it (clap refuses them alone).

use super::grpc::ReflectionUrl;
use super::values::{parse_duration, parse_queue_name};
use super::{AmqpArgs, ConfigError};
use crate::tls::{Roots, Verify, server_verifier};
use clap::{Args, Subcommand};
use rustls::client::danger::ServerCertVerifier;
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The longest queue name the relay consumes: its retry and dead-letter
/// queues (`<queue>.retry`, `<queue>.dead`) must fit AMQP's 255 bytes too.
pub const MAX_WORKER_QUEUE: usize = 255 - ".retry".len();

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Delivery to the worker application")]
pub struct WorkerArgs {
    /// The worker application's gRPC server: turns delivery on.
    /// http://host:port is plaintext (as within a pod, e.g.
    /// http://127.0.0.1:8080); https://host:port is TLS, the worker's
    /// certificate verified (chain and host name) against --worker-ca-file,
    /// else the platform's trust store. The relay consumes the queues of the
    /// services the worker implements (from --worker-descriptor-set or
    /// --worker-reflection) and calls each message's method there; a message
    /// is acked only once the worker answered OK. Until it consumes (while
    /// the worker cannot be reached, or the broker is down), /readyz's
    /// `worker` check and gRPC health (outbox.relay.Delivery, and "") fail
    /// with the reason; /readyz?exclude=worker leaves it out (a startup
    /// probe must: the worker starts after the sidecar).
    #[arg(long, env = "OUTBOX_WORKER_ADDR")]
    pub worker_addr: Option<ReflectionUrl>,
    /// PEM file of the CA certificate(s) that the worker's TLS certificate
    /// must chain to (https:// --worker-addr only; default: the platform's
    /// trust store). The certificate must also name the --worker-addr host.
    #[arg(long, env = "OUTBOX_WORKER_CA_FILE", requires = "worker_addr")]
    pub worker_ca_file: Option<PathBuf>,
    /// FileDescriptorSet files of the services the worker implements (each
    /// carrying a messaging option). Repeatable; the environment variable
    /// takes a comma-separated list.
    #[arg(
        long = "worker-descriptor-set",
        env = "OUTBOX_WORKER_DESCRIPTOR_SET",
        value_delimiter = ',',
        requires = "worker_addr"
    )]
    pub worker_descriptor_sets: Vec<PathBuf>,
    /// Read the services the worker implements from its own gRPC server
    /// reflection at --worker-addr, retrying until it answers.
    #[arg(long, env = "OUTBOX_WORKER_REFLECTION", requires = "worker_addr")]
    pub worker_reflection: bool,
    /// The worker's own durable queue: bound to the topic exchange of each
    /// broadcast service it implements (with the routing keys of its
    /// methods), and where replies addressed to it arrive. Required when it
    /// implements a broadcast or reply service; default: --o5-app.
    #[arg(long, env = "OUTBOX_WORKER_QUEUE", value_parser = parse_worker_queue, requires = "worker_addr")]
    pub worker_queue: Option<String>,
    /// Most messages delivered to the worker at once (unacked, in flight):
    /// the consumers' prefetch, and the bound on concurrent calls.
    #[arg(long, env = "OUTBOX_WORKER_PREFETCH", default_value = "32")]
    pub worker_prefetch: NonZeroU16,
    /// Deadline of one call to the worker; past it the call counts as
    /// DEADLINE_EXCEEDED and the message is retried.
    #[arg(long, env = "OUTBOX_WORKER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub worker_timeout: Duration,
}

impl WorkerArgs {
    /// Whether the worker is called over TLS (an https:// --worker-addr).
    pub fn is_tls(&self) -> bool {
        self.worker_addr
            .as_ref()
            .is_some_and(|addr| addr.0.starts_with("https://"))
    }

    /// The verifier of the worker's certificate, for an https://
    /// --worker-addr: the chain against --worker-ca-file (else the
    /// platform's roots) and the host name, always. Built at start, so that
    /// a missing or unusable CA file stops it.
    pub fn tls(&self) -> Result<Option<Arc<dyn ServerCertVerifier>>, ConfigError> {
        if !self.is_tls() {
            return Ok(None);
        }
        let roots = match &self.worker_ca_file {
            Some(path) => Roots::File(path.clone()),
            None => Roots::System,
        };
        server_verifier(Verify::Full, Some(&roots))
            .map(Some)
            .map_err(|e| ConfigError::WorkerTls(e.to_string()))
    }

    /// The worker's own queue: --worker-queue, else the o5 application's
    /// name (`o5_app`).
    pub fn queue(&self, o5_app: Option<&str>) -> Option<String> {
        self.worker_queue
            .clone()
            .or_else(|| o5_app.map(str::to_owned))
    }
}

fn parse_worker_queue(s: &str) -> Result<String, String> {
    let name = parse_queue_name(s)?;
    if name.len() > MAX_WORKER_QUEUE {
        return Err(format!(
            "at most {MAX_WORKER_QUEUE} bytes, so that {name:.20}....retry fits 255"
        ));
    }
    Ok(name)
}

/// `outbox-relay dead-queue`: what is in a consumed queue's dead-letter
/// queue (`<queue>.dead`), and putting it back.
#[derive(Debug, Clone, Args)]
pub struct DeadQueueArgs {
    #[command(subcommand)]
    pub action: DeadQueueAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DeadQueueAction {
    /// Print the dead messages as JSON lines, leaving them in place.
    List(DeadQueueTarget),
    /// Move dead messages back to the queue, with a fresh attempt budget.
    Replay(DeadQueueTarget),
    /// Delete every dead message of the queue.
    Purge(DeadQueueTarget),
}

#[derive(Debug, Clone, Args)]
pub struct DeadQueueTarget {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// The consumed queue (its dead letters are in `<queue>.dead`).
    #[arg(long, short = 'q', value_parser = parse_worker_queue)]
    pub queue: String,
    /// At most this many messages (list and replay).
    #[arg(long, default_value = "1000")]
    pub limit: u32,
}

impl DeadQueueAction {
    pub fn target(&self) -> &DeadQueueTarget {
        match self {
            Self::List(t) | Self::Replay(t) | Self::Purge(t) => t,
        }
    }

    pub fn target_mut(&mut self) -> &mut DeadQueueTarget {
        match self {
            Self::List(t) | Self::Replay(t) | Self::Purge(t) => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command, ConfigError, RunArgs};
    use super::*;
    use clap::Parser;

    fn run(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["outbox-relay", "run"].iter().chain(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(*args),
            _ => unreachable!(),
        }
    }

    #[test]
    fn delivery_is_off_unless_a_worker_address_is_given() {
        let args = run(&[]).unwrap();
        assert!(args.worker.worker_addr.is_none());
        assert_eq!(args.worker.worker_prefetch.get(), 32);
        assert_eq!(args.worker.worker_timeout, Duration::from_secs(30));
        args.validate().unwrap();
    }

    #[test]
    fn worker_flags_without_a_worker_address_are_refused() {
        for flags in [
            &["--worker-reflection"][..],
            &["--worker-queue", "shop"],
            &["--worker-descriptor-set", "x.bin"],
        ] {
            assert!(run(flags).is_err(), "{flags:?} accepted");
        }
    }

    #[test]
    fn a_worker_needs_its_services_from_a_descriptor_set_or_its_reflection() {
        let alone = run(&["--worker-addr", "http://127.0.0.1:8080"]).unwrap();
        assert_eq!(alone.validate(), Err(ConfigError::WorkerServices));
        let reflected = [
            "--worker-addr",
            "http://127.0.0.1:8080",
            "--worker-reflection",
        ];
        run(&reflected).unwrap().validate().unwrap();
        let tls = ["--worker-addr", "https://w:1", "--worker-reflection"];
        let tls = run(&tls).unwrap();
        tls.validate().unwrap();
        assert!(tls.worker.is_tls());
        let ca_on_plaintext = [&reflected[..], &["--worker-ca-file", "ca.pem"]].concat();
        assert_eq!(
            run(&ca_on_plaintext).unwrap().validate(),
            Err(ConfigError::WorkerCaWithoutTls)
        );
        let missing_ca = [
            "--worker-addr",
            "https://w:1",
            "--worker-reflection",
            "--worker-ca-file",
            "/nonexistent/ca.pem",
        ];
        let e = run(&missing_ca)
            .unwrap()
            .worker
            .tls()
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        for other in ["grpc://w:1", "unix:///tmp/w.sock", "127.0.0.1:8080"] {
            let e = run(&["--worker-addr", other]).unwrap_err().to_string();
            assert!(e.contains("https://host:port"), "{other}: {e}");
        }
        let zero = [&reflected[..], &["--worker-timeout", "0s"]].concat();
        let e = run(&zero).unwrap().validate().unwrap_err();
        assert_eq!(e, ConfigError::ZeroDuration("worker-timeout"));
    }

    #[test]
    fn the_worker_queue_is_the_flag_else_the_o5_app() {
        let base = ["--worker-addr", "http://w:1", "--worker-reflection"];
        let args = run(&base).unwrap();
        assert_eq!(args.worker.queue(args.grpc.o5_app.as_deref()), None);
        let o5 = run(&[&base[..], &["--o5-app", "shop"]].concat()).unwrap();
        assert_eq!(
            o5.worker.queue(o5.grpc.o5_app.as_deref()).as_deref(),
            Some("shop")
        );
        let both = [&base[..], &["--o5-app", "shop", "--worker-queue", "q"]].concat();
        let both = run(&both).unwrap();
        assert_eq!(
            both.worker.queue(both.grpc.o5_app.as_deref()).as_deref(),
            Some("q")
        );
        let long = "q".repeat(MAX_WORKER_QUEUE + 1);
        assert!(run(&[&base[..], &["--worker-queue", &long]].concat()).is_err());
    }

    #[test]
    fn dead_queue_actions_take_a_queue() {
        let cli =
            Cli::try_parse_from(["outbox-relay", "dead-queue", "replay", "--queue", "q"]).unwrap();
        let Command::DeadQueue(args) = cli.command else {
            panic!("not dead-queue")
        };
        assert!(matches!(args.action, DeadQueueAction::Replay(_)));
        assert_eq!(args.action.target().queue, "q");
        assert!(Cli::try_parse_from(["outbox-relay", "dead-queue", "list"]).is_err());
    }
}
