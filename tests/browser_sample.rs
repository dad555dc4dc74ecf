//! Sampling in the browser gives the native sampler's image: a tiny run trained by the real
//! trainer, sampled by `diffit sample --n 1` and by the dashboard (LoRA fused in wasm) with the
//! same checkpoint, seed and steps; the pixels agree within 1/255 on average and 8/255 at most.
//! Also prints the browser's time per step next to the native one. The page is cross-origin
//! isolated and samples on its pool of Web Workers (wasm threads), answers script calls while
//! they work, and a Cancel mid-run stops the run early and leaves the next one unchanged. A labelled run of the
//! published architecture sampled with a class and a guidance scale (`--class --cfg-scale`)
//! agrees the same way, and the page offers its classes by name.
//!
//! The comparison grid samples the run's epochs from the same seed: the best epoch's cell is the
//! native image too, and the epoch slider scrubs back to a cell from the page's cache.
//!
//! The same page then checks the base model cache: a reload takes the base from Cache Storage,
//! and a cached copy damaged in place (same size, valid header, garbage weights) is rejected by
//! its checksum, downloaded again and replaced, with the same image and a notice in the page;
//! and when the server's file is damaged as well, the page names it and samples nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use format::layout::RunLayout;
use serde_json::{json, Value};
use support::{Browser, Server};
use trainer::train::config::Preset;
use trainer::train::pretrain::{pretrain, save_base, PretrainConfig};
use trainer::train::sample::GRID_GAP;

const SEED: u64 = 7;
const STEPS: usize = 12;
const CHECKPOINT: &str = "best";
/// The app's Cache Storage bucket for base models (app/src/base_cache.rs).
const BASE_CACHE: &str = "diffit-base-models";

fn run(command: &mut Command, what: &str) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(status.success(), "{what} failed: {status}");
}

/// Decodes the native PNG into RGB rows; returns (width, height, pixels).
fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let image = image::open(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .to_rgb8();
    (image.width(), image.height(), image.into_raw())
}

/// Checks the browser's canvas (`width`×`height` RGBA) against the native one-image PNG: the
/// same pixels within 1/255 on average and 8/255 at most. The PNG is a one-image grid: the
/// image scaled up by a whole factor, inside a white border of GRID_GAP pixels.
fn assert_matches_native(native_png: &Path, width: u32, height: u32, rgba: &[u8], what: &str) {
    let (png_w, png_h, rgb) = read_png(native_png);
    let gap = GRID_GAP as u32;
    let (cell_w, cell_h) = (png_w.saturating_sub(2 * gap), png_h.saturating_sub(2 * gap));
    assert!(
        width > 0 && height > 0 && cell_w % width == 0 && cell_h % height == 0,
        "canvas {width}x{height} vs PNG {png_w}x{png_h} (border {gap})"
    );
    let scale = cell_w / width;
    assert_eq!(cell_h / height, scale, "square scaling");
    let (mut sum, mut max, mut count) = (0u64, 0u8, 0u64);
    for y in 0..height {
        for x in 0..width {
            let canvas_at = ((y * width + x) * 4) as usize;
            let png_at = (((gap + y * scale) * png_w + gap + x * scale) * 3) as usize;
            for c in 0..3 {
                let d = rgba[canvas_at + c].abs_diff(rgb[png_at + c]);
                sum += d as u64;
                max = max.max(d);
                count += 1;
            }
        }
    }
    let mean = sum as f64 / count as f64;
    println!("{what}: mean abs diff {mean:.4}/255, max {max}/255 over {count} values");
    assert!(mean <= 1.0, "{what}: mean abs diff {mean}/255 > 1/255");
    assert!(max <= 8, "{what}: max abs diff {max}/255 > 8/255");
}

/// Clicks the form's button `data-action="{action}"`.
async fn press(browser: &Browser, action: &str) {
    browser
        .client
        .find(Locator::Css(&format!(r#"button[data-action="{action}"]"#)))
        .await
        .unwrap_or_else(|e| panic!("{action} button: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {action}: {e}"));
}

/// Clicks Sample and waits for the LoRA canvas to finish (`Ok`) or the page to show an error
/// (`Err` with its text).
async fn click_sample(browser: &Browser) -> Result<(), String> {
    press(browser, "sample").await;
    browser
        .wait_until(
            r#"document.querySelector('canvas[data-sample="lora"]').dataset.state === 'done'
               || document.querySelector('[data-error]') !== null"#,
            Duration::from_secs(300),
        )
        .await;
    if browser.count("[data-error]").await == 0 {
        return Ok(());
    }
    Err(browser
        .client
        .find(Locator::Css("[data-error]"))
        .await
        .expect("error")
        .text()
        .await
        .expect("text"))
}

/// Clicks Sample and waits for the LoRA canvas to finish; returns its RGBA pixels and size.
async fn sample_in_browser(browser: &Browser) -> (u32, u32, Vec<u8>) {
    if let Err(text) = click_sample(browser).await {
        let shot = browser.screenshot("sample-error").await;
        panic!(
            "sampling failed in the page: {text} (screenshot {})",
            shot.display()
        );
    }
    let pixels = browser
        .client
        .execute(
            r#"const c = document.querySelector('canvas[data-sample="lora"]');
               const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
               return [c.width, c.height, Array.from(d)];"#,
            vec![],
        )
        .await
        .expect("read the canvas");
    let Value::Array(parts) = pixels else {
        panic!("unexpected canvas answer {pixels}")
    };
    let width = parts[0].as_u64().expect("width") as u32;
    let height = parts[1].as_u64().expect("height") as u32;
    let data = parts[2]
        .as_array()
        .expect("data")
        .iter()
        .map(|v| v.as_u64().expect("byte") as u8)
        .collect();
    (width, height, data)
}

/// Sets an `<input>`'s value and fires its `input` event, as dragging a slider does.
async fn client_input(browser: &Browser, css: &str, value: &str) {
    browser
        .client
        .execute(
            r#"const i = document.querySelector(arguments[0]); i.value = arguments[1];
               i.dispatchEvent(new Event('input', { bubbles: true }));"#,
            vec![json!(css), json!(value)],
        )
        .await
        .expect("set the input");
}

/// Every entry of the base model cache: (URL path, bytes).
async fn cached_bases(browser: &Browser) -> Vec<(String, Vec<u8>)> {
    let answer = browser
        .client
        .execute_async(
            r#"const [name, done] = arguments;
               (async () => {
                   const cache = await caches.open(name);
                   const entries = [];
                   for (const request of await cache.keys()) {
                       const body = await (await cache.match(request)).arrayBuffer();
                       entries.push([new URL(request.url).pathname, Array.from(new Uint8Array(body))]);
                   }
                   return entries;
               })().then(done, e => done(String(e)));"#,
            vec![json!(BASE_CACHE)],
        )
        .await
        .expect("read the base model cache");
    let Value::Array(entries) = answer else {
        panic!("reading the base model cache failed in the page: {answer}")
    };
    entries
        .iter()
        .map(|entry| {
            let key = entry[0].as_str().expect("key").to_string();
            let bytes = entry[1]
                .as_array()
                .expect("bytes")
                .iter()
                .map(|v| v.as_u64().expect("byte") as u8)
                .collect();
            (key, bytes)
        })
        .collect()
}

/// Overwrites the tensor data of the cached entry `key` with garbage in place: same size and a
/// valid safetensors header, so only a checksum can tell. Returns the entry's new size.
async fn damage_cached_base(browser: &Browser, key: &str) -> u64 {
    let answer = browser
        .client
        .execute_async(
            r#"const [name, key, done] = arguments;
               (async () => {
                   const cache = await caches.open(name);
                   const found = await cache.match(key);
                   if (!found) return 'no cache entry ' + key;
                   const bytes = new Uint8Array(await found.arrayBuffer());
                   const data = 8 + Number(new DataView(bytes.buffer).getBigUint64(0, true));
                   for (let i = data; i < bytes.length; i++) bytes[i] = (i * 131 + 17) & 255;
                   await cache.put(key, new Response(bytes));
                   return (await (await cache.match(key)).arrayBuffer()).byteLength;
               })().then(done, e => done(String(e)));"#,
            vec![json!(BASE_CACHE), json!(key)],
        )
        .await
        .expect("damage the cached base");
    answer
        .as_u64()
        .unwrap_or_else(|| panic!("damaging the cached base failed in the page: {answer}"))
}

/// The last run's figures: (ms from click to image, ms per step, where the base came from,
/// ms spent checking the base's checksum).
async fn stats(browser: &Browser) -> (f64, f64, String, f64) {
    let el = browser
        .wait_for(r#"[data-field="stats"]"#, Duration::from_secs(10))
        .await;
    let number = |v: Option<String>| v.and_then(|s| s.parse::<f64>().ok()).unwrap_or(f64::NAN);
    let total = number(el.attr("data-total-ms").await.expect("attr"));
    let step = number(el.attr("data-step-ms").await.expect("attr"));
    let verify = number(el.attr("data-verify-ms").await.expect("attr"));
    let source = el
        .attr("data-base-source")
        .await
        .expect("attr")
        .unwrap_or_default();
    (total, step, source, verify)
}

/// The page is cross-origin isolated (the server's headers), so the sampler ran on the pool of
/// Web Workers sharing the module's memory, not on the page's thread.
async fn assert_sampled_on_workers(browser: &Browser) {
    let isolated = browser
        .client
        .execute("return self.crossOriginIsolated === true", vec![])
        .await
        .expect("read crossOriginIsolated");
    assert_eq!(
        isolated,
        Value::Bool(true),
        "the dashboard is cross-origin isolated"
    );
    let el = browser
        .wait_for(r#"[data-field="stats"]"#, Duration::from_secs(10))
        .await;
    let on_worker = el.attr("data-on-worker").await.expect("attr");
    let threads: usize = el
        .attr("data-threads")
        .await
        .expect("attr")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let stall: f64 = el
        .attr("data-stall-ms")
        .await
        .expect("attr")
        .and_then(|t| t.parse().ok())
        .unwrap_or(f64::NAN);
    println!("browser: sampled on {threads} worker threads, the page's timers at most {stall:.0} ms late meanwhile");
    assert_eq!(
        on_worker.as_deref(),
        Some("true"),
        "sampling ran on a worker"
    );
    assert!(threads >= 1, "the pool has a thread");
    assert!(stall.is_finite(), "the page measured its stalls");
}

/// A long run (many steps, several images) cancelled once it is under way: the page answers
/// script calls within a generous bound while the workers sample (its thread is free), the run
/// stops early and says so, and the next run still gives the image of before.
async fn cancel_mid_run_and_sample_again(browser: &Browser, expected: &[u8]) {
    browser.set_field("steps", "1000").await;
    browser.set_field("count", "8").await;
    press(browser, "sample").await;
    browser
        .wait_until(
            r#"document.querySelector('progress[data-field="progress"]').value >= 2"#,
            Duration::from_secs(120),
        )
        .await;
    // Round trips to the page's thread while it samples: each waits for whatever the thread
    // is busy with, as a click would.
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let asked = Instant::now();
        browser
            .client
            .execute("return performance.now()", vec![])
            .await
            .expect("script round trip");
        worst = worst.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!("browser: page answered within {worst:?} (worst of 20 round trips) while sampling");
    assert!(
        worst < Duration::from_secs(2),
        "the page stayed responsive while the workers sampled: {worst:?}"
    );
    press(browser, "cancel").await;
    browser
        .wait_until(
            r#"document.querySelector('canvas[data-sample="lora"]').dataset.state !== 'running'"#,
            Duration::from_secs(60),
        )
        .await;
    let answer = browser
        .client
        .execute(
            r#"const p = document.querySelector('progress[data-field="progress"]');
               return [document.querySelector('canvas[data-sample="lora"]').dataset.state,
                       p.value, p.max,
                       document.querySelector('[data-field="status"]').textContent];"#,
            vec![],
        )
        .await
        .expect("read the page");
    browser.screenshot("sample-browser-cancelled").await;
    let Value::Array(parts) = answer else {
        panic!("unexpected answer {answer}")
    };
    assert_eq!(
        parts[0],
        json!("cancelled"),
        "the run stopped as cancelled: {parts:?}"
    );
    let (done, total) = (
        parts[1].as_f64().unwrap_or(0.0),
        parts[2].as_f64().unwrap_or(0.0),
    );
    assert!(
        done < total,
        "it stopped before its last step: {done} of {total}"
    );
    assert_eq!(parts[3], json!("cancelled"), "the page says so");
    println!("browser: cancelled at step {done} of {total}");

    browser.set_field("steps", &STEPS.to_string()).await;
    browser.set_field("count", "1").await;
    let (_, _, after) = sample_in_browser(browser).await;
    assert_eq!(
        after, expected,
        "after a cancel the same seed gives the same image"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_sample_matches_native_sampler() {
    if !support::browser_available() {
        return;
    }
    let (diffit, server_bin) = support::workspace_binaries();
    let checkpoints = tempfile::tempdir().expect("checkpoints dir");
    run(
        Command::new(&diffit)
            .args([
                "train",
                "--preset",
                "tiny",
                "--epochs",
                "2",
                "--checkpoints",
            ])
            .arg(checkpoints.path()),
        "diffit train",
    );

    let native_png = support::artifacts_dir().join("sample-native.png");
    let started = Instant::now();
    run(
        Command::new(&diffit)
            .args([
                "sample",
                "--run-number",
                "1",
                "--checkpoint",
                CHECKPOINT,
                "--n",
                "1",
            ])
            .args([
                "--seed",
                &SEED.to_string(),
                "--steps",
                &STEPS.to_string(),
                "--out",
            ])
            .arg(&native_png)
            .arg("--checkpoints")
            .arg(checkpoints.path()),
        "diffit sample",
    );
    println!(
        "native `diffit sample --n 1 --steps {STEPS}` (process, load and all): {:?}",
        started.elapsed()
    );

    let server = Server::start(&server_bin, checkpoints.path());
    let browser = Browser::start().await;
    let page = format!("{}/#/runs/1/sample?checkpoint={CHECKPOINT}", server.url);
    browser
        .client
        .goto(&page)
        .await
        .expect("open the sample view");
    browser
        .wait_for(r#"button[data-action="sample"]"#, Duration::from_secs(30))
        .await;
    browser.set_field("seed", &SEED.to_string()).await;
    browser.set_field("steps", &STEPS.to_string()).await;
    browser.set_field("count", "1").await;
    assert_eq!(
        browser.count(r#"[data-field="class"]"#).await,
        0,
        "a model without labels has no class selector"
    );

    let (width, height, rgba) = sample_in_browser(&browser).await;
    let (total_ms, step_ms, source, _) = stats(&browser).await;
    println!("browser: {total_ms:.0} ms from click to image, {step_ms:.1} ms per step (base and LoRA), base from {source}");
    assert_eq!(source, "network", "a fresh profile downloads the base");
    browser.screenshot("sample-browser").await;
    assert_sampled_on_workers(&browser).await;

    assert_matches_native(&native_png, width, height, &rgba, "browser vs native");

    // After a reload the base comes from the browser's cache, not the network.
    browser.client.refresh().await.expect("reload");
    browser
        .wait_for(r#"button[data-action="sample"]"#, Duration::from_secs(30))
        .await;
    browser.set_field("seed", &SEED.to_string()).await;
    browser.set_field("steps", &STEPS.to_string()).await;
    let (_, _, again) = sample_in_browser(&browser).await;
    let (total_ms, step_ms, source, verify_ms) = stats(&browser).await;
    println!("browser after reload: {total_ms:.0} ms from click to image, {step_ms:.1} ms per step, base from {source}, its checksum checked in {verify_ms:.1} ms");
    assert_eq!(
        source, "cache",
        "the base model is cached by checksum across reloads"
    );
    assert_eq!(again, rgba, "same seed, same image");
    browser.screenshot("sample-browser-cached").await;

    cancel_mid_run_and_sample_again(&browser, &rgba).await;

    // The comparison grid: run 1's epochs, each sampled in the page from the same seed; the best
    // epoch's cell is the native image, and the slider scrubs to a cell already sampled, shown
    // from the page's cache without sampling again.
    let best_epoch = support::read_metadata(checkpoints.path(), 1)
        .best_checkpoint
        .expect("a best checkpoint")
        .epoch;
    browser
        .client
        .goto(&format!("{}/#/compare?runs=1", server.url))
        .await
        .expect("open the comparison");
    browser
        .wait_for(r#"input[data-field="seed"]"#, Duration::from_secs(30))
        .await;
    browser.set_field("seed", &SEED.to_string()).await;
    browser.set_field("steps", &STEPS.to_string()).await;
    let all_done = r#"(() => {
        const cells = [...document.querySelectorAll('td[data-compare-cell][data-run="1"]')];
        return cells.length === 4 && cells.every(c => c.querySelector('img[data-state="done"]'))
            && document.querySelector('[data-field="compare-status"]').textContent === ''; })()"#;
    browser.wait_until(all_done, Duration::from_secs(300)).await;
    assert_eq!(browser.count("[data-error]").await, 0, "the grid sampled");
    let cell_pixels = |css: String| {
        let client = browser.client.clone();
        async move {
            let answer = client
                .execute_async(
                    r#"const img = document.querySelector(arguments[0]);
                       const done = arguments[arguments.length - 1];
                       const read = () => {
                         const c = document.createElement('canvas');
                         c.width = img.naturalWidth; c.height = img.naturalHeight;
                         const g = c.getContext('2d'); g.drawImage(img, 0, 0);
                         done([c.width, c.height, Array.from(g.getImageData(0, 0, c.width, c.height).data), img.src]);
                       };
                       img.complete ? read() : img.addEventListener('load', read);"#,
                    vec![json!(css)],
                )
                .await
                .expect("read a cell");
            let parts = answer.as_array().expect("cell answer").clone();
            let bytes: Vec<u8> = parts[2]
                .as_array()
                .expect("pixels")
                .iter()
                .map(|v| v.as_u64().expect("byte") as u8)
                .collect();
            (
                parts[0].as_u64().expect("w") as u32,
                parts[1].as_u64().expect("h") as u32,
                bytes,
                parts[3].as_str().expect("src").to_string(),
            )
        }
    };
    let cell = |epoch: &str| {
        format!(
            r#"td[data-compare-cell][data-run="1"][data-epoch="{epoch}"]:not([data-scrub]) img"#
        )
    };
    let (w, h, best_cell, _) = cell_pixels(cell(&best_epoch.to_string())).await;
    assert_matches_native(&native_png, w, h, &best_cell, "comparison cell vs native");
    let (_, _, epoch1, epoch1_src) = cell_pixels(cell("1")).await;
    let (_, _, epoch2, _) = cell_pixels(cell("2")).await;
    assert_ne!(
        epoch1, epoch2,
        "another epoch, another model, another image"
    );
    browser.screenshot("compare-grid").await;
    client_input(&browser, r#"input[data-field="scrub"]"#, "0").await;
    browser
        .wait_until(
            r#"document.querySelector('[data-field="scrub-epoch"]').textContent === 'epoch 1'"#,
            Duration::from_secs(10),
        )
        .await;
    let scrubbed = r#"td[data-compare-cell][data-run="1"][data-scrub] img[data-state="done"]"#;
    browser.wait_for(scrubbed, Duration::from_secs(10)).await;
    let (_, _, _, scrub_src) = cell_pixels(scrubbed.to_string()).await;
    assert_eq!(
        scrub_src, epoch1_src,
        "scrubbing back shows the cached image"
    );
    assert_eq!(
        browser
            .client
            .execute(
                r#"return document.querySelector('[data-field="compare-status"]').textContent;"#,
                vec![],
            )
            .await
            .expect("status"),
        json!(""),
        "nothing was sampled again"
    );
    browser
        .client
        .goto(&page)
        .await
        .expect("back to the sample view");
    browser
        .wait_for(r#"button[data-action="sample"]"#, Duration::from_secs(30))
        .await;

    // A cached copy damaged in place is rejected by its checksum, downloaded again and replaced.
    let meta = support::read_metadata(checkpoints.path(), 1);
    let record = meta.base_model.as_ref().expect("metadata records the base");
    let base_file = RunLayout::new(checkpoints.path(), 1).resolve(&record.path);
    let served =
        std::fs::read(&base_file).unwrap_or_else(|e| panic!("read {}: {e}", base_file.display()));
    assert_eq!(
        format!("blake3:{}", blake3::hash(&served).to_hex()),
        record.checksum,
        "the metadata records the base file's checksum"
    );
    let key = format!("/__cache/base-model/{}", record.checksum.replace(':', "-"));
    let entries = cached_bases(&browser).await;
    assert_eq!(
        entries.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        [key.as_str()],
        "one cache entry, named by the base's checksum"
    );
    assert_eq!(entries[0].1, served, "the cache holds the served base");
    let damaged_size = damage_cached_base(&browser, &key).await;
    assert_eq!(damaged_size, record.size, "the damage keeps the size");
    let entries = cached_bases(&browser).await;
    assert_ne!(entries[0].1, served, "the cached copy is damaged");

    browser.client.refresh().await.expect("reload");
    browser
        .wait_for(r#"button[data-action="sample"]"#, Duration::from_secs(30))
        .await;
    browser.set_field("seed", &SEED.to_string()).await;
    browser.set_field("steps", &STEPS.to_string()).await;
    let (_, _, refetched) = sample_in_browser(&browser).await;
    let (total_ms, _, source, verify_ms) = stats(&browser).await;
    let line = browser
        .wait_for(r#"[data-field="stats"]"#, Duration::from_secs(10))
        .await
        .text()
        .await
        .expect("stats text");
    println!(
        "browser with a damaged cache: {total_ms:.0} ms from click to image, base from {source}, \
         the download ({} bytes) checked in {verify_ms:.1} ms",
        record.size
    );
    browser.screenshot("sample-browser-refetched").await;
    assert_eq!(
        source, "refetched",
        "a cached base that fails its checksum is downloaded again (stats: {line})"
    );
    assert!(line.contains("refetched"), "the stats line says so: {line}");
    let notice = browser
        .wait_for(r#"[data-field="base-refetched"]"#, Duration::from_secs(10))
        .await
        .text()
        .await
        .expect("notice text");
    assert!(
        notice.contains("failed its checksum"),
        "the page explains the refetch: {notice}"
    );
    assert_eq!(refetched, rgba, "the refetched base gives the same image");
    let entries = cached_bases(&browser).await;
    assert_eq!(entries.len(), 1, "still one cache entry");
    assert_eq!(entries[0].0, key);
    assert_eq!(
        entries[0].1, served,
        "the damaged cache entry was replaced by the served base"
    );

    // When the server's own file is damaged too, the fresh download fails its checksum: the page
    // names the file and samples nothing.
    let data_start = 8 + u64::from_le_bytes(served[..8].try_into().unwrap()) as usize;
    let mut garbage = served.clone();
    for (i, byte) in garbage.iter_mut().enumerate().skip(data_start) {
        *byte = (i * 131 + 17) as u8;
    }
    std::fs::write(&base_file, &garbage)
        .unwrap_or_else(|e| panic!("write {}: {e}", base_file.display()));
    damage_cached_base(&browser, &key).await;
    browser.client.refresh().await.expect("reload");
    browser
        .wait_for(r#"button[data-action="sample"]"#, Duration::from_secs(30))
        .await;
    let error = click_sample(&browser)
        .await
        .expect_err("a base that fails its checksum after a fresh download is not sampled");
    browser.screenshot("sample-browser-damaged-base").await;
    assert!(
        error.contains(&record.path) && error.contains("does not match the run's metadata"),
        "the error names the file: {error}"
    );
    assert!(
        cached_bases(&browser).await.is_empty(),
        "a damaged base is not cached"
    );
}

/// The class and guidance scale of the labelled check (a scale ≠ 1: both halves, conditional
/// and null class, in one batch).
const CLASS: &str = "conifer";
const CFG_SCALE: &str = "3";

#[tokio::test(flavor = "multi_thread")]
async fn guided_browser_sample_matches_native_sampler() {
    if !support::browser_available() {
        return;
    }
    let (diffit, server_bin) = support::workspace_binaries();
    let dir = tempfile::tempdir().expect("temp dir");
    let checkpoints = dir.path().join("checkpoints");

    // A labelled run of the published architecture, made quickly: a base pretrained for two
    // steps (enough for a non-zero head), then one epoch on 40 tree images (their species).
    let model = Preset::PublishedTiny.model_config();
    let pre = PretrainConfig {
        model: model.clone(),
        epochs: 1,
        num_images: 32,
        batch_size: 16,
        ..PretrainConfig::for_preset(Preset::PublishedTiny)
    };
    let tensors = pretrain(&pre, false, &Arc::new(AtomicBool::new(false))).expect("pretrain");
    let base = dir.path().join("base.safetensors");
    save_base(&base, &tensors, &model).expect("save the base");
    let yaml = dir.path().join("quick.yaml");
    std::fs::write(
        &yaml,
        "data:\n  num_images: 40\ntraining:\n  batch_size: 8\n  warmup_steps: 1\n",
    )
    .expect("write the config");
    run(
        Command::new(&diffit)
            .args(["train", "--preset", "published-tiny", "--epochs", "1"])
            .arg("--config")
            .arg(&yaml)
            .arg("--base")
            .arg(&base)
            .arg("--checkpoints")
            .arg(&checkpoints),
        "diffit train (published-tiny)",
    );

    let native = |out: &Path, guided: bool| {
        let mut command = Command::new(&diffit);
        command
            .args(["sample", "--run-number", "1", "--checkpoint", CHECKPOINT])
            .args(["--n", "1", "--seed", &SEED.to_string()])
            .args(["--steps", &STEPS.to_string()])
            .arg("--out")
            .arg(out)
            .arg("--checkpoints")
            .arg(&checkpoints);
        if guided {
            command.args(["--class", CLASS, "--cfg-scale", CFG_SCALE]);
        }
        run(&mut command, "diffit sample");
    };
    let guided_png = support::artifacts_dir().join("sample-native-guided.png");
    let unguided_png = dir.path().join("unguided.png");
    native(&guided_png, true);
    native(&unguided_png, false);
    assert_ne!(
        read_png(&guided_png).2,
        read_png(&unguided_png).2,
        "guidance changes the image"
    );

    let server = Server::start(&server_bin, &checkpoints);
    let browser = Browser::start().await;
    let page = format!("{}/#/runs/1/sample?checkpoint={CHECKPOINT}", server.url);
    browser
        .client
        .goto(&page)
        .await
        .expect("open the sample view");
    let select = browser
        .wait_for(r#"select[data-field="class"]"#, Duration::from_secs(30))
        .await;
    let names = select.text().await.expect("class names");
    for species in model::data::TREE_SPECIES {
        assert!(
            names.contains(species),
            "the selector names {species}: {names}"
        );
    }
    let label = model::data::TREE_SPECIES
        .iter()
        .position(|s| *s == CLASS)
        .expect("a tree species");
    select
        .select_by_value(&label.to_string())
        .await
        .expect("choose the class");
    browser.set_field("cfg-scale", CFG_SCALE).await;
    browser.set_field("seed", &SEED.to_string()).await;
    browser.set_field("steps", &STEPS.to_string()).await;
    browser.set_field("count", "1").await;

    let (width, height, rgba) = sample_in_browser(&browser).await;
    browser.screenshot("sample-browser-guided").await;
    assert_matches_native(
        &guided_png,
        width,
        height,
        &rgba,
        &format!("guided (class {CLASS}, scale {CFG_SCALE}) browser vs native"),
    );
}
