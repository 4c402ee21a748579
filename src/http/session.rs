//! The console's login sessions (with `--admin-token` only): what a browser
//! holds instead of the token, and the CSRF token of each session.
//!
//! Invariants owned here:
//! - the cookie never holds the token nor anything computed from it: its
//!   value is `<expiry>.<nonce>.<mac>`, the MAC an HMAC-SHA256 under a key
//!   drawn from the OS at start that never leaves the process. A stolen
//!   cookie yields no token, ends at its expiry (checked here, not only by
//!   the browser's Max-Age) and with the process: a restart logs everyone
//!   out. Nothing is kept per session, so memory does not grow with logins;
//! - the CSRF token of a session is another MAC of its cookie value, under
//!   a different label: another site can make a browser send the cookie,
//!   but can neither read the page that carries the CSRF token nor compute
//!   it;
//! - MACs are checked in constant time (`ring::hmac::verify`, `subtle`).

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "outbox_session";
/// The header that carries a session's CSRF token on writes.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Random bytes that make each session value distinct.
const NONCE: usize = 16;

/// Issues and checks session values under this process's key.
pub struct Sessions {
    key: hmac::Key,
    random: SystemRandom,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions { key: *** }")
    }
}

/// The OS gave no random bytes for the session key or a nonce.
#[derive(Debug, thiserror::Error)]
#[error("the operating system gave no random bytes (for the console's session key)")]
pub struct NoRandom;

impl Sessions {
    /// A fresh key from the OS: sessions of an earlier process are void.
    pub fn new() -> Result<Self, NoRandom> {
        let random = SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &random).map_err(|_| NoRandom)?;
        Ok(Self { key, random })
    }

    /// A new session value, valid for [`LIFETIME`].
    pub fn issue(&self) -> Result<String, NoRandom> {
        let mut nonce = [0u8; NONCE];
        self.random.fill(&mut nonce).map_err(|_| NoRandom)?;
        Ok(self.issue_at(unix_now().saturating_add(LIFETIME.as_secs()), &nonce))
    }

    fn issue_at(&self, expires: u64, nonce: &[u8]) -> String {
        let body = format!("{expires}.{}", URL_SAFE_NO_PAD.encode(nonce));
        let mac = hmac::sign(&self.key, &labelled("session", &body));
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()))
    }

    /// Whether `value` is a session this process issued and it has not expired.
    pub fn admits(&self, value: &str) -> bool {
        self.admits_at(value, unix_now())
    }

    fn admits_at(&self, value: &str, now: u64) -> bool {
        let Some((body, mac)) = value.rsplit_once('.') else {
            return false;
        };
        let Ok(mac) = URL_SAFE_NO_PAD.decode(mac) else {
            return false;
        };
        if hmac::verify(&self.key, &labelled("session", body), &mac).is_err() {
            return false;
        }
        // Authentic, so the expiry is one this process wrote.
        body.split('.')
            .next()
            .and_then(|expires| expires.parse::<u64>().ok())
            .is_some_and(|expires| now < expires)
    }

    /// The CSRF token of session `value`, for its page.
    pub fn csrf(&self, value: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, &labelled("csrf", value)).as_ref())
    }

    /// Whether `headers` carry the CSRF token of session `value`.
    pub fn csrf_matches(&self, value: &str, headers: &HeaderMap) -> bool {
        let given = headers.get(CSRF_HEADER).map_or(&[][..], |v| v.as_bytes());
        bool::from(self.csrf(value).as_bytes().ct_eq(given))
    }

    /// The session of `headers`' cookies that this process admits, if any
    /// (a browser may send several cookies of that name: e.g. one set by a
    /// sibling host; each is checked).
    pub fn find<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        cookies(headers, COOKIE).find(|value| self.admits(value))
    }
}

/// `label:message`, so that a session MAC is never a valid CSRF token.
fn labelled(label: &str, message: &str) -> Vec<u8> {
    format!("{label}:{message}").into_bytes()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The values of the cookies named `name` in every `Cookie` header.
fn cookies<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(n, _)| *n == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// The `Set-Cookie` value of a new session: not readable by scripts, sent
/// to this host's paths only and never on a request from another site.
/// `secure` when the browser reached us over TLS ([`over_tls`]); the port
/// itself speaks plain HTTP, over which a browser would not send a Secure
/// cookie back.
pub fn set_cookie(value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        LIFETIME.as_secs()
    )
}

/// Whether the browser's request came over HTTPS to a proxy in front of
/// the port (an ingress terminating TLS): `X-Forwarded-Proto: https` or
/// `Forwarded: proto=https`, as proxies set them. A client that claims it
/// falsely on plain HTTP only gets a cookie it will not send back.
pub fn over_tls(headers: &HeaderMap) -> bool {
    let https = |v: &str| v.trim().trim_matches('"').eq_ignore_ascii_case("https");
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
    };
    first("x-forwarded-proto").is_some_and(https)
        || first("forwarded").is_some_and(|hop| {
            hop.split(';').any(|pair| {
                pair.split_once('=').is_some_and(|(name, value)| {
                    name.trim().eq_ignore_ascii_case("proto") && https(value)
                })
            })
        })
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn an_issued_session_is_admitted_until_it_expires_and_only_by_its_process() {
        let sessions = Sessions::new().unwrap();
        let value = sessions.issue().unwrap();
        assert!(sessions.admits(&value));
        assert_ne!(sessions.issue().unwrap(), value, "each login is distinct");
        let old = sessions.issue_at(1_000, &[7; NONCE]);
        assert!(sessions.admits_at(&old, 999));
        assert!(!sessions.admits_at(&old, 1_000));
        let other = Sessions::new().unwrap();
        assert!(!other.admits(&value), "a restart voids every session");
    }

    #[test]
    fn a_forged_or_altered_session_is_refused() {
        let sessions = Sessions::new().unwrap();
        let value = sessions.issue().unwrap();
        let (body, mac) = value.rsplit_once('.').unwrap();
        let (_, rest) = body.split_once('.').unwrap();
        for forged in [
            String::new(),
            "x".to_owned(),
            format!("99999999999.{rest}.{mac}"),
            format!("{body}.{}", URL_SAFE_NO_PAD.encode([0u8; 32])),
            format!("{body}.!!"),
            format!("{body}."),
            sessions.csrf(&value),
        ] {
            assert!(!sessions.admits(&forged), "{forged}");
        }
    }

    #[test]
    fn the_csrf_token_belongs_to_its_session() {
        let sessions = Sessions::new().unwrap();
        let one = sessions.issue().unwrap();
        let two = sessions.issue().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            CSRF_HEADER,
            HeaderValue::from_str(&sessions.csrf(&one)).unwrap(),
        );
        assert!(sessions.csrf_matches(&one, &headers));
        assert!(!sessions.csrf_matches(&two, &headers));
        assert!(!sessions.csrf_matches(&one, &HeaderMap::new()));
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_flagged() {
        let sessions = Sessions::new().unwrap();
        let value = sessions.issue().unwrap();
        let headers = with_cookie(&format!(
            "theme=dark; {COOKIE}=forged; {COOKIE}={value}; x=1"
        ));
        assert_eq!(sessions.find(&headers), Some(value.as_str()));
        assert_eq!(sessions.find(&with_cookie("outbox_session=nope")), None);
        let cookie = set_cookie(&value, false);
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
            assert!(cookie.contains(flag), "{cookie}");
        }
        assert!(!cookie.contains("Secure"));
        assert!(set_cookie(&value, true).ends_with("; Secure"));
        assert!(clear_cookie().contains("Max-Age=0"));
    }

    #[test]
    fn a_request_forwarded_from_https_is_over_tls() {
        let with = |name: &'static str, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            headers
        };
        assert!(over_tls(&with("x-forwarded-proto", "https")));
        assert!(over_tls(&with("x-forwarded-proto", "HTTPS, http")));
        assert!(over_tls(&with(
            "forwarded",
            "for=10.0.0.1;proto=https;host=a"
        )));
        assert!(over_tls(&with("forwarded", "proto=\"https\", proto=http")));
        assert!(!over_tls(&with("x-forwarded-proto", "http")));
        assert!(!over_tls(&with("x-forwarded-proto", "http, https")));
        assert!(!over_tls(&with("forwarded", "for=10.0.0.1;host=https")));
        assert!(!over_tls(&HeaderMap::new()));
    }
}
