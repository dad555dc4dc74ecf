//! The dashboard behind the access token, in headless Chromium: `diffit-server --host 0.0.0.0`
//! prints a token; without it the page is refused; the printed `/?token=` address, opened
//! directly or from another site's page, shows the runs table with live updates on (fetch and
//! EventSource carry the cookie), and the token is gone from the address bar, the page and
//! script-visible cookies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

mod support;

use std::process::Command;
use std::time::Duration;

use fantoccini::Client;
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

    // Opened from another site's page (a link in a chat or a notebook): the browser withholds
    // a SameSite=Strict cookie from that navigation's redirects, so the server's own page moves
    // on, and the runs table loads.
    let printed = format!("{}/?token={token}", server.url);
    let elsewhere = server.url.replace("127.0.0.1", "localhost");
    client.goto(&elsewhere).await.expect("open another site");
    client
        .execute(
            "location.href = arguments[0];",
            vec![printed.clone().into()],
        )
        .await
        .expect("follow a link from another site");
    browser.wait_for(r#"tr[data-run="1"]"#, WAIT).await;
    assert_address_has_no_token(client, &token).await;

    // Opened directly (typed, or from the terminal): a redirect to the address without it; the
    // table is fed by fetch and the live event stream, both carrying the cookie.
    client
        .delete_all_cookies()
        .await
        .expect("forget the cookie");
    client
        .goto(&server.url)
        .await
        .expect("open without the cookie");
    browser
        .wait_until(
            "document.body.textContent.includes('needs its access token')",
            WAIT,
        )
        .await;
    client
        .goto(&printed)
        .await
        .expect("open the printed address");
    browser.wait_for(r#"tr[data-run="1"]"#, WAIT).await;
    browser.wait_for(r#"[data-live="live"]"#, WAIT).await;
    browser.screenshot("runs-table-with-token").await;
    assert_address_has_no_token(client, &token).await;
    let cookies = client.get_all_cookies().await.expect("cookies");
    let cookie = cookies
        .iter()
        .find(|c| c.value() == token)
        .expect("the token's cookie");
    assert_eq!(cookie.http_only(), Some(true));
    // `cookie::SameSite` (fantoccini does not re-export it) by its name.
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    assert_eq!(cookie.path(), Some("/"));

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

/// The address bar shows the dashboard with no query left.
async fn assert_address_has_no_token(client: &Client, token: &str) {
    let url = client.current_url().await.expect("current url");
    assert_eq!(url.path(), "/", "{url}");
    assert_eq!(url.query(), None, "{url}");
    assert!(!url.as_str().contains(token), "{url}");
}
