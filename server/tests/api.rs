//! The JSON API and checkpoint downloads against fixture runs: listing, detail, metrics,
//! ETag/304, ranges, caching headers, the weights-only view (also loaded by Python), static app.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

mod support;

use std::process::Command;

use format::tensors::{is_lora_tensor, meta_keys};
use format::{CheckpointName, RunStatus};
use safetensors::SafeTensors;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_runs_with_their_state() {
    let dir = tempfile::tempdir().unwrap();
    write_run(dir.path(), 1, 3, RunStatus::Finished);
    write_run(dir.path(), 2, 1, RunStatus::Running);
    std::fs::create_dir_all(dir.path().join("run_003")).unwrap();
    std::fs::create_dir_all(dir.path().join("not_a_run")).unwrap();
    let server = start(dir.path(), &dir.path().join("no-app")).await;

    let list = blocking(move || get(server.addr, "/api/runs", &[])).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.header("content-type"), Some("application/json"));
    let runs = list.json()["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert_eq!(runs[0]["run_number"], 1);
    assert_eq!(runs[0]["status"], "finished");
    assert_eq!(runs[0]["experiment_name"], "diffit_lora_trees");
    assert_eq!(runs[0]["checkpoints_count"], 3);
    assert_eq!(runs[0]["last_epoch"], 3);
    assert_eq!(runs[0]["best"]["epoch"], 1);
    assert_eq!(runs[0]["best"]["value"], 1.0);
    assert_eq!(runs[0]["base_val_loss"], 2.5);
    // Recorded as running, but nobody holds its lock: the writer is gone.
    assert_eq!(runs[1]["status"], "interrupted");
    assert_eq!(runs[1]["writer_active"], false);
    assert_eq!(runs[2]["status"], "broken");
    assert!(
        runs[2]["error"]
            .as_str()
            .unwrap()
            .contains("metadata.json is missing"),
        "{}",
        runs[2]
    );

    let etag = list.header("etag").unwrap().to_string();
    let again = blocking(move || get(server.addr, "/api/runs", &[("If-None-Match", &etag)])).await;
    assert_eq!(again.status, 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_means_running() {
    let dir = tempfile::tempdir().unwrap();
    let layout = write_run(dir.path(), 1, 1, RunStatus::Running);
    let lock = std::fs::File::create(layout.lock()).unwrap();
    lock.lock().unwrap();
    let server = start(dir.path(), dir.path()).await;
    let list = blocking(move || get(server.addr, "/api/runs", &[])).await;
    assert_eq!(list.json()["runs"][0]["status"], "running");
    let detail = blocking(move || get(server.addr, "/api/runs/1", &[])).await;
    assert_eq!(detail.json()["status"], "running");
    lock.unlock().unwrap();
    // The watcher notices the writer leaving without any file changing.
    let mut status = String::new();
    for _ in 0..200 {
        let list = blocking(move || get(server.addr, "/api/runs", &[])).await;
        status = list.json()["runs"][0]["status"]
            .as_str()
            .unwrap()
            .to_string();
        if status == "interrupted" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(status, "interrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detail_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    write_run(dir.path(), 7, 2, RunStatus::Finished);
    let server = start(dir.path(), dir.path()).await;
    let addr = server.addr;

    let detail = blocking(move || get(addr, "/api/runs/7", &[])).await;
    assert_eq!(detail.status, 200);
    let detail = detail.json();
    assert_eq!(detail["metadata"]["run_number"], 7);
    assert_eq!(
        detail["metadata"]["checkpoints"].as_array().unwrap().len(),
        2
    );
    assert_eq!(detail["metadata"]["lora_config"]["r"], 4);
    assert_eq!(detail["config"]["lora"]["r"], 4);
    assert_eq!(detail["status"], "finished");

    let metrics = blocking(move || get(addr, "/api/runs/7/metrics", &[]))
        .await
        .json();
    assert_eq!(metrics["monitor"], "val_loss");
    assert_eq!(metrics["base_metrics"]["val_loss"], 2.5);
    let series = metrics["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[1]["epoch"], 2);
    assert_eq!(series[1]["metrics"]["val_loss"], 0.5);

    for (target, status) in [
        ("/api/runs/8", 404),
        ("/api/runs/007", 400),
        ("/api/runs/x/metrics", 400),
        ("/api/nope", 404),
    ] {
        let response = blocking(move || get(addr, target, &[])).await;
        assert_eq!(response.status, status, "{target}");
        assert!(response.json()["error"].is_string(), "{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_stream_with_etag_range_and_cache_headers() {
    let dir = tempfile::tempdir().unwrap();
    let layout = write_run(dir.path(), 1, 2, RunStatus::Finished);
    let server = start(dir.path(), dir.path()).await;
    let addr = server.addr;
    let epoch2 = std::fs::read(layout.checkpoint(CheckpointName::Epoch(2))).unwrap();

    let full = blocking(move || get(addr, "/api/runs/1/checkpoints/epoch_002", &[])).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.body, epoch2);
    let etag = format!("\"{}\"", checksum(&epoch2));
    assert_eq!(full.header("etag"), Some(etag.as_str()));
    assert_eq!(full.header("cache-control"), Some("no-cache"));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        full.header("content-length"),
        Some(epoch2.len().to_string().as_str())
    );
    assert!(full.header("content-encoding").is_none());

    let tag = etag.clone();
    let cached = blocking(move || {
        get(
            addr,
            "/api/runs/1/checkpoints/epoch_002",
            &[("If-None-Match", &tag)],
        )
    })
    .await;
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    assert_eq!(cached.header("etag"), Some(etag.as_str()));

    let part = blocking(move || {
        get(
            addr,
            "/api/runs/1/checkpoints/epoch_002",
            &[("Range", "bytes=8-99")],
        )
    })
    .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, epoch2[8..=99]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 8-99/{}", epoch2.len()).as_str())
    );
    let tail = blocking(move || {
        get(
            addr,
            "/api/runs/1/checkpoints/epoch_002",
            &[("Range", "bytes=-10")],
        )
    })
    .await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, epoch2[epoch2.len() - 10..]);

    let beyond = format!("bytes={}-", epoch2.len() + 5);
    let unsatisfiable = blocking(move || {
        get(
            addr,
            "/api/runs/1/checkpoints/epoch_002",
            &[("Range", &beyond)],
        )
    })
    .await;
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(
        unsatisfiable.header("content-range"),
        Some(format!("bytes */{}", epoch2.len()).as_str())
    );
    assert!(unsatisfiable.json()["error"].is_string());

    // best/last are replaced in place: revalidate; their ETag is the file's own checksum.
    let last = blocking(move || get(addr, "/api/runs/1/checkpoints/last", &[])).await;
    assert_eq!(last.status, 200);
    assert_eq!(last.body, epoch2);
    assert_eq!(last.header("cache-control"), Some("no-cache"));
    assert_eq!(last.header("etag"), Some(etag.as_str()));
    let base = blocking(move || get(addr, "/api/runs/1/checkpoints/base", &[])).await;
    assert_eq!(
        base.body,
        std::fs::read(layout.checkpoint(CheckpointName::Base)).unwrap()
    );
    assert_eq!(base.header("cache-control"), Some("no-cache"));

    for (target, status) in [
        ("/api/runs/1/checkpoints/epoch_009", 404),
        ("/api/runs/2/checkpoints/last", 404),
        ("/api/runs/1/checkpoints/epoch_2", 400),
        ("/api/runs/1/checkpoints/last?weights_only=maybe", 400),
        ("/api/runs/1/checkpoints/base?weights_only=true", 400),
    ] {
        let response = blocking(move || get(addr, target, &[])).await;
        assert_eq!(response.status, status, "{target}");
        assert!(response.json()["error"].is_string(), "{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_only_view_is_a_valid_lora_file() {
    let dir = tempfile::tempdir().unwrap();
    let layout = write_run(dir.path(), 1, 2, RunStatus::Finished);
    let server = start(dir.path(), dir.path()).await;
    let addr = server.addr;
    let original_bytes = std::fs::read(layout.checkpoint(CheckpointName::Best)).unwrap();
    let original = SafeTensors::deserialize(&original_bytes).unwrap();

    let view =
        blocking(move || get(addr, "/api/runs/1/checkpoints/best?weights_only=true", &[])).await;
    assert_eq!(view.status, 200);
    assert!(view.body.len() < original_bytes.len());
    assert!(view.header("etag").unwrap().ends_with("+lora\""));
    let (_, header) = SafeTensors::read_metadata(&view.body).unwrap();
    let parsed = SafeTensors::deserialize(&view.body).unwrap();
    let mut names: Vec<String> = parsed.names().into_iter().map(String::from).collect();
    names.sort();
    let mut expected: Vec<String> = original
        .names()
        .into_iter()
        .filter(|n| is_lora_tensor(n))
        .map(String::from)
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(names.len(), 2 * MODULES.len());
    for name in &names {
        let (a, b) = (parsed.tensor(name).unwrap(), original.tensor(name).unwrap());
        assert_eq!(
            (a.dtype(), a.shape(), a.data()),
            (b.dtype(), b.shape(), b.data()),
            "{name}"
        );
    }
    let meta = header.metadata().as_ref().unwrap();
    assert_eq!(meta[meta_keys::EPOCH], "1");
    assert_eq!(
        meta[meta_keys::FORMAT],
        server::tensor_file::LORA_ADAPTER_FORMAT
    );

    // A range of the view is the same bytes as the slice of the whole view.
    let part = blocking(move || {
        get(
            addr,
            "/api/runs/1/checkpoints/best?weights_only=true",
            &[("Range", "bytes=4-300")],
        )
    })
    .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, view.body[4..=300]);

    let Some(python) = python() else {
        println!("NOTICE: skipping the Python safetensors check: no .venv/bin/python at the repo root (make test creates it)");
        return;
    };
    let file = dir.path().join("view.safetensors");
    std::fs::write(&file, &view.body).unwrap();
    let script = "import sys\nfrom safetensors.numpy import load_file\nt = load_file(sys.argv[1])\nfor k in sorted(t): print(k, t[k].dtype, list(t[k].shape), float(t[k].sum()))";
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), names.len(), "{stdout}");
    for (line, name) in lines.iter().zip(&names) {
        assert!(line.starts_with(&format!("{name} float32")), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_app_or_a_page_saying_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = start(dir.path(), &dir.path().join("site")).await;
    let early = missing.addr;
    let page = blocking(move || get(early, "/", &[])).await;
    assert_eq!(page.status, 200);
    let said = String::from_utf8_lossy(&page.body).into_owned();
    assert!(said.contains("make app"), "{said}");
    // It reloads itself, so a page opened before the app is built (as `make demo` does) turns
    // into the dashboard once it is.
    assert!(said.contains(r#"http-equiv="refresh""#), "{said}");

    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("pkg")).unwrap();
    let html = format!(
        "<!doctype html><title>dash</title>{}",
        "<p>runs</p>".repeat(200)
    );
    std::fs::write(site.join("index.html"), &html).unwrap();
    std::fs::write(site.join("pkg/app_bg.wasm"), vec![0u8; 4096]).unwrap();
    let now_built = blocking(move || get(early, "/", &[])).await;
    assert_eq!(
        String::from_utf8_lossy(&now_built.body),
        html,
        "served without a restart"
    );
    let built = start(dir.path(), &site).await;
    let addr = built.addr;
    let index = blocking(move || get(addr, "/", &[("Accept-Encoding", "gzip")])).await;
    assert_eq!(index.status, 200);
    assert_eq!(index.header("content-encoding"), Some("gzip"));
    assert_eq!(index.header("cache-control"), Some("no-cache"));
    assert!(index.body.len() < html.len());
    let wasm = blocking(move || get(addr, "/pkg/app_bg.wasm", &[])).await;
    assert_eq!(wasm.status, 200);
    assert_eq!(wasm.body.len(), 4096);
    assert_eq!(wasm.header("content-type"), Some("application/wasm"));
    let absent = blocking(move || get(addr, "/nope.js", &[])).await;
    assert_eq!(absent.status, 404);
    // Every response makes the page cross-origin isolated (the sampling workers share its
    // memory): the page, its assets, the API, a not-found.
    let api = blocking(move || get(addr, "/api/runs", &[])).await;
    for response in [&index, &wasm, &absent, &api] {
        assert_eq!(
            response.header("cross-origin-opener-policy"),
            Some("same-origin")
        );
        assert_eq!(
            response.header("cross-origin-embedder-policy"),
            Some("require-corp")
        );
        assert_eq!(
            response.header("cross-origin-resource-policy"),
            Some("same-origin")
        );
    }
}

/// The search, the sort and the pages of `/api/runs`, over runs with their own learning rates,
/// tags and notes (set through the store as `diffit runs tag` does), and a tag added while the
/// server runs showing up in the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_is_searched_sorted_and_paged() {
    use format::api::{RunList, RunQuery, SortOrder};
    use store::annotations::update_annotations;

    let dir = tempfile::tempdir().unwrap();
    let rates = [1e-3, 5e-4, 2e-4, 1e-4, 3e-3];
    for (i, lr) in rates.iter().enumerate() {
        let n = i as u32 + 1;
        let layout = write_run(dir.path(), n, 1, RunStatus::Finished);
        let config = serde_json::json!({
            "training": {"learning_rate": lr, "batch_size": 8},
            "lora": {"rank": 4},
        });
        write_atomic(&layout.config(), &serde_json::to_vec(&config).unwrap());
        if n != 3 {
            update_annotations(&layout, |a| a.retag(&["sweep".into()], &[])).unwrap();
        }
    }
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("a.json"), br#"{"tags":["leaked"]}"#).unwrap();
    let run5 = format::RunLayout::new(dir.path(), 5);
    std::fs::remove_file(run5.annotations()).unwrap();
    std::os::unix::fs::symlink(outside.path().join("a.json"), run5.annotations()).unwrap();
    let server = start(dir.path(), &dir.path().join("no-app")).await;
    let addr = server.addr;
    let list = move |query: RunQuery| {
        let answer = get(addr, &query.path(), &[]);
        (answer.status, answer.json())
    };

    let (status, body) = blocking(move || {
        list(RunQuery {
            q: Some("lr<1e-3 tag:sweep".into()),
            sort: Some("lr".into()),
            order: Some(SortOrder::Desc),
            limit: Some(1),
            ..RunQuery::default()
        })
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let page: RunList = serde_json::from_value(body).unwrap();
    let numbers = |page: &RunList| page.runs.iter().map(|r| r.run_number).collect::<Vec<_>>();
    assert_eq!(numbers(&page), [2]);
    let facts = page.page.clone().unwrap();
    assert_eq!((facts.offset, facts.matched, facts.total), (0, 2, 5));
    assert_eq!(facts.varying, ["training.learning_rate"]);
    let info = page.runs[0].info.as_ref().unwrap();
    assert_eq!(info.tags, ["sweep"]);
    assert_eq!(info.params["lora.rank"], 4);

    let (_, body) = blocking(move || {
        list(RunQuery {
            q: Some("lr<1e-3 tag:sweep".into()),
            sort: Some("lr".into()),
            order: Some(SortOrder::Desc),
            offset: Some(1),
            limit: Some(1),
        })
    })
    .await;
    assert_eq!(numbers(&serde_json::from_value(body).unwrap()), [4]);

    // The symlink out of the checkpoints dir is not followed: run 5 shows no tags.
    let (_, body) = blocking(move || {
        list(RunQuery {
            q: Some("-tag:sweep".into()),
            ..RunQuery::default()
        })
    })
    .await;
    assert_eq!(numbers(&serde_json::from_value(body).unwrap()), [3, 5]);

    for (bad, says) in [
        (
            "/api/runs?q=momentum%3E0.9",
            "unknown search key \"momentum\"",
        ),
        ("/api/runs?q=lr%3C", "has no value"),
        ("/api/runs?sort=nope", "unknown search key \"nope\""),
        ("/api/runs?limit=5000", "more than a page holds"),
        ("/api/runs?offset=-1", "offset"),
        ("/api/runs?order=sideways", "order"),
    ] {
        let answer = blocking(move || get(addr, bad, &[])).await;
        assert_eq!(answer.status, 400, "{bad}");
        let error = answer.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(says), "{bad}: {error}");
    }

    // A tag added while the server runs is in the next list.
    let run3 = format::RunLayout::new(dir.path(), 3);
    update_annotations(&run3, |a| a.retag(&["late".into()], &[])).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = blocking(move || {
            list(RunQuery {
                q: Some("tag:late".into()),
                ..RunQuery::default()
            })
        })
        .await;
        let page: RunList = serde_json::from_value(body).unwrap();
        if numbers(&page) == [3] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new tag never showed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The step log and the sample grids a run wrote under `logs/`: served by epoch, a bad file
/// named, a missing grid a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_logs_and_sample_grids_are_served() {
    use format::api::{sample_path, samples_path, steps_path, RunSamples, RunSteps};
    use format::logs::{StepLog, StepRecord};

    let dir = tempfile::tempdir().unwrap();
    let layout = write_run(dir.path(), 1, 2, RunStatus::Finished);
    std::fs::create_dir_all(layout.steps_dir()).unwrap();
    std::fs::create_dir_all(layout.samples_dir()).unwrap();
    for epoch in [2, 1] {
        let log = StepLog {
            epoch,
            every: 2,
            steps: (1..=2)
                .map(|i| StepRecord {
                    step: u64::from((epoch - 1) * 4 + 2 * i),
                    loss: 1.0 / f64::from(epoch * 10 + i),
                    lr: 1e-3,
                })
                .collect(),
        };
        write_atomic(&layout.step_log(epoch), &serde_json::to_vec(&log).unwrap());
    }
    std::fs::write(
        layout.steps_dir().join("epoch_2.json"),
        b"not canonical: ignored",
    )
    .unwrap();
    let png = b"\x89PNG\r\n\x1a\n fake grid".to_vec();
    write_atomic(&layout.sample_grid(2), &png);
    let server = start(dir.path(), &dir.path().join("no-app")).await;
    let addr = server.addr;

    let steps = blocking(move || get(addr, &steps_path(1), &[])).await;
    assert_eq!(steps.status, 200);
    let steps: RunSteps = serde_json::from_value(steps.json()).unwrap();
    assert_eq!(
        steps.logs.iter().map(|l| l.epoch).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(steps.logs[1].steps[1].step, 8);
    let samples = blocking(move || get(addr, &samples_path(1), &[])).await;
    let samples: RunSamples = serde_json::from_value(samples.json()).unwrap();
    assert_eq!(samples.epochs, [2]);
    let grid = blocking(move || get(addr, &sample_path(1, 2), &[])).await;
    assert_eq!(grid.status, 200);
    assert_eq!(grid.header("content-type"), Some("image/png"));
    assert_eq!(grid.body, png);
    let etag = grid.header("etag").unwrap().to_string();
    let again = blocking(move || get(addr, &sample_path(1, 2), &[("If-None-Match", &etag)])).await;
    assert_eq!(again.status, 304);
    let missing = blocking(move || get(addr, &sample_path(1, 1), &[])).await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]
        .as_str()
        .unwrap()
        .contains("epoch 1"));
    for bad in [
        "/api/runs/1/samples/0",
        "/api/runs/1/samples/x",
        "/api/runs/1/samples/01",
    ] {
        let answer = blocking(move || get(addr, bad, &[])).await;
        assert_eq!(answer.status, 400, "{bad}");
    }
    // No logs at all: empty lists, not errors.
    write_run(dir.path(), 2, 1, RunStatus::Finished);
    let none = blocking(move || get(addr, &steps_path(2), &[])).await;
    assert_eq!(none.status, 200);
    assert_eq!(none.json()["logs"], serde_json::json!([]));
    // A damaged step log is named.
    std::fs::write(layout.step_log(1), b"{").unwrap();
    let broken = blocking(move || get(addr, &steps_path(1), &[])).await;
    assert_eq!(broken.status, 500);
    let error = broken.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("logs/steps/epoch_001.json"), "{error}");
}
