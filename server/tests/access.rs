//! The access token: with one set, every route (API, checkpoint files and their ranges, the
//! weights-only view, the event stream, the dashboard's pages and assets) answers 401 to a
//! request without it or with a wrong one, and serves the right one from the header or the
//! cookie; `?token=` is exchanged for that cookie by a redirect to the address without it.
//! The binary generates and prints a token beyond loopback and keeps a given one to itself.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use format::RunStatus;
use server::access::AccessToken;
use server::ServerConfig;
use support::*;

const TOKEN: &str = "correct-horse-battery-staple";
const HASHED_ASSET: &str = "/pkg/app-3f9a0c1d2e4b5a67.wasm";

/// Every kind of route, with the status it answers once the token is right.
const ROUTES: &[(&str, Option<&str>, u16)] = &[
    ("/api/runs", None, 200),
    ("/api/runs/1", None, 200),
    ("/api/runs/1/metrics", None, 200),
    ("/api/runs/1/checkpoints/epoch_001", None, 200),
    ("/api/runs/1/checkpoints/best", Some("bytes=0-99"), 206),
    ("/api/runs/1/checkpoints/last", Some("bytes=-16"), 206),
    ("/api/runs/1/checkpoints/base", None, 200),
    ("/api/runs/1/checkpoints/best?weights_only=true", None, 200),
    ("/api/events", None, 200),
    ("/api/no-such-route", None, 404),
    ("/api/runs/9", None, 404),
    ("/", None, 200),
    ("/index.html", None, 200),
    ("/style.css", None, 200),
    (HASHED_ASSET, None, 200),
    ("/no-such-file.js", None, 404),
];

/// A built-app stand-in: a page, a stylesheet and a content-hashed asset.
fn write_app(dir: &Path) {
    std::fs::create_dir_all(dir.join("pkg")).unwrap();
    std::fs::write(dir.join("index.html"), "<!doctype html><title>app</title>").unwrap();
    std::fs::write(dir.join("style.css"), "body { margin: 0 }").unwrap();
    std::fs::write(dir.join(HASHED_ASSET.trim_start_matches('/')), b"\0asm").unwrap();
}

/// Status and headers only (the event stream never ends), then the connection is dropped.
fn head_of(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    read_head(&mut BufReader::new(stream))
}

/// Asserts a refusal: 401, the API's JSON error under `/api`, a page elsewhere; never the token.
fn assert_refused(addr: SocketAddr, target: &str, headers: &[(&str, &str)], why: &str) {
    let response = get(addr, target, headers);
    assert_eq!(response.status, 401, "{target} {why}");
    assert!(
        response.header("www-authenticate").is_some(),
        "{target} {why}"
    );
    let body = String::from_utf8_lossy(&response.body).into_owned();
    assert!(!body.contains(TOKEN), "{target} {why}: {body}");
    if target.starts_with("/api/") {
        let error = response.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains("access token"), "{target} {why}: {error}");
    } else {
        assert!(
            response
                .header("content-type")
                .unwrap()
                .starts_with("text/html"),
            "{target} {why}"
        );
        assert!(body.contains("access token"), "{target} {why}: {body}");
    }
}

/// A request's credentials: one header and/or a query parameter.
#[derive(Default)]
struct Attempt {
    header: Option<(&'static str, String)>,
    query: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    let app = dir.path().join("app");
    write_run(&checkpoints, 1, 2, RunStatus::Finished);
    write_app(&app);
    let mut config = ServerConfig::new(&checkpoints, &app);
    config.token = Some(TOKEN.parse::<AccessToken>().unwrap());
    let server = start_with(config).await;
    let addr = server.addr;

    blocking(move || {
        let port = addr.port();
        let right_bearer = format!("Bearer {TOKEN}");
        let right_cookie = format!("diffit_token_{port}={TOKEN}");
        let prefix = &TOKEN[..TOKEN.len() - 1];
        let header = |name: &'static str, value: String| Attempt {
            header: Some((name, value)),
            query: None,
        };
        let wrongs = [
            ("without credentials", Attempt::default()),
            (
                "wrong bearer",
                header("Authorization", "Bearer wrong-but-long-enough".into()),
            ),
            (
                "bearer of a prefix",
                header("Authorization", format!("Bearer {prefix}")),
            ),
            (
                "bearer too long",
                header("Authorization", format!("Bearer {TOKEN}x")),
            ),
            (
                "another scheme",
                header("Authorization", format!("Basic {TOKEN}")),
            ),
            (
                "wrong cookie",
                header(
                    "Cookie",
                    format!("diffit_token_{port}=wrong-but-long-enough"),
                ),
            ),
            (
                "another port's cookie",
                header("Cookie", format!("diffit_token_1={TOKEN}")),
            ),
            (
                "wrong ?token=",
                Attempt {
                    header: None,
                    query: Some("token=wrong-but-long-enough".into()),
                },
            ),
            (
                "a wrong ?token= beside a right bearer",
                Attempt {
                    header: Some(("Authorization", right_bearer.clone())),
                    query: Some(format!("token={prefix}")),
                },
            ),
        ];
        for (route, range, ok_status) in ROUTES {
            for (why, attempt) in &wrongs {
                let target = match &attempt.query {
                    None => route.to_string(),
                    Some(query) if route.contains('?') => format!("{route}&{query}"),
                    Some(query) => format!("{route}?{query}"),
                };
                let mut headers: Vec<(&str, &str)> = attempt
                    .header
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                headers.extend(range.map(|r| ("Range", r)));
                if *route == "/api/events" && headers.is_empty() && attempt.query.is_none() {
                    // The stream itself: refused before it starts.
                    let (status, _) = head_of(addr, route, &[]);
                    assert_eq!(status, 401);
                }
                assert_refused(addr, &target, &headers, why);
            }
            for (name, value) in [("Authorization", &right_bearer), ("Cookie", &right_cookie)] {
                let mut headers = vec![(name, value.as_str())];
                if let Some(range) = range {
                    headers.push(("Range", range));
                }
                let (status, head) = head_of(addr, route, &headers);
                assert_eq!(status, *ok_status, "{route} with the right {name}");
                if *route == "/api/events" {
                    let kind = head.iter().find(|(k, _)| k == "content-type").unwrap();
                    assert!(kind.1.starts_with("text/event-stream"), "{kind:?}");
                }
            }
        }
        // The right token among other cookies still counts.
        let mixed = format!("theme=dark; {right_cookie}; other=1");
        assert_eq!(get(addr, "/api/runs", &[("Cookie", &mixed)]).status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_address_becomes_a_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    let app = dir.path().join("app");
    write_run(&checkpoints, 1, 1, RunStatus::Finished);
    write_app(&app);
    let mut config = ServerConfig::new(&checkpoints, &app);
    config.token = Some(TOKEN.parse::<AccessToken>().unwrap());
    let server = start_with(config).await;
    let addr = server.addr;

    blocking(move || {
        let cases = [
            (format!("/?token={TOKEN}"), "/"),
            (
                format!("/index.html?a=1&token={TOKEN}&b=2"),
                "/index.html?a=1&b=2",
            ),
            (format!("/api/runs?token={TOKEN}"), "/api/runs"),
            // A path that would read as another host stays on this one.
            (
                format!("//elsewhere.example/x?token={TOKEN}"),
                "/elsewhere.example/x",
            ),
        ];
        for (target, expected) in cases {
            let response = get(addr, &target, &[]);
            assert_eq!(response.status, 303, "{target}");
            assert_eq!(response.header("location"), Some(expected), "{target}");
            assert!(!String::from_utf8_lossy(&response.body).contains(TOKEN));
            let cookie = response.header("set-cookie").unwrap();
            let mut attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
            let pair = attributes.remove(0);
            attributes.sort_unstable();
            assert_eq!(pair, format!("diffit_token_{}={TOKEN}", addr.port()));
            assert_eq!(attributes, ["HttpOnly", "Path=/", "SameSite=Strict"]);
            assert_eq!(response.header("cache-control"), Some("no-store"));
            assert_eq!(response.header("referrer-policy"), Some("no-referrer"));

            // Following the redirect with the cookie, as a browser does.
            let followed = get(addr, expected, &[("Cookie", pair)]);
            let want = if expected.starts_with("/elsewhere") {
                404
            } else {
                200
            };
            assert_eq!(followed.status, want, "{expected}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_opened_from_another_site_moves_on_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    write_app(&app);
    let mut config = ServerConfig::new(dir.path().join("checkpoints"), &app);
    config.token = Some(TOKEN.parse::<AccessToken>().unwrap());
    let server = start_with(config).await;
    let addr = server.addr;

    blocking(move || {
        let target = format!("/index.html?a=1&token={TOKEN}&b='2'");
        let response = get(addr, &target, &[("Sec-Fetch-Site", "cross-site")]);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("location"), None);
        let cookie = response.header("set-cookie").unwrap();
        assert!(cookie.starts_with(&format!("diffit_token_{}={TOKEN};", addr.port())));
        assert!(cookie.contains("SameSite=Strict") && cookie.contains("HttpOnly"));
        assert_eq!(response.header("referrer-policy"), Some("no-referrer"));
        let page = String::from_utf8_lossy(&response.body).into_owned();
        assert!(!page.contains(TOKEN), "{page}");
        assert!(
            page.contains(r#"content="0; url=/index.html?a=1&amp;b='2'""#),
            "{page}"
        );
        // From this site (or with no word on it) it is the plain redirect.
        let same = get(addr, &target, &[("Sec-Fetch-Site", "same-origin")]);
        assert_eq!(same.status, 303);
    })
    .await;
}

/// `diffit-server` with `args` (and `env`), its stdout read until the line with `until`.
struct RunningBinary {
    child: Child,
    printed: String,
    port: u16,
}

impl RunningBinary {
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)], until: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_diffit-server"))
            .arg("--checkpoints")
            .arg(dir)
            .arg("--app-dir")
            .arg(dir)
            .args(["--port", "0"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut printed = String::new();
        while !printed.contains(until) {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                panic!("diffit-server ended before printing {until:?}: {printed}");
            }
            printed.push_str(&line);
        }
        let port = printed
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {printed}"));
        RunningBinary {
            child,
            printed,
            port,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_binary_requires_a_token_beyond_loopback_and_prints_one_it_made() {
    let dir = tempfile::tempdir().unwrap();

    // Every address: a fresh 256-bit token, printed in the address to open.
    let open = RunningBinary::start(dir.path(), &["--host", "0.0.0.0"], &[], "127.0.0.1:");
    let token = open
        .printed
        .split("?token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no token printed: {}", open.printed))
        .to_string();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(get(open.addr(), "/api/runs", &[]).status, 401);
    let bearer = format!("Bearer {token}");
    assert_eq!(
        get(open.addr(), "/api/runs", &[("Authorization", &bearer)]).status,
        200
    );

    // Loopback with a token from the environment: enforced, and never printed.
    let given = "given-token-from-the-environment";
    let quiet = RunningBinary::start(
        dir.path(),
        &[],
        &[("DIFFIT_SERVER_TOKEN", given)],
        "access token required",
    );
    assert!(!quiet.printed.contains(given), "{}", quiet.printed);
    assert_eq!(get(quiet.addr(), "/", &[]).status, 401);
    let bearer = format!("Bearer {given}");
    assert_eq!(
        get(quiet.addr(), "/api/runs", &[("Authorization", &bearer)]).status,
        200
    );

    // Loopback without one stays open.
    let plain = RunningBinary::start(dir.path(), &[], &[], "listening on");
    assert!(!plain.printed.contains("token"), "{}", plain.printed);
    assert_eq!(get(plain.addr(), "/api/runs", &[]).status, 200);

    // A token too short to be a secret is refused at start.
    let refused = Command::new(env!("CARGO_BIN_EXE_diffit-server"))
        .args(["--port", "0", "--token", "short"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("at least 16 characters"), "{message}");
}
