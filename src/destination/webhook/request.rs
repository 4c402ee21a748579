//! What one message becomes on the wire: the URL it is POSTed to, its
//! headers and its body.
//!
//! Invariants owned here:
//! - the relay's own headers (framing, content type, the Standard Webhooks
//!   trio and `Idempotency-Key`) cannot be set by a row: a row header of
//!   one of those names is dropped, so a row can neither break the HTTP
//!   framing nor forge a signature;
//! - any other row header goes out as it is, or the message is refused
//!   with the header's name (never its value): a name that is not an HTTP
//!   token, or a value with control characters, dead-letters the row with
//!   a reason (invariant 8) instead of being dropped unnoticed;
//! - `path=routing_key` appends the routing key as exactly one path
//!   segment: every byte but the unreserved ones is percent-encoded (`/`
//!   included), and `.`, `..` and the empty key are refused, so a routing
//!   key can never reach another path of the receiver.

use super::options::PathMode;
use crate::destination::{Message, SendError};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A row without a content type is sent as bytes.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Headers the relay sets or HTTP's framing owns: never taken from a row.
const RESERVED: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "idempotency-key",
];

/// Bytes kept as they are in a routing-key segment: RFC 3986's unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where a message goes: the target, or the target plus its routing key.
pub fn url_of(target: &Url, mode: PathMode, message: &Message) -> Result<Url, SendError> {
    if mode == PathMode::Fixed {
        return Ok(target.clone());
    }
    let key = message.routing_key.as_str();
    if key.is_empty() || key == "." || key == ".." {
        return Err(SendError::Refused(format!(
            "path=routing_key cannot append the routing key {key:?} as a path segment"
        )));
    }
    let segment = utf8_percent_encode(key, SEGMENT).to_string();
    let mut url = target.clone();
    let path = url.path().trim_end_matches('/');
    let joined = format!("{path}/{segment}");
    url.set_path(&joined);
    Ok(url)
}

/// The message's headers, signature aside (it is computed when the call
/// starts, with a fresh timestamp).
pub fn headers_of(message: &Message) -> Result<HeaderMap, SendError> {
    let mut headers = HeaderMap::with_capacity(message.headers.len() + 5);
    let content_type = message
        .content_type
        .as_deref()
        .unwrap_or(DEFAULT_CONTENT_TYPE);
    let content_type = HeaderValue::from_str(content_type).map_err(|_| {
        SendError::Refused("the content type is not a valid HTTP header value".into())
    })?;
    headers.insert(CONTENT_TYPE, content_type);
    let id = HeaderValue::from_str(&message.message_id).map_err(|_| {
        SendError::Refused("the message_id is not a valid HTTP header value".into())
    })?;
    headers.insert(WEBHOOK_ID, id.clone());
    headers.insert(IDEMPOTENCY_KEY, id);
    for (name, value) in &message.headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            return Err(SendError::Refused(format!(
                "header {} is not a valid HTTP header name",
                shown(name)
            )));
        };
        if RESERVED.contains(&name.as_str()) {
            continue;
        }
        let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) else {
            return Err(SendError::Refused(format!(
                "the value of header {name} is not valid in HTTP (control characters)"
            )));
        };
        headers.append(name, value);
    }
    Ok(headers)
}

/// A header name from a row, bounded and escaped for an error message.
fn shown(name: &str) -> String {
    let bounded: String = name.chars().take(64).collect();
    format!("{bounded:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(routing_key: &str, headers: &[(&str, &str)]) -> Message {
        Message {
            message_id: "m-1".into(),
            exchange: "orders.created".into(),
            routing_key: routing_key.into(),
            payload: Bytes::from_static(b"{}"),
            content_type: Some("application/json".into()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            created_epoch: Some(1),
        }
    }

    #[test]
    fn the_routing_key_becomes_one_encoded_segment_before_the_query() {
        let target = Url::parse("http://h/in/?tenant=7").unwrap();
        let url = url_of(&target, PathMode::RoutingKey, &message("a/b c.é~", &[])).unwrap();
        assert_eq!(url.as_str(), "http://h/in/a%2Fb%20c.%C3%A9~?tenant=7");
        let root = Url::parse("http://h").unwrap();
        let url = url_of(&root, PathMode::RoutingKey, &message("x", &[])).unwrap();
        assert_eq!(url.as_str(), "http://h/x");
        for bad in ["", ".", ".."] {
            let error = url_of(&target, PathMode::RoutingKey, &message(bad, &[])).unwrap_err();
            assert!(error.is_permanent(), "{bad:?}");
        }
        let fixed = url_of(&target, PathMode::Fixed, &message("", &[])).unwrap();
        assert_eq!(fixed, target);
    }

    #[test]
    fn row_headers_go_out_but_never_override_the_relays_own() {
        let row = [
            ("X-Tenant", "acme"),
            ("webhook-id", "forged"),
            ("Content-Length", "1"),
            ("x-note", "café"),
        ];
        let headers = headers_of(&message("k", &row)).unwrap();
        assert_eq!(headers["x-tenant"], "acme");
        assert_eq!(headers["x-note"].as_bytes(), "café".as_bytes());
        assert_eq!(headers["webhook-id"], "m-1");
        assert_eq!(headers["idempotency-key"], "m-1");
        assert_eq!(headers["content-type"], "application/json");
        assert!(headers.get("content-length").is_none());
        assert_eq!(headers.get_all("webhook-id").iter().count(), 1);
    }

    #[test]
    fn a_header_http_cannot_carry_refuses_the_message_by_name_only() {
        let error = headers_of(&message("k", &[("bad name", "v")])).unwrap_err();
        assert!(error.is_permanent() && error.to_string().contains("\"bad name\""));
        let error = headers_of(&message("k", &[("x-a", "line\r\nx-b: s3cret")])).unwrap_err();
        assert!(error.is_permanent(), "{error}");
        assert!(!error.to_string().contains("s3cret"), "{error}");
        let mut no_type = message("k", &[]);
        no_type.content_type = None;
        assert_eq!(
            headers_of(&no_type).unwrap()["content-type"],
            DEFAULT_CONTENT_TYPE
        );
        no_type.message_id = "a\nb".into();
        assert!(headers_of(&no_type).unwrap_err().is_permanent());
    }
}
