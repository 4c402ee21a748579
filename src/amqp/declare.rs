//! Declaring what the served topologies publish to (`--declare-topology`):
//! durable topic exchanges and durable input queues. Declarations are
//! idempotent, so every relay of a deployment may make them.

use super::{Broker, BrokerError};
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

/// Declares each of `names` as a durable topic exchange on `channel`.
pub async fn declare_topic_exchanges<'a>(
    channel: &Channel,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for name in names {
        channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::Channel)?;
    }
    Ok(())
}

/// Declares each exchange (topic, durable) and queue (durable) on one channel.
pub async fn declare(
    broker: &Broker,
    topic_exchanges: &[String],
    queues: &[String],
) -> Result<(), BrokerError> {
    let channel = broker.open_channel().await?;
    declare_topic_exchanges(&channel, topic_exchanges.iter().map(String::as_str)).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for name in queues {
        channel
            .queue_declare(name.as_str().into(), durable, FieldTable::default())
            .await
            .map_err(BrokerError::Channel)?;
    }
    let _ = channel.close(200, "declared".into()).await;
    // Exchanges now exist that a cached lookup may have called missing.
    broker.forget_exchanges();
    Ok(())
}
