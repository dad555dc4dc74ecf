//! The dashboard in headless Chromium over the real server: the runs table, a run's charts
//! (one point per logged epoch) and a run appearing live, without a reload.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fantoccini::Locator;
use format::layout::RunLayout;
use format::Metadata;
use support::{Browser, Server};

const WAIT: Duration = Duration::from_secs(30);

/// Trains a tiny run into `checkpoints` with the real trainer (`extra` flags added).
fn train(diffit: &Path, checkpoints: &Path, epochs: u32, extra: &[&str]) {
    let status = Command::new(diffit)
        .args([
            "train",
            "--preset",
            "tiny",
            "--epochs",
            &epochs.to_string(),
            "--checkpoints",
        ])
        .arg(checkpoints)
        .args(extra)
        .status()
        .expect("run diffit train");
    assert!(status.success(), "diffit train failed");
}

fn read_metadata(checkpoints: &Path, run: u32) -> Metadata {
    let path = RunLayout::new(checkpoints, run).metadata();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_table_charts_and_live_updates() {
    if !support::browser_available() {
        return;
    }
    let (diffit, server_bin) = support::workspace_binaries();
    let checkpoints = tempfile::tempdir().expect("checkpoints dir");
    train(&diffit, checkpoints.path(), 3, &[]);
    // A base-training run beside it (`base_training/run_001`), listed apart.
    let status = Command::new(&diffit)
        .args([
            "pretrain",
            "--preset",
            "tiny",
            "--epochs",
            "2",
            "--num-images",
            "32",
        ])
        .arg("--checkpoints")
        .arg(checkpoints.path())
        .status()
        .expect("run diffit pretrain");
    assert!(status.success(), "diffit pretrain failed");
    let base_meta: Metadata = serde_json::from_slice(
        &std::fs::read(
            checkpoints
                .path()
                .join("base_training/run_001/metadata.json"),
        )
        .expect("base run metadata"),
    )
    .expect("parse base run metadata");
    let meta = read_metadata(checkpoints.path(), 1);
    let logged_epochs = meta
        .metric_series()
        .iter()
        .filter(|e| e.metrics.contains_key("val_loss"))
        .count();
    assert!(
        logged_epochs >= 3,
        "the trainer logged {logged_epochs} epochs"
    );

    let server = Server::start(&server_bin, checkpoints.path());
    let browser = Browser::start().await;
    let client = &browser.client;
    client.goto(&server.url).await.expect("open the dashboard");

    // The runs table: one row, with its experiment and a best val_loss. Rows may be redrawn
    // by live updates, so the test reads them afresh instead of holding an element.
    browser.wait_for(r#"tr[data-run="1"]"#, WAIT).await;
    let best = meta
        .best_checkpoint
        .as_ref()
        .expect("a best checkpoint")
        .metrics["val_loss"];
    let expected = [meta.experiment_name.clone(), format!("{best:.4}")];
    browser
        .wait_until(
            &format!(
                r#"(() => {{ const t = document.querySelector('tr[data-run="1"]')?.textContent ?? '';
                     return {} .every(s => t.includes(s)); }})()"#,
                serde_json::to_string(&expected).expect("json")
            ),
            WAIT,
        )
        .await;
    assert_eq!(browser.count("tr[data-run]").await, 1);
    // The base run, in its own table: its experiment and best train_loss.
    let base_best = base_meta
        .best_checkpoint
        .as_ref()
        .expect("base best")
        .metrics["train_loss"];
    let expected = [
        "diffit_base_tiny".to_string(),
        format!("{base_best:.4}"),
        "train_loss".to_string(),
    ];
    browser
        .wait_until(
            &format!(
                r#"(() => {{ const t = document.querySelector('table.base-runs tr[data-base-run="1"]')?.textContent ?? '';
                     return {} .every(s => t.includes(s)); }})()"#,
                serde_json::to_string(&expected).expect("json")
            ),
            WAIT,
        )
        .await;
    browser.screenshot("runs-table").await;

    // Sorting by a column reorders without losing rows.
    client
        .find(Locator::Css(r#"th[data-sort="best_val_loss"]"#))
        .await
        .expect("sort header")
        .click()
        .await
        .expect("sort");
    assert_eq!(browser.count("tr[data-run]").await, 1);

    // The run view: a val_loss chart with one point per logged epoch, the best checkpoint marked.
    client
        .find(Locator::Css(r#"tr[data-run="1"]"#))
        .await
        .expect("row 1")
        .click()
        .await
        .expect("open run 1");
    browser
        .wait_for(r#"svg[data-chart="val_loss"] circle[data-point]"#, WAIT)
        .await;
    let points = browser
        .count(r#"svg[data-chart="val_loss"] circle[data-point]"#)
        .await;
    assert_eq!(points, logged_epochs, "one point per logged epoch");
    let best_epoch = meta.best_checkpoint.as_ref().expect("best").epoch;
    let marked = browser
        .wait_for("tr.best[data-checkpoint] [data-best]", WAIT)
        .await;
    let best_row = client
        .find(Locator::Css(&format!(
            r#"tr[data-checkpoint="epoch_{best_epoch:03}"]"#
        )))
        .await
        .expect("best epoch listed");
    assert!(best_row
        .attr("class")
        .await
        .expect("class")
        .unwrap_or_default()
        .contains("best"));
    drop(marked);
    assert!(
        browser.count("pre[data-config]").await == 1,
        "the config is shown"
    );

    // The steps logged during training, charted per step (every step the trainer kept), then
    // by epoch; the sample grids drawn after each epoch, in a strip, each a loaded image.
    let steps: usize = (1..=3)
        .map(|epoch| {
            let path = format::RunLayout::new(checkpoints.path(), 1).step_log(epoch);
            let log: format::logs::StepLog =
                serde_json::from_slice(&std::fs::read(&path).expect("step log")).expect("parse");
            log.steps.len()
        })
        .sum();
    browser
        .wait_for(
            r#"svg[data-chart="train_loss_step"] circle[data-point]"#,
            WAIT,
        )
        .await;
    assert_eq!(
        browser
            .count(r#"svg[data-chart="train_loss_step"] circle[data-point]"#)
            .await,
        steps,
        "one point per logged step"
    );
    client
        .find(Locator::Css(r#"input[data-field="axis-epoch"]"#))
        .await
        .expect("axis toggle")
        .click()
        .await
        .expect("click");
    browser
        .wait_until(
            r#"(() => { const xs = [...document.querySelectorAll('svg[data-chart="train_loss_step"] circle[data-point]')].map(c => Number(c.dataset.x));
                 return xs.length > 0 && Math.max(...xs) === 3 && Math.min(...xs) > 0; })()"#,
            WAIT,
        )
        .await;
    browser
        .wait_until(
            r#"(() => { const imgs = [...document.querySelectorAll('[data-sample-strip] figure[data-sample-epoch] img')];
                 return imgs.length === 3 && imgs.every(i => i.complete && i.naturalWidth > 0); })()"#,
            WAIT,
        )
        .await;
    browser.screenshot("run-steps-and-samples").await;

    // Log scale and smoothing redraw the same points.
    client
        .find(Locator::Css(r#"input[data-field="log-scale"]"#))
        .await
        .expect("log toggle")
        .click()
        .await
        .expect("click");
    client
        .execute(
            r#"const s = document.querySelector('input[data-field="smoothing"]');
               s.value = '0.6'; s.dispatchEvent(new Event('input', { bubbles: true }));"#,
            vec![],
        )
        .await
        .expect("set smoothing");
    browser
        .wait_for(r#"svg[data-chart="val_loss"] path.smooth"#, WAIT)
        .await;
    assert_eq!(
        browser
            .count(r#"svg[data-chart="val_loss"] circle[data-point]"#)
            .await,
        logged_epochs
    );
    browser.screenshot("run-view").await;

    // A new run appears in the open table without a reload.
    client
        .goto(&format!("{}/#/", server.url))
        .await
        .expect("back to runs");
    browser.wait_for(r#"tr[data-run="1"]"#, WAIT).await;
    client
        .execute("window.__same_page = true;", vec![])
        .await
        .expect("mark the page");
    // The new run fine-tunes base run 1's best epoch.
    train(
        &diffit,
        checkpoints.path(),
        1,
        &["--base-run", "1", "--base-checkpoint", "best"],
    );
    browser
        .wait_for(r#"tr[data-run="2"]"#, Duration::from_secs(60))
        .await;
    let same_page = client
        .execute("return window.__same_page === true;", vec![])
        .await
        .expect("check mark");
    assert_eq!(
        same_page,
        serde_json::Value::Bool(true),
        "the row came without a reload"
    );
    browser.screenshot("runs-live-update").await;

    // Overlaying both runs draws both series.
    client
        .goto(&format!("{}/#/runs/1?with=2", server.url))
        .await
        .expect("overlay");
    browser
        .wait_for(
            r#"svg[data-chart="val_loss"] g[data-series="run 2"] circle[data-point]"#,
            WAIT,
        )
        .await;
    let overlaid = browser
        .count(r#"svg[data-chart="val_loss"] circle[data-point]"#)
        .await;
    let second_meta = read_metadata(checkpoints.path(), 2);
    let second = second_meta.metric_series().len();
    assert_eq!(overlaid, logged_epochs + second);
    browser.screenshot("run-overlay").await;

    // Run 2's page names the base run and checkpoint its base came from.
    let lineage = second_meta
        .base_lineage
        .expect("run 2 records its base's lineage");
    client
        .goto(&format!("{}/#/runs/2", server.url))
        .await
        .expect("open run 2");
    let expected = [
        "base-training run 1".to_string(),
        format!("epoch {}", lineage.epoch),
        lineage.checksum.clone(),
    ];
    browser
        .wait_until(
            &format!(
                r#"(() => {{ const t = document.querySelector('[data-field="base-lineage"]')?.textContent ?? '';
                     return {} .every(s => t.includes(s)); }})()"#,
                serde_json::to_string(&expected).expect("json")
            ),
            WAIT,
        )
        .await;
    browser.screenshot("run-lineage").await;

    // The runs view's search: tags and a note set by `diffit runs tag/note` (while the server
    // runs), a column for each config value the runs differ in, a bad search explained.
    for args in [
        &["runs", "tag", "2", "sweep"][..],
        &["runs", "note", "2", "fine-tuned on base run 1"][..],
    ] {
        let status = Command::new(&diffit)
            .args(args)
            .arg("--checkpoints")
            .arg(checkpoints.path())
            .status()
            .expect("run diffit runs");
        assert!(status.success(), "diffit {args:?} failed");
    }
    client
        .goto(&format!("{}/#/", server.url))
        .await
        .expect("back to runs");
    browser
        .wait_for(r#"tr[data-run="2"] .tag[data-tag="sweep"]"#, WAIT)
        .await;
    browser
        .wait_for(r#"th.varying[data-sort="training.epochs"]"#, WAIT)
        .await;
    let epochs_cells = client
        .execute(
            r#"return [...document.querySelectorAll('td[data-param="training.epochs"]')].map(td => td.textContent);"#,
            vec![],
        )
        .await
        .expect("read cells");
    assert_eq!(epochs_cells, serde_json::json!(["1", "3"]), "newest first");
    let search = |text: &'static str| {
        let client = client.clone();
        async move {
            client
                .execute(
                    r#"const s = document.querySelector('input[data-search]');
                       s.value = arguments[0]; s.dispatchEvent(new Event('input', { bubbles: true }));"#,
                    vec![serde_json::json!(text)],
                )
                .await
                .expect("type a search");
        }
    };
    let rows_are = |runs: &'static str| {
        format!(
            r#"[...document.querySelectorAll('tr[data-run]')].map(r => r.dataset.run).join() === '{runs}'"#
        )
    };
    search("tag:sweep").await;
    browser.wait_until(&rows_are("2"), WAIT).await;
    // The config columns stay while a search narrows the rows.
    browser
        .wait_for(r#"th.varying[data-sort="training.epochs"]"#, WAIT)
        .await;
    browser.screenshot("runs-search").await;
    search("epochs>=3 -tag:sweep").await;
    browser.wait_until(&rows_are("1"), WAIT).await;
    search("momentum>0.9").await;
    let error = browser.wait_for("[data-error]", WAIT).await;
    let text = error.text().await.expect("error text");
    assert!(text.contains("momentum"), "{text}");
    search("").await;
    browser.wait_until(&rows_are("2,1"), WAIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_shown_in_the_page() {
    if !support::browser_available() {
        return;
    }
    let (_, server_bin) = support::workspace_binaries();
    let checkpoints = tempfile::tempdir().expect("checkpoints dir");
    let server = Server::start(&server_bin, checkpoints.path());
    let browser = Browser::start().await;
    // A run that does not exist: an error box, not a blank page.
    browser
        .client
        .goto(&format!("{}/#/runs/42", server.url))
        .await
        .expect("open a missing run");
    let error = browser.wait_for("[data-error]", WAIT).await;
    let text = error.text().await.expect("error text");
    assert!(!text.trim().is_empty());
    // No runs at all: the table says how to make one.
    browser
        .client
        .goto(&format!("{}/#/", server.url))
        .await
        .expect("runs");
    browser.wait_for("[data-empty]", WAIT).await;
    browser.screenshot("errors-missing-run").await;
}
