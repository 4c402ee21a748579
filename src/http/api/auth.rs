//! Admission to the JSON API, before a request reaches a handler:
//! - with `--admin-token`: every request carries `Authorization: Bearer
//!   <token>`, compared in constant time, else 401;
//! - without one (the API is then served on loopback only, see
//!   [`super::served`]): the `Host` must name a loopback host, else 403, so
//!   that a web page whose domain was re-pointed at 127.0.0.1 (DNS
//!   rebinding) cannot reach the API through the operator's browser;
//! - writes (POST, DELETE) must come from the port's own origin: an
//!   `Origin` header, when present, must be `http(s)://<Host>` (403), and
//!   the Content-Type must be `application/json` (415), which a browser
//!   sends cross-origin only after a CORS preflight this port never
//!   grants. Together they refuse cross-site request forgery.

use super::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What the API admits.
#[derive(Clone)]
pub struct Gate {
    /// `Bearer <token>`, as the header must read.
    expected: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("token", &self.expected.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Gate {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| format!("Bearer {t}").into_bytes().into()),
        }
    }

    /// Why `method` with `headers` is refused, if it is.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        match &self.expected {
            Some(expected) => bearer(headers, expected)?,
            None => loopback_host(headers)?,
        }
        if method == Method::POST || method == Method::DELETE || method == Method::PUT {
            same_origin(headers)?;
            json_content(headers)?;
        }
        Ok(())
    }
}

/// The middleware around every `/api` route.
pub async fn admit(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    if let Err(refused) = gate.check(request.method(), request.headers()) {
        tracing::debug!(path = request.uri().path(), status = %refused.status,
            reason = refused.message, "API request refused");
        return refused.into_response();
    }
    next.run(request).await
}

fn bearer(headers: &HeaderMap, expected: &[u8]) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .map_or(&[][..], |v| v.as_bytes());
    if bool::from(given.ct_eq(expected)) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (Authorization: Bearer <the --admin-token>)",
    ))
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

fn loopback_host(headers: &HeaderMap) -> Result<(), ApiError> {
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

fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
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
        let gate = Gate::new(Some("s3cret"));
        let right = headers(&[(header::AUTHORIZATION, "Bearer s3cret")]);
        assert!(gate.check(&Method::GET, &right).is_ok());
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "bearer s3cret", "s3cret"] {
            let given = headers(&[(header::AUTHORIZATION, wrong)]);
            let refused = gate.check(&Method::GET, &given).unwrap_err();
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{wrong}");
        }
        let refused = gate.check(&Method::GET, &HeaderMap::new()).unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(!format!("{gate:?}").contains("s3cret"));
    }

    #[test]
    fn without_a_token_only_loopback_hosts_are_answered() {
        let gate = Gate::new(None);
        for host in [
            "127.0.0.1:9464",
            "localhost:80",
            "LOCALHOST",
            "[::1]:9464",
            "127.3.4.5",
        ] {
            let given = headers(&[(header::HOST, host)]);
            assert!(gate.check(&Method::GET, &given).is_ok(), "{host}");
        }
        for host in [
            "evil.example:9464",
            "10.0.0.1:9464",
            "localhost.evil.example",
        ] {
            let given = headers(&[(header::HOST, host)]);
            let refused = gate.check(&Method::GET, &given).unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{host}");
        }
    }

    #[test]
    fn writes_need_the_ports_own_origin_and_a_json_content_type() {
        let gate = Gate::new(None);
        let ok = [
            (header::HOST, "127.0.0.1:9464"),
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
        ];
        assert!(gate.check(&Method::POST, &headers(&ok)).is_ok());
        let same = [
            ok[0].clone(),
            ok[1].clone(),
            (header::ORIGIN, "http://127.0.0.1:9464"),
        ];
        assert!(gate.check(&Method::DELETE, &headers(&same)).is_ok());
        let foreign = [
            ok[0].clone(),
            ok[1].clone(),
            (header::ORIGIN, "http://evil.example"),
        ];
        let refused = gate.check(&Method::POST, &headers(&foreign)).unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        let other_port = [
            ok[0].clone(),
            ok[1].clone(),
            (header::ORIGIN, "http://127.0.0.1:8080"),
        ];
        assert!(gate.check(&Method::POST, &headers(&other_port)).is_err());
        for content in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            let given = [ok[0].clone(), (header::CONTENT_TYPE, content)];
            let refused = gate.check(&Method::POST, &headers(&given)).unwrap_err();
            assert_eq!(
                refused.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content}"
            );
        }
        let bare = gate.check(&Method::POST, &headers(&[ok[0].clone()]));
        assert_eq!(bare.unwrap_err().status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // Reads need neither.
        let foreign_read = [ok[0].clone(), (header::ORIGIN, "http://evil.example")];
        assert!(gate.check(&Method::GET, &headers(&foreign_read)).is_ok());
    }
}
