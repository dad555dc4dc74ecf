//! `CheckpointManager`: one run's directory and its metadata: opening a run (as its writer or
//! read-only), the metadata commit every write ends with, and the repair after a crash. What
//! it writes and reads lives beside it: `numbering`, `base`, `save`, `load`, `verify`, `summary`.
//!
//! Write order, which is what makes a `kill -9` at any instant harmless:
//! 1. the tensor file is written atomically under its final name;
//! 2. `metadata.json` is replaced atomically to point at it (the commit point);
//! 3. `best`/`last` hard links are replaced atomically (derived data, repaired on open).
//!
//! Retention marks entries removed in metadata first and deletes files afterwards, so
//! metadata never points at a missing file.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use format::layout::TENSOR_EXT;
use format::metadata::{EpochMetrics, Metrics, FORMAT_VERSION};
use format::{
    BestCheckpoint, CheckpointName, CheckpointRecord, Metadata, MlflowLink, RunLayout, RunStatus,
    SeedRun,
};

use super::atomic::{
    link_or_copy_atomic, remove_if_exists, remove_temp_leftovers, same_file, write_bytes_atomic,
    StagedFile,
};
use super::error::{IoContext, Result, StoreError};
use super::hooks::{NoHooks, SaveHooks};
use super::lock::acquire_writer_lock;

/// The seed's default experiment name.
pub const DEFAULT_EXPERIMENT: &str = "diffit_lora_trees";

/// One training run: creates, opens and writes `run_NNN/` under a checkpoints directory.
///
/// A writer holds an OS lock on the run's lock file for its whole life; the OS drops it when
/// the process dies, however it dies. Read-only handles take no lock and refuse to write.
pub struct CheckpointManager {
    pub(crate) layout: RunLayout,
    pub(crate) metadata: Metadata,
    pub(crate) writer_lock: Option<File>,
    pub(crate) hooks: Box<dyn SaveHooks>,
}

impl fmt::Debug for CheckpointManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointManager")
            .field("run_dir", &self.layout.root())
            .field("writer", &self.writer_lock.is_some())
            .finish_non_exhaustive()
    }
}

/// Local time in the seed's format, `2025-01-15T10:30:00`.
pub fn now() -> String {
    chrono::Local::now().format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Reads and checks a run's metadata.json.
pub fn read_metadata(layout: &RunLayout) -> Result<Metadata> {
    read_metadata_as(layout, |m: &Metadata| m.run_number)
}

/// Reads a run's metadata.json as `T` (all of it, or the part a reader needs) and checks that
/// the run number it records (`run_number_of`) is the directory's.
pub(crate) fn read_metadata_as<T: DeserializeOwned>(
    layout: &RunLayout,
    run_number_of: impl Fn(&T) -> u32,
) -> Result<T> {
    let path = layout.metadata();
    let bytes = fs::read(&path).ctx("read", &path)?;
    let metadata: T = serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
        action: "parse",
        path: path.clone(),
        source,
    })?;
    let recorded = run_number_of(&metadata);
    if recorded != layout.run_number() {
        return Err(StoreError::BadMetadata {
            path,
            reason: format!(
                "run_number is {recorded}, but the directory is run {}",
                layout.run_number()
            ),
        });
    }
    Ok(metadata)
}

/// Refuses to `action` run `run_number` under `base_dir` when the seed system wrote it
/// ([`StoreError::SeedRun`]). A run that does not exist, or whose `metadata.json` cannot be
/// read, is not refused here: whoever opens it reports that.
pub fn refuse_seed_run(
    base_dir: impl AsRef<Path>,
    run_number: u32,
    action: &'static str,
) -> Result<()> {
    let layout = RunLayout::new(base_dir.as_ref(), run_number);
    match read_metadata(&layout) {
        Ok(metadata) if metadata.seed_run(layout.in_base_training_dir()).is_some() => {
            Err(StoreError::SeedRun {
                action,
                run_number,
                run_dir: layout.root(),
            })
        }
        _ => Ok(()),
    }
}

impl CheckpointManager {
    /// Opens existing run `run_number` as its writer: takes the lock, removes crash leftovers
    /// and repairs the `best`/`last` links. A run the seed system wrote is refused
    /// ([`StoreError::SeedRun`]) before anything is written into it.
    pub fn open(base_dir: impl AsRef<Path>, run_number: u32) -> Result<Self> {
        let layout = RunLayout::new(base_dir.as_ref(), run_number);
        if !layout.root().is_dir() {
            return Err(StoreError::RunNotFound {
                run_number,
                dir: layout.root(),
            });
        }
        refuse_seed_run(layout.base_dir(), run_number, "resume or train into")?;
        let lock = acquire_writer_lock(&layout)?;
        // A run copied by a tool that skips empty directories (`aws s3 sync`, a pull of a run
        // with no epoch yet) lacks them; the writer makes them again.
        for dir in [
            layout.base_model_dir(),
            layout.lora_dir(),
            layout.logs_dir(),
        ] {
            fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        }
        for dir in [layout.root(), layout.base_model_dir(), layout.lora_dir()] {
            for leftover in remove_temp_leftovers(&dir)? {
                tracing::info!(file = %leftover.display(), "removed an interrupted write");
            }
        }
        let metadata = read_metadata(&layout)?;
        let manager = Self {
            layout,
            metadata,
            writer_lock: Some(lock),
            hooks: Box::new(NoHooks),
        };
        manager.repair()?;
        Ok(manager)
    }

    /// Opens run `run_number` for reading only: no lock, no cleanup, no writes.
    pub fn open_read_only(base_dir: impl AsRef<Path>, run_number: u32) -> Result<Self> {
        let layout = RunLayout::new(base_dir.as_ref(), run_number);
        if !layout.root().is_dir() {
            return Err(StoreError::RunNotFound {
                run_number,
                dir: layout.root(),
            });
        }
        let metadata = read_metadata(&layout)?;
        Ok(Self {
            layout,
            metadata,
            writer_lock: None,
            hooks: Box::new(NoHooks),
        })
    }

    /// Installs hooks called around every LoRA save.
    pub fn with_hooks(mut self, hooks: impl SaveHooks + 'static) -> Self {
        self.hooks = Box::new(hooks);
        self
    }

    /// The run's number.
    pub fn run_number(&self) -> u32 {
        self.layout.run_number()
    }
    /// The run's paths.
    pub fn layout(&self) -> &RunLayout {
        &self.layout
    }
    /// `<checkpoints>/run_NNN`.
    pub fn run_dir(&self) -> PathBuf {
        self.layout.root()
    }
    /// Where TensorBoard event files go.
    pub fn logs_dir(&self) -> PathBuf {
        self.layout.logs_dir()
    }
    /// The experiment name.
    pub fn experiment_name(&self) -> &str {
        &self.metadata.experiment_name
    }
    /// The metadata as last written (or read).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    /// Set when the seed system wrote the run (read-only: its `.ckpt` files are not loaded).
    pub fn seed_run(&self) -> Option<SeedRun> {
        self.metadata.seed_run(self.layout.in_base_training_dir())
    }

    /// Refuses `action` on a run the seed system wrote.
    pub(crate) fn refuse_if_seed(&self, action: &'static str) -> Result<()> {
        match self.seed_run() {
            Some(_) => Err(StoreError::SeedRun {
                action,
                run_number: self.run_number(),
                run_dir: self.layout.root(),
            }),
            None => Ok(()),
        }
    }

    /// True for a handle holding the writer lock.
    pub fn is_writer(&self) -> bool {
        self.writer_lock.is_some()
    }

    /// Re-reads metadata.json (for read-only handles following a live run).
    pub fn reload(&mut self) -> Result<()> {
        self.metadata = read_metadata(&self.layout)?;
        Ok(())
    }

    pub(crate) fn require_writer(&self, action: &'static str) -> Result<()> {
        match self.writer_lock {
            Some(_) => Ok(()),
            None => Err(StoreError::ReadOnly {
                action,
                run_dir: self.layout.root(),
            }),
        }
    }

    /// Writes `next` as metadata.json atomically, then adopts it; on error nothing changes.
    pub(crate) fn commit(&mut self, mut next: Metadata) -> Result<()> {
        self.stage_metadata(&mut next)?.publish()?;
        self.metadata = next;
        Ok(())
    }

    /// The first half of [`commit`](Self::commit): `next` (stamped) written as metadata.json's
    /// staged bytes, neither fsync'd nor renamed into place.
    pub(crate) fn stage_metadata(&self, next: &mut Metadata) -> Result<StagedFile> {
        next.updated_at = Some(now());
        next.format_version = FORMAT_VERSION;
        let path = self.layout.metadata();
        let bytes = serde_json::to_vec_pretty(&next).map_err(|source| StoreError::Json {
            action: "serialize",
            path: path.clone(),
            source,
        })?;
        StagedFile::bytes(&path, &bytes)
    }

    /// Brings files in line with metadata after a crash: deletes epoch files metadata does not
    /// list as live (written but never committed, or removed but not yet deleted) and points
    /// `best`/`last` at the epochs metadata names.
    pub(crate) fn repair(&self) -> Result<()> {
        self.finish_pending()?;
        let lora_dir = self.layout.lora_dir();
        let entries = match fs::read_dir(&lora_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("list", lora_dir, e)),
        };
        for entry in entries {
            let entry = entry.ctx("list", &lora_dir)?;
            let name = entry.file_name();
            let Some(stem) = name
                .to_str()
                .and_then(|n| n.strip_suffix(&format!(".{TENSOR_EXT}")))
            else {
                continue;
            };
            if let Ok(CheckpointName::Epoch(epoch)) = stem.parse() {
                if self.metadata.checkpoint(epoch).is_none_or(|r| r.removed) {
                    tracing::info!(file = %entry.path().display(), "removed a checkpoint metadata does not list");
                    remove_if_exists(&entry.path())?;
                }
            }
        }
        if let Some(last) = self.newest_live() {
            self.ensure_link(CheckpointName::Epoch(last.epoch), CheckpointName::Last)?;
        }
        if let Some(best) = &self.metadata.best_checkpoint {
            if self
                .metadata
                .checkpoint(best.epoch)
                .is_some_and(|r| !r.removed)
            {
                self.ensure_link(CheckpointName::Epoch(best.epoch), CheckpointName::Best)?;
            }
        }
        Ok(())
    }

    pub(crate) fn ensure_link(&self, from: CheckpointName, to: CheckpointName) -> Result<()> {
        let (src, dst) = (self.layout.checkpoint(from), self.layout.checkpoint(to));
        if src.exists() && !same_file(&src, &dst) {
            link_or_copy_atomic(&src, &dst)?;
        }
        Ok(())
    }

    pub(crate) fn newest_live(&self) -> Option<&CheckpointRecord> {
        self.metadata.live_checkpoints().max_by_key(|c| c.epoch)
    }

    /// Writes config.json (the training + LoRA configuration) and mirrors its `training` and
    /// `lora` sections into metadata's `training_config` / `lora_config` (the whole value goes
    /// to `training_config` when it has no `training` section).
    pub fn save_config(&mut self, config: &Value) -> Result<PathBuf> {
        self.require_writer("save config.json")?;
        let path = self.layout.config();
        let bytes = serde_json::to_vec_pretty(config).map_err(|source| StoreError::Json {
            action: "serialize",
            path: path.clone(),
            source,
        })?;
        write_bytes_atomic(&path, &bytes)?;
        let mut next = self.metadata.clone();
        next.training_config = config
            .get("training")
            .cloned()
            .unwrap_or_else(|| config.clone());
        if let Some(lora) = config.get("lora") {
            next.lora_config = lora.clone();
        }
        self.commit(next)?;
        Ok(path)
    }

    /// Reads config.json.
    pub fn load_config(&self) -> Result<Value> {
        let path = self.layout.config();
        let bytes = fs::read(&path).ctx("read", &path)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            action: "parse",
            path,
            source,
        })
    }

    /// Records an epoch's validation metrics for charts (whether or not the epoch is saved).
    pub fn record_epoch_metrics(&mut self, epoch: u32, metrics: &Metrics) -> Result<()> {
        self.require_writer("record metrics")?;
        let mut next = self.metadata.clone();
        upsert_epoch_metrics(&mut next.metric_history, epoch, metrics);
        self.commit(next)
    }

    /// Records the base model's own validation metrics (before any LoRA training).
    pub fn set_base_metrics(&mut self, metrics: Metrics) -> Result<()> {
        self.require_writer("record base metrics")?;
        let mut next = self.metadata.clone();
        next.base_metrics = metrics;
        self.commit(next)
    }

    /// Records the MLflow run this run is logged to.
    pub fn set_mlflow_link(&mut self, link: MlflowLink) -> Result<()> {
        self.require_writer("record the MLflow run")?;
        let mut next = self.metadata.clone();
        next.mlflow = Some(link);
        self.commit(next)
    }

    /// Records the run's lifecycle status.
    pub fn set_status(&mut self, status: RunStatus) -> Result<()> {
        self.set_status_because(status, None)
    }

    /// Records the run's status with why it is so (a failure's message); a status without a
    /// reason clears the previous one.
    pub fn set_status_because(&mut self, status: RunStatus, reason: Option<String>) -> Result<()> {
        self.require_writer("set the run status")?;
        let mut next = self.metadata.clone();
        next.status = status;
        next.status_reason = reason;
        self.commit(next)
    }

    /// Saved epochs whose files still exist, oldest first.
    pub fn list_checkpoints(&self) -> Vec<&CheckpointRecord> {
        self.metadata.live_checkpoints().collect()
    }

    /// The best checkpoint's entry, once one exists.
    pub fn get_best_checkpoint_info(&self) -> Option<&BestCheckpoint> {
        self.metadata.best_checkpoint.as_ref()
    }
}

/// Sets `epoch`'s metrics in the history, keeping it sorted by epoch.
pub(crate) fn upsert_epoch_metrics(history: &mut Vec<EpochMetrics>, epoch: u32, metrics: &Metrics) {
    match history.iter_mut().find(|h| h.epoch == epoch) {
        Some(existing) => existing.metrics = metrics.clone(),
        None => history.push(EpochMetrics {
            epoch,
            metrics: metrics.clone(),
        }),
    }
    history.sort_by_key(|h| h.epoch);
}
