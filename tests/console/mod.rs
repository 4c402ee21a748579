//! The console (`GET /`) against the real services: its login, session
//! cookie and CSRF rules over plain HTTP (`login`), and the page itself in
//! headless Chromium driven over WebDriver (`browser`). (A module of the
//! `relay` test binary, so that it links once.)

mod browser;
mod deeplink;
mod login;
mod webdriver;

use crate::common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// The admin token of these tests' relays.
const TOKEN: &str = "console-t0ken-for-tests";
/// Rows reach their final state, and pages show them, within this.
const WITHIN: Duration = Duration::from_secs(30);

/// A relay with the console behind `--admin-token` (plus `extra` flags).
async fn relay_with_token(env: &TestEnv, extra: &[&str]) -> Running {
    let mut args = vec!["--admin-token", TOKEN];
    args.extend_from_slice(extra);
    Running::start(env.run_args(&args)).await
}

/// `POST /login` with `token`, as the login form sends it.
async fn log_in(addr: SocketAddr, token: &str, extra: &[(&str, &str)]) -> HttpReply {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish();
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    headers.extend_from_slice(extra);
    http_request(addr, "POST", "/login", &headers, Some(body.as_bytes())).await
}

/// A console session as a browser holds it: the cookie and its page's
/// CSRF token.
struct Session {
    addr: SocketAddr,
    /// `outbox_session=<value>`, as a `Cookie` header carries it.
    cookie: String,
    csrf: String,
}

impl Session {
    /// Logs in with the token and loads the page, as a browser does.
    async fn open(addr: SocketAddr) -> Self {
        let reply = log_in(addr, TOKEN, &[]).await;
        assert_eq!(reply.status, 303, "{reply:?}");
        let cookie = cookie_of(&reply).expect("a session cookie");
        let page = http_request(addr, "GET", "/", &[("Cookie", &cookie)], None).await;
        assert_eq!(page.status, 200, "{page:?}");
        let csrf = csrf_of(&page.body);
        assert!(!csrf.is_empty(), "a session's page carries its CSRF token");
        Self { addr, cookie, csrf }
    }

    /// A request with the session cookie and `headers`.
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpReply {
        let mut all = vec![("Cookie", self.cookie.as_str())];
        all.extend_from_slice(headers);
        let body = (method != "GET").then_some(&b""[..]);
        http_request(self.addr, method, path, &all, body).await
    }
}

/// `name=value` of the `Set-Cookie` header.
fn cookie_of(reply: &HttpReply) -> Option<String> {
    let set = reply.header("set-cookie")?;
    Some(set.split(';').next()?.trim().to_owned())
}

/// The `content` of the page's `csrf-token` meta tag.
fn csrf_of(page: &str) -> String {
    let tag = r#"<meta name="csrf-token" content=""#;
    let start = page.find(tag).expect("the csrf-token meta tag") + tag.len();
    let len = page[start..].find('"').expect("the tag's closing quote");
    page[start..start + len].to_owned()
}
