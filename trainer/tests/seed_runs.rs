//! Runs written by the seed system (the Python / PyTorch Lightning checkpoint manager) next to
//! ours, through the real `diffit`: `--list-runs` lists them with the columns aligned and marks
//! them read-only; resuming, training into and verifying them fail naming the run and its
//! PyTorch pickles, and leave every file byte for byte as it was. No model compute.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

mod support;

use format::{Mode, RunLayout, RunStatus};
use serde_json::json;
use store::{CheckpointManager, LoraCheckpoint, StoredTensor, TensorMap};
use support::{diffit, ok, text};

/// What the seed writes for a LoRA run: microsecond stamps without a zone, `.ckpt` paths with
/// and without its `checkpoints/` prefix, its own `lora_config` keys.
const SEED_LORA_METADATA: &str = r#"{
  "run_number": 1,
  "experiment_name": "diffit_lora_trees",
  "created_at": "2025-01-15T10:30:00.123456",
  "checkpoints": [
    {"epoch": 1, "path": "checkpoints/run_001/lora_weights/epoch_001.ckpt",
     "metrics": {"val_loss": 0.234, "train_loss": 0.189}, "saved_at": "2025-01-15T11:00:00.654321"},
    {"epoch": 2, "path": "checkpoints/run_001/lora_weights/epoch_002.ckpt",
     "metrics": {"val_loss": 0.211, "train_loss": 0.176}, "saved_at": "2025-01-15T11:30:00.000001"},
    {"epoch": 3, "path": "run_001/lora_weights/epoch_003.ckpt",
     "metrics": {"val_loss": 0.198, "train_loss": 0.160}, "saved_at": "2025-01-15T12:00:00.5"}
  ],
  "best_checkpoint": {"epoch": 3, "path": "run_001/lora_weights/best.ckpt",
                      "metrics": {"val_loss": 0.198}},
  "training_config": {"num_epochs": 10, "batch_size_train": 64, "learning_rate": 0.0001},
  "lora_config": {"enabled": true, "rank": 8, "alpha": 16, "dropout": 0.0,
                  "target_modules": ["qkv", "proj"]}
}"#;

/// A seed base-training run: no `lora_config`.
const SEED_BASE_METADATA: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/seed/base_training_run_metadata.json"
));

/// Bytes like a PyTorch zip pickle's: nothing may try to read them as tensors.
fn fake_ckpt(tag: &str) -> Vec<u8> {
    let mut bytes = b"PK\x03\x04\x14\x00\x00\x00archive/data.pkl".to_vec();
    bytes.extend(tag.as_bytes());
    bytes
}

/// The seed's tree under `checkpoints`: LoRA run 1 and base-training run 1.
fn write_seed_tree(checkpoints: &Path) {
    let run = RunLayout::new(checkpoints, 1);
    for dir in [run.lora_dir(), run.base_model_dir(), run.logs_dir()] {
        fs::create_dir_all(dir).unwrap();
    }
    fs::write(run.metadata(), SEED_LORA_METADATA).unwrap();
    fs::write(
        run.config(),
        serde_json::to_vec_pretty(&json!({"training": {"num_epochs": 10}, "lora": {"rank": 8}}))
            .unwrap(),
    )
    .unwrap();
    for name in ["epoch_001", "epoch_002", "epoch_003", "best", "last"] {
        fs::write(run.lora_dir().join(format!("{name}.ckpt")), fake_ckpt(name)).unwrap();
    }
    fs::write(
        run.base_model_dir().join("base_model.ckpt"),
        fake_ckpt("base"),
    )
    .unwrap();
    fs::write(run.logs_dir().join("events.out.tfevents.1"), b"tb").unwrap();

    let base = RunLayout::base_training(checkpoints, 1);
    fs::create_dir_all(base.root().join("checkpoints")).unwrap();
    fs::write(base.metadata(), SEED_BASE_METADATA).unwrap();
    fs::write(
        base.root().join("checkpoints/epoch_001.ckpt"),
        fake_ckpt("base-epoch"),
    )
    .unwrap();
}

/// Run 2, ours: written through the run store (no training), finished with one epoch.
fn write_our_run(checkpoints: &Path) {
    let mut run = CheckpointManager::create(checkpoints, "ours").unwrap();
    assert_eq!(run.run_number(), 2);
    let mut base = TensorMap::new();
    base.insert(
        "w".into(),
        StoredTensor::new(vec![4, 4], vec![1.0; 16]).unwrap(),
    );
    run.save_base_model(&base, &json!({})).unwrap();
    let mut epoch = LoraCheckpoint::new(1, 1);
    let t = StoredTensor::new(vec![2, 2], vec![0.5; 4]).unwrap();
    epoch.lora.insert("m.lora_A.weight".into(), t.clone());
    epoch.lora.insert("m.lora_B.weight".into(), t.clone());
    epoch.insert_moments("m.lora_A.weight", t.clone(), t);
    epoch.metrics.insert("val_loss".into(), 0.3);
    run.save_lora_weights(&epoch, "val_loss", Mode::Min)
        .unwrap();
    run.set_status(RunStatus::Finished).unwrap();
}

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

/// The seed runs' files (run_001 and base_training/), which nothing may change.
fn seed_files(checkpoints: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = snapshot(&checkpoints.join("run_001"));
    files.extend(snapshot(&checkpoints.join("base_training")));
    files
}

/// Asserts that every row's cells start at the header's column positions, and returns the
/// rows by their first cell.
fn aligned_rows(table: &str) -> Vec<String> {
    let lines: Vec<&str> = table.lines().collect();
    let header = lines[2];
    let columns: Vec<usize> = ["Experiment", "Created", "Checkpoints"]
        .iter()
        .map(|title| header.find(title).unwrap())
        .collect();
    let rows: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.to_string())
        .collect();
    for row in &rows {
        let bytes = row.as_bytes();
        for &col in &columns {
            assert!(
                bytes.len() > col && bytes[col] != b' ' && bytes[col - 1] == b' ',
                "a cell of this row does not start at column {col}:\n{header}\n{row}"
            );
        }
    }
    rows
}

#[test]
fn seed_runs_are_listed_read_only_and_refused_as_writers() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints_path = dir.path().join("checkpoints");
    write_seed_tree(&checkpoints_path);
    write_our_run(&checkpoints_path);
    let checkpoints = checkpoints_path.to_str().unwrap();
    let before = seed_files(&checkpoints_path);

    // The table: both runs, aligned, the seed's marked; its base-training run in a section.
    let table = ok(diffit(&[
        "train",
        "--list-runs",
        "--checkpoints",
        checkpoints,
    ]));
    let rows = aligned_rows(&table);
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].starts_with("1 "), "{table}");
    assert!(
        rows[0].contains(" diffit_lora_trees ") && rows[0].contains(" 2025-01-15 10:30:00 "),
        "microseconds are not shown: {table}"
    );
    assert!(rows[0].ends_with(" 3  (seed run, read-only)"), "{table}");
    assert!(
        rows[1].starts_with("2 ") && rows[1].ends_with(" 1"),
        "{table}"
    );
    assert!(
        table.contains("Base-training runs, in base_training/"),
        "{table}"
    );
    assert!(rows[2].contains(" diffit_base_generic "), "{table}");
    assert!(
        rows[2].ends_with(" 1  (seed base training, read-only)"),
        "{table}"
    );
    assert!(table.contains("PyTorch pickles"), "{table}");
    let same = ok(diffit(&["runs", "list", "--checkpoints", checkpoints]));
    assert_eq!(same, table);

    // Shown read-only.
    let shown = ok(diffit(&["runs", "show", "1", "--checkpoints", checkpoints]));
    assert!(
        shown.contains("Status:       seed run (read-only)"),
        "{shown}"
    );
    assert!(
        shown.contains("base_model.ckpt (a PyTorch pickle"),
        "{shown}"
    );

    // Every way of writing into it or loading it fails, naming the run and its pickles.
    let base_training = checkpoints_path.join("base_training");
    let base_training = base_training.to_str().unwrap();
    let png = dir.path().join("x.png");
    let png_arg = png.to_str().unwrap();
    let attempts: [&[&str]; 6] = [
        &[
            "train",
            "--run-number",
            "1",
            "--resume",
            "--epochs",
            "4",
            "--checkpoints",
            checkpoints,
        ],
        &[
            "train",
            "--run-number",
            "1",
            "--epochs",
            "4",
            "--checkpoints",
            checkpoints,
        ],
        &["verify", "--run-number", "1", "--checkpoints", checkpoints],
        &[
            "sample",
            "--run-number",
            "1",
            "--n",
            "1",
            "--steps",
            "1",
            "--out",
            png_arg,
            "--checkpoints",
            checkpoints,
        ],
        &[
            "train",
            "--run-number",
            "1",
            "--resume",
            "--checkpoints",
            base_training,
        ],
        &[
            "verify",
            "--run-number",
            "1",
            "--checkpoints",
            base_training,
        ],
    ];
    for args in attempts {
        let out = diffit(args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        for part in [
            "run 1",
            "run_001",
            "seed system",
            "PyTorch pickles",
            "does not load",
        ] {
            assert!(
                said.contains(part),
                "{args:?}: {part:?} missing from {said}"
            );
        }
        assert!(!said.contains("DAMAGED"), "{args:?}: {said}");
        assert_eq!(
            seed_files(&checkpoints_path),
            before,
            "{args:?} changed a seed file"
        );
    }
    assert!(!png.exists());

    // Ours still verifies, and a new run is numbered past both.
    ok(diffit(&[
        "verify",
        "--run-number",
        "2",
        "--checkpoints",
        checkpoints,
    ]));
    assert_eq!(seed_files(&checkpoints_path), before);
}
