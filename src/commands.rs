//! The one-shot subcommands: `migrate`, `send`, `stats`, `show`, `dead`,
//! `replay`, `tail`, `dead-queue`. Results go to stdout as JSON; logs go to
//! stderr.

use crate::amqp::table_to_json;
use crate::config::{
    AmqpArgs, ConfigError, DbArgs, DeadArgs, DeadQueueAction, DeadQueueArgs, MigrateArgs,
    ReplayArgs, SendArgs, ShowArgs, TableFormat, TailArgs, TriggerState,
};
use crate::deliver::dead_queue;
use crate::outbox::{Inserted, NewMessage, Outbox, PoolOptions, connect_pool, migrate};
use anyhow::Context;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::json;
use std::io::{Read, Write};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Standard output was closed by its reader (`tail | head -1`): the command
/// stops quietly instead of panicking in `println!`.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// Writes one result line to stdout.
fn emit(line: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// How an o5 table's dead rows are seen and replayed, for the commands that
/// read the relay's own table only.
const O5_DEAD_ROWS_BY_SQL: &str = "see and replay an o5 table's dead rows with SQL (README, o5 section): SELECT id, last_error, dead_at FROM <schema>.outbox WHERE dead_at IS NOT NULL; UPDATE <schema>.outbox SET dead_at = NULL, attempts = 0, available_at = now() WHERE id = '<id>'";

/// Refuses `command` on an o5 table, which it cannot read, saying what
/// to do instead.
fn relay_format_only(db: &DbArgs, command: &'static str) -> Result<(), ConfigError> {
    let instead = match command {
        "send" => "an o5 application writes its own rows (o5-messaging's outbox sender)",
        "stats" => {
            "the metrics (outbox_relay_pending_messages, outbox_relay_dead_messages) count an o5 table's rows"
        }
        _ => O5_DEAD_ROWS_BY_SQL,
    };
    match db.table_format {
        TableFormat::Relay => Ok(()),
        TableFormat::O5 => Err(ConfigError::O5TableUnsupported(command, instead)),
    }
}

/// `outbox-relay migrate`: the relay's own table, or (`--table-format o5`)
/// the relay's columns on an o5 application's table.
pub async fn migrate_cmd(args: &MigrateArgs) -> anyhow::Result<()> {
    let db = &args.db;
    let o5 = db.table_format == TableFormat::O5;
    if o5 && args.wakeup_trigger.is_some() {
        return Err(ConfigError::O5TableUnsupported(
            "migrate --wakeup-trigger",
            "an o5 table keeps its application's own trigger (NOTIFY outboxmessage), which the relay listens to",
        )
        .into());
    }
    let mut pg = db.database_url.config().clone();
    pg.connect_timeout(TIMEOUT);
    let (mut client, connection) = pg
        .connect(db.database_url.tls())
        .await
        .with_context(|| format!("connecting to {}", db.database_url))?;
    let driver = tokio::spawn(connection);
    let report = if o5 {
        migrate::migrate_o5(&mut client, &db.schema).await
    } else {
        migrate::migrate(&mut client, &db.schema).await
    }
    .with_context(|| format!("migrating schema {}", db.schema))?;
    if let Some(state) = args.wakeup_trigger {
        migrate::set_wakeup_trigger(&client, &db.schema, state == TriggerState::Enable)
            .await
            .context("switching the wake-up trigger")?;
    }
    let mut result = json!({"schema": db.schema.as_str(), "applied": report.applied,
                            "already_applied": report.already_applied});
    if o5 {
        result["table_format"] = json!("o5");
    } else {
        let wakeup_trigger = migrate::wakeup_trigger_enabled(&client, &db.schema).await?;
        result["wakeup_trigger"] = json!(wakeup_trigger);
    }
    drop(client);
    let _ = driver.await;
    tracing::info!(schema = %db.schema, table_format = ?db.table_format, applied = ?report.applied,
        already_applied = ?report.already_applied, "migrated");
    emit(result)?;
    Ok(())
}

/// Opens the outbox of `db` for a one-shot command, checking the table.
/// Refuses an o5 table (`--table-format o5`), which these commands cannot read.
pub async fn open_outbox(db: &DbArgs, command: &'static str) -> anyhow::Result<Outbox> {
    relay_format_only(db, command)?;
    let pool = connect_pool(
        db.database_url.config().clone(),
        db.database_url.tls(),
        PoolOptions {
            max_size: 2,
            timeout: TIMEOUT,
        },
    )?;
    let outbox = Outbox::new(pool, db.schema.clone());
    outbox
        .ensure_table()
        .await
        .with_context(|| format!("opening the outbox at {}", db.database_url))?;
    Ok(outbox)
}

/// `outbox-relay send`.
pub async fn send_cmd(args: &SendArgs) -> anyhow::Result<()> {
    let payload = if args.payload == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the payload from stdin")?;
        buf
    } else {
        args.payload.clone().into_bytes()
    };
    let message = NewMessage {
        message_id: args.message_id.clone(),
        exchange: args.exchange.clone(),
        routing_key: args.routing_key.clone(),
        payload,
        content_type: args.content_type.clone(),
        headers: args
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
        delay: args.delay.unwrap_or_default(),
        ordering_key: args.ordering_key.clone(),
    };
    let outbox = open_outbox(&args.db, "send").await?;
    match outbox.insert(&message).await? {
        Inserted::New(id, message_id) => {
            emit(json!({"id": id.0, "message_id": message_id.to_string()}))?;
        }
        Inserted::Duplicate => {
            emit(json!({"duplicate": true, "message_id": args.message_id}))?;
        }
    }
    Ok(())
}

/// `outbox-relay stats`.
pub async fn stats_cmd(db: &DbArgs) -> anyhow::Result<()> {
    let stats = open_outbox(db, "stats").await?.stats().await?;
    emit(serde_json::to_string(&stats)?)?;
    Ok(())
}

/// `outbox-relay show`.
pub async fn show_cmd(args: &ShowArgs) -> anyhow::Result<()> {
    let routing = args
        .destinations
        .resolve()
        .map_err(crate::config::ConfigError::Destinations)?;
    let outbox = open_outbox(&args.db, "show").await?;
    let row = outbox
        .find(&args.key)
        .await?
        .with_context(|| format!("no row with {} in {}", args.key, outbox.table()))?;
    let mut shown = serde_json::to_value(&row)?;
    let destination = routing
        .router
        .route(&row.exchange)
        .map_or(crate::destination::DestinationName::DEFAULT, |name| {
            name.as_str()
        });
    shown["destination"] = json!(destination);
    emit(serde_json::to_string_pretty(&shown)?)?;
    Ok(())
}

/// `outbox-relay dead`.
pub async fn dead_cmd(args: &DeadArgs) -> anyhow::Result<()> {
    for row in open_outbox(&args.db, "dead")
        .await?
        .list_dead(args.limit)
        .await?
    {
        emit(serde_json::to_string(&row)?)?;
    }
    Ok(())
}

/// `outbox-relay replay`.
pub async fn replay_cmd(args: &ReplayArgs) -> anyhow::Result<()> {
    let outbox = open_outbox(&args.db, "replay").await?;
    let ids = (!args.all).then_some(args.ids.as_slice());
    let replayed = outbox.replay(ids).await?;
    tracing::info!(count = replayed.len(), "dead rows made pending again");
    emit(json!({"replayed": replayed}))?;
    Ok(())
}

/// `outbox-relay tail`.
pub async fn tail_cmd(args: &TailArgs) -> anyhow::Result<()> {
    let channel = open_channel(&args.amqp).await?;
    if args.declare {
        channel
            .queue_declare(
                args.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring queue {:?}", args.queue))?;
    }
    let mut consumer = channel
        .basic_consume(
            args.queue.as_str().into(),
            "outbox-relay-tail".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| {
            format!(
                "consuming from queue {:?} (does it exist? try --declare)",
                args.queue
            )
        })?;
    let mut seen = 0;
    while args.count == 0 || seen < args.count {
        let next = match args.idle_timeout {
            Some(idle) => match tokio::time::timeout(idle, consumer.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => consumer.next().await,
        };
        let Some(delivery) = next else { break };
        let delivery = delivery.context("consuming")?;
        let p = &delivery.properties;
        emit(json!({
            "message_id": p.message_id().as_ref().map(|m| m.to_string()),
            "exchange": delivery.exchange.to_string(),
            "routing_key": delivery.routing_key.to_string(),
            "content_type": p.content_type().as_ref().map(|c| c.to_string()),
            "headers": p.headers().as_ref().map(table_to_json),
            "timestamp": p.timestamp(),
            "redelivered": delivery.redelivered,
            "payload": String::from_utf8_lossy(&delivery.data),
        }))?;
        delivery.ack(BasicAckOptions::default()).await?;
        seen += 1;
    }
    Ok(())
}

/// `outbox-relay dead-queue list|replay|purge`.
pub async fn dead_queue_cmd(args: &DeadQueueArgs) -> anyhow::Result<()> {
    let target = args.action.target();
    let channel = open_channel(&target.amqp).await?;
    let queue = target.queue.as_str();
    match &args.action {
        DeadQueueAction::List(_) => {
            for message in dead_queue::list(&channel, queue, target.limit).await? {
                emit(message)?;
            }
        }
        DeadQueueAction::Replay(_) => {
            let replayed = dead_queue::replay(&channel, queue, target.limit).await?;
            tracing::info!(queue, replayed, "dead messages moved back to their queue");
            emit(json!({"queue": queue, "replayed": replayed}))?;
        }
        DeadQueueAction::Purge(_) => {
            let purged = dead_queue::purge(&channel, queue).await?;
            tracing::info!(queue, purged, "dead messages deleted");
            emit(json!({"queue": queue, "purged": purged}))?;
        }
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

async fn open_channel(amqp: &AmqpArgs) -> anyhow::Result<lapin::Channel> {
    let conn = tokio::time::timeout(
        TIMEOUT,
        crate::amqp::connect(&amqp.amqp_url, lapin::ConnectionProperties::default()),
    )
    .await
    .with_context(|| format!("connecting to {} timed out", amqp.amqp_url))?
    .with_context(|| format!("connecting to {}", amqp.amqp_url))?;
    Ok(conn.create_channel().await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    #[test]
    fn the_row_commands_refuse_an_o5_table_and_say_how_to_see_its_dead_rows() {
        let cli = Cli::try_parse_from(["outbox-relay", "dead", "--table-format", "o5"]).unwrap();
        let Command::Dead(args) = cli.command else {
            unreachable!()
        };
        let e = relay_format_only(&args.db, "dead").unwrap_err().to_string();
        assert!(
            e.contains("`outbox-relay dead`") && e.contains("dead_at IS NOT NULL"),
            "{e}"
        );
        let cli = Cli::try_parse_from(["outbox-relay", "dead"]).unwrap();
        let Command::Dead(args) = cli.command else {
            unreachable!()
        };
        relay_format_only(&args.db, "dead").unwrap();
    }
}
