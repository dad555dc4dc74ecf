//! Runs the seed system wrote (PyTorch `.ckpt` files): opened read-only and summarised, never
//! opened as a writer, loaded or verified, and left byte for byte as they were.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use format::{RunLayout, SeedRunKind};
use store::{CheckpointManager, StoreError, Which};

const SEED_LORA_RUN: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/seed/lora_run_metadata.json"
));

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn write_seed_run(base: &Path) -> RunLayout {
    let layout = RunLayout::new(base, 1);
    fs::create_dir_all(layout.lora_dir()).unwrap();
    fs::create_dir_all(layout.base_model_dir()).unwrap();
    fs::write(layout.metadata(), SEED_LORA_RUN).unwrap();
    for name in ["epoch_001.ckpt", "epoch_002.ckpt", "best.ckpt", "last.ckpt"] {
        // A PyTorch zip pickle starts like this; nothing here may try to read it.
        fs::write(
            layout.lora_dir().join(name),
            b"PK\x03\x04 not a tensor file",
        )
        .unwrap();
    }
    fs::write(
        layout.base_model_dir().join("base_model.ckpt"),
        b"PK\x03\x04",
    )
    .unwrap();
    layout
}

fn assert_seed_error(err: StoreError, action: &str) {
    let text = err.to_string();
    assert!(matches!(err, StoreError::SeedRun { .. }), "{text}");
    for part in [
        action,
        "run 1",
        "run_001",
        "PyTorch pickles",
        "does not load",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

#[test]
fn a_seed_run_reads_but_is_never_written_loaded_or_verified() {
    let dir = tempfile::tempdir().unwrap();
    write_seed_run(dir.path());
    let before = snapshot(dir.path());

    assert_seed_error(
        CheckpointManager::open(dir.path(), 1).unwrap_err(),
        "resume or train into",
    );
    assert_seed_error(
        CheckpointManager::open_or_create(dir.path(), "e", Some(1)).unwrap_err(),
        "resume or train into",
    );
    let run = CheckpointManager::open_read_only(dir.path(), 1).unwrap();
    assert_eq!(run.seed_run().map(|s| s.kind), Some(SeedRunKind::Lora));
    assert_seed_error(run.load_lora_weights(Which::Best).unwrap_err(), "load");
    assert_seed_error(run.load_for_resume().unwrap_err(), "resume");
    assert_seed_error(run.load_base_model().unwrap_err(), "load the base model");
    let report = run.verify();
    assert!(
        report.damaged.is_empty() && report.ok.is_empty(),
        "{report:?}"
    );
    assert!(report.seed.is_some() && !report.is_ok());

    let summary = run.get_run_summary();
    assert!(summary.contains("seed run (read-only)"), "{summary}");
    assert!(summary.contains("PyTorch pickles"), "{summary}");
    assert!(
        summary.contains("base_model.ckpt (a PyTorch pickle"),
        "{summary}"
    );
    // Microsecond stamps keep the epoch table's columns.
    let rows: Vec<&str> = summary
        .lines()
        .filter(|l| l.trim_start().starts_with(['1', '2']))
        .collect();
    assert_eq!(rows.len(), 2, "{summary}");
    assert_eq!(rows[0].find("train_loss"), rows[1].find("train_loss"));

    // A new run next to it is ours, and numbered after it.
    let next = CheckpointManager::create(dir.path(), "e").unwrap();
    assert_eq!((next.run_number(), next.seed_run()), (2, None));
    drop(next);
    let mut after = snapshot(dir.path());
    after.retain(|path, _| path.starts_with(dir.path().join("run_001")));
    assert_eq!(after, before, "the seed run's files changed");
}

#[test]
fn a_seed_base_training_run_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let layout = RunLayout::base_training(dir.path(), 1);
    fs::create_dir_all(layout.root()).unwrap();
    // No lora_config, no checkpoints yet: the folder alone marks it.
    fs::write(
        layout.metadata(),
        r#"{"run_number": 1, "experiment_name": "diffit_base",
            "created_at": "2025-01-10T09:00:00.000042", "checkpoints": [],
            "best_checkpoint": null, "training_config": {"num_epochs": 100}}"#,
    )
    .unwrap();
    let before = snapshot(dir.path());
    let base_training = layout.base_dir();
    assert_seed_error(
        CheckpointManager::open(base_training, 1).unwrap_err(),
        "resume or train into",
    );
    let run = CheckpointManager::open_read_only(base_training, 1).unwrap();
    assert_eq!(
        run.seed_run().map(|s| s.kind),
        Some(SeedRunKind::BaseTraining)
    );
    assert!(run.metadata().lora_config.is_null());
    assert_eq!(snapshot(dir.path()), before);
}
