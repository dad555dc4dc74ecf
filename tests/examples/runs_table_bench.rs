//! The runs view with many runs, for `make bench`: serves two checkpoints dirs (a small one of
//! more than a page, and
//! a large one, `server/examples/gen_runs`) with the real server and measures, in headless
//! Chromium and by the page's own clock, alternating the two dirs each round: time from
//! navigation to the first page of rows, and the latency of a search, of clearing it, of a sort
//! and of the next page (each from the input event until the table shows the new rows, one
//! animation frame included). Prints `BENCH {json}` lines; asserts only that the page answered.
//!
//! `cargo run -p e2e --example runs_table_bench -- DIFFIT_SERVER SMALL_DIR LARGE_DIR`
//! (env BENCH_ROUNDS, default 5)
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use support::{Browser, Server};

const WAIT: Duration = Duration::from_secs(120);

/// Runs `action` in the page and resolves, with the ms it took, once the page-info line has
/// changed and the table holds rows again, after the next animation frame.
const TIMED: &str = r#"
const [action, arg] = [arguments[0], arguments[1]];
const done = arguments[arguments.length - 1];
const info = () => document.querySelector('[data-page-info]')?.textContent ?? '';
const first = () => document.querySelector('tr[data-run]')?.dataset.run ?? '';
const before = [info(), first()];
const t0 = performance.now();
const changed = () => (info() !== before[0] || first() !== before[1]) && first() !== '';
const observer = new MutationObserver(() => {
  if (changed()) { observer.disconnect(); requestAnimationFrame(() => done(performance.now() - t0)); }
});
observer.observe(document.body, { subtree: true, childList: true, characterData: true });
if (action === 'search') {
  const s = document.querySelector('input[data-search]');
  s.value = arg;
  s.dispatchEvent(new Event('input', { bubbles: true }));
  s.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
} else {
  document.querySelector(arg).click();
}
"#;

async fn timed(browser: &Browser, action: &str, arg: &str) -> f64 {
    let ms = browser
        .client
        .execute_async(TIMED, vec![json!(action), json!(arg)])
        .await
        .expect("timed action");
    ms.as_f64().expect("ms")
}

/// One round on one dir: a fresh page, then each interaction once.
async fn round(server: &Server, runs: usize) -> Value {
    let browser = Browser::start().await;
    browser
        .client
        .goto(&server.url)
        .await
        .expect("open the dashboard");
    let mut first_rows = Value::Null;
    let deadline = std::time::Instant::now() + WAIT;
    while first_rows.is_null() {
        first_rows = browser
            .client
            .execute(
                "return document.querySelectorAll('tr[data-run]').length >= Math.min(100, arguments[0]) ? performance.now() : null;",
                vec![json!(runs)],
            )
            .await
            .expect("poll");
        assert!(
            std::time::Instant::now() < deadline,
            "the table never showed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let search_ms = timed(&browser, "search", "lr<3e-4 tag:sweep").await;
    let clear_ms = timed(&browser, "search", "").await;
    let sort_ms = timed(
        &browser,
        "click",
        r#"th[data-sort="training.learning_rate"]"#,
    )
    .await;
    let next_ms = timed(&browser, "click", r#"button[data-action="next-page"]"#).await;
    json!({
        "first_rows_ms": first_rows.as_f64().unwrap_or(f64::NAN),
        "search_ms": search_ms,
        "clear_ms": clear_ms,
        "sort_ms": sort_ms,
        "next_page_ms": next_ms,
    })
}

fn run_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("list runs")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("run_"))
        .count()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        args.len() == 3,
        "usage: runs_table_bench DIFFIT_SERVER SMALL_DIR LARGE_DIR"
    );
    let server_bin = PathBuf::from(&args[0]);
    let dirs = [PathBuf::from(&args[1]), PathBuf::from(&args[2])];
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let servers: Vec<(Server, usize)> = dirs
        .iter()
        .map(|d| (Server::start(&server_bin, d), run_count(d)))
        .collect();
    for round_no in 1..=rounds {
        for (server, runs) in &servers {
            let mut line = round(server, *runs).await;
            line["kind"] = json!("runs_table");
            line["runs"] = json!(runs);
            line["round"] = json!(round_no);
            println!("BENCH {line}");
        }
    }
}
