//! The run store on disk: layout, metadata schema, numbering, save/load, resume, retention,
//! hard links, base-model sharing, hooks, locking, read-only handles and Python interop.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use format::{Mode, RunLayout, RunStatus};
use serde_json::{json, Value};
use store::{
    list_all_runs, CheckpointManager, LoraCheckpoint, SaveHooks, SavedCheckpoint, StoreError,
    StoredTensor, TensorMap, Which,
};

fn tensor(seed: f32, rows: usize, cols: usize) -> StoredTensor {
    let values: Vec<f32> = (0..rows * cols).map(|i| seed + i as f32 * 0.001).collect();
    StoredTensor::new(vec![rows, cols], values).unwrap()
}

fn checkpoint(epoch: u32, val_loss: f64) -> LoraCheckpoint {
    let mut c = LoraCheckpoint::new(epoch, u64::from(epoch) * 10);
    for module in ["blocks.0.attn.qkv", "blocks.1.mlp.fc1"] {
        c.lora.insert(
            format!("{module}.lora_A.weight"),
            tensor(epoch as f32, 4, 16),
        );
        c.lora.insert(
            format!("{module}.lora_B.weight"),
            tensor(-(epoch as f32), 16, 4),
        );
        c.insert_moments(
            &format!("{module}.lora_A.weight"),
            tensor(0.5, 4, 16),
            tensor(0.25, 4, 16),
        );
    }
    c.metrics.insert("val_loss".into(), val_loss);
    c.metrics.insert("train_loss".into(), val_loss + 0.1);
    c.optimizer = json!({"lr": 1e-4, "step": epoch * 10});
    c.scheduler = json!({"kind": "cosine", "last_epoch": epoch});
    c.rng = json!({"data": [1, 2, epoch]});
    c.lora_config = json!({"r": 4, "lora_alpha": 8});
    c.model_config = json!({"depth": 2});
    c.base_checksum = Some("blake3:00".into());
    c
}

fn base_tensors(seed: f32) -> TensorMap {
    let mut m = TensorMap::new();
    m.insert("blocks.0.attn.qkv.weight".into(), tensor(seed, 48, 16));
    m.insert("head.bias".into(), tensor(seed, 1, 16));
    m
}

#[cfg(unix)]
fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().ino()
}

fn assert_same(a: &StoredTensor, b: &StoredTensor) {
    assert_eq!(a, b);
}

#[test]
fn creates_the_seed_layout_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::create(dir.path(), "diffit_lora_trees").unwrap();
    assert_eq!(run.run_number(), 1);
    let root = dir.path().join("run_001");
    for sub in ["base_model", "lora_weights", "logs"] {
        assert!(root.join(sub).is_dir(), "{sub}");
    }
    run.save_config(&json!({"training": {"epochs": 3}, "lora": {"r": 4}}))
        .unwrap();
    run.save_base_model(&base_tensors(1.0), &json!({"depth": 2}))
        .unwrap();
    for (epoch, loss) in [(1, 0.5), (2, 0.3), (3, 0.4)] {
        run.save_lora_weights(&checkpoint(epoch, loss), "val_loss", Mode::Min)
            .unwrap();
    }
    assert!(root.join("config.json").is_file());
    assert!(root.join("base_model/base_model.safetensors").is_file());
    for f in ["epoch_001", "epoch_002", "epoch_003", "best", "last"] {
        assert!(
            root.join(format!("lora_weights/{f}.safetensors")).is_file(),
            "{f}"
        );
    }

    let meta: Value =
        serde_json::from_slice(&fs::read(root.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["run_number"], 1);
    assert_eq!(meta["experiment_name"], "diffit_lora_trees");
    assert_eq!(meta["training_config"], json!({"epochs": 3}));
    assert_eq!(meta["lora_config"], json!({"r": 4}));
    let created = meta["created_at"].as_str().unwrap();
    assert_eq!(
        created.len(),
        19,
        "seed format 2025-01-15T10:30:00: {created}"
    );
    let first = &meta["checkpoints"][0];
    assert_eq!(first["epoch"], 1);
    assert_eq!(first["path"], "run_001/lora_weights/epoch_001.safetensors");
    assert_eq!(first["metrics"]["val_loss"], 0.5);
    assert!(first["saved_at"].is_string());
    assert!(first["checksum"].as_str().unwrap().starts_with("blake3:"));
    assert!(first["size"].as_u64().unwrap() > 0);
    assert!(
        first.get("removed").is_none(),
        "removed is only written when true"
    );
    assert_eq!(meta["best_checkpoint"]["epoch"], 2);
    assert_eq!(
        meta["best_checkpoint"]["path"],
        "run_001/lora_weights/best.safetensors"
    );
    assert_eq!(meta["best_checkpoint"]["metrics"]["val_loss"], 0.3);
    assert_eq!(
        meta["base_model"]["path"],
        "run_001/base_model/base_model.safetensors"
    );
    assert_eq!(meta["metric_history"].as_array().unwrap().len(), 3);
    assert_eq!(meta["monitor"], "val_loss");
    assert_eq!(meta["mode"], "min");
    assert!(meta["updated_at"].is_string());
}

#[test]
fn numbers_runs_in_order_and_open_or_create_opens_existing() {
    let dir = tempfile::tempdir().unwrap();
    for expected in 1..=3 {
        assert_eq!(
            CheckpointManager::create(dir.path(), "e")
                .unwrap()
                .run_number(),
            expected
        );
    }
    // An existing number opens that run; a new number creates exactly it.
    let opened = CheckpointManager::open_or_create(dir.path(), "other", Some(2)).unwrap();
    assert_eq!((opened.run_number(), opened.experiment_name()), (2, "e"));
    drop(opened);
    let made = CheckpointManager::open_or_create(dir.path(), "x", Some(999)).unwrap();
    assert_eq!(made.run_number(), 999);
    drop(made);
    let next = CheckpointManager::create(dir.path(), "e").unwrap();
    assert_eq!(next.run_number(), 1000);
    assert!(dir.path().join("run_1000/metadata.json").is_file());
    // Non-run entries are ignored by numbering and listing.
    fs::create_dir(dir.path().join("run_7")).unwrap();
    fs::write(dir.path().join("notes.txt"), "x").unwrap();
    let runs = list_all_runs(dir.path()).unwrap();
    let numbers: Vec<u32> = runs.iter().map(|r| r.run_number).collect();
    assert_eq!(numbers, vec![1, 2, 3, 999, 1000]);
    let err = CheckpointManager::open(dir.path(), 5).unwrap_err();
    assert!(
        matches!(err, StoreError::RunNotFound { run_number: 5, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("run_005"), "{err}");
}

#[test]
fn saves_and_loads_epoch_best_last_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::create(dir.path(), "e").unwrap();
    assert!(
        run.load_for_resume().unwrap().is_none(),
        "fresh run: nothing to resume"
    );
    for (epoch, loss) in [(1, 0.5), (2, 0.2), (3, 0.4)] {
        let saved = run
            .save_lora_weights(&checkpoint(epoch, loss), "val_loss", Mode::Min)
            .unwrap();
        assert!(saved.is_last);
        assert_eq!(saved.is_best, epoch != 3);
    }
    let original = checkpoint(2, 0.2);
    let best = run.load_lora_weights(Which::Best).unwrap();
    assert_eq!(best.epoch, 2);
    assert_eq!(best.global_step, 20);
    assert_eq!(best.metrics, original.metrics);
    assert_eq!(best.optimizer, original.optimizer);
    assert_eq!(best.scheduler, original.scheduler);
    assert_eq!(best.rng, original.rng);
    assert_eq!(best.lora_config, original.lora_config);
    assert_eq!(best.model_config, original.model_config);
    assert_eq!(best.base_checksum, original.base_checksum);
    assert_eq!(
        best.lora.keys().collect::<Vec<_>>(),
        original.lora.keys().collect::<Vec<_>>()
    );
    assert_eq!(best.optimizer_tensors.len(), 4);
    for (name, t) in &original.lora {
        assert_same(t, &best.lora[name]);
    }
    assert_same(
        best.exp_avg("blocks.0.attn.qkv.lora_A.weight").unwrap(),
        original.exp_avg("blocks.0.attn.qkv.lora_A.weight").unwrap(),
    );
    assert!(best.exp_avg_sq("blocks.1.mlp.fc1.lora_A.weight").is_some());
    assert_eq!(run.load_lora_weights(Which::Last).unwrap().epoch, 3);
    assert_eq!(run.load_lora_weights(Which::Epoch(1)).unwrap().epoch, 1);
    let err = run.load_lora_weights(Which::Epoch(9)).unwrap_err();
    assert!(err.to_string().contains("never saved"), "{err}");
    let resume = run.load_for_resume().unwrap().unwrap();
    assert_eq!(resume.checkpoint.epoch, 3);
    assert!(resume.skipped.is_empty());
    assert_eq!(run.get_best_checkpoint_info().unwrap().epoch, 2);
    assert_eq!(run.list_checkpoints().len(), 3);

    // max mode and a missing metric.
    let mut maxed = CheckpointManager::create(dir.path(), "acc").unwrap();
    maxed
        .save_lora_weights(&checkpoint(1, 0.5), "val_loss", Mode::Max)
        .unwrap();
    maxed
        .save_lora_weights(&checkpoint(2, 0.7), "val_loss", Mode::Max)
        .unwrap();
    maxed
        .save_lora_weights(&checkpoint(3, 0.6), "val_loss", Mode::Max)
        .unwrap();
    assert_eq!(maxed.get_best_checkpoint_info().unwrap().epoch, 2);
    let mut none = CheckpointManager::create(dir.path(), "no-metric").unwrap();
    none.save_lora_weights(&checkpoint(1, 0.5), "accuracy", Mode::Max)
        .unwrap();
    assert!(none.get_best_checkpoint_info().is_none());
    assert!(matches!(
        none.load_lora_weights(Which::Best),
        Err(StoreError::MissingCheckpoint { .. })
    ));
}

#[test]
fn reopened_run_resumes_with_status_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::create(dir.path(), "e").unwrap();
    run.set_status(RunStatus::Running).unwrap();
    run.save_base_model(&base_tensors(2.0), &json!({"depth": 2}))
        .unwrap();
    run.set_base_metrics([("val_loss".to_string(), 0.9)].into())
        .unwrap();
    run.save_lora_weights(&checkpoint(1, 0.5), "val_loss", Mode::Min)
        .unwrap();
    run.save_lora_weights(&checkpoint(2, 0.4), "val_loss", Mode::Min)
        .unwrap();
    run.set_status(RunStatus::Interrupted).unwrap();
    drop(run);

    let mut run = CheckpointManager::open(dir.path(), 1).unwrap();
    assert_eq!(run.metadata().status, RunStatus::Interrupted);
    let resume = run.load_for_resume().unwrap().unwrap();
    assert_eq!(
        (resume.checkpoint.epoch, resume.checkpoint.global_step),
        (2, 20)
    );
    let base = run.load_base_model().unwrap();
    assert_same(&base.tensors["head.bias"], &base_tensors(2.0)["head.bias"]);
    assert_eq!(base.model_config, json!({"depth": 2}));
    run.save_lora_weights(&checkpoint(3, 0.3), "val_loss", Mode::Min)
        .unwrap();
    let summary = run.get_run_summary();
    for needle in [
        "Run 1",
        "Experiment:   e",
        "Status:       interrupted",
        "epoch 3",
        "val_loss=0.9",
        "3 saved, 3 on disk",
    ] {
        assert!(summary.contains(needle), "{needle:?} not in\n{summary}");
    }
    let info = list_all_runs(dir.path()).unwrap().remove(0).info.unwrap();
    assert_eq!(info.checkpoints_count, 3);
    assert_eq!(info.best.as_ref().and_then(|b| b.value), Some(0.3));
    assert_eq!(info.base_val_loss, Some(0.9));
    assert!(info.writer_active, "this handle holds the lock");
    drop(run);
    let info = list_all_runs(dir.path()).unwrap().remove(0).info.unwrap();
    assert!(!info.writer_active);
}

#[cfg(unix)]
/// `aws s3 sync` and a pull from a bucket copy files, not empty directories: a run with its
/// config and base but no epoch yet arrives without `lora_weights/` and `logs/`, and its writer
/// still saves.
#[test]
fn a_run_copied_without_its_empty_directories_opens_and_saves() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::create(dir.path(), "e").unwrap();
    run.save_base_model(&base_tensors(2.0), &json!({"depth": 2}))
        .unwrap();
    drop(run);
    let root = dir.path().join("run_001");
    for sub in ["lora_weights", "logs"] {
        std::fs::remove_dir(root.join(sub)).unwrap();
    }

    let mut run = CheckpointManager::open(dir.path(), 1).unwrap();
    run.save_lora_weights(&checkpoint(1, 0.5), "val_loss", Mode::Min)
        .unwrap();
    assert!(root.join("logs").is_dir());
    assert_eq!(run.load_for_resume().unwrap().unwrap().checkpoint.epoch, 1);
}

#[test]
fn a_failure_is_recorded_with_its_reason_and_cleared_by_the_next_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::open_or_create(dir.path(), "e", None).unwrap();
    run.set_status_because(
        RunStatus::Failed,
        Some("cannot write run_001/metadata.json: No space left on device".into()),
    )
    .unwrap();
    drop(run);
    let info = list_all_runs(dir.path()).unwrap().remove(0).info.unwrap();
    assert_eq!(info.recorded_status, RunStatus::Failed);
    assert_eq!(
        info.status_reason.as_deref(),
        Some("cannot write run_001/metadata.json: No space left on device")
    );
    let shown = CheckpointManager::open_read_only(dir.path(), 1)
        .unwrap()
        .get_run_summary();
    assert!(
        shown.contains("Status:       interrupted (by an error"),
        "{shown}"
    );
    assert!(shown.contains("Stopped by:   cannot write"), "{shown}");

    let mut run = CheckpointManager::open(dir.path(), 1).unwrap();
    run.set_status(RunStatus::Running).unwrap();
    drop(run);
    let info = list_all_runs(dir.path()).unwrap().remove(0).info.unwrap();
    assert_eq!(
        info.status_reason, None,
        "a new status clears the old reason"
    );
    let shown = CheckpointManager::open_read_only(dir.path(), 1)
        .unwrap()
        .get_run_summary();
    assert!(
        shown.contains("Status:       interrupted (its writer stopped"),
        "recorded running, no writer: {shown}"
    );
}

#[test]
fn best_and_last_are_hard_links_to_the_epoch_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::create(dir.path(), "e").unwrap();
    let lora = dir.path().join("run_001/lora_weights");
    run.save_lora_weights(&checkpoint(1, 0.5), "val_loss", Mode::Min)
        .unwrap();
    run.save_lora_weights(&checkpoint(2, 0.3), "val_loss", Mode::Min)
        .unwrap();
    run.save_lora_weights(&checkpoint(3, 0.4), "val_loss", Mode::Min)
        .unwrap();
    assert_eq!(
        inode(&lora.join("best.safetensors")),
        inode(&lora.join("epoch_002.safetensors"))
    );
    assert_eq!(
        inode(&lora.join("last.safetensors")),
        inode(&lora.join("epoch_003.safetensors"))
    );
    assert_ne!(
        inode(&lora.join("best.safetensors")),
        inode(&lora.join("last.safetensors"))
    );
}

#[test]
fn cleanup_keeps_last_n_and_best_and_marks_entries_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::create(dir.path(), "e").unwrap();
    let losses = [0.5, 0.1, 0.4, 0.3, 0.35, 0.33];
    for (i, loss) in losses.iter().enumerate() {
        run.save_lora_weights(&checkpoint(i as u32 + 1, *loss), "val_loss", Mode::Min)
            .unwrap();
    }
    let deleted = run.cleanup_old_checkpoints(2, true).unwrap();
    assert_eq!(deleted, vec![1, 3, 4]);
    let lora = dir.path().join("run_001/lora_weights");
    for (epoch, present) in [
        (1, false),
        (2, true),
        (3, false),
        (4, false),
        (5, true),
        (6, true),
    ] {
        assert_eq!(
            lora.join(format!("epoch_{epoch:03}.safetensors")).exists(),
            present,
            "epoch {epoch}"
        );
    }
    let meta: Value =
        serde_json::from_slice(&fs::read(dir.path().join("run_001/metadata.json")).unwrap())
            .unwrap();
    let entries = meta["checkpoints"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        6,
        "removed entries stay for the metric history"
    );
    assert_eq!(entries[0]["removed"], true);
    assert_eq!(entries[0]["metrics"]["val_loss"], 0.5);
    assert!(entries[1].get("removed").is_none());
    assert!(matches!(
        run.load_lora_weights(Which::Epoch(1)),
        Err(StoreError::MissingCheckpoint { .. })
    ));
    assert_eq!(run.load_lora_weights(Which::Best).unwrap().epoch, 2);
    assert!(run.verify().is_ok());

    // Without keep_best the best epoch's file goes, but best.safetensors still holds it.
    assert_eq!(run.cleanup_old_checkpoints(1, false).unwrap(), vec![2, 5]);
    assert!(!lora.join("epoch_002.safetensors").exists());
    assert_eq!(run.load_lora_weights(Which::Best).unwrap().epoch, 2);
    let report = run.verify();
    assert!(report.is_ok(), "{:?}", report.damaged);
    assert_eq!(
        list_all_runs(dir.path()).unwrap()[0]
            .info
            .as_ref()
            .unwrap()
            .checkpoints_count,
        1
    );
    assert_eq!(run.metadata().metric_series().len(), 6);
}

#[cfg(unix)]
#[test]
fn identical_base_models_are_shared_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = CheckpointManager::create(dir.path(), "e").unwrap();
    let one = first
        .save_base_model(&base_tensors(1.0), &json!({"depth": 2}))
        .unwrap();
    assert!(one.linked_from.is_none());
    let mut second = CheckpointManager::create(dir.path(), "e").unwrap();
    let two = second
        .save_base_model(&base_tensors(1.0), &json!({"depth": 2}))
        .unwrap();
    assert_eq!(two.linked_from.as_deref(), Some(one.path.as_path()));
    assert_eq!(one.digest, two.digest);
    assert_eq!(inode(&one.path), inode(&two.path));
    let mut third = CheckpointManager::create(dir.path(), "e").unwrap();
    let three = third
        .save_base_model(&base_tensors(3.0), &json!({"depth": 2}))
        .unwrap();
    assert!(three.linked_from.is_none(), "different content is written");
    assert_ne!(inode(&one.path), inode(&three.path));
    assert!(second.load_base_model().is_ok());
    assert!(second.verify().is_ok());
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl SaveHooks for Recorder {
    fn before_save(&mut self, run: &RunLayout, checkpoint: &LoraCheckpoint) {
        let written = run
            .checkpoint(format::CheckpointName::Epoch(checkpoint.epoch))
            .exists();
        self.0
            .lock()
            .unwrap()
            .push(format!("before {} written={written}", checkpoint.epoch));
    }
    fn after_save(&mut self, _run: &RunLayout, saved: &SavedCheckpoint) {
        self.0.lock().unwrap().push(format!(
            "after {} exists={}",
            saved.epoch,
            saved.path.exists()
        ));
    }
}

#[test]
fn hooks_run_around_every_save() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let mut run = CheckpointManager::create(dir.path(), "e")
        .unwrap()
        .with_hooks(recorder.clone());
    run.save_lora_weights(&checkpoint(1, 0.5), "val_loss", Mode::Min)
        .unwrap();
    run.save_lora_weights(&checkpoint(2, 0.4), "val_loss", Mode::Min)
        .unwrap();
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [
            "before 1 written=false",
            "after 1 exists=true",
            "before 2 written=false",
            "after 2 exists=true"
        ]
    );
}

#[test]
fn a_second_writer_gets_a_clear_error_and_readers_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = CheckpointManager::create(dir.path(), "e").unwrap();
    let err = CheckpointManager::open(dir.path(), 1).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("run_001") && text.contains("another process"),
        "{text}"
    );
    let err = CheckpointManager::open_or_create(dir.path(), "e", Some(1)).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");

    writer
        .save_lora_weights(&checkpoint(1, 0.5), "val_loss", Mode::Min)
        .unwrap();
    let mut reader = CheckpointManager::open_read_only(dir.path(), 1).unwrap();
    assert!(!reader.is_writer());
    assert_eq!(reader.load_lora_weights(Which::Last).unwrap().epoch, 1);
    let err = reader
        .save_lora_weights(&checkpoint(2, 0.4), "val_loss", Mode::Min)
        .unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
    assert!(reader.set_status(RunStatus::Failed).is_err());
    writer
        .save_lora_weights(&checkpoint(2, 0.4), "val_loss", Mode::Min)
        .unwrap();
    reader.reload().unwrap();
    assert_eq!(reader.list_checkpoints().len(), 2);
    drop(writer);
    assert!(
        CheckpointManager::open(dir.path(), 1).is_ok(),
        "the lock goes with its holder"
    );
}

#[test]
fn bad_metadata_is_an_error_naming_the_file_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    drop(CheckpointManager::create(dir.path(), "e").unwrap());
    drop(CheckpointManager::create(dir.path(), "e").unwrap());
    let meta = dir.path().join("run_001/metadata.json");
    fs::write(&meta, b"{ not json").unwrap();
    for err in [
        CheckpointManager::open(dir.path(), 1).unwrap_err(),
        CheckpointManager::open_read_only(dir.path(), 1).unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::Json { .. }), "{err}");
        assert!(err.to_string().contains("run_001/metadata.json"), "{err}");
    }
    assert_eq!(fs::read(&meta).unwrap(), b"{ not json", "nothing rewritten");

    fs::write(
        &meta,
        serde_json::to_vec(
            &json!({"run_number": 7, "experiment_name": "e", "created_at": "x",
        "checkpoints": [], "best_checkpoint": null, "training_config": {}, "lora_config": {}}),
        )
        .unwrap(),
    )
    .unwrap();
    let err = CheckpointManager::open(dir.path(), 1).unwrap_err();
    assert!(matches!(err, StoreError::BadMetadata { .. }), "{err}");
    fs::remove_file(&meta).unwrap();
    let err = CheckpointManager::open(dir.path(), 1).unwrap_err();
    assert!(err.to_string().contains("metadata.json"), "{err}");

    // The listing shows the broken run and still lists the healthy one.
    let runs = list_all_runs(dir.path()).unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs[0]
        .info
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("run_001/metadata.json"));
    assert!(runs[1].info.is_ok());
}

#[test]
fn unknown_metadata_fields_survive_writes() {
    let dir = tempfile::tempdir().unwrap();
    drop(CheckpointManager::create(dir.path(), "e").unwrap());
    let path = dir.path().join("run_001/metadata.json");
    let mut meta: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    meta["wandb_id"] = json!("abc");
    fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let mut run = CheckpointManager::open(dir.path(), 1).unwrap();
    run.save_lora_weights(&checkpoint(1, 0.5), "val_loss", Mode::Min)
        .unwrap();
    let meta: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(meta["wandb_id"], "abc");
}

/// The Python interpreter of the project's venv (`<repo>/.venv`), if set up.
fn python() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let python = repo.join(".venv/bin/python");
    python.is_file().then_some(python)
}

#[test]
fn python_safetensors_loads_every_file_we_write() {
    let Some(python) = python() else {
        println!("NOTICE: skipping the Python interop check: no .venv at the repo root (run `make setup`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::create(dir.path(), "e").unwrap();
    run.save_base_model(&base_tensors(1.0), &json!({"depth": 2}))
        .unwrap();
    run.save_lora_weights(&checkpoint(1, 0.5), "val_loss", Mode::Min)
        .unwrap();
    run.save_lora_weights(&checkpoint(2, 0.4), "val_loss", Mode::Min)
        .unwrap();
    let script = r#"
import json, sys, glob
from safetensors.numpy import load_file
from safetensors import safe_open
files = sorted(glob.glob(sys.argv[1] + "/**/*.safetensors", recursive=True))
assert len(files) == 5, files
for f in files:
    tensors = load_file(f)
    with safe_open(f, "np") as h:
        meta = h.metadata()
    assert meta["format"] in ("diffit-lora-checkpoint", "diffit-base-model"), meta
    if meta["format"] == "diffit-lora-checkpoint":
        assert tensors["blocks.0.attn.qkv.lora_A.weight"].shape == (4, 16)
        assert tensors["optimizer.exp_avg.blocks.0.attn.qkv.lora_A.weight"].dtype.name == "float32"
        assert json.loads(meta["metrics"])["val_loss"] in (0.5, 0.4)
        assert int(meta["epoch"]) in (1, 2)
        a = tensors["blocks.0.attn.qkv.lora_A.weight"]
        assert abs(float(a[0, 1]) - (int(meta["epoch"]) + 0.001)) < 1e-6, a[0, 1]
print("ok", len(files))
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 5");
}

/// NaN and ±∞ metrics (a diverged epoch) keep the run readable everywhere and never become best.
#[test]
fn non_finite_metrics_keep_the_run_readable_and_never_become_best() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::create(dir.path(), "e").unwrap();
    run.set_base_metrics([("val_loss".to_string(), f64::INFINITY)].into())
        .unwrap();
    for (epoch, loss) in [
        (1, 0.5),
        (2, f64::NAN),
        (3, f64::INFINITY),
        (4, f64::NEG_INFINITY),
    ] {
        let saved = run
            .save_lora_weights(&checkpoint(epoch, loss), "val_loss", Mode::Min)
            .unwrap();
        assert_eq!(saved.is_best, epoch == 1, "epoch {epoch}");
    }
    drop(run);
    // Reopened as writer and read-only, listed, loaded: nothing fails, the values survive.
    let run = CheckpointManager::open(dir.path(), 1).unwrap();
    assert_eq!(run.get_best_checkpoint_info().map(|b| b.epoch), Some(1));
    assert!(run.metadata().checkpoint(2).unwrap().metrics["val_loss"].is_nan());
    assert_eq!(run.metadata().base_metrics["val_loss"], f64::INFINITY);
    let epoch3 = run.load_lora_weights(Which::Epoch(3)).unwrap();
    assert_eq!(epoch3.metrics["val_loss"], f64::INFINITY);
    assert!(run.load_lora_weights(Which::Epoch(2)).unwrap().metrics["val_loss"].is_nan());
    assert_eq!(
        run.load_for_resume().unwrap().unwrap().checkpoint.metrics["val_loss"],
        f64::NEG_INFINITY
    );
    assert!(run.verify().is_ok());
    assert!(run.get_run_summary().contains("val_loss=NaN"));
    drop(run);
    let listed = list_all_runs(dir.path()).unwrap().remove(0).info.unwrap();
    assert_eq!(listed.best.and_then(|b| b.value), Some(0.5));
    assert_eq!(listed.base_val_loss, Some(f64::INFINITY));
}

/// Resuming past damaged newer epochs records them as damaged: retention, `best` and `last`
/// then go by the valid epochs only, so the epoch saved next is never pruned in favour of a
/// damaged one.
#[test]
fn damaged_epochs_passed_over_by_resume_leave_retention_best_and_last() {
    for keep_last_n in [1usize, 2] {
        let dir = tempfile::tempdir().unwrap();
        let mut run = CheckpointManager::create(dir.path(), "e").unwrap();
        // Epoch 4 is the best and the newest; 3 and 4 get damaged.
        for (epoch, loss) in [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.1)] {
            run.save_lora_weights(&checkpoint(epoch, loss), "val_loss", Mode::Min)
                .unwrap();
        }
        drop(run);
        for epoch in [3, 4] {
            let path = dir
                .path()
                .join(format!("run_001/lora_weights/epoch_{epoch:03}.safetensors"));
            let mut bytes = fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x5a;
            fs::write(&path, bytes).unwrap();
        }
        let mut run = CheckpointManager::open(dir.path(), 1).unwrap();
        let resume = run.resume().unwrap().unwrap();
        assert_eq!(resume.checkpoint.epoch, 2);
        assert_eq!(resume.skipped_epochs, [4, 3]);
        let meta = run.metadata();
        for epoch in [3, 4] {
            let reason = meta.checkpoint(epoch).unwrap().damaged.clone().unwrap();
            assert!(reason.contains(&format!("epoch_{epoch:03}")), "{reason}");
        }
        assert_eq!(run.get_best_checkpoint_info().map(|b| b.epoch), Some(2));
        let link = |name: &str| {
            dir.path()
                .join(format!("run_001/lora_weights/{name}.safetensors"))
        };
        assert_eq!(inode(&link("last")), inode(&link("epoch_002")));
        assert_eq!(inode(&link("best")), inode(&link("epoch_002")));
        assert!(run.verify().is_ok(), "damaged epochs are known, not live");

        // Training goes on from epoch 2: epoch 3 is saved again, then retention runs.
        run.save_lora_weights(&checkpoint(3, 0.6), "val_loss", Mode::Min)
            .unwrap();
        let deleted = run.cleanup_old_checkpoints(keep_last_n, true).unwrap();
        let live: Vec<u32> = run.list_checkpoints().iter().map(|c| c.epoch).collect();
        assert!(
            live.contains(&3),
            "keep {keep_last_n}: the new epoch 3 stays: {live:?}"
        );
        assert!(
            !deleted.contains(&4),
            "the damaged epoch is not retention's to delete"
        );
        assert!(link("epoch_004").exists(), "kept for inspection");
        assert_eq!(run.load_lora_weights(Which::Last).unwrap().epoch, 3);
        assert_eq!(run.get_best_checkpoint_info().map(|b| b.epoch), Some(3));
        let err = run.load_lora_weights(Which::Epoch(4)).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(run.get_run_summary().contains("(damaged:"));
        drop(run);
        // The listing counts only usable epochs.
        let info = list_all_runs(dir.path()).unwrap().remove(0).info.unwrap();
        assert_eq!(info.checkpoints_count, live.len());
    }
}
