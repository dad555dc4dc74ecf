//! Browser sampling speed for `make bench`: serves a checkpoints dir with the real server, opens
//! the dashboard's sample view in headless Chromium and reads the page's own timings. Prints
//! `BENCH {json}` lines; asserts nothing.
//!
//! `cargo run -p e2e --example browser_bench -- DIFFIT_SERVER CHECKPOINTS_DIR RUN STEPS`
//!
//! 1. Click → finished image with the page's defaults (count 1, base shown side by side), from a
//!    fresh browser profile: download, fuse, sample, draw.
//! 2. ms per DDIM step of one image through base + LoRA fused (no side-by-side base), the same
//!    work as the native `bench_sample`, after a warm-up run in the same page; with the page's
//!    worker thread count and its longest stall meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

#[path = "../support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::Locator;
use serde_json::{json, Value};
use support::{Browser, Server};

async fn set_compare(browser: &Browser, on: bool) {
    browser
        .client
        .execute(
            r#"const c = document.querySelector('input[data-field="compare-base"]');
               if (c.checked !== arguments[0]) { c.click(); }"#,
            vec![Value::Bool(on)],
        )
        .await
        .expect("set compare");
}

/// The page's figures of one run.
struct Figures {
    click_ms: f64,
    step_ms: f64,
    threads: f64,
    stall_ms: f64,
}

/// Clicks Sample, waits for the image, returns the page's figures.
async fn sample(browser: &Browser) -> Figures {
    browser
        .client
        .execute(
            "document.querySelector('canvas[data-sample=\"lora\"]').dataset.state = '';",
            vec![],
        )
        .await
        .expect("reset state");
    browser
        .client
        .find(Locator::Css(r#"button[data-action="sample"]"#))
        .await
        .expect("sample button")
        .click()
        .await
        .expect("click");
    browser
        .wait_until(
            r#"document.querySelector('canvas[data-sample="lora"]').dataset.state === 'done'
               || document.querySelector('[data-error]') !== null"#,
            Duration::from_secs(600),
        )
        .await;
    assert_eq!(
        browser.count("[data-error]").await,
        0,
        "sampling failed in the page"
    );
    let stats = browser
        .wait_for(r#"[data-field="stats"]"#, Duration::from_secs(10))
        .await;
    let number = |v: Option<String>| v.and_then(|s| s.parse::<f64>().ok()).unwrap_or(f64::NAN);
    Figures {
        click_ms: number(stats.attr("data-total-ms").await.expect("attr")),
        step_ms: number(stats.attr("data-step-ms").await.expect("attr")),
        threads: number(stats.attr("data-threads").await.expect("attr")),
        stall_ms: number(stats.attr("data-stall-ms").await.expect("attr")),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        args.len() == 4,
        "usage: browser_bench DIFFIT_SERVER CHECKPOINTS_DIR RUN STEPS"
    );
    let (server_bin, checkpoints) = (PathBuf::from(&args[0]), PathBuf::from(&args[1]));
    let (run, steps) = (&args[2], &args[3]);
    let server = Server::start(&server_bin, &checkpoints);
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!(
            "{}/#/runs/{run}/sample?checkpoint=best",
            server.url
        ))
        .await
        .expect("open the sample view");
    browser
        .wait_for(r#"button[data-action="sample"]"#, Duration::from_secs(60))
        .await;
    browser.set_field("steps", steps).await;
    browser.set_field("count", "1").await;

    set_compare(&browser, true).await;
    let click = sample(&browser).await;
    browser.screenshot("bench-sample-small").await;
    println!(
        "BENCH {}",
        json!({"kind": "browser_click", "steps": steps, "click_to_image_ms": click.click_ms,
               "step_ms_base_and_lora": click.step_ms})
    );

    set_compare(&browser, false).await;
    let _warm = sample(&browser).await;
    let step = sample(&browser).await;
    println!(
        "BENCH {}",
        json!({"kind": "browser_step", "steps": steps, "step_ms": step.step_ms,
               "threads": step.threads as u64, "stall_ms": step.stall_ms})
    );
}
