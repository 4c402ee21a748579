//! Database failures, described with PostgreSQL's own words (message, code,
//! detail, hint) and sorted into the ones that pass and the ones an operator
//! must fix (invariant 9).

use tokio_postgres::error::SqlState;

/// Failures of the database side, for callers that branch on them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no database connection available: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("table {table} does not exist: run `outbox-relay migrate --schema {schema}` first")]
    TableMissing { table: String, schema: String },
    #[error(
        "column {column} of the outbox table cannot be read as {expected}: {reason}; run `outbox-relay migrate`"
    )]
    Schema {
        column: &'static str,
        expected: &'static str,
        reason: String,
    },
    #[error("{table} is not an o5 outbox the relay can read: {problem}")]
    O5Table { table: String, problem: String },
    #[error("the relay is shutting down and stores nothing more")]
    Closed,
}

impl StoreError {
    /// A fault no retry can cure: the operator has to change something (a
    /// grant, the database's role, the table's shape, disk space). Workers
    /// pause longer and the process reports itself unhealthy.
    pub fn is_systemic(&self) -> bool {
        match self {
            Self::Db(e) => e.code().is_some_and(is_systemic_code),
            Self::TableMissing { .. } | Self::Schema { .. } | Self::O5Table { .. } => true,
            Self::Pool(deadpool_postgres::PoolError::Backend(e)) => {
                e.code().is_some_and(is_systemic_code)
            }
            Self::Pool(_) | Self::Closed => false,
        }
    }

    /// What an operator should do about a systemic fault.
    pub fn fix(&self) -> &'static str {
        let code = match self {
            Self::Db(e) => e.code(),
            Self::Pool(deadpool_postgres::PoolError::Backend(e)) => e.code(),
            Self::TableMissing { .. } | Self::Schema { .. } => {
                return "run `outbox-relay migrate` against this database and schema";
            }
            Self::O5Table { .. } => {
                return "run `outbox-relay migrate --table-format o5` against this database and schema, once the o5 application created its outbox table";
            }
            _ => None,
        };
        match code {
            Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
                "grant the relay's role SELECT, UPDATE and DELETE on the outbox table (and USAGE on its schema)"
            }
            Some(c) if *c == SqlState::READ_ONLY_SQL_TRANSACTION => {
                "the database is read-only (a standby, or default_transaction_read_only): point --database-url at the primary"
            }
            Some(c) if *c == SqlState::UNDEFINED_COLUMN || *c == SqlState::UNDEFINED_TABLE => {
                "the outbox table does not have the relay's shape: run `outbox-relay migrate`"
            }
            Some(c) if c.code().starts_with("53") => {
                "the database is out of a resource (disk, memory, connections): free it"
            }
            Some(c) if c.code().starts_with("28") => {
                "the database refuses the relay's credentials: check --database-url"
            }
            _ => "check the database's log for this error",
        }
    }
}

/// SQLSTATE classes and codes that mean "not transient".
fn is_systemic_code(code: &SqlState) -> bool {
    let c = code.code();
    [
        SqlState::INSUFFICIENT_PRIVILEGE,
        SqlState::READ_ONLY_SQL_TRANSACTION,
        SqlState::UNDEFINED_COLUMN,
        SqlState::UNDEFINED_TABLE,
        SqlState::UNDEFINED_FUNCTION,
        SqlState::DATATYPE_MISMATCH,
        SqlState::INVALID_CATALOG_NAME,
        SqlState::INVALID_SCHEMA_NAME,
    ]
    .contains(code)
        // 28: invalid authorization; 53: insufficient resources (disk full,
        // out of memory, too many connections).
        || c.starts_with("28")
        || c.starts_with("53")
}

/// PostgreSQL's message, code, detail and hint instead of tokio-postgres's
/// bare "db error"; for other failures, the error and its causes.
pub fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} ({} {})", db.message(), db.severity(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str("; detail: ");
            text.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            text.push_str("; hint: ");
            text.push_str(hint);
        }
        if let (Some(table), Some(column)) = (db.table(), db.column()) {
            text.push_str(&format!("; column {table}.{column}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn describe_pool(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_and_read_only_are_systemic_a_lost_connection_is_not() {
        assert!(is_systemic_code(&SqlState::INSUFFICIENT_PRIVILEGE));
        assert!(is_systemic_code(&SqlState::READ_ONLY_SQL_TRANSACTION));
        assert!(is_systemic_code(&SqlState::DISK_FULL));
        assert!(!is_systemic_code(&SqlState::ADMIN_SHUTDOWN));
        assert!(!is_systemic_code(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert!(!is_systemic_code(&SqlState::CONNECTION_FAILURE));
    }
}
