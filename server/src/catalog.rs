//! Reading runs from the checkpoints dir: the list summaries, one run's metadata and config,
//! of its own runs (`run_NNN/`) and of its base-training runs (`base_training/run_NNN/`, the
//! seed system's layout; [`RunSet`]).
//!
//! Every read of `metadata.json` / `config.json` goes through this module (and through
//! `CheckpointsRoot`, so nothing outside the checkpoints dir is read). List rows come from the
//! run store's `run_info`, one run at a time, so the watcher re-reads only runs that changed.

use std::io::Read;
use std::path::Path;
use std::time::UNIX_EPOCH;

use format::api::{RunState, RunSummary};
use format::layout::parse_run_dir_name;
use format::layout::SAMPLE_EXT;
use format::logs::StepLog;
use format::seed::BASE_TRAINING_DIR;
use format::{Metadata, RunLayout, RunStatus, SeedRun};
use serde_json::Value;
use store::listing::run_info;
use store::writer_active;

use crate::error::ApiError;
use crate::root::{CheckpointsRoot, ConfineError};

/// Largest `metadata.json` / `config.json` the server reads; anything bigger is called broken
/// rather than read into memory.
const MAX_JSON_BYTES: u64 = 64 * 1024 * 1024;

/// Which runs of the checkpoints dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunSet {
    /// Its own runs, `run_NNN/` (the run list's `runs`).
    Runs,
    /// Its base-training runs, `base_training/run_NNN/` (the run list's `base_training`).
    BaseTraining,
}

impl RunSet {
    /// The layout of run `n` of this set under the canonical root.
    fn layout(self, root: &CheckpointsRoot, n: u32) -> Option<RunLayout> {
        match self {
            RunSet::Runs => root.layout(n),
            RunSet::BaseTraining => root
                .canonical()
                .map(|base| RunLayout::base_training(base, n)),
        }
    }

    /// The folder holding this set's runs, once it exists inside the root.
    fn dir(self, root: &CheckpointsRoot) -> Option<std::path::PathBuf> {
        let base = root.canonical()?;
        match self {
            RunSet::Runs => Some(base),
            RunSet::BaseTraining => {
                let dir = base.join(BASE_TRAINING_DIR);
                root.contains_dir(&dir).ok()?.then_some(dir)
            }
        }
    }
}

/// What changes when a run's metadata changes: a cheap `lstat` of `metadata.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fingerprint {
    /// The file's identity and timestamp.
    File {
        /// Inode (atomic replacement makes a new one).
        ino: u64,
        /// Size in bytes.
        size: u64,
        /// Modification time in nanoseconds since the epoch.
        mtime_ns: u128,
    },
    /// No `metadata.json` (or not a plain file).
    Missing,
}

/// What a run's list row is read from: `metadata.json`, `annotations.json` and `config.json`,
/// each fingerprinted.
pub type RunFingerprint = [Fingerprint; 3];

/// The run folders of `set` and the fingerprint of each one's row files, sorted by number.
/// A missing root (or `base_training/`) is an empty list.
pub fn scan(root: &CheckpointsRoot, set: RunSet) -> Vec<(u32, RunFingerprint)> {
    let Some(base) = set.dir(root) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&base) else {
        return Vec::new();
    };
    let mut runs: Vec<(u32, RunFingerprint)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let n = parse_run_dir_name(entry.file_name().to_str()?)?;
            let dir = entry.path();
            let files = [
                format::layout::METADATA_FILE,
                format::layout::ANNOTATIONS_FILE,
                format::layout::CONFIG_FILE,
            ];
            Some((n, files.map(|name| fingerprint(&dir.join(name)))))
        })
        .collect();
    runs.sort_unstable_by_key(|(n, _)| *n);
    runs
}

fn fingerprint(path: &Path) -> Fingerprint {
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() || meta.file_type().is_symlink() => Fingerprint::File {
            #[cfg(unix)]
            ino: meta.ino(),
            #[cfg(not(unix))]
            ino: 0,
            size: meta.len(),
            mtime_ns: meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos()),
        },
        _ => Fingerprint::Missing,
    }
}

/// The list row of run `n` of `set` (broken with its error when unreadable; never fails). The
/// row is the run store's `run_info`, read only after the run and its metadata are confirmed
/// inside the root (the store itself does not refuse symlinks pointing out).
pub fn summarize(root: &CheckpointsRoot, set: RunSet, n: u32) -> RunSummary {
    let broken = |reason: String| RunSummary {
        run_number: n,
        status: RunState::Broken,
        error: Some(reason),
        info: None,
    };
    let layout = match run_layout(root, set, n) {
        Ok(layout) => layout,
        Err(err) => return broken(broken_reason(err)),
    };
    let metadata = layout.metadata();
    match root.open(&metadata) {
        Ok(_) => {}
        Err(ConfineError::NotFound(_)) => {
            return broken(format!("{} is missing", display_rel(root, &metadata)))
        }
        Err(err) => return broken(broken_reason(err.into())),
    }
    match run_info(&layout) {
        Ok(mut info) => {
            // The store read annotations.json and config.json as they lie: what leaves the
            // root (a symlink out) is not shown.
            let confined = |path: &Path| match root.open(path) {
                Ok(_) | Err(ConfineError::NotFound(_)) => true,
                Err(_) => false,
            };
            if !confined(&layout.annotations()) {
                info.tags.clear();
                info.note = None;
            }
            if !confined(&layout.config()) {
                info.params.clear();
            }
            if root.follows_bucket() {
                info.writer_active = info.recorded_status == RunStatus::Running;
            }
            RunSummary {
                run_number: n,
                status: info.state(),
                error: None,
                info: Some(info),
            }
        }
        Err(err) => broken(strip_root(root, &err.to_string())),
    }
}

/// True for a recorded status that a live writer would be changing (so its lock matters).
pub fn may_be_running(summary: &RunSummary) -> bool {
    summary.info.as_ref().is_some_and(|info| {
        matches!(
            info.recorded_status,
            RunStatus::Created | RunStatus::Running
        )
    })
}

/// Whether the writer lock of run `n` of `set` is held right now.
pub fn writer_active_now(root: &CheckpointsRoot, set: RunSet, n: u32) -> bool {
    if root.follows_bucket() {
        // Decided by the recorded status, which the rescan reads anyway.
        return set.layout(root, n).is_some_and(|layout| {
            store::read_metadata(&layout).is_ok_and(|m| m.status == RunStatus::Running)
        });
    }
    set.layout(root, n)
        .is_some_and(|layout| writer_active(&layout))
}

fn broken_reason(err: ApiError) -> String {
    match err {
        ApiError::BrokenRun { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Store errors name absolute paths; rows name files relative to the checkpoints dir.
fn strip_root(root: &CheckpointsRoot, message: &str) -> String {
    match root.canonical() {
        Some(base) => message.replace(&format!("{}/", base.display()), ""),
        None => message.to_string(),
    }
}

/// Checks that run `n` of `set` exists (inside the root) and returns its layout.
pub fn run_layout(root: &CheckpointsRoot, set: RunSet, n: u32) -> Result<RunLayout, ApiError> {
    let layout = set.layout(root, n).ok_or(ApiError::RunNotFound(n))?;
    match root.contains_dir(&layout.root()) {
        Ok(true) => Ok(layout),
        Ok(false) => Err(ApiError::RunNotFound(n)),
        Err(err) => Err(err.into()),
    }
}

/// Reads and parses the `metadata.json` of run `n` of `set`.
pub fn read_metadata(root: &CheckpointsRoot, set: RunSet, n: u32) -> Result<Metadata, ApiError> {
    let layout = run_layout(root, set, n)?;
    let path = layout.metadata();
    let text = read_json_text(root, n, &path)?.ok_or_else(|| ApiError::BrokenRun {
        run: n,
        reason: format!("{} is missing", display_rel(root, &path)),
    })?;
    let meta: Metadata = serde_json::from_slice(&text).map_err(|e| ApiError::BrokenRun {
        run: n,
        reason: format!(
            "{} is not valid run metadata: {e}",
            display_rel(root, &path)
        ),
    })?;
    if meta.run_number != n {
        return Err(ApiError::BrokenRun {
            run: n,
            reason: format!(
                "{} records run_number {}",
                display_rel(root, &path),
                meta.run_number
            ),
        });
    }
    Ok(meta)
}

/// Whether the seed system wrote run `n` of `set`, whose metadata is `meta` (read-only then:
/// its `.ckpt` files are PyTorch pickles, never parsed as safetensors).
pub fn seed_run(root: &CheckpointsRoot, set: RunSet, n: u32, meta: &Metadata) -> Option<SeedRun> {
    let in_base_training_dir = set
        .layout(root, n)
        .is_some_and(|layout| layout.in_base_training_dir());
    meta.seed_run(in_base_training_dir)
}

/// Reads the `config.json` of run `n` of `set` (`None` when the run has none).
pub fn read_config(root: &CheckpointsRoot, set: RunSet, n: u32) -> Result<Option<Value>, ApiError> {
    let layout = run_layout(root, set, n)?;
    let path = layout.config();
    let Some(text) = read_json_text(root, n, &path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| ApiError::BrokenRun {
            run: n,
            reason: format!("{} is not valid JSON: {e}", display_rel(root, &path)),
        })
}

/// The epochs of the files named `epoch_NNN.EXT` in `dir` (a folder of run `n`'s logs),
/// ascending; none when the folder does not exist. A folder that resolves outside the root is
/// an error.
fn epoch_files(root: &CheckpointsRoot, dir: &Path, ext: &str) -> Result<Vec<u32>, ApiError> {
    if !root.contains_dir(dir)? {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| ApiError::io("listing", dir, e))?;
    let mut epochs: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| format::layout::parse_epoch_file_name(entry.file_name().to_str()?, ext))
        .collect();
    epochs.sort_unstable();
    Ok(epochs)
}

/// Run `n`'s step logs (`logs/steps/epoch_NNN.json`), by epoch. A file that is not a step log
/// of its epoch makes the run's steps unreadable, named.
pub fn read_step_logs(root: &CheckpointsRoot, n: u32) -> Result<Vec<StepLog>, ApiError> {
    let layout = run_layout(root, RunSet::Runs, n)?;
    let mut logs = vec![];
    for epoch in epoch_files(root, &layout.steps_dir(), "json")? {
        let path = layout.step_log(epoch);
        // Deleted between the listing and the read: left out.
        let Some(text) = read_json_text(root, n, &path)? else {
            continue;
        };
        let log: StepLog = serde_json::from_slice(&text).map_err(|e| ApiError::BrokenRun {
            run: n,
            reason: format!("{} is not a step log: {e}", display_rel(root, &path)),
        })?;
        if log.epoch != epoch {
            return Err(ApiError::BrokenRun {
                run: n,
                reason: format!("{} records epoch {}", display_rel(root, &path), log.epoch),
            });
        }
        logs.push(log);
    }
    Ok(logs)
}

/// The epochs of run `n`'s sample grids (`logs/samples/epoch_NNN.png`).
pub fn sample_epochs(root: &CheckpointsRoot, n: u32) -> Result<Vec<u32>, ApiError> {
    let layout = run_layout(root, RunSet::Runs, n)?;
    epoch_files(root, &layout.samples_dir(), SAMPLE_EXT)
}

/// The file's bytes, `None` when it does not exist.
fn read_json_text(
    root: &CheckpointsRoot,
    n: u32,
    path: &Path,
) -> Result<Option<Vec<u8>>, ApiError> {
    let file = match root.open(path) {
        Ok(file) => file,
        Err(ConfineError::NotFound(_)) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let mut text = Vec::new();
    file.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| ApiError::io("reading", path, e))?;
    if text.len() as u64 > MAX_JSON_BYTES {
        return Err(ApiError::BrokenRun {
            run: n,
            reason: format!(
                "{} is larger than {MAX_JSON_BYTES} bytes",
                display_rel(root, path)
            ),
        });
    }
    Ok(Some(text))
}

/// `run_003/metadata.json`: error messages name the file without the server's absolute paths.
fn display_rel(root: &CheckpointsRoot, path: &Path) -> String {
    root.canonical()
        .and_then(|base| {
            path.strip_prefix(base)
                .ok()
                .map(|p| p.display().to_string())
        })
        .unwrap_or_else(|| path.display().to_string())
}
