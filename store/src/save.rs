//! Saving epochs: the tensor file first, then `metadata.json` naming it (the commit point), then
//! the `best`/`last` links; and retention, which marks epochs removed before deleting files.

use format::layout::PENDING_SUFFIX;
use format::{BestCheckpoint, CheckpointName, CheckpointRecord, Mode};
use serde_json::Map;

use super::atomic::StagedFile;
use super::atomic::{link_or_copy_unsynced, remove_if_exists, sync_dir};
use super::best::BestPolicy;
use super::checkpoint::LoraCheckpoint;
use super::error::{IoContext, Result, StoreError};
use super::manager::{now, upsert_epoch_metrics, CheckpointManager};
use super::retention::{RetentionPlan, RetentionPolicy};
use super::saved::SavedCheckpoint;
use super::tensor_file::{stage_tensor_file, write_tensor_file};

impl CheckpointManager {
    /// Saves one epoch's checkpoint, records it, and updates `best` (by `monitor`, `mode`) and
    /// `last`. Saving an epoch again replaces it.
    pub fn save_lora_weights(
        &mut self,
        checkpoint: &LoraCheckpoint,
        monitor: &str,
        mode: Mode,
    ) -> Result<SavedCheckpoint> {
        self.require_writer("save a LoRA checkpoint")?;
        let epoch = checkpoint.epoch;
        let name = CheckpointName::Epoch(epoch);
        let path = self.layout.checkpoint(name);
        if epoch == 0 {
            return Err(StoreError::BadTensorFile {
                path,
                reason: "epochs are 1-based; got epoch 0".into(),
            });
        }
        self.hooks.before_save(&self.layout, checkpoint);
        let (tensor_file, digest) =
            stage_tensor_file(&path, checkpoint.all_tensors(&path)?, &checkpoint.header())?;

        let run = self.run_number();
        let record = CheckpointRecord {
            epoch,
            path: name.relative_path(run),
            metrics: checkpoint.metrics.clone(),
            saved_at: now(),
            checksum: Some(digest.checksum),
            size: Some(digest.size),
            global_step: Some(checkpoint.global_step),
            removed: false,
            damaged: None,
            weights_only: false,
            extra: Map::new(),
        };
        let mut next = self.metadata.clone();
        match next.checkpoints.iter_mut().find(|c| c.epoch == epoch) {
            Some(existing) => *existing = record.clone(),
            None => next.checkpoints.push(record.clone()),
        }
        next.checkpoints.sort_by_key(|c| c.epoch);
        upsert_epoch_metrics(&mut next.metric_history, epoch, &checkpoint.metrics);
        next.monitor = Some(monitor.to_string());
        next.mode = Some(mode);

        let is_best = BestPolicy::new(monitor, mode).is_new_best(
            next.best_checkpoint.as_ref(),
            epoch,
            &checkpoint.metrics,
        );
        if is_best {
            next.best_checkpoint = Some(BestCheckpoint {
                epoch,
                path: CheckpointName::Best.relative_path(run),
                metrics: checkpoint.metrics.clone(),
                extra: Map::new(),
            });
        }
        let is_last = next.live_checkpoints().map(|c| c.epoch).max() == Some(epoch);
        let metadata = self.stage_metadata(&mut next)?;
        publish_in_order(tensor_file, metadata)?;
        self.metadata = next;

        // The links follow metadata, which is durable now. Their renames are not fsync'd: an
        // OS crash can only leave a link on its previous (complete) file, and `repair` re-points
        // it on the next open. That saves 2 of a save's 6 fsyncs.
        if is_last {
            link_or_copy_unsynced(&path, &self.layout.checkpoint(CheckpointName::Last))?;
        }
        if is_best {
            link_or_copy_unsynced(&path, &self.layout.checkpoint(CheckpointName::Best))?;
        }
        let saved = SavedCheckpoint {
            epoch,
            path,
            record,
            is_best,
            is_last,
        };
        self.hooks.after_save(&self.layout, &saved);
        Ok(saved)
    }

    /// Deletes old epoch files by [`RetentionPolicy`]; their entries stay, marked `removed`.
    /// Returns the epochs deleted.
    pub fn cleanup_old_checkpoints(
        &mut self,
        keep_last_n: usize,
        keep_best: bool,
    ) -> Result<Vec<u32>> {
        Ok(self
            .apply_retention(RetentionPolicy::new(keep_last_n, keep_best))?
            .delete)
    }

    /// Applies a [`RetentionPolicy`] (top-k ranked by the run's monitored metric): deletes what
    /// it says to delete (entries stay, marked `removed`) and rewrites the epochs that lose
    /// their optimizer state (entries marked `weights_only`, with the new checksum), in one
    /// metadata commit. The rewritten files are written whole beside their epoch file first
    /// (`epoch_NNN.safetensors.pending`) and renamed into place after the commit; a crash in
    /// between is finished by the next writer ([`CheckpointManager::open`]).
    pub fn apply_retention(&mut self, policy: RetentionPolicy) -> Result<RetentionPlan> {
        self.require_writer("clean up checkpoints")?;
        let best = self.metadata.best_checkpoint.as_ref().map(|b| b.epoch);
        let ranking = BestPolicy::new(
            self.metadata
                .monitor
                .clone()
                .unwrap_or_else(|| "val_loss".to_string()),
            self.metadata.mode.unwrap_or_default(),
        );
        let mut plan = policy.plan_history(&self.metadata.checkpoints, best, Some(&ranking));
        if plan.delete.is_empty() && plan.strip_optimizer.is_empty() {
            return Ok(plan);
        }
        let mut next = self.metadata.clone();
        let mut pending = Vec::new();
        let mut stripped = Vec::new();
        for &epoch in &plan.strip_optimizer {
            let Some(record) = self.metadata.checkpoint(epoch) else {
                continue;
            };
            let path = self.layout.checkpoint(CheckpointName::Epoch(epoch));
            // A file that no longer verifies is left as it is; a resume will find it damaged.
            let mut checkpoint = match Self::load_checkpoint_file(&path, record) {
                Ok(checkpoint) => checkpoint,
                Err(e) => {
                    tracing::warn!(file = %path.display(), "not dropping the optimizer state of a checkpoint that does not load: {e}");
                    continue;
                }
            };
            checkpoint.optimizer_tensors.clear();
            checkpoint.optimizer = serde_json::Value::Null;
            let temp = pending_path(&path);
            let digest =
                write_tensor_file(&temp, checkpoint.all_tensors(&temp)?, &checkpoint.header())?;
            if let Some(r) = next.checkpoints.iter_mut().find(|c| c.epoch == epoch) {
                r.checksum = Some(digest.checksum);
                r.size = Some(digest.size);
                r.weights_only = true;
            }
            pending.push((temp, path));
            stripped.push(epoch);
        }
        plan.strip_optimizer = stripped;
        for record in next
            .checkpoints
            .iter_mut()
            .filter(|c| plan.delete.contains(&c.epoch))
        {
            record.removed = true;
        }
        self.commit(next)?;
        for &epoch in &plan.delete {
            remove_if_exists(&self.layout.checkpoint(CheckpointName::Epoch(epoch)))?;
        }
        for (temp, path) in &pending {
            std::fs::rename(temp, path).ctx("rename", temp)?;
        }
        sync_dir(&self.layout.lora_dir())?;
        // `best` was a link to the replaced file; it follows the new one.
        if let Some(best) = best.filter(|b| plan.strip_optimizer.contains(b)) {
            self.ensure_link(CheckpointName::Epoch(best), CheckpointName::Best)?;
        }
        Ok(plan)
    }

    /// Finishes the renames of [`apply_retention`](Self::apply_retention) that a crash
    /// interrupted: a pending file whose size metadata records for its epoch replaces the
    /// epoch file; any other pending file was never committed and is deleted.
    pub(crate) fn finish_pending(&self) -> Result<()> {
        let lora_dir = self.layout.lora_dir();
        let entries = match std::fs::read_dir(&lora_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("list", lora_dir, e)),
        };
        for entry in entries {
            let entry = entry.ctx("list", &lora_dir)?;
            let temp = entry.path();
            let Some(target) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(PENDING_SUFFIX))
                .map(|n| lora_dir.join(n))
            else {
                continue;
            };
            let epoch = target
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<CheckpointName>().ok());
            let size = entry.metadata().ctx("stat", &temp)?.len();
            let committed = match epoch {
                Some(CheckpointName::Epoch(e)) => self
                    .metadata
                    .checkpoint(e)
                    .is_some_and(|r| r.is_live() && r.weights_only && r.size == Some(size)),
                _ => false,
            };
            if committed {
                tracing::info!(file = %target.display(), "finished replacing a checkpoint by its weights-only version");
                std::fs::rename(&temp, &target).ctx("rename", &temp)?;
            } else {
                remove_if_exists(&temp)?;
            }
        }
        sync_dir(&lora_dir)
    }
}

/// Makes a staged epoch file durable under its name, then commits the staged metadata.json that
/// names it: the order of [`write_atomic`](super::atomic::write_atomic) twice over, with one
/// fsync taken off the path. Metadata's temporary bytes name nothing until their rename, so
/// their fsync runs beside the tensor file's fsync, rename and directory fsync (two fsyncs in
/// flight at once share the filesystem's journal commit); metadata.json is renamed into place
/// only after all of that is durable, and its directory is fsync'd last. A crash at any instant
/// leaves the previous metadata.json (which does not name the new file: `repair` deletes it) or
/// the new one naming a complete, durable file.
fn publish_in_order(tensor_file: StagedFile, mut metadata: StagedFile) -> Result<()> {
    let synced = std::thread::scope(|scope| {
        let metadata_sync = scope.spawn(|| metadata.sync());
        let mut tensor_file = tensor_file;
        let tensor = tensor_file.sync().and_then(|()| tensor_file.publish());
        let metadata = match metadata_sync.join() {
            Ok(outcome) => outcome,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        tensor.and(metadata)
    });
    synced?;
    metadata.publish()
}

/// Where the replacement of `epoch_file` waits for its rename.
fn pending_path(epoch_file: &std::path::Path) -> std::path::PathBuf {
    let mut name = epoch_file.as_os_str().to_owned();
    name.push(PENDING_SUFFIX);
    std::path::PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;

    use super::*;
    use crate::error::IoContext;

    fn staged(path: &std::path::Path, bytes: &[u8]) -> StagedFile {
        StagedFile::write(path, |w| w.write_all(bytes).ctx("write", path))
            .unwrap()
            .0
    }

    #[test]
    fn metadata_follows_the_epoch_file_and_nothing_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("lora")).unwrap();
        let (epoch, metadata) = (
            dir.path().join("lora/epoch_001.safetensors"),
            dir.path().join("metadata.json"),
        );
        fs::write(&metadata, b"old").unwrap();
        publish_in_order(staged(&epoch, b"tensors"), staged(&metadata, b"new")).unwrap();
        assert_eq!(fs::read(&epoch).unwrap(), b"tensors");
        assert_eq!(fs::read(&metadata).unwrap(), b"new");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary file"
        );
        assert_eq!(fs::read_dir(dir.path().join("lora")).unwrap().count(), 1);
    }

    #[test]
    fn metadata_is_not_renamed_when_the_epoch_file_cannot_be_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("lora")).unwrap();
        let metadata = dir.path().join("metadata.json");
        fs::write(&metadata, b"old").unwrap();
        let epoch = staged(&dir.path().join("lora/epoch_001.safetensors"), b"tensors");
        let next = staged(&metadata, b"new");
        // The epoch's directory goes away before its rename, which then fails.
        fs::remove_dir_all(dir.path().join("lora")).unwrap();
        assert!(publish_in_order(epoch, next).is_err());
        assert_eq!(
            fs::read(&metadata).unwrap(),
            b"old",
            "the commit point did not move"
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "metadata's staged bytes were removed"
        );
    }
}
