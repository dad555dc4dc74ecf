//! The seed system's own YAML (`tests/fixtures/seed_lora_finetuning.yaml`, its keys as its
//! `configs/training/lora_finetuning.yaml` spells them) trains a tiny run end to end: the
//! mapped settings take effect (validation every 2 epochs, top-k and optimizer retention,
//! clipping, relative `pretrained_path` / `output_dir`), and each key that means nothing here
//! is warned about once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use format::Metadata;

#[test]
fn the_seed_systems_yaml_trains_a_tiny_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pretrained")).unwrap();
    std::fs::copy(
        support::fixture_base(),
        dir.path().join("pretrained/base_tiny.safetensors"),
    )
    .unwrap();
    let config =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed_lora_finetuning.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_diffit"))
        .current_dir(dir.path())
        .args(["train", "--preset", "tiny", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = support::ok(out);
    for key in ["data.num_workers", "data.pin_memory"] {
        assert_eq!(
            text.matches(&format!("{key} is accepted")).count(),
            1,
            "{text}"
        );
    }
    assert!(text.contains("run 001 finished 3 epochs"), "{text}");

    let checkpoints = dir.path().join("checkpoints");
    let meta: Metadata =
        serde_json::from_slice(&std::fs::read(checkpoints.join("run_001/metadata.json")).unwrap())
            .unwrap();
    // check_val_every_n_epoch: 2 validates epoch 2 and the last.
    let validated: Vec<bool> = meta
        .checkpoints
        .iter()
        .map(|c| c.metrics.contains_key("val_loss"))
        .collect();
    assert_eq!(validated, [false, true, true]);
    // keep_last_n 1 + save_top_k 1: the newest and the best stay; keep_optimizer_last_n 1: only
    // the newest keeps its moments.
    let best = meta.best_checkpoint.as_ref().unwrap().epoch;
    assert!(best == 2 || best == 3, "{best}");
    for c in &meta.checkpoints {
        assert_eq!(
            c.is_live(),
            c.epoch == 3 || c.epoch == best,
            "epoch {}",
            c.epoch
        );
        assert_eq!(c.is_resumable(), c.epoch == 3, "epoch {}", c.epoch);
    }
    let config_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoints.join("run_001/config.json")).unwrap())
            .unwrap();
    let t = &config_json["training"];
    assert_eq!(t["val_batch_size"], 8);
    assert_eq!(t["gradient_clip_val"], 1.0);
    assert_eq!(t["lora"]["r"], 4);
    assert_eq!(t["base"], "pretrained/base_tiny.safetensors");
    support::verify_run_1(checkpoints.to_str().unwrap());

    // It resumes from the newest epoch, the only one with optimizer state, after more epochs.
    let out = Command::new(env!("CARGO_BIN_EXE_diffit"))
        .current_dir(dir.path())
        .args(["train", "--run-number", "1", "--resume", "--epochs", "4"])
        .args(["--checkpoints", "checkpoints"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = support::ok(out);
    assert!(text.contains("resumed after epoch 3"), "{text}");
}
