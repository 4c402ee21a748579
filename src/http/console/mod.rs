//! The console: a web page at `GET /` over the JSON API (the backlog, the
//! throughput of the last hour, a search, one message with its payload,
//! the dead letters and their replay), plain HTML, CSS and JavaScript
//! embedded in the binary (`assets/`): nothing is fetched from elsewhere.
//!
//! Invariants owned here:
//! - the console is served exactly where the API is (`api::served`), and
//!   admitted as the API is (`super::auth`): without a token on a loopback
//!   `Host` only; with `--admin-token`, after a login at `/login` that
//!   compares the token in constant time and sets the session cookie of
//!   `super::session` (never the token itself);
//! - the page receives its session's CSRF token in a `<meta>` tag and
//!   sends it with every write; the page is never cached (it carries that
//!   token);
//! - payloads and every other value of a row are data: the script writes
//!   them as text nodes only, and the Content-Security-Policy allows no
//!   inline script, no other origin and no framing (a Replay button cannot
//!   be clickjacked);
//! - a search is a URL (`/?message_id=...`): the page does it on load, and a
//!   link to it survives the login, which carries the search filters, and
//!   nothing else, from `/?...` to `/login?...` and back (no redirect
//!   elsewhere can ride along).

use super::auth::{self, Gate};
use super::session;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;

const INDEX: &str = include_str!("assets/index.html");
const LOGIN: &str = include_str!("assets/login.html");
const STYLE: &str = include_str!("assets/console.css");
const COMMON: &str = include_str!("assets/common.js");
const SCRIPT: &str = include_str!("assets/console.js");

/// The page's search filters, the names of the API's list filters: what a
/// deep link carries through the login.
const FILTERS: &[&str] = &[
    "message_id",
    "routing_key",
    "exchange",
    "state",
    "since",
    "until",
];

/// The largest login form read: a token, not a document.
const LOGIN_BODY: usize = 4096;

/// What the page may load and do: its own script, style and API only.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

type Shared = State<Arc<Gate>>;

/// The console's routes; admission is per handler (a page redirects to the
/// login where the API would answer 401).
pub(crate) fn router(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/console/console.css", get(style))
        .route("/console/common.js", get(common))
        .route("/console/console.js", get(script))
        .with_state(gate)
}

async fn page(State(gate): Shared, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    match gate.sessions() {
        Some(sessions) => match sessions.find(&headers) {
            Some(session) => html(StatusCode::OK, &index(&sessions.csrf(session), "token")),
            None => see_other(&format!("/login{}", search(query.as_deref()))),
        },
        None => match auth::loopback_host(&headers) {
            Ok(()) => html(StatusCode::OK, &index("", "loopback")),
            Err(refused) => refused.into_response(),
        },
    }
}

/// The page, with its session's CSRF token (base64url: nothing to escape)
/// and how it was admitted.
fn index(csrf: &str, admitted: &str) -> String {
    INDEX
        .replace("{{csrf}}", csrf)
        .replace("{{admitted}}", admitted)
}

/// `?<filters>` of `query`, re-encoded, or nothing when it has none: only
/// the page's own search parameters pass, so what rides along through the
/// login is a search, never a path or a markup fragment.
fn search(query: Option<&str>) -> String {
    let mut kept = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if FILTERS.contains(&name.as_ref()) {
            kept.append_pair(&name, &value);
            any = true;
        }
    }
    if any {
        format!("?{}", kept.finish())
    } else {
        String::new()
    }
}

/// The login page with `error` (one of this module's fixed sentences),
/// posting to `/login` with the search `search` to return to.
fn login_page(status: StatusCode, error: &'static str, search: &str) -> Response {
    html(status, &login_html(error, search))
}

fn login_html(error: &str, search: &str) -> String {
    // Form encoding leaves `&` as the only character to escape in an
    // attribute.
    let action = format!("/login{}", search.replace('&', "&amp;"));
    LOGIN
        .replace("{{error}}", error)
        .replace("{{action}}", &action)
}

async fn login_form(
    State(gate): Shared,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let search = search(query.as_deref());
    match gate.sessions() {
        Some(sessions) if sessions.find(&headers).is_none() => {
            login_page(StatusCode::OK, "", &search)
        }
        // Logged in already, or no token (then there is nothing to log into).
        _ => see_other(&format!("/{search}")),
    }
}

async fn login(
    State(gate): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let search = search(query.as_deref());
    let Some(sessions) = gate.sessions() else {
        return see_other(&format!("/{search}"));
    };
    // Another site cannot log a browser into its own session here.
    if let Err(refused) = auth::same_origin(&headers) {
        return refused.into_response();
    }
    let Ok(form) = axum::body::to_bytes(body, LOGIN_BODY).await else {
        return login_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "That form is too large.",
            &search,
        );
    };
    let token = url::form_urlencoded::parse(&form)
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    let right = match gate.is_token(&token, peer.ip()) {
        Ok(right) => right,
        Err(throttled) => {
            tracing::warn!(action = "login", %peer, "console: login refused (too many wrong tokens)");
            return throttled.into_response();
        }
    };
    if !right {
        tracing::warn!(action = "login", %peer, "console: login refused (not the admin token)");
        return login_page(
            StatusCode::UNAUTHORIZED,
            "That is not the admin token.",
            &search,
        );
    }
    let value = match sessions.issue() {
        Ok(value) => value,
        Err(e) => {
            tracing::error!(error = %e, "console: no session issued");
            return login_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No session could be made.",
                &search,
            );
        }
    };
    tracing::info!(action = "login", %peer, "console: logged in");
    // Secure only when a proxy says the browser used HTTPS: the port itself
    // speaks plain HTTP, over which a Secure cookie would never come back.
    let cookie = session::set_cookie(&value, session::over_tls(&headers));
    with_cookie(see_other(&format!("/{search}")), &cookie)
}

/// Ends the session in the browser (the value stays valid until it
/// expires: sessions are not stored, see `session`). A write: it needs the
/// session's CSRF token like any other.
async fn logout(
    State(gate): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if gate.sessions().is_none() {
        return see_other("/");
    }
    if let Err(refused) = gate.check(&Method::POST, &headers, peer.ip()) {
        return refused.into_response();
    }
    with_cookie(
        StatusCode::NO_CONTENT.into_response(),
        &session::clear_cookie(),
    )
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn common() -> Response {
    asset("text/javascript; charset=utf-8", COMMON)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn html(status: StatusCode, body: &str) -> Response {
    let mut response = (status, body.to_owned()).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not no-referrer: under it a browser sends `Origin: null` with
        // the login form, which the same-origin rule must refuse.
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A redirect to `location`: a path of this module's, with at most a
/// re-encoded search ([`search`]), so always a valid header value.
fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    match HeaderValue::from_str(cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
            response
        }
        // Session values are base64url and digits: always a valid header.
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_takes_its_csrf_token_and_names_no_other_origin() {
        let page = index("abc_-123", "token");
        assert!(page.contains(r#"<meta name="csrf-token" content="abc_-123">"#));
        assert!(!page.contains("{{"));
        assert!(!login_html("", "").contains("{{"));
        assert!(login_html("", "").contains(r#"action="/login""#));
        for asset in [INDEX, LOGIN, STYLE, COMMON, SCRIPT] {
            // The SVG namespace is a name, not a fetch.
            let asset = asset.replace("http://www.w3.org/2000/svg", "");
            assert!(!asset.contains("http://"), "no absolute URLs");
            assert!(!asset.contains("https://"), "no absolute URLs");
        }
        for script in [COMMON, SCRIPT] {
            assert!(!script.contains("innerHTML"), "data is written as text");
        }
    }

    #[test]
    fn only_the_search_filters_ride_along_through_the_login_re_encoded() {
        assert_eq!(search(None), "");
        assert_eq!(search(Some("")), "");
        assert_eq!(search(Some("next=//evil.example&x=1")), "");
        assert_eq!(
            search(Some("message_id=a%20b%26c&next=/x&state=dead")),
            "?message_id=a+b%26c&state=dead"
        );
        // A value cannot break out of the form's action attribute.
        let search = search(Some("exchange=\"><b>&state=sent"));
        assert_eq!(search, "?exchange=%22%3E%3Cb%3E&state=sent");
        let page = login_html("", &search);
        assert!(page.contains(r#"action="/login?exchange=%22%3E%3Cb%3E&amp;state=sent""#));
    }
}
