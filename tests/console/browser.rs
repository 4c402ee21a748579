//! The console in a real browser: headless Chromium driven over WebDriver
//! (`/usr/bin/chromedriver`, installed by `deploy/local/services.sh`). The
//! test logs in, reads the overview and its chart, finds a relayed message
//! by its message_id, follows links to that search (`deeplink`), sees a
//! dead letter with its error and replays it with the page's button until
//! it arrives on a queue. It saves what the
//! browser showed to `target/console.png` (and a message's detail and the
//! phone-width layout to `target/console-detail.png`, `-phone.png`).

use super::webdriver::*;
use super::*;
use fantoccini::{Client, Locator};
use futures::FutureExt;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::FieldTable;
use std::panic::AssertUnwindSafe;

#[tokio::test]
async fn the_console_shows_a_sent_message_and_replays_a_dead_one_in_a_real_browser() {
    let env = TestEnv::new("console_browser").await;
    let relay = relay_with_token(&env, &["--max-attempts", "1"]).await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    let walked = AssertUnwindSafe(walk_through(&env, &relay, &browser))
        .catch_unwind()
        .await;
    if walked.is_err() {
        // What the browser showed when the test failed, to look at.
        save_screenshot(&browser, "console-failure.png").await;
        let url = browser.current_url().await.map(|u| u.to_string());
        eprintln!("the browser was at {url:?} (target/console-failure.png)");
    }
    let _ = browser.close().await;
    drop(driver);
    relay.stop().await.unwrap();
    env.drop_schema().await;
    if let Err(failure) = walked {
        std::panic::resume_unwind(failure);
    }
}

/// The test's steps, in the order an operator would take them.
async fn walk_through(env: &TestEnv, relay: &Running, browser: &Client) {
    let base = format!("http://{}", relay.http.expect("the HTTP port listens"));
    let earlier = sent_over_the_last_hour(env).await;
    log_in_and_see_the_overview(browser, &base).await;
    let sent_id = find_a_relayed_message(env, browser, earlier).await;
    deeplink::follow_links_to_a_search(browser, &base, &sent_id).await;
    replay_a_dead_letter(env, browser).await;
    fit_a_phone(browser).await;
}

/// Rows sent over the last hour, mid-minute (minutes 1 to 58 ago, 1 to 7 a
/// minute), for the chart's bars; returns how many.
async fn sent_over_the_last_hour(env: &TestEnv) -> i64 {
    env.pg
        .batch_execute(&format!(
            "INSERT INTO {} (routing_key, payload, sent_at)
             SELECT 'earlier', 'x', now() - make_interval(mins => m, secs => 30)
             FROM generate_series(1, 58) m, generate_series(1, 1 + abs(6 - m % 12)) n",
            env.table()
        ))
        .await
        .unwrap();
    (1..=58).map(|m: i64| 1 + (6 - m % 12).abs()).sum()
}

async fn log_in_and_see_the_overview(browser: &Client, base: &str) {
    browser.goto(&format!("{base}/")).await.unwrap();
    let field = browser
        .wait()
        .at_most(WITHIN)
        .for_element(Locator::Css("#token"))
        .await
        .expect("the login form");
    assert_eq!(browser.current_url().await.unwrap().path(), "/login");
    field.send_keys(TOKEN).await.unwrap();
    click(browser, "#login-button").await;
    text_when(browser, "#health", |t| t == "healthy").await;
    let due = text_when(browser, "#pending-due", |t| t.parse::<i64>().is_ok()).await;
    assert_eq!(due, "0");
    assert!(!text(browser, "#updated").await.is_empty());
    let cookie = browser.get_named_cookie("outbox_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    assert!(!cookie.value().contains(TOKEN));
}

/// A message the relay sends is found by its message_id, with its times,
/// and counted in the chart; its detail shows the payload.
async fn find_a_relayed_message(env: &TestEnv, browser: &Client, earlier: i64) -> String {
    let sql = format!(
        "INSERT INTO {} (routing_key, payload, content_type) VALUES ($1, '{{\"order\": 42}}', 'application/json') RETURNING message_id::text",
        env.table()
    );
    let sent_id: String = env.pg.query_one(&sql, &[&env.queue]).await.unwrap().get(0);
    let sent = format!(
        "SELECT count(*) FROM {{t}} WHERE message_id = '{sent_id}' AND sent_at IS NOT NULL"
    );
    let relayed = wait_until(WITHIN, || async { env.scalar(&sent).await == 1 }).await;
    assert!(relayed, "{sent_id} was not relayed within {WITHIN:?}");
    let search = browser.find(Locator::Css("#f-message_id")).await.unwrap();
    search.send_keys(&sent_id).await.unwrap();
    click(browser, "#search-button").await;
    let row = format!("#results tr[data-message-id=\"{sent_id}\"]");
    let sent_at = text_when(browser, &format!("{row} td.sent"), is_local_time).await;
    let created = text(browser, &format!("{row} td.created")).await;
    assert!(is_local_time(&created), "{created:?}");
    assert!(sent_at >= created, "sent {sent_at} after created {created}");
    assert_eq!(text(browser, &format!("{row} .state")).await, "sent");

    // The chart: one bar per minute that sent, and every message.
    let in_the_hour = (earlier + 1).to_string();
    text_when(browser, "#sent-hour", |t| t.replace(',', "") == in_the_hour).await;
    let bars = browser
        .find_all(Locator::Css("#chart rect.bar-rect"))
        .await
        .unwrap();
    let mut total = 0;
    for bar in &bars {
        let count = bar.attr("data-count").await.unwrap().unwrap();
        total += count.parse::<i64>().unwrap();
    }
    assert_eq!((bars.len(), total), (59, earlier + 1), "one bar a minute");

    click(browser, &format!("{row} a.link")).await;
    let payload = text_when(browser, "#detail-payload", |t| !t.is_empty()).await;
    assert!(payload.contains("\"order\": 42"), "{payload}");
    save_screenshot(browser, "console-detail.png").await;
    click(browser, "#detail-close").await;
    sent_id
}

/// A row to an exchange that does not exist dies after one attempt and is
/// listed with its error; once the exchange exists and routes to a queue,
/// the page's Replay delivers it.
async fn replay_a_dead_letter(env: &TestEnv, browser: &Client) {
    let exchange = unique("console_missing");
    let sql = format!(
        "INSERT INTO {} (exchange, routing_key, payload) VALUES ($1, 'replayed', 'again') RETURNING message_id::text, id",
        env.table()
    );
    let inserted = env.pg.query_one(&sql, &[&exchange]).await.unwrap();
    let (dead_id, id): (String, i64) = (inserted.get(0), inserted.get(1));
    let dead = format!("SELECT count(*) FROM {{t}} WHERE id = {id} AND dead_at IS NOT NULL");
    let died = wait_until(WITHIN, || async { env.scalar(&dead).await == 1 }).await;
    assert!(died, "{dead_id} was not dead-lettered within {WITHIN:?}");
    let dead_row = format!("#dead tr[data-message-id=\"{dead_id}\"]");
    let error = text_when(browser, &format!("{dead_row} td.error"), |t| !t.is_empty()).await;
    let sql = format!("SELECT last_error FROM {} WHERE id = {id}", env.table());
    let stored: String = env.pg.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(error, stored.trim());
    // The whole page at a desktop's width: overview, dead letter, search.
    browser.set_window_size(DESKTOP.0, TALL).await.unwrap();
    save_screenshot(browser, "console.png").await;
    browser.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();

    let queue = route_to_a_new_queue(env, &exchange, "replayed").await;
    click(browser, &format!("{dead_row} button.replay")).await;
    let arrived = consume(&env.channel, &queue, 1, WITHIN, Duration::ZERO).await;
    assert_eq!(arrived.len(), 1, "the replayed message arrives");
    assert_eq!(message_id(&arrived[0]), dead_id);
    assert_eq!(arrived[0].data, b"again");
    let notice = text_when(browser, "#notice", |t| t.contains("pending again")).await;
    assert!(notice.contains(&dead_id), "{notice}");
    gone(browser, &dead_row).await;
}

/// Declares `exchange` (removed with its last binding) and a queue bound to
/// it with `key`; returns the queue's name.
async fn route_to_a_new_queue(env: &TestEnv, exchange: &str, key: &str) -> String {
    let queue = unique("q_console_replayed");
    declare_queue(&env.channel, &queue, FieldTable::default()).await;
    let options = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    env.channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Direct,
            options,
            FieldTable::default(),
        )
        .await
        .unwrap();
    env.channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    queue
}

/// At a phone's width nothing is wider than the screen but inside scrollers.
async fn fit_a_phone(browser: &Client) {
    browser.set_window_size(PHONE.0, PHONE.1).await.unwrap();
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflow.as_i64(), Some(0), "the page fits a phone's width");
    save_screenshot(browser, "console-phone.png").await;
}
