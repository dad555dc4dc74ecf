//! Retention on disk beyond keep-last-N: keep everything (`keep_last_n: 0`), the top k, and
//! optimizer state for the newest epochs only (older epochs keep weights and metrics, are not
//! resumed from, and a crash between the metadata commit and the rename is finished on open).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

use std::fs;
use std::path::Path;

use format::Mode;
use serde_json::json;
use store::{CheckpointManager, LoraCheckpoint, RetentionPolicy, StoreError, StoredTensor, Which};

fn tensor(seed: f32, n: usize) -> StoredTensor {
    StoredTensor::new(vec![n, 8], (0..n * 8).map(|i| seed + i as f32).collect()).unwrap()
}

fn checkpoint(epoch: u32, val_loss: f64) -> LoraCheckpoint {
    let mut c = LoraCheckpoint::new(epoch, u64::from(epoch) * 3);
    let name = "blocks.0.attn.qkv.lora_A.weight";
    c.lora.insert(name.into(), tensor(epoch as f32, 4));
    c.insert_moments(name, tensor(0.5, 4), tensor(0.25, 4));
    c.metrics.insert("val_loss".into(), val_loss);
    c.optimizer = json!({"step": epoch * 3});
    c.scheduler = json!({"step": epoch * 3});
    c.rng = json!({"data": [epoch]});
    c.lora_config = json!({"r": 4});
    c
}

fn epoch_file(dir: &Path, epoch: u32) -> std::path::PathBuf {
    dir.join(format!("run_001/lora_weights/epoch_{epoch:03}.safetensors"))
}

#[test]
fn keep_last_n_zero_keeps_every_epoch_and_top_k_keeps_the_best_k() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::create(dir.path(), "e").unwrap();
    for (epoch, loss) in [(1, 0.5), (2, 0.1), (3, 0.4), (4, 0.2), (5, 0.6)] {
        run.save_lora_weights(&checkpoint(epoch, loss), "val_loss", Mode::Min)
            .unwrap();
        assert!(run.cleanup_old_checkpoints(0, true).unwrap().is_empty());
    }
    let policy = RetentionPolicy {
        keep_top_k: 2,
        ..RetentionPolicy::new(1, false)
    };
    let plan = run.apply_retention(policy).unwrap();
    assert_eq!(plan.delete, vec![1, 3]);
    for (epoch, kept) in [(1, false), (2, true), (3, false), (4, true), (5, true)] {
        assert_eq!(
            epoch_file(dir.path(), epoch).exists(),
            kept,
            "epoch {epoch}"
        );
    }
    assert!(run.verify().is_ok());
}

#[test]
fn older_epochs_lose_only_their_optimizer_state_and_resume_passes_them_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::create(dir.path(), "e").unwrap();
    let policy = RetentionPolicy {
        keep_optimizer_last_n: Some(1),
        ..RetentionPolicy::new(0, true)
    };
    // Epoch 1 is the best and stays so.
    for (epoch, loss) in [(1, 0.1), (2, 0.3), (3, 0.2)] {
        run.save_lora_weights(&checkpoint(epoch, loss), "val_loss", Mode::Min)
            .unwrap();
        run.apply_retention(policy).unwrap();
    }
    let full = fs::metadata(epoch_file(dir.path(), 3)).unwrap().len();
    for epoch in [1, 2] {
        let record = run.metadata().checkpoint(epoch).unwrap().clone();
        assert!(record.weights_only && record.is_live() && !record.is_resumable());
        assert!(record.size.unwrap() < full);
        let loaded = run.load_lora_weights(Which::Epoch(epoch)).unwrap();
        assert!(loaded.optimizer_tensors.is_empty() && loaded.optimizer.is_null());
        assert_eq!(loaded.lora, checkpoint(epoch, 0.0).lora);
        assert_eq!(loaded.metrics["val_loss"], [0.1, 0.3][epoch as usize - 1]);
    }
    let summary = run.get_run_summary();
    assert_eq!(
        summary
            .matches("(weights only: cannot be resumed from)")
            .count(),
        2,
        "{summary}"
    );
    // best.safetensors follows the rewritten epoch 1 (it was a link to the old file).
    assert!(run
        .load_lora_weights(Which::Best)
        .unwrap()
        .optimizer_tensors
        .is_empty());
    assert!(run.verify().is_ok(), "{:?}", run.verify().damaged);
    let resume = run.load_for_resume().unwrap().unwrap();
    assert_eq!(resume.checkpoint.epoch, 3);
    assert_eq!(resume.checkpoint.optimizer_tensors.len(), 2);

    // The only resumable epoch damaged: the error says why the older ones are not used.
    let path = epoch_file(dir.path(), 3);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    let err = run.load_for_resume().unwrap_err();
    assert!(matches!(err, StoreError::NoValidCheckpoint { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("epoch 1, 2 kept no optimizer state"),
        "{text}"
    );
}

#[test]
fn a_rewrite_interrupted_after_its_commit_is_finished_by_the_next_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::create(dir.path(), "e").unwrap();
    for (epoch, loss) in [(1, 0.1), (2, 0.3)] {
        run.save_lora_weights(&checkpoint(epoch, loss), "val_loss", Mode::Min)
            .unwrap();
    }
    let path = epoch_file(dir.path(), 1);
    let full = fs::read(&path).unwrap();
    let policy = RetentionPolicy {
        keep_optimizer_last_n: Some(1),
        ..RetentionPolicy::new(0, true)
    };
    run.apply_retention(policy).unwrap();
    drop(run);
    // Put the state back as a crash after the commit, before the rename, leaves it: the full
    // file in place and the weights-only one pending beside it.
    let pending = path.with_extension("safetensors.pending");
    fs::rename(&path, &pending).unwrap();
    fs::write(&path, &full).unwrap();
    // A pending file metadata never committed is deleted.
    let stray = epoch_file(dir.path(), 2).with_extension("safetensors.pending");
    fs::write(&stray, b"junk").unwrap();

    let run = CheckpointManager::open(dir.path(), 1).unwrap();
    assert!(!pending.exists() && !stray.exists());
    let report = run.verify();
    assert!(report.is_ok(), "{:?}", report.damaged);
    assert!(run
        .load_lora_weights(Which::Epoch(1))
        .unwrap()
        .optimizer_tensors
        .is_empty());
}

#[test]
fn resume_falls_back_to_the_newest_intact_epoch_that_kept_its_moments() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = CheckpointManager::create(dir.path(), "e").unwrap();
    let policy = RetentionPolicy {
        keep_optimizer_last_n: Some(2),
        ..RetentionPolicy::new(0, true)
    };
    for (epoch, loss) in [(1, 0.4), (2, 0.3), (3, 0.2), (4, 0.1)] {
        run.save_lora_weights(&checkpoint(epoch, loss), "val_loss", Mode::Min)
            .unwrap();
        run.apply_retention(policy).unwrap();
    }
    let resumable: Vec<u32> = run
        .metadata()
        .checkpoints
        .iter()
        .filter(|c| c.is_resumable())
        .map(|c| c.epoch)
        .collect();
    assert_eq!(resumable, [3, 4]);
    fs::write(epoch_file(dir.path(), 4), b"torn").unwrap();
    let resume = run.resume().unwrap().unwrap();
    assert_eq!(resume.checkpoint.epoch, 3);
    assert_eq!(resume.skipped_epochs, [4]);
    assert!(!resume.checkpoint.optimizer_tensors.is_empty());
    // Epoch 4 is recorded damaged; epochs 1 and 2 stay as they are, weights only.
    let meta = run.metadata();
    assert!(meta.checkpoint(4).unwrap().damaged.is_some());
    assert!(meta.checkpoint(2).unwrap().weights_only && meta.checkpoint(2).unwrap().is_live());
}
