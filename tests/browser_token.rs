//! The dashboard behind the access token, in headless Chromium: `diffit-server --host 0.0.0.0`
//! prints a token; without it the page is refused; the printed `/?token=` address shows the
//! runs table with live updates on (fetch and EventSource carry the cookie), and the token is
//! gone from the address bar, the page and script-visible cookies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Browser, Server};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn the_printed_address_opens_the_dashboard_and_drops_the_token() {
    if !support::browser_available() {
        return;
    }
    let (_, server_bin) = support::workspace_binaries();
    // A finished run as an older main wrote it: no training needed to have a row to show.
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = support::workspace_root().join("tests/fixtures/main-36b41c4/checkpoints");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&fixture)
        .arg(dir.path())
        .status()
        .expect("run cp");
    assert!(status.success(), "copy {}", fixture.display());
    let checkpoints = dir.path().join("checkpoints");

    let server = Server::start_with_args(&server_bin, &checkpoints, &["--host", "0.0.0.0"]);
    let token = server.printed_token();
    assert!(token.len() >= 32, "{token}");
    let browser = Browser::start().await;
    let client = &browser.client;

    // Without the token: the refusal page, no app.
    client.goto(&server.url).await.expect("open without token");
    browser
        .wait_until(
            "document.body.textContent.includes('needs its access token')",
            WAIT,
        )
        .await;
    assert_eq!(browser.count("tr[data-run]").await, 0);

    // With it: the runs table, fed by fetch and the live event stream.
    client
        .goto(&format!("{}/?token={token}", server.url))
        .await
        .expect("open the printed address");
    browser.wait_for(r#"tr[data-run="1"]"#, WAIT).await;
    browser.wait_for(r#"[data-live="live"]"#, WAIT).await;
    browser.screenshot("runs-table-with-token").await;

    let url = client.current_url().await.expect("current url");
    assert_eq!(url.query(), None, "{url}");
    assert_eq!(url.path(), "/", "{url}");
    let leaks = client
        .execute(
            "return [location.href, document.documentElement.outerHTML, document.cookie, \
                     performance.getEntriesByType('resource').map(e => e.name).join(' ')];",
            vec![],
        )
        .await
        .expect("read the page");
    for (what, text) in ["address", "page", "cookies", "requests"]
        .iter()
        .zip(leaks.as_array().expect("array"))
    {
        let text = text.as_str().unwrap_or_default();
        assert!(!text.contains(&token), "the token is in the {what}: {text}");
    }
    // The server's output names the token only in the addresses it printed at start.
    let log = std::fs::read_to_string(&server.log).expect("server log");
    for line in log.lines().filter(|line| line.contains(&token)) {
        let address = line.trim_start();
        assert!(
            address.starts_with("http://") && address.ends_with(&format!("/?token={token}")),
            "{line}"
        );
    }
}
