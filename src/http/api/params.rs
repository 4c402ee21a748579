//! What a request names, parsed strictly into typed values: the list
//! filters and page of `GET /api/messages` (and of `POST /api/dead/replay`),
//! the opaque cursor, row keys and RFC 3339 times. Anything unknown,
//! repeated or malformed is a 400 that says what was expected.

use super::error::ApiError;
use crate::outbox::{Filter, MessageId, Page, RowKey, RowState};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::collections::HashMap;
use std::time::SystemTime;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;
/// Longest `q`: a search term, not a document.
const MAX_SEARCH: usize = 256;
/// Marks the cursor format, so that a future one can be told apart.
const CURSOR_PREFIX: &str = "v1:";

/// The parameters every list-like request takes.
const FILTER_KEYS: &[&str] = &[
    "state",
    "exchange",
    "routing_key",
    "message_id",
    "since",
    "until",
    "q",
];

/// A query string as distinct `key -> value` pairs.
struct Query(HashMap<String, String>);

impl Query {
    /// Refuses keys outside `known` (a typo would otherwise silently widen
    /// the result) and repeated keys.
    fn parse(raw: Option<&str>, known: &[&str]) -> Result<Self, ApiError> {
        let mut pairs = HashMap::new();
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            if !known.contains(&key.as_ref()) {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {key:?}; expected one of {}",
                    known.join(", ")
                )));
            }
            if pairs.insert(key.to_string(), value.into_owned()).is_some() {
                return Err(ApiError::bad_request(format!(
                    "parameter {key:?} is given twice"
                )));
            }
        }
        Ok(Self(pairs))
    }

    /// A value, with an empty one read as absent.
    fn non_empty(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A value, empty included (`exchange=` is the default exchange).
    fn exact(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

fn filter_of(query: &Query) -> Result<Filter, ApiError> {
    let state = query
        .non_empty("state")
        .map(str::parse::<RowState>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let message_id = query
        .non_empty("message_id")
        .map(|m| MessageId::parse(m).map_err(|e| ApiError::bad_request(e.to_string())))
        .transpose()?;
    let since = query.non_empty("since").map(parse_time).transpose()?;
    let until = query.non_empty("until").map(parse_time).transpose()?;
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        return Err(ApiError::bad_request("since must be before until"));
    }
    let search = query.non_empty("q").map(str::to_owned);
    if search
        .as_ref()
        .is_some_and(|q| q.chars().count() > MAX_SEARCH)
    {
        return Err(ApiError::bad_request(format!(
            "q is longer than {MAX_SEARCH} characters"
        )));
    }
    Ok(Filter {
        state,
        exchange: query.exact("exchange"),
        routing_key: query.exact("routing_key"),
        message_id,
        since,
        until,
        search,
    })
}

/// `GET /api/messages`: the filters, and which page.
pub fn list_query(raw: Option<&str>) -> Result<(Filter, Page), ApiError> {
    let known: Vec<&str> = FILTER_KEYS
        .iter()
        .copied()
        .chain(["limit", "cursor"])
        .collect();
    let query = Query::parse(raw, &known)?;
    let filter = filter_of(&query)?;
    let limit = match query.non_empty("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => parse_limit(text)?,
    };
    let before = query.non_empty("cursor").map(decode_cursor).transpose()?;
    Ok((filter, Page { before, limit }))
}

/// `POST /api/dead/replay`: the filters (state dead, or none), and whether
/// the caller asked for every dead row (`all=true`) when it gave none.
pub fn replay_query(raw: Option<&str>) -> Result<Filter, ApiError> {
    let known: Vec<&str> = FILTER_KEYS.iter().copied().chain(["all"]).collect();
    let query = Query::parse(raw, &known)?;
    let filter = filter_of(&query)?;
    if filter.state.is_some_and(|s| s != RowState::Dead) {
        return Err(ApiError::bad_request(
            "only dead rows are replayed: state=dead or none",
        ));
    }
    let all = match query.non_empty("all") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "all={other:?}: expected true or false"
            )));
        }
    };
    let unfiltered = Filter {
        state: filter.state,
        ..Filter::default()
    };
    if filter == unfiltered && !all {
        return Err(ApiError::bad_request(
            "give a filter (exchange, routing_key, message_id, since, until, q), or all=true to replay every dead row",
        ));
    }
    Ok(filter)
}

fn parse_limit(text: &str) -> Result<i64, ApiError> {
    let limit: i64 = text
        .parse()
        .map_err(|_| ApiError::bad_request(format!("limit {text:?} is not a whole number")))?;
    if limit < 1 {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    if limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is above the maximum of {MAX_LIMIT}; page with the cursor instead"
        )));
    }
    Ok(limit)
}

/// An RFC 3339 time (`2026-01-31T12:00:00Z`, `...+02:00`, fractions allowed).
pub fn parse_time(text: &str) -> Result<SystemTime, ApiError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(SystemTime::from)
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{text:?} is not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z or 2026-01-31T13:00:00+01:00)"
            ))
        })
}

/// The cursor of the page after the one that ended with row `last_id`.
pub fn encode_cursor(last_id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{last_id}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::bad_request("cursor is not one this API gave (pass next_cursor as is)");
    let text = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(text).map_err(|_| bad())?;
    text.strip_prefix(CURSOR_PREFIX)
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(bad)
}

/// A row named in a path: its id (digits only) or its message_id (any
/// other text).
pub fn row_key(text: &str) -> Result<RowKey, ApiError> {
    text.parse().map_err(ApiError::bad_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let cursor = encode_cursor(12_345);
        let (_, page) = list_query(Some(&format!("cursor={cursor}"))).unwrap();
        assert_eq!(page.before, Some(12_345));
        for bad in ["x", "djE6", "djE6LTE", "MTIz", "%FF"] {
            let e = list_query(Some(&format!("cursor={bad}"))).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn filters_parse_strictly() {
        let (filter, page) = list_query(Some(
            "state=dead&exchange=&routing_key=a.b&since=2026-01-31T12:00:00%2B01:00&q=Ab&limit=500",
        ))
        .unwrap();
        assert_eq!(filter.state, Some(RowState::Dead));
        assert_eq!(filter.exchange.as_deref(), Some(""));
        assert_eq!(filter.routing_key.as_deref(), Some("a.b"));
        assert_eq!(
            filter.since,
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_769_857_200))
        );
        assert_eq!(filter.search.as_deref(), Some("Ab"));
        assert_eq!(
            page,
            Page {
                before: None,
                limit: 500
            }
        );
        assert_eq!(list_query(None).unwrap().1.limit, DEFAULT_LIMIT);
        for bad in [
            "state=all",
            "limit=501",
            "limit=0",
            "limit=ten",
            "since=yesterday",
            "until=2026-01-31 12:00:00",
            "message_id=%0A",
            "routingkey=a",
            "state=sent&state=dead",
            "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
        ] {
            assert!(list_query(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bulk_replay_needs_a_filter_or_all() {
        assert!(replay_query(None).is_err());
        assert!(replay_query(Some("state=dead")).is_err());
        assert!(replay_query(Some("state=sent&all=true")).is_err());
        assert!(replay_query(Some("limit=5&all=true")).is_err());
        assert_eq!(replay_query(Some("all=true")).unwrap(), Filter::default());
        let filter = replay_query(Some("exchange=orders")).unwrap();
        assert_eq!(filter.exchange.as_deref(), Some("orders"));
    }
}
