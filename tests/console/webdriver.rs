//! Driving headless Chromium over WebDriver for the console's browser test:
//! a chromedriver of the test's own (killed with its browsers when dropped)
//! and the page helpers, each waiting on a condition with a deadline
//! ([`WITHIN`]), never a fixed sleep.

use super::*;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use tokio::time::Instant;

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// A desktop window, and a phone's (an iPhone 12-15's CSS pixels).
pub const DESKTOP: (u32, u32) = (1280, 900);
pub const PHONE: (u32, u32) = (390, 844);
/// A window tall enough for the whole page, for the screenshot.
pub const TALL: u32 = 1100;

/// A chromedriver this test started, in a process group of its own: the
/// group (chromedriver and the browsers it started) is killed when this is
/// dropped, also when the test fails.
pub struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    pub async fn start() -> Self {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{CHROMEDRIVER}: {e} (deploy/local/services.sh installs chromium-driver)")
            });
        let driver = Self {
            child,
            addr: ([127, 0, 0, 1], port).into(),
        };
        let listening = wait_until(WITHIN, || async {
            tokio::net::TcpStream::connect(driver.addr).await.is_ok()
        })
        .await;
        assert!(listening, "chromedriver did not listen on {}", driver.addr);
        driver
    }

    /// A headless Chromium session.
    pub async fn browser(&self) -> Client {
        let options = serde_json::json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
            ],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{}", self.addr))
            .await
            .expect("a Chromium session through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group this test made: chromedriver and what it started.
        let group = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a process group id this test created.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

pub async fn click(browser: &Client, css: &str) {
    browser
        .wait()
        .at_most(WITHIN)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

pub async fn text(browser: &Client, css: &str) -> String {
    let element = browser.find(Locator::Css(css)).await;
    element
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// The text of `css` once `done` holds for it (the page refreshes itself
/// every 5 s), within [`WITHIN`].
pub async fn text_when(browser: &Client, css: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WITHIN;
    let mut last = None;
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(shown) = element.text().await
        {
            if done(&shown) {
                return shown;
            }
            last = Some(shown);
        }
        assert!(
            Instant::now() < deadline,
            "{css} did not show what was expected within {WITHIN:?}; last shown: {last:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Waits until no element matches `css`.
pub async fn gone(browser: &Client, css: &str) {
    let removed = wait_until(WITHIN, || async {
        browser
            .find_all(Locator::Css(css))
            .await
            .is_ok_and(|found| found.is_empty())
    })
    .await;
    assert!(removed, "{css} is still shown after {WITHIN:?}");
}

/// `YYYY-MM-DD HH:MM:SS`, as the console shows times.
pub fn is_local_time(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 19
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b' ',
            13 | 16 => *b == b':',
            _ => b.is_ascii_digit(),
        })
}

/// Saves what the browser shows to `target/<name>`.
pub async fn save_screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}
