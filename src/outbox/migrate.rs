//! Versioned migrations from `sql/`, applied to one schema.
//!
//! The `.sql` files are written for psql (`:"schema"` interpolation) so that
//! applications can apply them with their own tooling; the runner renders the
//! same text with a validated, quoted identifier. Migrations run in one
//! transaction under an advisory lock, so concurrent `migrate` calls (several
//! pods starting at once) serialise, and the `outbox_migrations` record makes
//! a second run a no-op.

use super::Identifier;
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
];

/// What a `migrate` run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<&'static str>,
    pub already_applied: Vec<&'static str>,
}

const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('outbox-relay migrate ' || $1))";
const APPLIED: &str = "SELECT version FROM {schema}.outbox_migrations";
const BOOTSTRAP: &str = "CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.outbox_migrations (
    version integer PRIMARY KEY, name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())";

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

/// Applies every pending migration to `schema`, creating it if missing.
pub async fn migrate(
    client: &mut Client,
    schema: &Identifier,
) -> Result<MigrationReport, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // IF NOT EXISTS notices on re-runs are expected, not news.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    tx.execute(LOCK, &[&schema.as_str()]).await?;
    tx.batch_execute(&BOOTSTRAP.replace("{schema}", &schema.quoted()))
        .await?;
    let applied: Vec<i32> = tx
        .query(&APPLIED.replace("{schema}", &schema.quoted()), &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut report = MigrationReport {
        applied: Vec::new(),
        already_applied: Vec::new(),
    };
    for migration in MIGRATIONS {
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
    }
}
