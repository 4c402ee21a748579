//! What a receiver's answer means for the row: the one mapping from an HTTP
//! status (or a transport error) to a [`SendError`].
//!
//! | answer | result | the row |
//! |---|---|---|
//! | 2xx | `Ok` | marked sent |
//! | 408, 425, 429, 5xx, 3xx, other | `Rejected` (+ `Retry-After`) | retried, counted |
//! | other 4xx | `Refused` | dead-lettered at once |
//! | no answer within the call's timeout | `Timeout` | retried, counted, breaker |
//! | connection refused / reset, DNS, TLS | `Unreachable` | retried, not counted, breaker |
//!
//! Invariants owned here:
//! - a receiver's body reaches `last_error` only as a bounded excerpt
//!   (at most [`EXCERPT_BYTES`], cut on a character boundary, control
//!   characters blanked), so a huge or binary error page cannot bloat
//!   the table or break a log line;
//! - `Retry-After` (seconds or an HTTP-date) is honoured up to
//!   [`MAX_RETRY_AFTER`]; a value in the past or unparsable is ignored;
//! - transport errors are shown without the URL (it may hold a password
//!   or a token in its query).

use crate::destination::SendError;
use http::StatusCode;
use http::header::HeaderValue;
use std::time::{Duration, SystemTime};

/// The most of a receiver's body kept in an error.
pub const EXCERPT_BYTES: usize = 200;
/// A receiver asking for a longer pause gets this one.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The result of an answer with `status`, its `Retry-After` header and the
/// start of its body.
pub fn classify(
    status: StatusCode,
    retry_after_header: Option<&HeaderValue>,
    body: &[u8],
    now: SystemTime,
) -> Result<(), SendError> {
    if status.is_success() {
        return Ok(());
    }
    let reason = describe(status, body);
    let retryable = matches!(status.as_u16(), 408 | 425 | 429) || !status.is_client_error();
    if retryable {
        Err(SendError::Rejected {
            reason,
            retry_after: retry_after_header.and_then(|value| retry_after(value, now)),
        })
    } else {
        Err(SendError::Refused(reason))
    }
}

/// `HTTP 503 Service Unavailable: <excerpt>`.
fn describe(status: StatusCode, body: &[u8]) -> String {
    let mut reason = format!("HTTP {}", status.as_u16());
    if let Some(text) = status.canonical_reason() {
        reason.push(' ');
        reason.push_str(text);
    }
    let excerpt = excerpt(body);
    if !excerpt.is_empty() {
        reason.push_str(": ");
        reason.push_str(&excerpt);
    }
    reason
}

/// The start of a body as one line of text: at most [`EXCERPT_BYTES`]
/// bytes, cut on a character boundary, invalid UTF-8 replaced, control
/// characters (newlines included) turned into spaces, `…` when cut.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(EXCERPT_BYTES * 2)]);
    let mut out = String::with_capacity(EXCERPT_BYTES + 3);
    let mut cut = false;
    for c in text.trim().chars() {
        if out.len() + c.len_utf8() > EXCERPT_BYTES {
            cut = true;
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    if cut || body.len() > EXCERPT_BYTES * 2 {
        out.push('…');
    }
    out
}

/// The pause a `Retry-After` value asks for, at most [`MAX_RETRY_AFTER`].
pub fn retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(text)
            .ok()?
            .duration_since(now)
            .ok()?,
    };
    (!wait.is_zero()).then(|| wait.min(MAX_RETRY_AFTER))
}

/// What a call that got no HTTP answer means: `timeout` is the call's bound.
pub fn transport_error(error: reqwest::Error, timeout: Duration) -> SendError {
    let error = error.without_url();
    let cause = causes(&error);
    if error.is_connect() {
        // Refused, DNS, TLS, or no connection within the timeout: the
        // message never left.
        SendError::Unreachable(cause)
    } else if error.is_timeout() {
        SendError::Timeout(timeout)
    } else if error.is_request() || error.is_body() {
        // Reset or closed before an answer: nothing is known about the
        // message, as with an AMQP connection lost mid-publish.
        SendError::Unreachable(cause)
    } else {
        SendError::rejected(cause)
    }
}

/// An error and its sources on one line (reqwest's own Display stops at
/// "error sending request", the cause is in its sources).
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(status: u16) -> Result<(), SendError> {
        classify(
            StatusCode::from_u16(status).unwrap(),
            None,
            b"",
            SystemTime::now(),
        )
    }

    #[test]
    fn statuses_map_to_confirm_retry_or_dead_letter() {
        for ok in [200, 201, 202, 204, 299] {
            assert_eq!(at(ok), Ok(()), "{ok}");
        }
        for retry in [408, 425, 429, 500, 502, 503, 504, 599, 301, 307, 100] {
            let error = at(retry).unwrap_err();
            assert!(
                matches!(error, SendError::Rejected { .. }) && error.counts_toward_dead_letter(),
                "{retry}: {error:?}"
            );
        }
        for refuse in [400, 401, 403, 404, 409, 410, 413, 415, 422, 499] {
            assert!(at(refuse).unwrap_err().is_permanent(), "{refuse}");
        }
    }

    #[test]
    fn the_reason_holds_the_status_and_a_bounded_one_line_excerpt() {
        let body = format!("bad\r\nfield {}", "é".repeat(300));
        let status = StatusCode::BAD_REQUEST;
        let error = classify(status, None, body.as_bytes(), SystemTime::now()).unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("refused: HTTP 400 Bad Request: bad  field é"),
            "{text}"
        );
        assert!(!text.contains('\n') && text.ends_with('…'), "{text}");
        let excerpt = excerpt(body.as_bytes());
        assert!(excerpt.len() <= EXCERPT_BYTES + '…'.len_utf8());
        assert_eq!(super::excerpt(&[0xff, b'a']), "\u{fffd}a");
        assert_eq!(super::excerpt(b""), "");
    }

    #[test]
    fn retry_after_is_seconds_or_a_date_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let value = |text: &str| HeaderValue::from_str(text).unwrap();
        assert_eq!(retry_after(&value("7"), now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&value("99999999"), now), Some(MAX_RETRY_AFTER));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            retry_after(&value(&later), now),
            Some(Duration::from_secs(120))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(5));
        assert_eq!(retry_after(&value(&earlier), now), None);
        assert_eq!(retry_after(&value("soon"), now), None);
        assert_eq!(retry_after(&value("0"), now), None);
        assert_eq!(retry_after(&value("-3"), now), None);
        let error = classify(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&value("3")),
            b"slow down",
            now,
        )
        .unwrap_err();
        assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
    }
}
