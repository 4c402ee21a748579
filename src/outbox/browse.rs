//! Reading the table for operators (the HTTP API): filtered lists, newest
//! first with keyset pagination, and one row with its payload.
//!
//! Invariants owned here:
//! - every value is a bind parameter; the statements are composed only from
//!   fixed fragments and the validated table name (invariant 7);
//! - every filter has an index path (migrations 0001 and 0003): a list is
//!   the union of one index-ordered query per state ([`RowState`] partitions
//!   the table), each bounded by the page size, so a page never sorts or
//!   skips more than the rows it shows (no OFFSET: a cursor is the last id
//!   shown, and rows inserted meanwhile have higher ids);
//! - reads run in a read-only transaction under [`BROWSE_TIMEOUT`], so an
//!   expensive filter fails alone instead of loading the database;
//! - no value a row holds can fail its decoding (invariant 8): timestamps
//!   are rendered by the database (±infinity as text), headers read as text.

use super::{MessageId, Outbox, RowKey, StoreError, row::typed};
use std::str::FromStr;
use std::time::{Duration, SystemTime};
use tokio_postgres::types::{ToSql, Type};

/// The longest an operator's read may run before the database cancels it.
pub const BROWSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a row is in its life. The three states partition the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RowState {
    /// Not sent, not dead: due now or later.
    Pending,
    /// Confirmed by the broker (`sent_at` set).
    Sent,
    /// Dead-lettered and not sent: awaiting replay or deletion.
    Dead,
}

impl RowState {
    pub const ALL: [Self; 3] = [Self::Pending, Self::Sent, Self::Dead];

    /// Written as the partial indexes' predicates, so that the planner
    /// proves them.
    pub(super) fn predicate(self) -> &'static str {
        match self {
            Self::Pending => "sent_at IS NULL AND dead_at IS NULL",
            Self::Sent => "sent_at IS NOT NULL",
            Self::Dead => "dead_at IS NOT NULL AND sent_at IS NULL",
        }
    }

    /// When a row entered this state: what `since` / `until` bound.
    fn time_column(self) -> &'static str {
        match self {
            Self::Pending => "created_at",
            Self::Sent => "sent_at",
            Self::Dead => "dead_at",
        }
    }

    /// The state of a row with (or without) `sent_at` and `dead_at`.
    pub(super) fn of(sent: bool, dead: bool) -> Self {
        match (sent, dead) {
            (true, _) => Self::Sent,
            (false, true) => Self::Dead,
            (false, false) => Self::Pending,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Dead => "dead",
        }
    }
}

impl FromStr for RowState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("state {s:?} is not one of pending, sent, dead"))
    }
}

/// Which rows a list (or a bulk replay) takes; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// All states when `None`.
    pub state: Option<RowState>,
    /// Exact; `""` is the default exchange.
    pub exchange: Option<String>,
    /// Exact.
    pub routing_key: Option<String>,
    /// Exact, byte for byte.
    pub message_id: Option<MessageId>,
    /// The row entered its state at or after this (`created_at`, `sent_at` or `dead_at`, by state).
    pub since: Option<SystemTime>,
    /// The row entered its state before this.
    pub until: Option<SystemTime>,
    /// The message_id, or a case-insensitive part of the routing key.
    pub search: Option<String>,
}

/// One page of a list: rows with an id below `before`, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub before: Option<i64>,
    pub limit: i64,
}

/// A row as a list shows it: everything but the payload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub id: i64,
    pub message_id: MessageId,
    pub state: RowState,
    pub exchange: String,
    pub routing_key: String,
    pub content_type: Option<String>,
    /// The stored JSON; a string holding the stored text when it does not
    /// parse here (a number beyond f64).
    pub headers: serde_json::Value,
    /// The payload's size in bytes.
    pub size: i64,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// RFC 3339, UTC, microseconds; `infinity` / `-infinity` as stored.
    pub created_at: Option<String>,
    pub available_at: Option<String>,
    pub sent_at: Option<String>,
    pub dead_at: Option<String>,
}

/// One row and the start of its payload.
#[derive(Debug, Clone)]
pub struct Detail {
    pub row: Listed,
    /// The first bytes of the payload, at most what the caller asked for;
    /// `row.size` is the whole.
    pub payload: Vec<u8>,
}

/// An RFC 3339 rendering that cannot fail: `to_char` gives NULL for
/// ±infinity, which then keeps its own text.
fn rfc3339(column: &str) -> String {
    format!(
        "COALESCE(to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), {column}::text)"
    )
}

/// The columns of [`Listed`], in its decoding order.
fn listed_columns() -> String {
    format!(
        "id, message_id, sent_at IS NOT NULL, dead_at IS NOT NULL, exchange, routing_key,
       content_type, headers::text, octet_length(payload)::bigint, attempts, last_error,
       {}, {}, {}, {}",
        rfc3339("created_at"),
        rfc3339("available_at"),
        rfc3339("sent_at"),
        rfc3339("dead_at"),
    )
}

const LISTED_WIDTH: usize = 15;

fn decode_listed(row: &tokio_postgres::Row) -> Result<Listed, StoreError> {
    let sent: bool = typed(row, 2, "sent_at", "timestamptz")?;
    let dead: bool = typed(row, 3, "dead_at", "timestamptz")?;
    let headers: Option<String> = typed(row, 7, "headers", "jsonb")?;
    let headers = headers.map_or(serde_json::Value::Null, |text| {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    });
    Ok(Listed {
        id: typed(row, 0, "id", "bigint")?,
        message_id: MessageId::stored(typed(row, 1, "message_id", "text")?),
        state: RowState::of(sent, dead),
        exchange: typed(row, 4, "exchange", "text")?,
        routing_key: typed(row, 5, "routing_key", "text")?,
        content_type: typed(row, 6, "content_type", "text")?,
        headers,
        size: typed(row, 8, "payload", "bytea")?,
        attempts: typed(row, 9, "attempts", "integer")?,
        last_error: typed(row, 10, "last_error", "text")?,
        created_at: typed(row, 11, "created_at", "timestamptz")?,
        available_at: typed(row, 12, "available_at", "timestamptz")?,
        sent_at: typed(row, 13, "sent_at", "timestamptz")?,
        dead_at: typed(row, 14, "dead_at", "timestamptz")?,
    })
}

/// A statement being composed, with its parameters.
struct Composed<'a> {
    params: Vec<(&'a (dyn ToSql + Sync), Type)>,
}

impl<'a> Composed<'a> {
    /// Binds `value` and returns its placeholder.
    fn bind(&mut self, value: &'a (dyn ToSql + Sync), ty: Type) -> String {
        self.params.push((value, ty));
        format!("${}", self.params.len())
    }
}

/// A filter's values, owned for the statement's parameters.
struct Bound {
    /// `q`, lowercased: matched within routing keys.
    search: Option<String>,
    /// `q` as given: matched against message ids, byte for byte.
    search_id: Option<String>,
    before: Option<i64>,
    limit: i64,
}

impl Bound {
    fn new(filter: &Filter, before: Option<i64>, limit: i64) -> Self {
        Self {
            search: filter.search.as_ref().map(|s| s.to_lowercase()),
            search_id: filter.search.clone(),
            before,
            limit,
        }
    }
}

/// The list statement: one index-ordered, limited query per state, merged.
/// `columns` is what each row gives.
///
/// A routing key without its exchange, and `q`, are served by walking the
/// state's distinct routes (one descent of its by-route index per route, a
/// "loose index scan"), keeping the routes that match, and reading each
/// kept route's newest rows through the same index; `q` also looks the
/// message_id up in its unique index. So every filter reads through an
/// index; what a route filter costs follows the number of distinct routes,
/// not the number of rows.
fn compose_list<'a>(
    table: &str,
    columns: &str,
    filter: &'a Filter,
    bound: &'a Bound,
) -> (String, Vec<(&'a (dyn ToSql + Sync), Type)>) {
    let mut q = Composed { params: Vec::new() };
    let exchange = filter.exchange.as_ref().map(|e| q.bind(e, Type::TEXT));
    let routing_key = filter.routing_key.as_ref().map(|k| q.bind(k, Type::TEXT));
    let search = bound.search.as_ref().map(|s| q.bind(s, Type::TEXT));
    let search_id = bound.search_id.as_ref().map(|m| q.bind(m, Type::TEXT));
    // Conditions on the row besides its route and the search.
    let mut common = Vec::new();
    if let Some(message_id) = &filter.message_id {
        common.push(format!("message_id = {}", q.bind(message_id, Type::TEXT)));
    }
    if let Some(before) = &bound.before {
        common.push(format!("id < {}", q.bind(before, Type::INT8)));
    }
    let since = filter.since.as_ref().map(|t| q.bind(t, Type::TIMESTAMPTZ));
    let until = filter.until.as_ref().map(|t| q.bind(t, Type::TIMESTAMPTZ));
    let limit = q.bind(&bound.limit, Type::INT8);
    let by_routes = search.is_some() || (routing_key.is_some() && exchange.is_none());
    let states = match filter.state {
        Some(state) => vec![state],
        None => RowState::ALL.to_vec(),
    };
    let branches: Vec<String> = states
        .into_iter()
        .map(|state| {
            let pred = state.predicate();
            let mut conditions = vec![pred.to_owned()];
            conditions.extend(common.iter().cloned());
            if let Some(p) = &since {
                conditions.push(format!("{} >= {p}", state.time_column()));
            }
            if let Some(p) = &until {
                conditions.push(format!("{} < {p}", state.time_column()));
            }
            let mut direct = conditions.clone();
            if let Some(p) = &exchange {
                direct.push(format!("exchange = {p}"));
            }
            if let Some(p) = &routing_key {
                direct.push(format!("routing_key = {p}"));
            }
            let select = |conditions: &[String]| {
                format!(
                    "(SELECT {columns} FROM {table} WHERE {} ORDER BY id DESC LIMIT {limit})",
                    conditions.join(" AND ")
                )
            };
            if !by_routes {
                return select(&direct);
            }
            // The distinct routes of this state (of one exchange if given).
            let within = exchange
                .as_ref()
                .map(|p| format!(" AND exchange = {p}"))
                .unwrap_or_default();
            let mut kept = Vec::new();
            if let Some(p) = &routing_key {
                kept.push(format!("r.routing_key = {p}"));
            }
            if let Some(p) = &search {
                kept.push(format!("strpos(lower(r.routing_key), {p}) > 0"));
            }
            let mut per_route = conditions.clone();
            per_route.push("exchange = r.exchange AND routing_key = r.routing_key".to_owned());
            let routed = format!(
                "(WITH RECURSIVE r (exchange, routing_key) AS (
                    (SELECT exchange, routing_key FROM {table} WHERE {pred}{within}
                     ORDER BY exchange, routing_key LIMIT 1)
                    UNION ALL
                    SELECT n.exchange, n.routing_key FROM r CROSS JOIN LATERAL
                      (SELECT exchange, routing_key FROM {table}
                       WHERE {pred}{within} AND (exchange, routing_key) > (r.exchange, r.routing_key)
                       ORDER BY exchange, routing_key LIMIT 1) AS n)
                SELECT m.* FROM r CROSS JOIN LATERAL {} AS m
                WHERE {} ORDER BY m.id DESC LIMIT {limit})",
                select(&per_route),
                kept.join(" AND "),
            );
            match &search_id {
                Some(p) => {
                    direct.push(format!("message_id = {p}"));
                    format!(
                        "(SELECT * FROM ({routed} UNION {}) AS found ORDER BY id DESC LIMIT {limit})",
                        select(&direct)
                    )
                }
                None => routed,
            }
        })
        .collect();
    let sql = match branches.as_slice() {
        [one] => one.clone(),
        _ => format!(
            "SELECT * FROM ({}) AS rows ORDER BY id DESC LIMIT {limit}",
            branches.join(" UNION ALL ")
        ),
    };
    (sql, q.params)
}

impl Outbox {
    /// Runs `sql` in a read-only transaction bounded by [`BROWSE_TIMEOUT`].
    async fn browse_query(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.build_transaction().read_only(true).start().await?;
        // Every list is "the newest N by id": an index scan in id order
        // stops after N rows, whatever the filter's selectivity. A bitmap
        // scan reads every match and sorts them; the planner picks it when
        // it underestimates a filter (route and state are correlated: 837
        // ms for the dead rows of one route of 10M, instead of 0.4 ms).
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}; SET LOCAL enable_bitmapscan = off",
            BROWSE_TIMEOUT.as_millis()
        ))
        .await?;
        let rows = tx.query_typed(sql, params).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// One page of the rows `filter` takes, newest (highest id) first.
    pub async fn list(&self, filter: &Filter, page: Page) -> Result<Vec<Listed>, StoreError> {
        let bound = Bound::new(filter, page.before, page.limit);
        let (sql, params) = compose_list(self.table(), &listed_columns(), filter, &bound);
        let rows = self.browse_query(&sql, &params).await?;
        rows.iter().map(decode_listed).collect()
    }

    /// The ids of up to `limit` dead rows `filter` takes (its state aside),
    /// newest first.
    pub async fn dead_ids(&self, filter: &Filter, limit: i64) -> Result<Vec<i64>, StoreError> {
        let filter = Filter {
            state: Some(RowState::Dead),
            ..filter.clone()
        };
        let bound = Bound::new(&filter, None, limit);
        let (sql, params) = compose_list(self.table(), "id", &filter, &bound);
        let rows = self.browse_query(&sql, &params).await?;
        rows.iter().map(|r| typed(r, 0, "id", "bigint")).collect()
    }

    /// One row by id or message_id, with at most `max_payload` bytes of
    /// its payload (the rest is never read into memory).
    pub async fn detail(
        &self,
        key: &RowKey,
        max_payload: usize,
    ) -> Result<Option<Detail>, StoreError> {
        // substring() counts in int4.
        let max = i32::try_from(max_payload).unwrap_or(i32::MAX);
        let sql = |column: &str| {
            format!(
                "SELECT {}, substring(payload FROM 1 FOR $2) FROM {} WHERE {column} = $1",
                listed_columns(),
                self.table()
            )
        };
        let rows = match key {
            RowKey::Id(id) => {
                let params = [(id as &(dyn ToSql + Sync), Type::INT8), (&max, Type::INT4)];
                self.browse_query(&sql("id"), &params).await?
            }
            RowKey::MessageId(m) => {
                let params = [(m as &(dyn ToSql + Sync), Type::TEXT), (&max, Type::INT4)];
                self.browse_query(&sql("message_id"), &params).await?
            }
        };
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(Detail {
            row: decode_listed(row)?,
            payload: typed(row, LISTED_WIDTH, "payload", "bytea")?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compose(filter: &Filter) -> (String, usize) {
        let bound = Bound::new(filter, Some(10), 50);
        let (sql, params) = compose_list("\"s\".outbox", "id", filter, &bound);
        (sql, params.len())
    }

    #[test]
    fn one_state_is_one_index_ordered_query_with_every_value_bound() {
        let filter = Filter {
            state: Some(RowState::Sent),
            exchange: Some("x'; DROP TABLE t; --".into()),
            routing_key: Some("k".into()),
            since: Some(SystemTime::UNIX_EPOCH),
            ..Filter::default()
        };
        let (sql, params) = compose(&filter);
        assert_eq!(params, 5);
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(!sql.contains("UNION"), "{sql}");
        assert!(!sql.contains("RECURSIVE"), "{sql}");
        assert!(sql.contains("sent_at IS NOT NULL AND id < $3 AND sent_at >= $4 AND exchange = $1 AND routing_key = $2"), "{sql}");
        assert!(sql.ends_with("ORDER BY id DESC LIMIT $5)"), "{sql}");
    }

    #[test]
    fn a_routing_key_alone_or_a_search_walks_the_states_routes() {
        for (filter, looks_up_id) in [
            (
                Filter {
                    state: Some(RowState::Pending),
                    routing_key: Some("k".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    state: Some(RowState::Pending),
                    search: Some("Orders".into()),
                    ..Filter::default()
                },
                true,
            ),
        ] {
            let (sql, _) = compose(&filter);
            assert!(sql.contains("WITH RECURSIVE r"), "{sql}");
            assert!(
                sql.contains("WHERE sent_at IS NULL AND dead_at IS NULL AND (exchange, routing_key) > (r.exchange, r.routing_key)"),
                "{sql}"
            );
            assert!(
                sql.contains("exchange = r.exchange AND routing_key = r.routing_key"),
                "{sql}"
            );
            assert_eq!(sql.contains("message_id"), looks_up_id, "{sql}");
        }
        // A search is a part of a routing key, case-insensitive, or a
        // message id as given.
        let by_id = Filter {
            state: Some(RowState::Dead),
            exchange: Some("e".into()),
            search: Some("Order-42".into()),
            ..Filter::default()
        };
        let bound = Bound::new(&by_id, None, 5);
        assert_eq!(bound.search_id.as_deref(), Some("Order-42"));
        assert_eq!(bound.search.as_deref(), Some("order-42"));
        let (sql, params) = compose(&by_id);
        assert_eq!(params, 5, "{sql}");
        assert!(
            sql.contains("strpos(lower(r.routing_key), $2) > 0"),
            "{sql}"
        );
        assert!(
            sql.contains("AND exchange = $1 AND (exchange, routing_key) >"),
            "{sql}"
        );
        assert!(sql.contains("exchange = $1 AND message_id = $3"), "{sql}");
        assert!(sql.contains(" UNION (SELECT"), "{sql}");
    }

    #[test]
    fn all_states_are_the_union_of_each_states_query() {
        let (sql, params) = compose(&Filter {
            until: Some(SystemTime::UNIX_EPOCH),
            ..Filter::default()
        });
        assert_eq!(params, 3);
        assert_eq!(sql.matches("UNION ALL").count(), 2);
        for state in RowState::ALL {
            assert!(sql.contains(state.predicate()), "{sql}");
            assert!(
                sql.contains(&format!("{} < $2", state.time_column())),
                "{sql}"
            );
        }
    }

    #[test]
    fn states_parse_from_their_names_only() {
        for state in RowState::ALL {
            assert_eq!(state.as_str().parse::<RowState>(), Ok(state));
        }
        assert!("Pending".parse::<RowState>().is_err());
        assert!("all".parse::<RowState>().is_err());
    }
}
