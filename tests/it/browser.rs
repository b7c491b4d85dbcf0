//! A real browser for the board's tests: Debian's headless `chromium`,
//! driven over WebDriver by a `chromedriver` the test starts on a free
//! loopback port (scripts/test installs both when missing), with a profile
//! of its own in a temp dir. Browsers run one at a time: two cores.

use crate::harness::free_port;
use fantoccini::{Client, ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One browser at a time in this test binary.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Browser {
    driver: Child,
    pub clients: Vec<Client>,
    _profiles: Vec<tempfile::TempDir>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

fn program(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/lib/chromium"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} is not installed: scripts/test installs Debian's chromium and chromium-driver")
}

impl Browser {
    /// `windows` separate browser sessions (each its own profile and cookies).
    pub async fn start(windows: usize) -> Browser {
        let turn = ONE_AT_A_TIME.lock().await;
        let port = free_port();
        let driver = Command::new(program("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut clients = Vec::new();
        let mut profiles = Vec::new();
        for _ in 0..windows {
            let profile = tempfile::tempdir().unwrap();
            let mut caps = serde_json::Map::new();
            caps.insert(
                "goog:chromeOptions".into(),
                serde_json::json!({
                    "binary": program("chromium"),
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--window-size=1366,768",
                        "--lang=zh-CN", format!("--user-data-dir={}", profile.path().display()),
                    ],
                }),
            );
            let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
                .expect("a chromium session");
            clients.push(client);
            profiles.push(profile);
        }
        Browser { driver, clients, _profiles: profiles, _turn: turn }
    }

    pub fn window(&self, i: usize) -> &Client {
        &self.clients[i]
    }

    pub async fn close(mut self) {
        for c in self.clients.drain(..) {
            let _ = c.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Waits for an element matching `css` (up to `within`).
pub async fn element(c: &Client, css: &str, within: Duration) -> fantoccini::elements::Element {
    c.wait().at_most(within).for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no `{css}`: {e}"))
}

/// Waits until no element matches `css` (a form posted, the next page loading).
pub async fn gone(c: &Client, css: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while present(c, css).await {
        assert!(std::time::Instant::now() < deadline, "`{css}` is still on the page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks the link or GET form button `css` and waits until the browser is on another address.
pub async fn follow(c: &Client, css: &str, within: Duration) {
    let before = c.current_url().await.unwrap();
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no `{css}`: {e}")).click().await.unwrap();
    let deadline = std::time::Instant::now() + within;
    while c.current_url().await.unwrap() == before {
        assert!(std::time::Instant::now() < deadline, "`{css}` led nowhere");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether an element matching `css` is on the page now.
pub async fn present(c: &Client, css: &str) -> bool {
    c.find(Locator::Css(css)).await.is_ok()
}

/// Runs `script` in the page and returns its value.
pub async fn js(c: &Client, script: &str) -> serde_json::Value {
    c.execute(script, Vec::new()).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// The cursors of every live event the page received, duplicates included.
pub async fn arrivals(c: &Client) -> Vec<u64> {
    let v = js(c, "return window.boardArrivals || [];").await;
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}
