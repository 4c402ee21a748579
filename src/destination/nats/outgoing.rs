//! A message as NATS publishes it: its subject, checked, and its headers.
//!
//! Invariants owned here: whatever a row holds, building its publish never
//! panics (the client's header setters assert on bad names and values, so
//! only the checked `FromStr` forms are used); a row that NATS cannot
//! express fails alone with a reason naming what is wrong; every publish
//! carries `Nats-Msg-Id` = the row's `message_id`, whatever the row's own
//! headers say.

use crate::destination::params::Naming;
use crate::destination::{Message, SendError};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use std::str::FromStr;

/// Subjects longer than this are refused: the server closes a connection
/// whose protocol line passes its `max_control_line` (4 KiB by default),
/// which would fail every message in flight on it.
pub const MAX_SUBJECT: usize = 1024;

/// One publish, ready to go.
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: bytes::Bytes,
}

impl Outgoing {
    pub fn of(naming: &Naming, message: Message) -> Result<Self, SendError> {
        let subject = naming.name(&message.exchange, &message.routing_key);
        check_subject(&subject).map_err(SendError::Refused)?;
        let headers = headers(&message).map_err(SendError::Refused)?;
        Ok(Self {
            subject,
            headers,
            payload: message.payload,
        })
    }
}

/// A subject NATS can publish to: dot-separated non-empty tokens, no
/// whitespace or control characters, no wildcard token.
pub fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("the row names no subject (empty exchange and routing key)".to_owned());
    }
    if subject.len() > MAX_SUBJECT {
        return Err(format!(
            "subject of {} bytes is longer than {MAX_SUBJECT}",
            subject.len()
        ));
    }
    if subject.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "subject {subject:?} holds whitespace or a control character"
        ));
    }
    if subject.split('.').any(str::is_empty) {
        return Err(format!("subject {subject:?} has an empty token"));
    }
    if subject.split('.').any(|token| token == "*" || token == ">") {
        return Err(format!(
            "subject {subject:?} has a wildcard token: messages are published to one subject"
        ));
    }
    Ok(())
}

fn headers(message: &Message) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        if is_ours(name, message) {
            continue;
        }
        let key = header_name(name)?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("header {name:?} has a line break in its value"))?;
        headers.append(key, value);
    }
    let id = HeaderValue::from_str(&message.message_id)
        .map_err(|_| "the message_id has a line break".to_owned())?;
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    if let Some(content_type) = &message.content_type {
        let value = HeaderValue::from_str(content_type)
            .map_err(|_| "the content_type has a line break".to_owned())?;
        headers.insert(header_name("Content-Type")?, value);
    }
    Ok(headers)
}

/// Headers the relay sets itself, so the row's own are dropped: the message
/// id always, the content type when the row's `content_type` column is set.
fn is_ours(name: &str, message: &Message) -> bool {
    name.eq_ignore_ascii_case("Nats-Msg-Id")
        || (message.content_type.is_some() && name.eq_ignore_ascii_case("Content-Type"))
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    if name.is_empty() {
        return Err("a header has an empty name".to_owned());
    }
    HeaderName::from_str(name).map_err(|_| {
        format!("header name {name:?} is not printable ASCII without ':' (as NATS headers need)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(exchange: &str, routing_key: &str, headers: &[(&str, &str)]) -> Message {
        Message {
            message_id: "m-1".to_owned(),
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            payload: Bytes::from_static(b"{}"),
            content_type: Some("application/json".to_owned()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            created_epoch: None,
        }
    }

    #[test]
    fn a_publish_carries_the_message_id_content_type_and_row_headers() {
        let m = message(
            "orders",
            "created",
            &[("tenant", "acme"), ("Nats-Msg-Id", "x")],
        );
        let out = Outgoing::of(&Naming::Joined('.'), m).unwrap();
        assert_eq!(out.subject, "orders.created");
        let get = |name: &str| out.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(get("Nats-Msg-Id").as_deref(), Some("m-1"));
        assert_eq!(get("Content-Type").as_deref(), Some("application/json"));
        assert_eq!(get("tenant").as_deref(), Some("acme"));
    }

    #[test]
    fn subjects_nats_cannot_take_are_refused_with_the_reason() {
        for (subject, why) in [
            ("", "no subject"),
            ("a b.c", "whitespace"),
            ("a..b", "empty token"),
            ("a.", "empty token"),
            ("a.*", "wildcard"),
            ("a.>", "wildcard"),
            ("a\u{7}b", "control"),
        ] {
            let error = check_subject(subject).unwrap_err();
            assert!(error.contains(why), "{subject:?}: {error}");
        }
        assert!(check_subject(&"a".repeat(MAX_SUBJECT + 1)).is_err());
        assert!(check_subject("orders.créé.v1").is_ok());
    }

    #[test]
    fn headers_nats_cannot_take_fail_the_message_alone_without_panicking() {
        for bad in [
            ("", "v"),
            ("a:b", "v"),
            ("a b", "v"),
            ("é", "v"),
            ("k", "line\r\nbreak"),
        ] {
            let m = message("orders", "created", &[bad]);
            match Outgoing::of(&Naming::Joined('.'), m) {
                Err(SendError::Refused(reason)) => assert!(reason.contains("header"), "{reason}"),
                other => panic!("{bad:?}: {:?}", other.map(|o| o.subject)),
            }
        }
    }
}
