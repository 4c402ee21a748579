//! The broker side: one lapin connection, a confirm-mode channel per worker,
//! reconnection, and the exchange existence cache.
//!
//! Invariants owned here:
//! - every publishing channel is in confirm mode before its first publish;
//! - a channel or connection that failed is never reused: callers drop their
//!   [`Publisher`] and ask for a fresh one, which reconnects if needed;
//! - publishes are `mandatory` and persistent, and a returned message is a
//!   failure even though RabbitMQ acks it (invariant 2, see [`publish`]).

pub mod declare;
mod encode;
pub mod publish;

pub(crate) use encode::json_kind;
pub use encode::{
    EncodeError, Encoded, Limits, encode, encode_new, encode_traced, headers_table, table_to_json,
};
pub use publish::{PublishError, Publisher};

use crate::config::AmqpUrl;
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex as SyncMutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// Opens a connection to `url`: plaintext for amqp, and for amqps TLS with
/// the URL's own settings (`cacertfile`, `certfile`/`keyfile`, `verify`,
/// `server_name_indication`), never falling back to plaintext: a server
/// that does not answer the TLS handshake is a connection error.
pub async fn connect(url: &AmqpUrl, options: ConnectionProperties) -> lapin::Result<Connection> {
    let mut uri: lapin::uri::AMQPUri = url
        .expose()
        .parse()
        .map_err(|_| std::io::Error::other("not a valid AMQP URL"))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    let Some(tls) = url.tls() else {
        // A TLS port answers a plaintext client with bytes that are not
        // AMQP, or resets the connection.
        return Connection::connect_uri(uri, options).await.map_err(|e| {
            let maybe_tls = match e.kind() {
                lapin::ErrorKind::ParsingError(_) => true,
                lapin::ErrorKind::IOError(io) => matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                ),
                _ => false,
            };
            if maybe_tls {
                lapin::Error::from(std::io::Error::other(format!(
                    "{e} (if this port speaks TLS, use amqps://)"
                )))
            } else {
                e
            }
        });
    };
    let connector = lapin::tcp::RustlsConnector::from(tls.config.clone());
    let server_name = tls.server_name.clone();
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connector(
        uri,
        runtime,
        async move |uri, runtime| {
            let (host, port) = (uri.authority.host.as_str(), uri.authority.port);
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host, port)).await?.collect();
            let tcp = lapin::AsyncTcpStream::connect(&runtime, addrs).await?;
            tcp.into_rustls(&connector, &server_name)
                .await
                .map_err(|e| {
                    lapin::Error::from(std::io::Error::other(format!(
                        "TLS handshake with {host}:{port} failed (is it a TLS port?): {e}"
                    )))
                })
        },
        options,
    )
    .await
}

/// Broker-level failures: the relay backs off and retries on all of them.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to the broker: {0}")]
    Connect(#[source] lapin::Error),
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot open a channel: {0}")]
    Channel(#[source] lapin::Error),
}

/// Whether an exchange can take messages, as far as the relay knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeState {
    Exists,
    /// A passive declare found none.
    Missing,
    /// The broker closed a channel for publishing to it (an internal
    /// exchange, no write permission): the broker's reason.
    Refused(Arc<str>),
}

/// The `frame_max` the relay asks for unless the URL sets `?frame_max=`
/// (the broker may grant less), also assumed until a connection negotiated
/// one. lapin keeps 32 frames of buffer each way per connection, filled in
/// at connect: RabbitMQ's default of 128 KiB makes that 8 MiB, most of the
/// relay's memory; 32 KiB makes it 2 MiB. Bodies span as many frames as they
/// need, so this limits only a message's properties and headers, which must
/// fit one frame.
pub const FRAME_MAX: u32 = 32_768;

/// Shared connection to RabbitMQ; hands out confirm-mode channels.
pub struct Broker {
    url: AmqpUrl,
    connect_timeout: Duration,
    connection: Mutex<Option<Connection>>,
    exchanges: SyncMutex<ExchangeCache>,
    /// The last connection's negotiated frame size.
    frame_max: AtomicU32,
    /// Connections established so far (metrics).
    connections: AtomicU64,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// `url` may hold a password: it is never logged or printed.
    pub fn new(url: AmqpUrl, connect_timeout: Duration) -> Self {
        Self {
            url,
            connect_timeout,
            connection: Mutex::new(None),
            exchanges: SyncMutex::new(ExchangeCache::default()),
            frame_max: AtomicU32::new(FRAME_MAX),
            connections: AtomicU64::new(0),
        }
    }

    /// What a message must fit to be published on this broker.
    pub fn limits(&self, max_payload: usize) -> Limits {
        Limits {
            max_payload,
            frame_max: self.frame_max.load(Ordering::Relaxed),
        }
    }

    /// A new channel in confirm mode, reconnecting first if the connection is
    /// missing or broken.
    pub async fn publisher(&self) -> Result<Publisher, BrokerError> {
        let channel = self.open_channel().await?;
        tokio::time::timeout(
            self.connect_timeout,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .map_err(|_| BrokerError::Timeout(self.connect_timeout))?
        .map_err(BrokerError::Channel)?;
        Ok(Publisher::new(channel))
    }

    /// A plain channel (no confirms), for declarations and consumers.
    pub async fn open_channel(&self) -> Result<lapin::Channel, BrokerError> {
        let mut guard = self.connection.lock().await;
        if let Some(conn) = guard.as_ref()
            && conn.status().connected()
        {
            let created = tokio::time::timeout(self.connect_timeout, conn.create_channel()).await;
            match created {
                Ok(Ok(channel)) => return Ok(channel),
                Ok(Err(e)) => tracing::warn!(error = %e, "channel open failed; reconnecting"),
                Err(_) => tracing::warn!("channel open timed out; reconnecting"),
            }
        }
        if let Some(old) = guard.take() {
            // Best effort: the old connection is broken or unhelpful.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                old.close(320, "reconnecting".into()),
            )
            .await;
        }
        let conn = tokio::time::timeout(
            self.connect_timeout,
            connect(&self.url, connection_properties()),
        )
        .await
        .map_err(|_| BrokerError::Timeout(self.connect_timeout))?
        .map_err(BrokerError::Connect)?;
        let frame_max = conn.configuration().frame_max();
        if frame_max > 0 {
            self.frame_max.store(frame_max, Ordering::Relaxed);
        }
        self.connections.fetch_add(1, Ordering::Relaxed);
        tracing::info!(frame_max, "connected to the broker");
        // Exchanges may have changed while we were away.
        self.forget_exchanges();
        let channel = tokio::time::timeout(self.connect_timeout, conn.create_channel())
            .await
            .map_err(|_| BrokerError::Timeout(self.connect_timeout))?
            .map_err(BrokerError::Channel)?;
        *guard = Some(conn);
        Ok(channel)
    }

    /// Checks (and caches) that `name` exists, with a passive declare on a
    /// throwaway channel: a missing exchange closes that channel, not a
    /// publishing one.
    pub async fn exchange_state(&self, name: &str) -> Result<ExchangeState, BrokerError> {
        if name.is_empty() {
            return Ok(ExchangeState::Exists);
        }
        if let Some(state) = self.exchanges.lock().expect("poisoned").lookup(name) {
            return Ok(state);
        }
        let channel = self.open_channel().await?;
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let declared = tokio::time::timeout(
            self.connect_timeout,
            channel.exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                options,
                FieldTable::default(),
            ),
        )
        .await
        .map_err(|_| BrokerError::Timeout(self.connect_timeout))?;
        let state = match declared {
            Ok(()) => {
                let _ = channel.close(200, "ok".into()).await;
                ExchangeState::Exists
            }
            Err(e) if is_not_found(&e) => ExchangeState::Missing,
            Err(e) => return Err(BrokerError::Channel(e)),
        };
        self.exchanges
            .lock()
            .expect("poisoned")
            .record(name, state.clone());
        Ok(state)
    }

    /// Remembers that the broker refused messages for `name` (see
    /// [`publish::refused_exchange`]), for as long as a missing exchange.
    pub fn refuse_exchange(&self, name: &str, reason: &str) {
        self.exchanges
            .lock()
            .expect("poisoned")
            .record(name, ExchangeState::Refused(reason.into()));
    }

    /// Forgets which exchanges were found missing or refusing, so that the
    /// next row routed to one asks the broker again: an operator's replay
    /// follows a fix (a declared exchange, a granted permission) that the
    /// cache would otherwise hide for up to [`MISSING_TTL`], failing the
    /// replayed rows once more.
    pub fn recheck_unusable_exchanges(&self) {
        self.exchanges.lock().expect("poisoned").unusable.clear();
    }

    /// Drops the exchange cache (after a channel failure or reconnect).
    pub fn forget_exchanges(&self) {
        *self.exchanges.lock().expect("poisoned") = ExchangeCache::default();
    }

    /// Closes the connection, if any (shutdown).
    pub async fn close(&self) {
        if let Some(conn) = self.connection.lock().await.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), conn.close(200, "shutdown".into()))
                    .await;
        }
    }

    /// Connections established after the first one (metrics).
    pub fn reconnects(&self) -> u64 {
        self.connections.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// True while the connection is up (health reporting).
    pub async fn is_connected(&self) -> bool {
        self.connection
            .lock()
            .await
            .as_ref()
            .is_some_and(|c| c.status().connected())
    }
}

fn connection_properties() -> ConnectionProperties {
    ConnectionProperties::default().with_connection_name("outbox-relay".into())
}

/// A 404 NOT_FOUND channel exception (passive declare of a missing exchange).
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

/// How long a missing or refusing exchange is believed so before asking again.
const MISSING_TTL: Duration = Duration::from_secs(5);

/// What the relay knows of exchanges: existing ones until a channel fails,
/// missing or refusing ones for [`MISSING_TTL`], so rows routed to them fail
/// without a broker round trip (or a closed channel) in every batch (they
/// would slow the rows around them), and a fixed exchange is found within
/// seconds.
#[derive(Debug, Default)]
struct ExchangeCache {
    exists: HashSet<String>,
    unusable: HashMap<String, (std::time::Instant, ExchangeState)>,
}

impl ExchangeCache {
    fn lookup(&self, name: &str) -> Option<ExchangeState> {
        if let Some((since, state)) = self.unusable.get(name)
            && since.elapsed() < MISSING_TTL
        {
            return Some(state.clone());
        }
        self.exists.contains(name).then_some(ExchangeState::Exists)
    }

    fn record(&mut self, name: &str, state: ExchangeState) {
        if state == ExchangeState::Exists {
            self.unusable.remove(name);
            self.exists.insert(name.to_owned());
        } else {
            self.exists.remove(name);
            self.unusable
                .insert(name.to_owned(), (std::time::Instant::now(), state));
        }
    }
}
