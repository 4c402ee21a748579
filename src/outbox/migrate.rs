//! Versioned migrations from `sql/`, applied to one schema.
//!
//! The `.sql` files are written for psql (`:"schema"` interpolation) so that
//! applications can apply them with their own tooling; the runner renders the
//! same text with a validated, quoted identifier. Migrations run in one
//! transaction under an advisory lock, so concurrent `migrate` calls (several
//! pods starting at once) serialise, and the `outbox_migrations` record makes
//! a second run a no-op.
//!
//! The o5 table format (`migrate --table-format o5`) has its own migrations
//! ([`O5_MIGRATIONS`], `sql/o5/`) and record
//! (`outbox_relay_o5_migrations`): they add the relay's bookkeeping to the
//! `outbox` table an o5 application created, and never create it. Each
//! runner first checks that the table it finds has its format, so that
//! neither set runs on the other's table.

use super::{Identifier, describe};
use tokio_postgres::Client;

/// One versioned file from `sql/`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_outbox",
        sql: include_str!("../../sql/0001_outbox.sql"),
    },
    Migration {
        version: 2,
        name: "0002_wakeup",
        sql: include_str!("../../sql/0002_wakeup.sql"),
    },
    Migration {
        version: 3,
        name: "0003_browse",
        sql: include_str!("../../sql/0003_browse.sql"),
    },
    Migration {
        version: 4,
        name: "0004_text_message_id",
        sql: include_str!("../../sql/0004_text_message_id.sql"),
    },
    Migration {
        version: 5,
        name: "0005_route_indexes",
        sql: include_str!("../../sql/0005_route_indexes.sql"),
    },
    Migration {
        version: 6,
        name: "0006_claim_function",
        sql: include_str!("../../sql/0006_claim_function.sql"),
    },
    Migration {
        version: 7,
        name: "0007_ordering_key",
        sql: include_str!("../../sql/0007_ordering_key.sql"),
    },
];

/// Every migration of the o5 table format, in order.
pub const O5_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "o5_0001_relay_columns",
    sql: include_str!("../../sql/o5/0001_relay_columns.sql"),
}];

/// Why `migrate` changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database error: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("{table} {found}: {fix}")]
    WrongFormat {
        table: String,
        found: &'static str,
        fix: &'static str,
    },
}

/// What a `migrate` run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<&'static str>,
    pub already_applied: Vec<&'static str>,
}

const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('outbox-relay migrate ' || $1))";
const APPLIED: &str = "SELECT version FROM {schema}.{record}";
const BOOTSTRAP: &str = "CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.{record} (
    version integer PRIMARY KEY, name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())";
/// Which format the `outbox` table of schema `$1` has, if it exists: its
/// `data` column is o5's, `payload` the relay's own.
const FORMAT: &str = "SELECT bool_or(attname = 'data'), bool_or(attname = 'payload')
FROM pg_attribute
WHERE attrelid = to_regclass(format('%I.outbox', $1::text)) AND attnum > 0 AND NOT attisdropped";
/// How long the o5 migration waits for the application's table: past it,
/// `migrate` fails instead of holding the application's inserts queued
/// behind its ALTER (a long transaction on the table would make it wait).
const O5_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '10s'";

/// Renders a psql migration for `schema`: drops meta-command lines and
/// replaces `:"schema"` (identifier) and `:'schema'` (literal).
pub fn render(sql: &str, schema: &Identifier) -> String {
    let literal = format!("'{}'", schema.as_str());
    sql.lines()
        .filter(|line| !line.trim_start().starts_with('\\'))
        .map(|line| {
            line.replace(":\"schema\"", &schema.quoted())
                .replace(":'schema'", &literal)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Applies every pending migration to `schema`, creating it and its
/// outbox table if missing. Refuses a schema whose `outbox` is an o5 table.
pub async fn migrate(
    client: &mut Client,
    schema: &Identifier,
) -> Result<MigrationReport, MigrateError> {
    apply(client, schema, Format::Relay).await
}

/// Applies every pending o5 migration to the `outbox` table of `schema`,
/// which the o5 application must have created.
pub async fn migrate_o5(
    client: &mut Client,
    schema: &Identifier,
) -> Result<MigrationReport, MigrateError> {
    apply(client, schema, Format::O5).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Relay,
    O5,
}

async fn apply(
    client: &mut Client,
    schema: &Identifier,
    format: Format,
) -> Result<MigrationReport, MigrateError> {
    let (migrations, record) = match format {
        Format::Relay => (MIGRATIONS, "outbox_migrations"),
        Format::O5 => (O5_MIGRATIONS, "outbox_relay_o5_migrations"),
    };
    let tx = client.transaction().await?;
    // IF NOT EXISTS notices on re-runs are expected, not news.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    tx.execute(LOCK, &[&schema.as_str()]).await?;
    check_format(&tx, schema, format).await?;
    if format == Format::O5 {
        tx.batch_execute(O5_LOCK_TIMEOUT).await?;
    }
    let render_meta = |sql: &str| {
        sql.replace("{schema}", &schema.quoted())
            .replace("{record}", record)
    };
    tx.batch_execute(&render_meta(BOOTSTRAP)).await?;
    let applied: Vec<i32> = tx
        .query(&render_meta(APPLIED), &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut report = MigrationReport {
        applied: Vec::new(),
        already_applied: Vec::new(),
    };
    for migration in migrations {
        if applied.contains(&migration.version) {
            report.already_applied.push(migration.name);
            continue;
        }
        tx.batch_execute(&render(migration.sql, schema)).await?;
        report.applied.push(migration.name);
    }
    tx.commit().await?;
    Ok(report)
}

/// Fails unless the `outbox` table of `schema` can take `format`'s
/// migrations: the relay's own creates its table when there is none.
async fn check_format(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &Identifier,
    format: Format,
) -> Result<(), MigrateError> {
    let row = tx.query_one(FORMAT, &[&schema.as_str()]).await?;
    let (data, payload): (Option<bool>, Option<bool>) = (row.get(0), row.get(1));
    let wrong = |found, fix| MigrateError::WrongFormat {
        table: format!("{}.outbox", schema.quoted()),
        found,
        fix,
    };
    match (format, data, payload) {
        (Format::Relay, Some(true), Some(false)) => Err(wrong(
            "is an o5 application's outbox (id, data, headers)",
            "add --table-format o5 (OUTBOX_TABLE_FORMAT=o5) to migrate and relay it",
        )),
        (Format::O5, None, _) => Err(wrong(
            "does not exist",
            "the o5 application's own migrations create it (id uuid PRIMARY KEY, data jsonb NOT NULL, headers text NOT NULL[, send_after timestamptz NOT NULL]); run them first, or drop --table-format o5 for the relay's own table",
        )),
        (Format::O5, Some(false), _) => Err(wrong(
            "has no data column, so it is not an o5 outbox",
            "drop --table-format o5 if it is the relay's own table",
        )),
        _ => Ok(()),
    }
}

/// Enables or disables the wake-up trigger of `schema`'s outbox (migration
/// 0002 creates it disabled). Idempotent.
pub async fn set_wakeup_trigger(
    client: &Client,
    schema: &Identifier,
    enabled: bool,
) -> Result<(), tokio_postgres::Error> {
    let action = if enabled { "ENABLE" } else { "DISABLE" };
    client
        .batch_execute(&format!(
            "ALTER TABLE {}.outbox {action} TRIGGER outbox_wakeup",
            schema.quoted()
        ))
        .await
}

/// Whether the wake-up trigger of `schema`'s outbox fires.
pub async fn wakeup_trigger_enabled(
    client: &Client,
    schema: &Identifier,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT COALESCE(bool_or(tgenabled <> 'D'), false) FROM pg_trigger
             WHERE tgname = 'outbox_wakeup' AND tgrelid = to_regclass($1)",
            &[&format!("{}.outbox", schema.quoted())],
        )
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_quotes_the_schema_and_drops_psql_meta_commands() {
        let schema = Identifier::parse("tenant_a").unwrap();
        let sql = render(MIGRATIONS[0].sql, &schema);
        assert!(!sql.contains(":\"schema\""));
        assert!(!sql.lines().any(|l| l.trim_start().starts_with('\\')));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"tenant_a\".outbox ("));
    }

    #[test]
    fn versions_are_unique_and_ascending() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
        for m in MIGRATIONS {
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
        let o5: Vec<i32> = O5_MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(o5.windows(2).all(|w| w[0] < w[1]));
        for m in O5_MIGRATIONS {
            assert!(m.name.starts_with(&format!("o5_{:04}_", m.version)));
            assert!(
                m.sql
                    .contains(&format!("VALUES ({}, '{}')", m.version, m.name))
            );
        }
    }
}
