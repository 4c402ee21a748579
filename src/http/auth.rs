//! Admission to the JSON API and the console, before a request reaches a
//! handler:
//! - with `--admin-token`: a request carries `Authorization: Bearer
//!   <token>`, compared in constant time, or else the console's session
//!   cookie ([`super::session`]), else 401. When an `Authorization` header
//!   is present it alone decides. A write admitted by the cookie must also
//!   carry its session's `X-CSRF-Token` (403): a browser sends cookies on
//!   its own, a header only when the page's script adds it;
//! - without one (the API is then served on loopback only, see
//!   [`super::api::served`]): the `Host` must name a loopback host, else
//!   403, so that a web page whose domain was re-pointed at 127.0.0.1 (DNS
//!   rebinding) cannot reach the API through the operator's browser;
//!   cookies are ignored (there are no sessions);
//! - writes (POST, DELETE) must come from the port's own origin: an
//!   `Origin` header, when present, must be `http(s)://<Host>` (403), and
//!   the Content-Type must be `application/json` (415), which a browser
//!   sends cross-origin only after a CORS preflight this port never
//!   grants. Together they refuse cross-site request forgery;
//! - guessing is bounded ([`super::throttle`]): an address that sent ten
//!   wrong tokens within a minute (bearer or login form) is answered 429
//!   until its minute is over.

use super::api::ApiError;
use super::session::{NoRandom, Sessions};
use super::throttle::Throttle;
use axum::extract::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// What the API and the console admit.
pub struct Gate {
    token: Option<TokenGate>,
}

/// Admission with `--admin-token`.
struct TokenGate {
    /// `Bearer <token>`, as the header must read.
    expected: Box<[u8]>,
    sessions: Sessions,
    throttle: Throttle,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Whether a request changes something.
pub fn is_write(method: &Method) -> bool {
    method == Method::POST || method == Method::DELETE || method == Method::PUT
}

impl Gate {
    pub fn new(token: Option<&str>) -> Result<Self, NoRandom> {
        let token = match token {
            Some(t) => Some(TokenGate {
                expected: format!("Bearer {t}").into_bytes().into(),
                sessions: Sessions::new()?,
                throttle: Throttle::default(),
            }),
            None => None,
        };
        Ok(Self { token })
    }

    /// The login sessions, when a token is set (else there are none).
    pub fn sessions(&self) -> Option<&Sessions> {
        self.token.as_ref().map(|t| &t.sessions)
    }

    /// Whether `given` (from the login form of `peer`) is the admin token,
    /// compared in constant time; `Err` (429) when `peer` has guessed too
    /// often, and then `given` is not compared. False without a token.
    pub fn is_token(&self, given: &str, peer: IpAddr) -> Result<bool, ApiError> {
        let Some(t) = &self.token else {
            return Ok(false);
        };
        t.throttle.admit(peer).map_err(too_many)?;
        let right = bool::from(format!("Bearer {given}").as_bytes().ct_eq(&t.expected));
        if !right {
            t.throttle.failed(peer);
        }
        Ok(right)
    }

    /// Why `method` with `headers` from `peer` is refused, if it is.
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Result<(), ApiError> {
        let write = is_write(method);
        match &self.token {
            Some(token) => token.check(headers, write, peer)?,
            None => loopback_host(headers)?,
        }
        if write {
            same_origin(headers)?;
            json_content(headers)?;
        }
        Ok(())
    }
}

impl TokenGate {
    fn check(&self, headers: &HeaderMap, write: bool, peer: IpAddr) -> Result<(), ApiError> {
        if let Some(given) = headers.get(header::AUTHORIZATION) {
            self.throttle.admit(peer).map_err(too_many)?;
            if bool::from(given.as_bytes().ct_eq(&self.expected)) {
                return Ok(());
            }
            self.throttle.failed(peer);
            return Err(unauthorized());
        }
        let Some(session) = self.sessions.find(headers) else {
            return Err(unauthorized());
        };
        if write && !self.sessions.csrf_matches(session, headers) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a write with the console's session cookie needs its page's X-CSRF-Token header",
            ));
        }
        Ok(())
    }
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (Authorization: Bearer <the --admin-token>), and no console session",
    )
}

/// 429 for an address that guessed too often, with when to come back.
fn too_many(wait: Duration) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too many wrong tokens from this address; try again after the Retry-After seconds",
    )
    .retry_after(wait)
}

/// The middleware around every `/api` route.
pub async fn admit(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    // Served with connect info (`super::serve`); a request made without it
    // (a test calling the router directly) counts as loopback's.
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    if let Err(refused) = gate.check(request.method(), request.headers(), peer) {
        tracing::debug!(path = request.uri().path(), status = %refused.status,
            reason = refused.message, "API request refused");
        return refused.into_response();
    }
    next.run(request).await
}

/// The host part of a `Host` header value (`name:port`, `[v6]:port`).
fn host_name(authority: &str) -> &str {
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(name, _port)| name)
}

pub fn loopback_host(headers: &HeaderMap) -> Result<(), ApiError> {
    // No Host: not a browser (browsers always send one), so not rebinding.
    let Some(host) = headers.get(header::HOST) else {
        return Ok(());
    };
    let name = host.to_str().map(host_name).unwrap_or_default();
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "without --admin-token the API answers requests to localhost / 127.0.0.1 / [::1] only",
    ))
}

pub fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = origin.to_str().unwrap_or_default();
    let own = host.is_some_and(|host| {
        [("http://", host), ("https://", host)]
            .iter()
            .any(|(scheme, host)| {
                origin
                    .strip_prefix(scheme)
                    .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
            })
    });
    if own {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!("writes are accepted from this port's own origin only, not from {origin:?}"),
    ))
}

fn json_content(headers: &HeaderMap) -> Result<(), ApiError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if media.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "writes need Content-Type: application/json (even with an empty body)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn a_token_is_required_exactly_when_one_is_set() {
        let gate = Gate::new(Some("s3cret")).unwrap();
        let right = headers(&[(header::AUTHORIZATION, "Bearer s3cret")]);
        assert!(gate.check(&Method::GET, &right, LOCAL).is_ok());
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "bearer s3cret", "s3cret"] {
            let given = headers(&[(header::AUTHORIZATION, wrong)]);
            let refused = gate.check(&Method::GET, &given, LOCAL).unwrap_err();
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{wrong}");
        }
        let refused = gate
            .check(&Method::GET, &HeaderMap::new(), LOCAL)
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(!format!("{gate:?}").contains("s3cret"));
    }

    #[test]
    fn without_a_token_only_loopback_hosts_are_answered() {
        let gate = Gate::new(None).unwrap();
        for host in [
            "127.0.0.1:9464",
            "localhost:80",
            "LOCALHOST",
            "[::1]:9464",
            "127.3.4.5",
        ] {
            let given = headers(&[(header::HOST, host)]);
            assert!(gate.check(&Method::GET, &given, LOCAL).is_ok(), "{host}");
        }
        for host in [
            "evil.example:9464",
            "10.0.0.1:9464",
            "localhost.evil.example",
        ] {
            let given = headers(&[(header::HOST, host)]);
            let refused = gate.check(&Method::GET, &given, LOCAL).unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{host}");
        }
    }

    #[test]
    fn writes_need_the_ports_own_origin_and_a_json_content_type() {
        let gate = Gate::new(None).unwrap();
        let ok = [
            (header::HOST, "127.0.0.1:9464"),
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
        ];
        assert!(gate.check(&Method::POST, &headers(&ok), LOCAL).is_ok());
        let same = [
            ok[0].clone(),
            ok[1].clone(),
            (header::ORIGIN, "http://127.0.0.1:9464"),
        ];
        assert!(gate.check(&Method::DELETE, &headers(&same), LOCAL).is_ok());
        let foreign = [
            ok[0].clone(),
            ok[1].clone(),
            (header::ORIGIN, "http://evil.example"),
        ];
        let refused = gate
            .check(&Method::POST, &headers(&foreign), LOCAL)
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        let other_port = [
            ok[0].clone(),
            ok[1].clone(),
            (header::ORIGIN, "http://127.0.0.1:8080"),
        ];
        assert!(
            gate.check(&Method::POST, &headers(&other_port), LOCAL)
                .is_err()
        );
        for content in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            let given = [ok[0].clone(), (header::CONTENT_TYPE, content)];
            let refused = gate
                .check(&Method::POST, &headers(&given), LOCAL)
                .unwrap_err();
            assert_eq!(
                refused.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content}"
            );
        }
        let bare = gate.check(&Method::POST, &headers(&[ok[0].clone()]), LOCAL);
        assert_eq!(bare.unwrap_err().status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // Reads need neither.
        let foreign_read = [ok[0].clone(), (header::ORIGIN, "http://evil.example")];
        assert!(
            gate.check(&Method::GET, &headers(&foreign_read), LOCAL)
                .is_ok()
        );
    }

    #[test]
    fn a_session_cookie_admits_reads_and_writes_need_its_csrf_token() {
        let gate = Gate::new(Some("s3cret")).unwrap();
        let sessions = gate.sessions().unwrap();
        let session = sessions.issue().unwrap();
        let csrf = sessions.csrf(&session);
        let mut read = HeaderMap::new();
        read.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{}={session}", super::super::session::COOKIE)).unwrap(),
        );
        assert!(gate.check(&Method::GET, &read, LOCAL).is_ok());
        let mut write = read.clone();
        write.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let refused = gate.check(&Method::POST, &write, LOCAL).unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        let mut wrong = write.clone();
        wrong.insert("x-csrf-token", HeaderValue::from_static("guess"));
        let refused = gate.check(&Method::DELETE, &wrong, LOCAL).unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        let mut right = write.clone();
        right.insert("x-csrf-token", HeaderValue::from_str(&csrf).unwrap());
        assert!(gate.check(&Method::POST, &right, LOCAL).is_ok());
        // An Authorization header decides alone, even beside a good cookie.
        let mut bad_bearer = read.clone();
        bad_bearer.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer no"));
        let refused = gate.check(&Method::GET, &bad_bearer, LOCAL).unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        // A bearer write needs no CSRF token.
        let bearer = headers(&[
            (header::AUTHORIZATION, "Bearer s3cret"),
            (header::CONTENT_TYPE, "application/json"),
        ]);
        assert!(gate.check(&Method::POST, &bearer, LOCAL).is_ok());
    }

    #[test]
    fn the_login_token_is_compared_whole_and_without_a_token_there_is_no_login() {
        let gate = Gate::new(Some("s3cret")).unwrap();
        assert!(gate.is_token("s3cret", LOCAL).unwrap());
        for wrong in ["", "s3cre", "s3cret ", "S3CRET"] {
            assert!(!gate.is_token(wrong, LOCAL).unwrap(), "{wrong:?}");
        }
        let open = Gate::new(None).unwrap();
        assert!(open.sessions().is_none());
        assert!(!open.is_token("", LOCAL).unwrap());
        // Without a token a cookie grants nothing beyond the loopback rule.
        let given = headers(&[
            (header::HOST, "evil.example"),
            (header::COOKIE, "outbox_session=x"),
        ]);
        assert!(open.check(&Method::GET, &given, LOCAL).is_err());
    }
}
