//! The API over a checkpoints dir written by the real trainer (tiny preset, pretrained base and
//! LoRA fine-tuning through `run_training`, exactly what `diffit train` runs): every endpoint
//! answers with what the run store recorded, and each served file is the trainer's file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

// The server tests' fixtures and raw HTTP client, shared rather than copied.
#[path = "../server/tests/support/mod.rs"]
mod support;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use format::tensors::is_lora_tensor;
use format::{CheckpointName, Metadata, RunLayout};
use safetensors::SafeTensors;
use support::*;
use trainer::train::config::{Preset, TrainingConfig};
use trainer::train::pretrain::{pretrain, save_base, PretrainConfig};
use trainer::train::session::{run_training, TrainRequest};
use trainer::train::Overrides;

/// Trains one tiny run of `epochs` epochs into `dir`; returns its metadata.
fn train_tiny(dir: &std::path::Path, epochs: u32) -> Metadata {
    let stop = Arc::new(AtomicBool::new(false));
    let base = dir.join("base_tiny.safetensors");
    let pre = PretrainConfig {
        epochs: 2,
        num_images: 96,
        ..PretrainConfig::for_preset(Preset::Tiny)
    };
    let tensors = pretrain(&pre, false, &stop).expect("pretrain");
    save_base(&base, &tensors, &model::Config::tiny()).expect("save base");
    let mut cfg = TrainingConfig::default();
    cfg.model.preset = Preset::Tiny;
    cfg.model.base = Some(base);
    cfg.data.num_images = 64;
    let t = &mut cfg.training;
    (t.epochs, t.batch_size, t.warmup_steps) = (epochs, 16, 2);
    t.checkpoint.base_dir = dir.join("checkpoints");
    t.checkpoint.keep_last_n = 2;
    let report = run_training(
        &TrainRequest {
            config: cfg,
            overrides: Overrides::default(),
            resume: false,
            show_progress: false,
            log_samples: false,
            device: Default::default(),
        },
        stop,
    )
    .expect("train");
    let text = std::fs::read_to_string(
        RunLayout::new(dir.join("checkpoints"), report.run_number).metadata(),
    )
    .expect("metadata");
    serde_json::from_str(&text).expect("parse metadata")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_run_made_by_the_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let meta = train_tiny(dir.path(), 3);
    let checkpoints = dir.path().join("checkpoints");
    let layout = RunLayout::new(&checkpoints, 1);
    let server = start(&checkpoints, &dir.path().join("no-app")).await;

    // The list: one finished run with the trainer's best and base metrics.
    let list = blocking(move || get(server.addr, "/api/runs", &[])).await;
    assert_eq!(list.status, 200);
    let runs = list.json()["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(run["run_number"], 1);
    assert_eq!(run["status"], "finished");
    assert_eq!(run["experiment_name"], meta.experiment_name.as_str());
    let best = meta
        .best_checkpoint
        .as_ref()
        .expect("trainer recorded a best");
    assert_eq!(run["best"]["epoch"], best.epoch);
    assert_eq!(
        run["best"]["value"].as_f64(),
        best.metrics.get("val_loss").copied()
    );
    let base_val = meta.base_metrics.get("val_loss").copied();
    assert!(
        base_val.is_some(),
        "the trainer records base_metrics.val_loss"
    );
    assert_eq!(run["base_val_loss"].as_f64(), base_val);
    // keep_last_n = 2 over 3 epochs: two epoch files (three if the best is the oldest).
    let live = meta.checkpoints.iter().filter(|c| !c.removed).count();
    assert_eq!(run["checkpoints_count"], live as u64);

    // Detail and metrics: the metadata as written, one point per epoch even for removed files.
    let detail = blocking(move || get(server.addr, "/api/runs/1", &[])).await;
    assert_eq!(detail.status, 200);
    let body = detail.json();
    assert_eq!(body["metadata"]["run_number"], 1);
    assert_eq!(
        body["metadata"]["checkpoints"].as_array().unwrap().len(),
        meta.checkpoints.len()
    );
    assert!(body["config"].is_object(), "config.json is served: {body}");
    let metrics = blocking(move || get(server.addr, "/api/runs/1/metrics", &[])).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for key in ["val_loss", "train_loss", "lr"] {
        assert!(text.contains(key), "metrics lack {key}: {text}");
    }

    // Files: byte-identical to the trainer's, with the recorded checksum as ETag.
    for name in [
        CheckpointName::Base,
        CheckpointName::Best,
        CheckpointName::Last,
    ] {
        let path = format!("/api/runs/1/checkpoints/{name}");
        let response = blocking(move || get(server.addr, &path, &[])).await;
        assert_eq!(response.status, 200, "{name}");
        let on_disk = std::fs::read(layout.checkpoint(name)).unwrap();
        assert_eq!(response.body, on_disk, "{name} is served unchanged");
        let etag = response.header("etag").expect("etag").to_string();
        let hex = checksum(&on_disk).trim_start_matches("blake3:").to_string();
        assert!(etag.contains(&hex), "{name}: {etag}");
    }

    // The weights-only view of the best checkpoint: the LoRA tensors of the trainer's file,
    // bit for bit, and nothing else.
    let weights = blocking(move || {
        get(
            server.addr,
            "/api/runs/1/checkpoints/best?weights_only=true",
            &[],
        )
    })
    .await;
    assert_eq!(weights.status, 200);
    let full_bytes = std::fs::read(layout.checkpoint(CheckpointName::Best)).unwrap();
    let full = SafeTensors::deserialize(&full_bytes).unwrap();
    let view = SafeTensors::deserialize(&weights.body).unwrap();
    let mut lora_names: Vec<String> = full
        .names()
        .into_iter()
        .filter(|n| is_lora_tensor(n))
        .map(str::to_string)
        .collect();
    lora_names.sort();
    let mut served: Vec<String> = view.names().into_iter().map(str::to_string).collect();
    served.sort();
    assert!(!lora_names.is_empty());
    assert_eq!(served, lora_names);
    for name in &lora_names {
        assert_eq!(
            view.tensor(name).unwrap().data(),
            full.tensor(name).unwrap().data(),
            "{name}"
        );
    }

    // A removed epoch is listed in metrics but its file is gone: 404, not a crash.
    if let Some(removed) = meta.checkpoints.iter().find(|c| c.removed) {
        let path = format!("/api/runs/1/checkpoints/epoch_{:03}", removed.epoch);
        let gone = blocking(move || get(server.addr, &path, &[])).await;
        assert_eq!(gone.status, 404);
        assert!(gone.json()["error"].is_string());
    }
}
