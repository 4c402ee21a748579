//! The console's admission over plain HTTP: the login and its cookie, a
//! wrong token, CSRF on cookie-authenticated writes, and the loopback rule
//! without a token.

use super::*;

#[tokio::test]
async fn a_login_sets_an_http_only_strict_session_cookie_that_is_not_the_token() {
    let env = TestEnv::new("console_cookie").await;
    let relay = relay_with_token(&env, &[]).await;
    let addr = relay.http.expect("the HTTP port listens");

    let anonymous = http_request(addr, "GET", "/", &[], None).await;
    assert_eq!(anonymous.status, 303, "{anonymous:?}");
    assert_eq!(anonymous.header("location"), Some("/login"));
    let form = http_request(addr, "GET", "/login", &[], None).await;
    assert_eq!(form.status, 200, "{form:?}");
    assert!(form.body.contains(r#"name="token""#), "{}", form.body);

    let own_origin = format!("http://{addr}");
    let reply = log_in(addr, TOKEN, &[("Origin", &own_origin)]).await;
    assert_eq!(reply.status, 303, "{reply:?}");
    assert_eq!(reply.header("location"), Some("/"));
    let set = reply.header("set-cookie").expect("Set-Cookie");
    let flags: Vec<&str> = set.split(';').map(str::trim).collect();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(flags.contains(&flag), "{flag} missing: {set}");
    }
    assert!(
        !flags.iter().any(|f| f.eq_ignore_ascii_case("secure")),
        "plain HTTP: no Secure flag: {set}"
    );
    assert!(!set.contains(TOKEN), "the cookie is not the token: {set}");
    // Behind an ingress that terminated TLS, the cookie is Secure.
    let forwarded = log_in(addr, TOKEN, &[("X-Forwarded-Proto", "https")]).await;
    assert_eq!(forwarded.status, 303, "{forwarded:?}");
    let set_tls = forwarded.header("set-cookie").expect("Set-Cookie");
    assert!(
        set_tls.split(';').any(|f| f.trim() == "Secure"),
        "forwarded from HTTPS: Secure: {set_tls}"
    );

    let cookie = cookie_of(&reply).unwrap();
    assert!(cookie.starts_with("outbox_session="), "{cookie}");
    let with = [("Cookie", cookie.as_str())];
    let page = http_request(addr, "GET", "/", &with, None).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.content_type.starts_with("text/html"), "{page:?}");
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let policy = page.header("content-security-policy").expect("a CSP");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(!csrf_of(&page.body).is_empty());
    assert!(!page.body.contains(TOKEN));
    let stats = http_request(addr, "GET", "/api/stats", &with, None).await;
    assert_eq!(stats.status, 200, "the API takes the cookie: {stats:?}");
    let again = http_request(addr, "GET", "/login", &with, None).await;
    assert_eq!(again.status, 303, "logged in already: {again:?}");
    for asset in ["/console/console.js", "/console/console.css"] {
        let reply = http_request(addr, "GET", asset, &[], None).await;
        assert_eq!(reply.status, 200, "{asset}: {reply:?}");
    }
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn guessing_the_token_is_refused_with_429_after_ten_wrong_tries() {
    let env = TestEnv::new("console_guess").await;
    let relay = relay_with_token(&env, &[]).await;
    let addr = relay.http.expect("the HTTP port listens");
    // Ten wrong tokens, by form and by bearer header, are answered 401.
    for n in 0..10 {
        let wrong = format!("guess-{n}");
        let reply = if n % 2 == 0 {
            log_in(addr, &wrong, &[]).await
        } else {
            let bearer = format!("Bearer {wrong}");
            http_request(
                addr,
                "GET",
                "/api/stats",
                &[("Authorization", &bearer)],
                None,
            )
            .await
        };
        assert_eq!(reply.status, 401, "try {n}: {reply:?}");
    }
    // The eleventh is refused without being compared: even the right token.
    let form = log_in(addr, TOKEN, &[]).await;
    assert_eq!(form.status, 429, "{form:?}");
    assert!(form.header("set-cookie").is_none(), "{form:?}");
    let retry: u64 = form
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    let bearer = format!("Bearer {TOKEN}");
    let api = http_request(
        addr,
        "GET",
        "/api/stats",
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(api.status, 429, "{api:?}");
    // Probes and metrics stay open.
    assert_eq!(
        http_request(addr, "GET", "/livez", &[], None).await.status,
        200
    );
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn a_login_with_a_wrong_token_is_refused_and_sets_no_cookie() {
    let env = TestEnv::new("console_wrong").await;
    let relay = relay_with_token(&env, &[]).await;
    let addr = relay.http.expect("the HTTP port listens");
    for wrong in ["", "console-t0ken-for-test", "CONSOLE-T0KEN-FOR-TESTS", "x"] {
        let reply = log_in(addr, wrong, &[]).await;
        assert_eq!(reply.status, 401, "{wrong:?}: {reply:?}");
        assert!(reply.header("set-cookie").is_none(), "{reply:?}");
        assert!(reply.body.contains("not the admin token"), "{}", reply.body);
    }
    // Another site cannot log a browser in, even with the right token.
    let foreign = log_in(addr, TOKEN, &[("Origin", "http://evil.example")]).await;
    assert_eq!(foreign.status, 403, "{foreign:?}");
    assert!(foreign.header("set-cookie").is_none());
    // A made-up session, or the token itself as the cookie, opens nothing.
    let token_cookie = format!("outbox_session={TOKEN}");
    for cookie in ["outbox_session=1.2.3", token_cookie.as_str()] {
        let with = [("Cookie", cookie)];
        let stats = http_request(addr, "GET", "/api/stats", &with, None).await;
        assert_eq!(stats.status, 401, "{cookie}: {stats:?}");
        let page = http_request(addr, "GET", "/", &with, None).await;
        assert_eq!(page.status, 303, "{cookie}: {page:?}");
    }
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn a_cookie_authenticated_write_needs_the_csrf_token_of_its_page() {
    let env = TestEnv::new("console_csrf").await;
    let relay = relay_with_token(&env, &[]).await;
    let session = Session::open(relay.http.expect("the HTTP port listens")).await;
    let sql = format!(
        "INSERT INTO {} (routing_key, payload, dead_at, attempts, last_error)
         VALUES ($1, 'x', now(), 3, 'NOT_FOUND') RETURNING id",
        env.table()
    );
    let id: i64 = env.pg.query_one(&sql, &[&env.queue]).await.unwrap().get(0);
    let path = format!("/api/messages/{id}/replay");
    let json_type = ("Content-Type", "application/json");

    let bare = session.send("POST", &path, &[json_type]).await;
    assert_eq!(bare.status, 403, "{bare:?}");
    assert!(bare.body.contains("X-CSRF-Token"), "{}", bare.body);
    let wrong = session
        .send("POST", &path, &[json_type, ("X-CSRF-Token", "guessed")])
        .await;
    assert_eq!(wrong.status, 403, "{wrong:?}");
    let delete = session
        .send("DELETE", &format!("/api/messages/{id}"), &[json_type])
        .await;
    assert_eq!(delete.status, 403, "{delete:?}");
    let dead = format!("SELECT count(*) FROM {{t}} WHERE id = {id} AND dead_at IS NOT NULL");
    assert_eq!(env.scalar(&dead).await, 1, "nothing changed");

    let csrf = ("X-CSRF-Token", session.csrf.as_str());
    let right = session.send("POST", &path, &[json_type, csrf]).await;
    assert_eq!(right.status, 200, "{right:?}");
    let arrived = env.consume(1, WITHIN, Duration::ZERO).await;
    assert_eq!(arrived.len(), 1, "the replayed row arrives");

    // Logging out is a write as well, and clears the cookie.
    let refused = session.send("POST", "/logout", &[json_type]).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    let out = session.send("POST", "/logout", &[json_type, csrf]).await;
    assert_eq!(out.status, 204, "{out:?}");
    let cleared = out.header("set-cookie").expect("a clearing Set-Cookie");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn without_a_token_the_console_answers_loopback_hosts_only() {
    let env = TestEnv::new("console_loopback").await;
    let relay = Running::start(env.run_args(&[])).await;
    let addr = relay.http.expect("the HTTP port listens");
    let page = http_request(addr, "GET", "/", &[], None).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(csrf_of(&page.body), "", "no session, no CSRF token");
    let rebound = http_request(addr, "GET", "/", &[("Host", "evil.example:9464")], None).await;
    assert_eq!(rebound.status, 403, "{rebound:?}");
    let login = http_request(addr, "GET", "/login", &[], None).await;
    assert_eq!(login.status, 303, "nothing to log into: {login:?}");
    let posted = log_in(addr, "anything", &[]).await;
    assert_eq!(posted.status, 303, "{posted:?}");
    assert!(posted.header("set-cookie").is_none());
    relay.stop().await.unwrap();

    // Beyond loopback without a token there is no console, as no API.
    let open = Running::start(env.run_args(&["--http-addr", "0.0.0.0:0"])).await;
    let port = open.http.expect("the HTTP port listens").port();
    let local: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(http_get(local, "/", None).await.status, 404);
    assert_eq!(http_get(local, "/login", None).await.status, 404);
    open.stop().await.unwrap();
    env.drop_schema().await;
}
