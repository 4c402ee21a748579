//! The console's search in its URL, in the real browser: a link to a search
//! opens the page with it done, a message's link is such a link, every
//! search is a history entry (back returns to the previous one), and a link
//! opened without a session comes back to its search after the login.
//! (Steps of the browser test in `browser`.)

use super::webdriver::*;
use super::*;
use fantoccini::{Client, Locator};

/// `/?message_id=<id>`, as the page links a message.
fn link_to(id: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("message_id", id)
        .finish();
    format!("/?{query}")
}

/// Where the browser is: its URL's path and query.
async fn here(browser: &Client) -> Option<String> {
    let url = browser.current_url().await.ok()?;
    Some(match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    })
}

/// Waits until the browser is at `path_and_query`.
async fn at(browser: &Client, path_and_query: &str) {
    let arrived = wait_until(WITHIN, || async {
        here(browser).await.as_deref() == Some(path_and_query)
    })
    .await;
    let last = here(browser).await;
    assert!(
        arrived,
        "not at {path_and_query} within {WITHIN:?}: {last:?}"
    );
}

/// The search for `id` is done: its field holds it and its row is listed.
async fn shows_the_search_for(browser: &Client, id: &str) {
    let row = format!("#results tr[data-message-id=\"{id}\"]");
    text_when(browser, &format!("{row} .state"), |t| t == "sent").await;
    let field = browser.find(Locator::Css("#f-message_id")).await.unwrap();
    assert_eq!(field.prop("value").await.unwrap().as_deref(), Some(id));
}

pub async fn follow_links_to_a_search(browser: &Client, base: &str, id: &str) {
    let link = link_to(id);
    browser.goto(&format!("{base}{link}")).await.unwrap();
    shows_the_search_for(browser, id).await;
    let row = format!("#results tr[data-message-id=\"{id}\"]");
    let anchor = browser.find(Locator::Css(&format!("{row} a.link"))).await;
    let href = anchor.unwrap().attr("href").await.unwrap();
    assert_eq!(href.as_deref(), Some(link.as_str()), "the message's link");

    // Another search is a history entry of its own; back returns to this one.
    let field = browser.find(Locator::Css("#f-message_id")).await.unwrap();
    field.clear().await.unwrap();
    let key = browser.find(Locator::Css("#f-routing_key")).await.unwrap();
    key.send_keys("earlier").await.unwrap();
    click(browser, "#search-button").await;
    at(browser, "/?routing_key=earlier").await;
    text_when(browser, "#results-note", |t| t.starts_with("50+ messages")).await;
    gone(browser, &row).await;
    browser.back().await.unwrap();
    at(browser, &link).await;
    shows_the_search_for(browser, id).await;
    let key = browser.find(Locator::Css("#f-routing_key")).await.unwrap();
    assert_eq!(key.prop("value").await.unwrap().as_deref(), Some(""));

    // Without a session the link goes through the login and back to its search.
    browser.delete_all_cookies().await.unwrap();
    browser.goto(&format!("{base}{link}")).await.unwrap();
    let token = browser
        .wait()
        .at_most(WITHIN)
        .for_element(Locator::Css("#token"));
    token
        .await
        .expect("the login form")
        .send_keys(TOKEN)
        .await
        .unwrap();
    at(browser, &format!("/login{}", &link[1..])).await;
    click(browser, "#login-button").await;
    at(browser, &link).await;
    shows_the_search_for(browser, id).await;
}
