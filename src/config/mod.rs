//! Command line and environment configuration.
//!
//! Every flag is also an `OUTBOX_*` environment variable. Values are parsed
//! into types at the edge (`Duration`, `NonZero*`, [`Identifier`], URLs), so a
//! bad value is refused before anything connects; [`RunArgs::validate`] checks
//! the relations between values. URLs keep their passwords out of `Debug` and
//! logs.

mod deliver;
mod destinations;
mod grpc;
mod http;
mod secrets;
mod tls;
mod values;

pub use deliver::{DeadQueueAction, DeadQueueArgs, DeadQueueTarget, MAX_WORKER_QUEUE, WorkerArgs};
pub use destinations::{DestinationArgs, DestinationSpec, Routing};
pub use grpc::{
    DEFAULT_GRPC_ADDR, DEFAULT_O5_EXCHANGE, GrpcArgs, GrpcListen, IngressMode, O5Wire,
    ReflectionUrl,
};
pub use http::{DEFAULT_HTTP_ADDR, HttpArgs, HttpListen};
pub use tls::{AmqpTls, SslMode};
pub use values::{AmqpUrl, DatabaseUrl, Secret, parse_duration, parse_size};

use crate::outbox::{Identifier, MessageId, OnSent, OrderingOnDead, RowKey};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;
use values::{parse_header, parse_ordering_key, parse_queue_name};

/// What `--version` prints after the name: the package's version and the
/// commit the binary was built from (`build.rs`), e.g. `0.1.0 (3f2a9c41d0be)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("OUTBOX_RELAY_BUILD_COMMIT"),
    ")"
);

pub const DEFAULT_DATABASE_URL: &str = "postgres://root@127.0.0.1:5432/test";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// outbox-relay: publishes rows of a transactional outbox table to RabbitMQ.
///
/// Applications insert messages into `<schema>.outbox` inside their own
/// transactions; `outbox-relay run` claims them, publishes them with publisher
/// confirms and marks them sent only once the broker has confirmed them.
/// Delivery is at-least-once; every message carries a stable message_id.
#[derive(Debug, Parser)]
#[command(
    name = "outbox-relay",
    version = VERSION,
    propagate_version = true,
    args_override_self = true
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Relay pending outbox rows to RabbitMQ until SIGTERM/SIGINT.
    Run(Box<RunArgs>),
    /// Create the schema and outbox table (idempotent; safe to run on every deploy).
    Migrate(MigrateArgs),
    /// Insert one message into the outbox (demos, smoke tests, operators).
    Send(SendArgs),
    /// Print counts of pending, due, sent and dead rows as JSON.
    Stats(DbArgs),
    /// Show one row, by id or message_id, with when it was created and sent.
    Show(ShowArgs),
    /// List dead-lettered rows.
    Dead(DeadArgs),
    /// Make dead-lettered rows pending again, with a fresh attempt budget.
    Replay(ReplayArgs),
    /// Print messages arriving on a queue, as JSON lines (demos, debugging).
    Tail(TailArgs),
    /// Inspect, replay or purge the dead letters of a queue the relay
    /// delivers to the worker from (`<queue>.dead`).
    DeadQueue(DeadQueueArgs),
    /// Print a shell completion script for these commands and flags.
    Completions(crate::manual::CompletionsArgs),
    /// Print the man page (roff), or write one page per command into a
    /// directory.
    Man(crate::manual::ManArgs),
}

/// Logging, shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, env = "OUTBOX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `outbox_relay=debug`).
    #[arg(long, env = "OUTBOX_LOG", default_value = "info", global = true)]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags whose values are secrets, or URLs that may hold one.
const SECRET_FLAGS: &[&str] = &[
    "--database-url",
    "--amqp-url",
    "--grpc-token",
    "--admin-token",
];
// (`--database-url-file` and the like start with these too: their parse
// errors, which only name a path, are redacted all the same.)

impl Cli {
    /// Parses the command line and environment; on an error, prints it and
    /// exits like clap does, except that a secret flag's value is never
    /// printed (clap's own message quotes the invalid value).
    pub fn parse_redacted() -> Self {
        match Self::try_parse_with_files(std::env::args_os()) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        }
    }

    /// Parses `argv` and the environment, then reads the secret files
    /// (`--*-file`); every error is redacted as in [`Cli::parse_redacted`].
    pub fn try_parse_with_files<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command()
            .try_get_matches_from(argv)
            .map_err(redact_parse_error)?;
        let mut cli = Self::from_arg_matches(&matches).map_err(redact_parse_error)?;
        cli.load_secret_files(&matches).map_err(|e| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
                .with_cmd(&Self::command())
        })?;
        Ok(cli)
    }
}

/// Rewrites a parse error about a secret flag without its value.
pub fn redact_parse_error(error: clap::Error) -> clap::Error {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::ValueValidation {
        return error;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    if !SECRET_FLAGS.iter().any(|flag| arg.starts_with(flag)) {
        return error;
    }
    let reason = std::error::Error::source(&error)
        .map(ToString::to_string)
        .unwrap_or_default();
    clap::Error::raw(
        ErrorKind::ValueValidation,
        format!("invalid value for '{arg}' (not shown, it may hold a secret): {reason}\n"),
    )
    .with_cmd(&Cli::command())
}

/// Where the outbox table lives.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/dbname.
    /// TLS as libpq: `?sslmode=disable|prefer|require|verify-ca|verify-full`
    /// (default prefer), `sslrootcert=<CA file>|system`, `sslcert=` and
    /// `sslkey=` for a client certificate.
    #[arg(long, env = "OUTBOX_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: DatabaseUrl,
    /// Read the PostgreSQL URL from this file instead (a mounted Secret;
    /// trailing newlines are trimmed).
    #[arg(
        long,
        env = "OUTBOX_DATABASE_URL_FILE",
        value_name = "PATH",
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<std::path::PathBuf>,
    /// Set after parsing: the URL is the built-in default.
    #[arg(skip)]
    pub url_defaulted: bool,
    /// Schema holding the `outbox` table (letters, digits, '_').
    #[arg(long, env = "OUTBOX_SCHEMA", default_value = "public")]
    pub schema: Identifier,
    /// Whose `outbox` table: `relay`, the relay's own (created by
    /// `migrate`); `o5`, the one an o5 application writes (`id`, `data` as
    /// the JSON of an o5.messaging.v1.Message, `headers`[, `send_after`]),
    /// relayed as o5's sidecar relays it once `migrate --table-format o5`
    /// added the relay's bookkeeping columns. Only `run` and `migrate`
    /// read an o5 table.
    #[arg(long, env = "OUTBOX_TABLE_FORMAT", value_enum, default_value_t = TableFormat::Relay)]
    pub table_format: TableFormat,
}

/// The shape of the `outbox` table (`--table-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    /// The relay's own table.
    Relay,
    /// An o5 application's table: `outbox (id, data, headers[, send_after])`.
    O5,
}

/// The broker.
#[derive(Debug, Clone, Args)]
pub struct AmqpArgs {
    /// RabbitMQ URL, e.g. amqp://user:password@host:5672/%2f (vhost URL-encoded).
    /// amqps:// is TLS (port 5671 by default), configured as RabbitMQ's URI
    /// spec says: `?cacertfile=<CA file>` (else the system's roots),
    /// `certfile=` + `keyfile=` for a client certificate,
    /// `auth_mechanism=external` to log in with it, `verify=verify_none`,
    /// `server_name_indication=<host>|disable`. `?frame_max=` sets the
    /// largest frame (default 32768 bytes: a message's properties and
    /// headers must fit one; bodies span frames).
    #[arg(long, env = "OUTBOX_AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: AmqpUrl,
    /// Read the RabbitMQ URL from this file instead (a mounted Secret;
    /// trailing newlines are trimmed).
    #[arg(
        long,
        env = "OUTBOX_AMQP_URL_FILE",
        value_name = "PATH",
        conflicts_with = "amqp_url"
    )]
    pub amqp_url_file: Option<std::path::PathBuf>,
    /// Set after parsing: the URL is the built-in default.
    #[arg(skip)]
    pub url_defaulted: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Rows claimed (and published) per batch.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value = "500")]
    pub batch_size: NonZeroUsize,
    /// Workers, each with its own channel and up to two batches in flight
    /// (one being marked while the next is published), each batch holding
    /// its own database connection.
    #[arg(long, env = "OUTBOX_CONCURRENCY", default_value = "4")]
    pub concurrency: NonZeroUsize,
    /// Longest idle wait between looks for due rows. After an empty claim
    /// the relay looks again within 5 ms, or an eighth of the time since it
    /// last found rows, up to this (a cheap indexed existence check, not a
    /// claim; its workers share one rate of looks); any work starts it
    /// over. So a row committed while the relay is busy or recently busy
    /// waits milliseconds, and one after a quiet spell at most this (each
    /// wait is a random 50-100% of its step, so workers spread out).
    #[arg(long, env = "OUTBOX_POLL_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long a batch waits for the broker's confirms before its unconfirmed
    /// rows count as failed.
    #[arg(long, env = "OUTBOX_CONFIRM_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub confirm_timeout: Duration,
    /// Failed attempts after which a row is dead-lettered (kept, with dead_at set).
    #[arg(long, env = "OUTBOX_MAX_ATTEMPTS", default_value = "10")]
    pub max_attempts: NonZeroU32,
    /// First retry delay of a failed row; doubles per attempt, with jitter.
    #[arg(long, env = "OUTBOX_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Longest retry delay of a failed row.
    #[arg(long, env = "OUTBOX_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// What to do with a confirmed row: mark it sent (kept for --retention), or delete it.
    #[arg(long, env = "OUTBOX_ON_SENT", value_enum, default_value_t = OnSent::Mark)]
    pub on_sent: OnSent,
    /// What a dead-lettered row does to the later rows of its ordering key:
    /// `block` (they wait until it is replayed and sent, or deleted), or
    /// `skip` (they go on without it; a replayed dead row is then published
    /// after them). Rows without a key are not affected.
    #[arg(long, env = "OUTBOX_ORDERING_ON_DEAD", value_enum, default_value_t = OrderingOnDead::Block)]
    pub ordering_on_dead: OrderingOnDead,
    /// With --on-sent mark: how long sent rows are kept before being purged.
    #[arg(long, env = "OUTBOX_RETENTION", default_value = "7days", value_parser = parse_duration)]
    pub retention: Duration,
    /// On SIGTERM/SIGINT: how long to let in-flight batches finish before exiting.
    #[arg(long, env = "OUTBOX_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Largest payload the relay publishes, e.g. 16MiB. A larger row is
    /// dead-lettered after --max-attempts instead of being sent: the broker
    /// closes the channel on a message above its own `max_message_size`
    /// (RabbitMQ 4: 16 MiB, 3.x: 128 MiB), which would fail the whole batch.
    /// Keep it at or below the broker's limit.
    #[arg(long, env = "OUTBOX_MAX_MESSAGE_SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub max_message_size: usize,
    /// Payload bytes one batch loads from the table, e.g. 4MiB. Rows past it
    /// wait for the next batch; a single row larger than this is loaded on
    /// its own, one at a time per relay. Memory for payloads is therefore
    /// bounded by 2 x concurrency x this + --max-message-size, whatever the
    /// table holds; a row above --max-message-size is never loaded.
    #[arg(long, env = "OUTBOX_BATCH_MAX_BYTES", default_value = "4MiB", value_parser = parse_size)]
    pub batch_max_bytes: usize,
    /// `listen`: keep one extra connection LISTENing for the outbox's wake-up
    /// trigger, so an idle relay claims new rows at once; `off`: poll only.
    /// Either way the relay polls; the trigger itself is enabled with
    /// `outbox-relay migrate --wakeup-trigger enable`.
    #[arg(long, env = "OUTBOX_WAKEUP", value_enum, default_value_t = Wakeup::Listen)]
    pub wakeup: Wakeup,
    #[command(flatten)]
    pub grpc: GrpcArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub destinations: DestinationArgs,
}

/// How an idle relay learns about new rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Wakeup {
    /// LISTEN for the wake-up trigger's NOTIFY, and poll.
    Listen,
    /// Poll only.
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Turn the wake-up trigger (a NOTIFY after each INSERT into the outbox)
    /// on or off. It is created off: it lowers latency when the relay is idle
    /// but serialises committing producers (see the README's Performance
    /// section). Unchanged when not given.
    #[arg(long, env = "OUTBOX_WAKEUP_TRIGGER", value_enum)]
    pub wakeup_trigger: Option<TriggerState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TriggerState {
    Enable,
    Disable,
}

#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Exchange to publish to; '' is the default exchange (routing key = queue name).
    #[arg(long, short = 'e', default_value = "")]
    pub exchange: String,
    /// Routing key (with the default exchange: the queue name).
    #[arg(long, short = 'k')]
    pub routing_key: String,
    /// A header, `name=value` (string value); repeatable.
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// AMQP content type, e.g. application/json.
    #[arg(long)]
    pub content_type: Option<String>,
    /// message_id to use: any text of 1 to 255 bytes without control characters, kept verbatim;
    /// a UUID is generated when absent. A repeated id is stored once.
    #[arg(long)]
    pub message_id: Option<MessageId>,
    /// Publish no earlier than this from now, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Ordering key (1 to 256 bytes): messages with the same key are
    /// published in the order they were committed, one at a time.
    #[arg(long, value_parser = parse_ordering_key)]
    pub ordering_key: Option<String>,
    /// The payload, or `-` to read it from standard input.
    pub payload: String,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Row id (digits only) or message_id (any other text).
    pub key: RowKey,
    /// The relay's --destination / --route settings (the same OUTBOX_*
    /// variables), so that `show` says which destination the row goes to.
    #[command(flatten)]
    pub destinations: DestinationArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DeadArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// At most this many rows, oldest first.
    #[arg(long, default_value = "100")]
    pub limit: i64,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Row ids to replay.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub ids: Vec<i64>,
    /// Replay every dead row.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Queue to read from (1 to 255 bytes).
    #[arg(long, short = 'q', value_parser = parse_queue_name)]
    pub queue: String,
    /// Declare the queue (durable) if it does not exist.
    #[arg(long)]
    pub declare: bool,
    /// Stop after this many messages (0: run until interrupted).
    #[arg(long, default_value = "0")]
    pub count: u64,
    /// Stop when no message arrived for this long (default: wait forever).
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
}

/// A configuration value that parses but cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--confirm-timeout ({confirm:?}) must be shorter than --shutdown-timeout ({shutdown:?}), or a batch in flight at shutdown could be cut off"
    )]
    ConfirmOutlivesShutdown {
        confirm: Duration,
        shutdown: Duration,
    },
    #[error("--backoff-base ({base:?}) must not exceed --backoff-max ({max:?})")]
    BackoffInverted { base: Duration, max: Duration },
    #[error("--batch-size {0} is above the maximum of {MAX_BATCH}")]
    BatchTooLarge(usize),
    #[error("--{0} must be greater than zero")]
    ZeroDuration(&'static str),
    #[error("the o5 exchange (--o5-exchange, or o5.<--o5-env>) must be 1 to 255 bytes, not {0}")]
    O5Exchange(usize),
    #[error("--{0} must not be empty")]
    O5Empty(&'static str),
    #[error("--grpc-max-request-size {0} is below the minimum of {MIN_GRPC_REQUEST} bytes")]
    GrpcRequestTooSmall(usize),
    #[error(
        "--worker-addr needs the services the worker implements: --worker-descriptor-set or --worker-reflection"
    )]
    WorkerServices,
    #[error(
        "--worker-ca-file verifies the worker's TLS certificate, but --worker-addr is http:// (plaintext): use https:// to encrypt, or drop --worker-ca-file"
    )]
    WorkerCaWithoutTls,
    #[error("TLS to the worker (--worker-addr https://, --worker-ca-file): {0}")]
    WorkerTls(String),
    #[error(
        "--table-format o5 needs --o5-app and --o5-env (OUTBOX_O5_APP, OUTBOX_O5_ENV): o5's sidecar stamps every message leaving the application with them, and replies to its requests find their way back by them"
    )]
    O5TableUnnamed,
    #[error(
        "--table-format o5 relays the o5 application's own table, and the gRPC ingress stores what it accepts in the relay's table format: leave --grpc-addr unset or `none` (run a second relay, on a schema of its own, for the ingress)"
    )]
    O5TableIngress,
    #[error("{0}")]
    Destinations(String),
    #[error("--destination and --route work on the relay's own table in outbox mode: {0}")]
    DestinationsUnsupported(&'static str),
    #[error("`outbox-relay {0}` works on the relay's own table format, not --table-format o5: {1}")]
    O5TableUnsupported(&'static str, &'static str),
}

/// Smallest `--grpc-max-request-size`: room for a message's envelope.
pub const MIN_GRPC_REQUEST: usize = 1024;

pub const MAX_BATCH: usize = 10_000;

impl RunArgs {
    /// Destinations and routes resolve, and apply to this configuration.
    fn validate_destinations(&self) -> Result<(), ConfigError> {
        if !self.destinations.is_configured() {
            return Ok(());
        }
        self.destinations
            .resolve()
            .map_err(ConfigError::Destinations)?;
        if self.db.table_format == TableFormat::O5 {
            return Err(ConfigError::DestinationsUnsupported(
                "--table-format o5 relays to the o5 broker only",
            ));
        }
        if self.grpc.ingress_mode == IngressMode::Direct {
            return Err(ConfigError::DestinationsUnsupported(
                "--ingress-mode direct publishes to the default broker without storing; use --ingress-mode outbox",
            ));
        }
        Ok(())
    }

    /// Checks the relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_size.get() > MAX_BATCH {
            return Err(ConfigError::BatchTooLarge(self.batch_size.get()));
        }
        for (name, value) in [
            ("poll-interval", self.poll_interval),
            ("confirm-timeout", self.confirm_timeout),
            ("backoff-base", self.backoff_base),
            ("liveness-window", self.http.liveness_window),
            ("worker-timeout", self.worker.worker_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        self.validate_destinations()?;
        if self.backoff_base > self.backoff_max {
            return Err(ConfigError::BackoffInverted {
                base: self.backoff_base,
                max: self.backoff_max,
            });
        }
        for (flag, value) in [("o5-app", &self.grpc.o5_app), ("o5-env", &self.grpc.o5_env)] {
            if value.as_deref() == Some("") {
                return Err(ConfigError::O5Empty(flag));
            }
        }
        let o5 = self.grpc.o5_exchange().len();
        if o5 == 0 || o5 > 255 {
            return Err(ConfigError::O5Exchange(o5));
        }
        if self.grpc.grpc_max_request_size < MIN_GRPC_REQUEST {
            return Err(ConfigError::GrpcRequestTooSmall(
                self.grpc.grpc_max_request_size,
            ));
        }
        let worker = &self.worker;
        if worker.worker_ca_file.is_some() && !worker.is_tls() {
            return Err(ConfigError::WorkerCaWithoutTls);
        }
        if worker.worker_addr.is_some()
            && worker.worker_descriptor_sets.is_empty()
            && !worker.worker_reflection
        {
            return Err(ConfigError::WorkerServices);
        }
        if self.db.table_format == TableFormat::O5 {
            if self.grpc.o5_app.is_none() || self.grpc.o5_env.is_none() {
                return Err(ConfigError::O5TableUnnamed);
            }
            if self.grpc.grpc_addr != GrpcListen::Off && !self.grpc.addr_defaulted {
                return Err(ConfigError::O5TableIngress);
            }
        }
        if self.confirm_timeout >= self.shutdown_timeout {
            return Err(ConfigError::ConfirmOutlivesShutdown {
                confirm: self.confirm_timeout,
                shutdown: self.shutdown_timeout,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn passwords_never_reach_debug_output() {
        let db: DatabaseUrl = "postgres://app:s3cret@db:5432/app".parse().unwrap();
        let amqp: AmqpUrl = "amqp://app:s3cret@mq:5672/%2f".parse().unwrap();
        for shown in [
            format!("{db:?}"),
            db.to_string(),
            format!("{amqp:?}"),
            amqp.to_string(),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn bad_urls_say_what_is_expected() {
        let e = "mysql://x@y/z".parse::<DatabaseUrl>().unwrap_err();
        assert!(e.contains("postgres://"), "{e}");
        let e = "http://x@y/".parse::<AmqpUrl>().unwrap_err();
        assert!(e.contains("amqp://"), "{e}");
    }

    #[test]
    fn defaults_parse_and_validate() {
        let cli = Cli::try_parse_from(["outbox-relay", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        args.validate().unwrap();
        assert_eq!(args.db.schema.as_str(), "public");
        assert_eq!(args.poll_interval, Duration::from_millis(500));
    }

    #[test]
    fn the_admin_token_comes_from_its_flag_or_its_file_but_not_both() {
        let path = std::env::temp_dir().join(format!("outbox-admin-{}", std::process::id()));
        std::fs::write(&path, "t0ken-from-file\n").unwrap();
        let file = path.display().to_string();
        let parsed = |argv: &[&str]| {
            let mut full = vec!["outbox-relay", "run"];
            full.extend_from_slice(argv);
            Cli::try_parse_with_files(full).map(|cli| match cli.command {
                Command::Run(args) => args.http.admin_token.map(|t| t.expose().to_owned()),
                _ => unreachable!(),
            })
        };
        assert_eq!(parsed(&[]).unwrap(), None);
        assert_eq!(
            parsed(&["--admin-token", "t0ken"]).unwrap().as_deref(),
            Some("t0ken")
        );
        assert_eq!(
            parsed(&["--admin-token-file", &file]).unwrap().as_deref(),
            Some("t0ken-from-file")
        );
        let both = parsed(&["--admin-token", "t0ken", "--admin-token-file", &file]);
        assert!(both.is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_o5_table_format_needs_the_app_and_env_and_leaves_the_ingress_off() {
        let run = |argv: &[&str]| {
            let mut full = vec!["outbox-relay", "run", "--table-format", "o5"];
            full.extend_from_slice(argv);
            match Cli::try_parse_with_files(full).expect("parses").command {
                Command::Run(args) => args.validate(),
                _ => unreachable!(),
            }
        };
        let named = ["--o5-app", "shop", "--o5-env", "prod"];
        assert_eq!(run(&named[..2]), Err(ConfigError::O5TableUnnamed));
        assert_eq!(run(&named[2..]), Err(ConfigError::O5TableUnnamed));
        // --grpc-addr left at its default: the ingress is simply off.
        run(&named).unwrap();
        let none = [&named[..], &["--grpc-addr", "none"]].concat();
        run(&none).unwrap();
        let on = [&named[..], &["--grpc-addr", "127.0.0.1:50051"]].concat();
        assert_eq!(run(&on), Err(ConfigError::O5TableIngress));
    }

    #[test]
    fn inconsistent_timeouts_are_refused() {
        let cli = Cli::try_parse_from([
            "outbox-relay",
            "run",
            "--confirm-timeout",
            "30s",
            "--shutdown-timeout",
            "10s",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(matches!(
            args.validate(),
            Err(ConfigError::ConfirmOutlivesShutdown { .. })
        ));
    }

    #[test]
    fn sizes_take_binary_units_and_refuse_nonsense() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        for bad in [
            "",
            "0",
            "MiB",
            "12 parsecs",
            "-1",
            "99999999999999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn run_args(argv: &[String]) -> Result<RunArgs, clap::Error> {
        let mut full = vec!["outbox-relay".to_owned(), "run".to_owned()];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full)?.command {
            Command::Run(args) => Ok(*args),
            _ => unreachable!(),
        }
    }

    proptest::proptest! {
        /// Any timing flags parse, and validation accepts exactly the
        /// combinations whose relations hold.
        #[test]
        fn validation_accepts_exactly_the_consistent_timings(
            poll in 0u64..5_000, confirm in 0u64..60_000, shutdown in 0u64..60_000,
            base in 0u64..10_000, max in 0u64..10_000, batch in 1usize..20_000,
        ) {
            let ms = |v: u64| format!("{v}ms");
            let argv = [
                "--poll-interval".to_owned(), ms(poll), "--confirm-timeout".to_owned(), ms(confirm),
                "--shutdown-timeout".to_owned(), ms(shutdown), "--backoff-base".to_owned(), ms(base),
                "--backoff-max".to_owned(), ms(max), "--batch-size".to_owned(), batch.to_string(),
            ];
            let args = run_args(&argv).expect("well-formed flags parse");
            let consistent = poll > 0 && confirm > 0 && base > 0 && base <= max
                && confirm < shutdown && batch <= MAX_BATCH;
            proptest::prop_assert_eq!(args.validate().is_ok(), consistent);
        }

        /// No secret from any source (flag or file; URL password or
        /// token) shows in `Debug`, `Display`, a parse error or `--help`,
        /// whether the rest of the value is valid or not.
        #[test]
        fn no_secret_from_any_source_reaches_any_output(
            secret in "[A-Za-z0-9]{6}[!-~]{6,14}",
            from_file in proptest::bool::ANY,
            valid in proptest::bool::ANY,
        ) {
            let enc: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
            let port = if valid { "5432" } else { "99999" };
            let db = format!("postgres://app:{enc}@db:{port}/app?sslmode=require");
            let amqp = format!("amqps://app:{enc}@mq:{port}/%2f?verify=verify_none");
            let token = secret.replace(|c: char| !c.is_ascii_graphic(), "x");
            let dir = std::env::temp_dir().join(format!("outbox-prop-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut argv: Vec<String> = vec!["outbox-relay".into(), "run".into()];
            for (flag, value) in [("--database-url", &db), ("--amqp-url", &amqp), ("--grpc-token", &token), ("--admin-token", &token)] {
                if from_file {
                    let path = dir.join(&flag[2..]);
                    std::fs::write(&path, format!("{value}\n")).unwrap();
                    argv.extend([format!("{flag}-file"), path.display().to_string()]);
                } else {
                    argv.extend([flag.to_owned(), value.clone()]);
                }
            }
            let shown = match Cli::try_parse_with_files(&argv) {
                Ok(cli) => {
                    proptest::prop_assert!(valid);
                    let Command::Run(args) = &cli.command else { unreachable!() };
                    format!("{cli:?} {} {}", args.db.database_url, args.amqp.amqp_url)
                }
                Err(e) => {
                    proptest::prop_assert!(!valid);
                    e.render().to_string()
                }
            };
            let help = Cli::try_parse_with_files(["outbox-relay", "run", "--help"])
                .map(|_| String::new())
                .unwrap_or_else(|e| e.render().to_string());
            for text in [&shown, &help] {
                proptest::prop_assert!(!text.contains(&secret), "{}", text);
                proptest::prop_assert!(!text.contains(&enc), "{}", text);
            }
        }

        /// Garbage in a duration or size flag is a parse error, never a panic.
        #[test]
        fn malformed_values_are_refused_not_panicked_on(value in "\\PC{0,12}") {
            for flag in ["--poll-interval", "--max-message-size", "--batch-size", "--schema"] {
                let _ = run_args(&[flag.to_owned(), value.clone()]);
            }
        }
    }
}
