//! Loading LoRA checkpoints: by epoch, `best` or `last`, each verified against its recorded
//! checksum, and the newest valid one for resuming (passing over damaged ones, naming each).

use std::fmt;
use std::path::{Path, PathBuf};

use format::{BestCheckpoint, CheckpointName, CheckpointRecord};
use serde_json::Map;

use super::atomic::remove_if_exists;
use super::best::BestPolicy;

use super::checkpoint::LoraCheckpoint;
use super::checksum::record_digest;
use super::error::{Result, StoreError};
use super::manager::CheckpointManager;
use super::tensor_file::read_tensor_file;

/// Which LoRA checkpoint to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// One saved epoch (1-based).
    Epoch(u32),
    /// The best epoch by the monitored metric.
    Best,
    /// The newest saved epoch.
    Last,
}

impl From<Which> for CheckpointName {
    fn from(which: Which) -> Self {
        match which {
            Which::Epoch(n) => CheckpointName::Epoch(n),
            Which::Best => CheckpointName::Best,
            Which::Last => CheckpointName::Last,
        }
    }
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        CheckpointName::from(*self).fmt(f)
    }
}

/// The state to resume from, and the damaged files passed over to find it.
#[derive(Debug)]
pub struct Resume {
    /// The newest valid checkpoint.
    pub checkpoint: LoraCheckpoint,
    /// Its file.
    pub path: PathBuf,
    /// Newer checkpoints that failed to load, newest first.
    pub skipped: Vec<StoreError>,
    /// Their epochs, in the same order.
    pub skipped_epochs: Vec<u32>,
}

impl CheckpointManager {
    /// Where `which` lives and the record whose checksum it must match.
    fn resolve(&self, which: Which) -> Result<(PathBuf, &CheckpointRecord)> {
        let missing = |reason: String| StoreError::MissingCheckpoint {
            which: which.to_string(),
            run_dir: self.layout.root(),
            reason,
        };
        match which {
            Which::Epoch(n) => match self.metadata.checkpoint(n) {
                Some(r) if r.is_live() => Ok((self.layout.checkpoint(CheckpointName::Epoch(n)), r)),
                Some(CheckpointRecord {
                    damaged: Some(reason),
                    ..
                }) => Err(missing(format!("epoch {n} is damaged: {reason}"))),
                Some(_) => Err(missing(format!("epoch {n} was removed by retention"))),
                None => Err(missing(format!("epoch {n} was never saved"))),
            },
            Which::Last => match self.newest_live() {
                Some(r) => Ok((self.layout.checkpoint(CheckpointName::Epoch(r.epoch)), r)),
                None => Err(missing("no epoch saved yet".into())),
            },
            Which::Best => {
                let best = self
                    .metadata
                    .best_checkpoint
                    .as_ref()
                    .ok_or_else(|| missing("no best epoch recorded yet".into()))?;
                let record = self.metadata.checkpoint(best.epoch).ok_or_else(|| {
                    StoreError::BadMetadata {
                        path: self.layout.metadata(),
                        reason: format!(
                            "best_checkpoint names epoch {}, which is not in checkpoints",
                            best.epoch
                        ),
                    }
                })?;
                // The epoch file is authoritative while it exists; best.safetensors is a link to
                // it that may lag by one save after a crash (repaired on the next open).
                let name = if record.removed {
                    CheckpointName::Best
                } else {
                    CheckpointName::Epoch(best.epoch)
                };
                Ok((self.layout.checkpoint(name), record))
            }
        }
    }

    pub(crate) fn load_checkpoint_file(
        path: &Path,
        record: &CheckpointRecord,
    ) -> Result<LoraCheckpoint> {
        let file = read_tensor_file(path, record_digest(record).as_ref())?;
        let checkpoint = LoraCheckpoint::from_tensor_file(path, file)?;
        if checkpoint.epoch != record.epoch {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                reason: format!(
                    "holds epoch {}, metadata expects epoch {}",
                    checkpoint.epoch, record.epoch
                ),
            });
        }
        Ok(checkpoint)
    }

    /// The metadata record of the checkpoint `which` names: the epoch it holds and the checksum
    /// its file is verified against; the error says why there is none (never saved, removed,
    /// damaged, no best yet).
    pub fn checkpoint_record(&self, which: Which) -> Result<&CheckpointRecord> {
        self.resolve(which).map(|(_, record)| record)
    }

    /// Loads and verifies a LoRA checkpoint.
    pub fn load_lora_weights(&self, which: Which) -> Result<LoraCheckpoint> {
        self.refuse_if_seed("load a checkpoint of")?;
        let (path, record) = self.resolve(which)?;
        Self::load_checkpoint_file(&path, record)
    }

    /// The newest checkpoint that loads and verifies, passing over damaged ones with a warning
    /// naming each, and never one kept without its optimizer state (`weights_only`); `None`
    /// for a run with no saved epoch.
    pub fn load_for_resume(&self) -> Result<Option<Resume>> {
        self.refuse_if_seed("resume")?;
        let all_live: Vec<&CheckpointRecord> = self.metadata.live_checkpoints().collect();
        if all_live.is_empty() {
            return Ok(None);
        }
        let weights_only: Vec<String> = all_live
            .iter()
            .filter(|c| c.weights_only)
            .map(|c| c.epoch.to_string())
            .collect();
        let mut live: Vec<&CheckpointRecord> =
            all_live.into_iter().filter(|c| c.is_resumable()).collect();
        live.sort_by_key(|c| std::cmp::Reverse(c.epoch));
        let (mut skipped, mut skipped_epochs) = (Vec::new(), Vec::new());
        for record in live {
            let path = self.layout.checkpoint(CheckpointName::Epoch(record.epoch));
            match Self::load_checkpoint_file(&path, record) {
                Ok(checkpoint) => {
                    return Ok(Some(Resume {
                        checkpoint,
                        path,
                        skipped,
                        skipped_epochs,
                    }))
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), "skipping damaged checkpoint: {e}");
                    skipped.push(e);
                    skipped_epochs.push(record.epoch);
                }
            }
        }
        let mut damaged: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        if !weights_only.is_empty() {
            damaged.push(format!(
                "epoch {} kept no optimizer state (keep_optimizer_last_n) and cannot be resumed from",
                weights_only.join(", ")
            ));
        }
        Err(StoreError::NoValidCheckpoint {
            run_dir: self.layout.root(),
            damaged,
        })
    }

    /// [`load_for_resume`](Self::load_for_resume) for the run's writer, which also records each
    /// damaged epoch it passed over (`damaged`, with the reason) in one metadata commit: from then
    /// on they are never resumed from, pruned by retention, `best` or `last`. When the best epoch
    /// was damaged, the best of the remaining epochs takes its place; the links follow.
    pub fn resume(&mut self) -> Result<Option<Resume>> {
        self.require_writer("resume")?;
        let Some(resume) = self.load_for_resume()? else {
            return Ok(None);
        };
        if resume.skipped_epochs.is_empty() {
            return Ok(Some(resume));
        }
        let mut next = self.metadata.clone();
        for (epoch, error) in resume.skipped_epochs.iter().zip(&resume.skipped) {
            if let Some(record) = next.checkpoints.iter_mut().find(|c| c.epoch == *epoch) {
                record.damaged = Some(error.to_string());
            }
        }
        let best_damaged = next
            .best_checkpoint
            .as_ref()
            .is_some_and(|b| resume.skipped_epochs.contains(&b.epoch));
        if best_damaged {
            let policy = BestPolicy::new(
                next.monitor
                    .clone()
                    .unwrap_or_else(|| "val_loss".to_string()),
                next.mode.unwrap_or_default(),
            );
            let mut best: Option<BestCheckpoint> = None;
            for record in next.live_checkpoints() {
                if policy.is_new_best(best.as_ref(), record.epoch, &record.metrics) {
                    best = Some(BestCheckpoint {
                        epoch: record.epoch,
                        path: CheckpointName::Best.relative_path(self.run_number()),
                        metrics: record.metrics.clone(),
                        extra: Map::new(),
                    });
                }
            }
            next.best_checkpoint = best;
        }
        self.commit(next)?;
        if let Some(last) = self.newest_live() {
            self.ensure_link(CheckpointName::Epoch(last.epoch), CheckpointName::Last)?;
        }
        match self.metadata.best_checkpoint.as_ref().map(|b| b.epoch) {
            Some(epoch) => self.ensure_link(CheckpointName::Epoch(epoch), CheckpointName::Best)?,
            None if best_damaged => {
                remove_if_exists(&self.layout.checkpoint(CheckpointName::Best))?;
            }
            None => {}
        }
        Ok(Some(resume))
    }
}
