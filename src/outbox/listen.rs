//! Wake-ups: one dedicated connection LISTENs on the outbox table's channel
//! (`outbox_<table oid>`, fed by the trigger of migration 0002) and turns each
//! notification into a permit on a [`Notify`], so that one idle worker claims
//! at once instead of at its next poll.
//!
//! Wake-ups are hints. Polling goes on regardless, so a lost notification, a
//! disabled trigger or a dropped LISTEN connection only costs latency, never a
//! message. The listener reconnects on its own with a capped backoff.
//!
//! An o5 application's table (`--table-format o5`) has its own trigger,
//! which NOTIFYs the fixed channel `outboxmessage` ([`WakeChannel::Named`]).

use super::Identifier;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// The channel wake-ups come on.
#[derive(Debug, Clone)]
pub enum WakeChannel {
    /// The trigger of the relay's own table in this schema (migration
    /// 0002): `outbox_<table oid>`.
    Table(Identifier),
    /// A fixed channel, e.g. `outboxmessage`, which o5's trigger NOTIFYs.
    Named(&'static str),
}

/// The channel o5 applications' outbox trigger NOTIFYs after each insert.
pub const O5_CHANNEL: &str = "outboxmessage";

/// Why a LISTEN connection ended.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("the server closed the connection")]
    Closed,
}

/// Runs until `stop` fires: keeps a LISTEN connection open and forwards each
/// notification on the outbox's channel to `wake` (`notify_one`: a permit is
/// kept when no worker is waiting, and several notifications fold into one).
pub async fn run_listener(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    channel: WakeChannel,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match listen_once(&config, &tls, &channel, &wake, &stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "wake-up listener lost its connection; polling meanwhile");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// One connection's life: LISTEN, forward notifications until the connection
/// ends (an error) or `stop` fires (`Ok`).
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
    channel: &WakeChannel,
    wake: &Notify,
    stop: &CancellationToken,
) -> Result<(), ListenError> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    // The connection yields notifications only while it is polled; drive it
    // from here and let the client's queries progress through it.
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let setup = async {
        let channel = match channel {
            WakeChannel::Named(name) => (*name).to_owned(),
            WakeChannel::Table(schema) => {
                let table = format!("{}.outbox", schema.quoted());
                let row = client
                    .query_typed_one(
                        "SELECT $1::text::regclass::oid::bigint",
                        &[(&table, tokio_postgres::types::Type::TEXT)],
                    )
                    .await?;
                format!("outbox_{}", row.get::<_, i64>(0))
            }
        };
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await?;
        Ok::<_, tokio_postgres::Error>(channel)
    };
    tokio::pin!(setup);
    let channel = loop {
        tokio::select! {
            done = &mut setup => break done?,
            message = messages.next() => match message {
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ListenError::Closed),
                Some(Ok(_)) => {}
            },
        }
    };
    tracing::debug!(channel, "listening for wake-ups");
    // Rows may have arrived while no one listened.
    wake.notify_one();
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ListenError::Closed),
            },
        }
    }
}
