//! The API over runs the seed system wrote (PyTorch `.ckpt` files) next to ours: listed and
//! shown with their `seed` note and state, base-training runs in their own list with their own
//! detail, and their `.ckpt` files served whole as plain downloads, never parsed as
//! safetensors (a weights-only view of one is refused). Nothing in the tree changes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use format::api::{RunDetail, RunList, RunState};
use format::seed::SEED_RUN_NOTE;
use format::{RunLayout, RunStatus, SeedRunKind};
use support::*;

const SEED_LORA_METADATA: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/seed/lora_run_metadata.json"
));

const SEED_BASE_METADATA: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/seed/base_training_run_metadata.json"
));

/// Bytes like a PyTorch zip pickle's, different per file.
fn ckpt(tag: &str) -> Vec<u8> {
    let mut bytes = b"PK\x03\x04\x14\x00\x00\x00archive/data.pkl".to_vec();
    bytes.extend(tag.as_bytes());
    bytes
}

fn write_seed_tree(base: &Path) {
    let run = RunLayout::new(base, 1);
    std::fs::create_dir_all(run.lora_dir()).unwrap();
    std::fs::create_dir_all(run.base_model_dir()).unwrap();
    std::fs::write(run.metadata(), SEED_LORA_METADATA).unwrap();
    for name in ["epoch_001", "epoch_002", "best", "last"] {
        std::fs::write(run.lora_dir().join(format!("{name}.ckpt")), ckpt(name)).unwrap();
    }
    std::fs::write(run.base_model_dir().join("base_model.ckpt"), ckpt("base")).unwrap();
    let base_run = RunLayout::base_training(base, 1);
    std::fs::create_dir_all(base_run.root()).unwrap();
    std::fs::write(base_run.metadata(), SEED_BASE_METADATA).unwrap();
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_runs_are_listed_shown_and_their_files_served_as_plain_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    write_seed_tree(&checkpoints);
    write_run(&checkpoints, 2, 2, RunStatus::Finished);
    let before = snapshot(&checkpoints);
    let server = start(&checkpoints, &dir.path().join("no-app")).await;
    let addr = server.addr;

    let list = blocking(move || get(addr, "/api/runs", &[])).await;
    assert_eq!(list.status, 200);
    let json = list.json();
    assert_eq!(json["runs"][0]["status"], "seed");
    assert_eq!(json["runs"][0]["seed"]["kind"], "lora");
    assert_eq!(json["runs"][0]["seed"]["note"], SEED_RUN_NOTE);
    assert!(json["runs"][1].get("seed").is_none());
    let list: RunList = serde_json::from_value(json).unwrap();
    let seed = &list.runs[0];
    let info = seed.info.as_ref().unwrap();
    assert_eq!(seed.status, RunState::Seed);
    assert_eq!(info.created_at, "2025-01-15T10:30:00.123456");
    assert_eq!(info.checkpoints_count, 2);
    assert_eq!(list.runs[1].status, RunState::Finished);
    assert_eq!(list.base_training.len(), 1);
    let base_row = &list.base_training[0];
    assert_eq!(base_row.status, RunState::Seed);
    assert_eq!(
        base_row
            .info
            .as_ref()
            .unwrap()
            .seed
            .as_ref()
            .map(|s| s.kind),
        Some(SeedRunKind::BaseTraining)
    );

    let detail = blocking(move || get(addr, "/api/runs/1", &[])).await;
    assert_eq!(detail.status, 200);
    let detail: RunDetail = serde_json::from_slice(&detail.body).unwrap();
    assert_eq!(detail.status, RunState::Seed);
    assert_eq!(
        detail.seed.as_ref().map(|s| s.kind),
        Some(SeedRunKind::Lora)
    );
    assert_eq!(detail.metadata.checkpoints.len(), 2);
    assert_eq!(detail.metadata.lora_config["rank"], 8);
    let metrics = blocking(move || get(addr, "/api/runs/1/metrics", &[])).await;
    assert_eq!(metrics.status, 200);
    assert_eq!(metrics.json()["best_epoch"], 2);

    let base = blocking(move || get(addr, "/api/runs/base_training/1", &[])).await;
    assert_eq!(base.status, 200, "{}", String::from_utf8_lossy(&base.body));
    let base: RunDetail = serde_json::from_slice(&base.body).unwrap();
    assert_eq!(base.seed.map(|s| s.kind), Some(SeedRunKind::BaseTraining));
    assert!(base.metadata.lora_config.is_null());
    assert_eq!(base.metadata.experiment_name, "diffit_base_generic");
    let missing = blocking(move || get(addr, "/api/runs/base_training/2", &[])).await;
    assert_eq!(missing.status, 404);
    let ours = blocking(move || get(addr, "/api/runs/2", &[])).await;
    let ours: RunDetail = serde_json::from_slice(&ours.body).unwrap();
    assert_eq!((ours.status, ours.seed), (RunState::Finished, None));

    // The .ckpt files: whole, as downloads named .ckpt, ranges and revalidation as for ours.
    for (name, file) in [
        ("epoch_001", "run_001/lora_weights/epoch_001.ckpt"),
        ("best", "run_001/lora_weights/best.ckpt"),
        ("last", "run_001/lora_weights/last.ckpt"),
        ("base", "run_001/base_model/base_model.ckpt"),
    ] {
        let target = format!("/api/runs/1/checkpoints/{name}");
        let response = blocking(move || get(addr, &target, &[])).await;
        assert_eq!(response.status, 200, "{name}");
        assert_eq!(
            response.body,
            std::fs::read(checkpoints.join(file)).unwrap()
        );
        assert_eq!(
            response.header("content-disposition"),
            Some(format!("attachment; filename=\"run_001_{name}.ckpt\"").as_str())
        );
        let etag = response.header("etag").unwrap().to_string();
        let target = format!("/api/runs/1/checkpoints/{name}");
        let again = blocking(move || {
            get(
                addr,
                &target,
                &[("If-None-Match", etag.as_str()), ("Range", "bytes=0-3")],
            )
        })
        .await;
        assert_eq!(again.status, 304, "{name}");
    }
    let range = blocking(move || {
        get(
            addr,
            "/api/runs/1/checkpoints/best",
            &[("Range", "bytes=0-3")],
        )
    })
    .await;
    assert_eq!(
        (range.status, range.body.as_slice()),
        (206, &b"PK\x03\x04"[..])
    );
    let view =
        blocking(move || get(addr, "/api/runs/1/checkpoints/best?weights_only=true", &[])).await;
    assert_eq!(view.status, 400);
    let error = view.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("seed system") && error.contains("PyTorch pickle"),
        "{error}"
    );
    let never_saved = blocking(move || get(addr, "/api/runs/1/checkpoints/epoch_003", &[])).await;
    assert_eq!(never_saved.status, 404);
    // Ours are still safetensors, views included.
    let view =
        blocking(move || get(addr, "/api/runs/2/checkpoints/best?weights_only=true", &[])).await;
    assert_eq!(view.status, 200);

    assert_eq!(
        snapshot(&checkpoints),
        before,
        "the server wrote under the checkpoints dir"
    );
}
