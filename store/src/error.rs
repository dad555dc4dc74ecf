//! `StoreError`: every failure of the run store, each naming the file and the action.

use std::io;
use std::path::PathBuf;

/// Result of a run-store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A run-store failure. Every variant names the file (or run directory) involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem call failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`read`, `create directory`, `rename into place`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A JSON file (metadata.json, config.json) could not be parsed or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Json {
        /// `parse` or `serialize`.
        action: &'static str,
        /// The JSON file.
        path: PathBuf,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
    /// metadata.json parsed but contradicts the run it describes.
    #[error("invalid metadata {}: {reason}", path.display())]
    BadMetadata {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The run directory does not exist.
    #[error("run {run_number} not found: no directory {}", dir.display())]
    RunNotFound {
        /// The requested run.
        run_number: u32,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// Another process holds the run's writer lock.
    #[error(
        "run {} is being written by another process (lock held on {}); \
         wait for it to finish or open the run read-only",
        run_dir.display(),
        lock.display()
    )]
    Locked {
        /// The run directory.
        run_dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// A write was attempted through a read-only handle.
    #[error("cannot {action} in {}: the run was opened read-only", run_dir.display())]
    ReadOnly {
        /// What was attempted.
        action: &'static str,
        /// The run directory.
        run_dir: PathBuf,
    },
    /// A file's content does not match the checksum or size recorded in metadata.
    #[error("damaged file {}: {reason}", path.display())]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// A tensor file is not valid safetensors or not one of ours.
    #[error("cannot read tensor file {}: {reason}", path.display())]
    BadTensorFile {
        /// The tensor file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The requested checkpoint does not exist in this run.
    #[error("no {which} checkpoint in run {}: {reason}", run_dir.display())]
    MissingCheckpoint {
        /// `best`, `last`, `epoch_003` or `base`.
        which: String,
        /// The run directory.
        run_dir: PathBuf,
        /// Why it is absent.
        reason: String,
    },
    /// The run was written by the seed system (PyTorch Lightning): it is listed and shown, but
    /// its `.ckpt` files are never loaded and nothing is written into it.
    #[error(
        "cannot {action} run {run_number} ({}): it was written by the seed system (PyTorch \
         Lightning), and its .ckpt files are PyTorch pickles, which this tool does not load. \
         The run is read-only here (`diffit runs show` prints it); train a new run instead",
        run_dir.display()
    )]
    SeedRun {
        /// What was attempted (`resume or train into`, `load a checkpoint of`, `verify`).
        action: &'static str,
        /// The run's number.
        run_number: u32,
        /// The run directory.
        run_dir: PathBuf,
    },
    /// Every saved epoch of a run is damaged or missing.
    #[error("no valid checkpoint to resume run {}: {}", run_dir.display(), damaged.join("; "))]
    NoValidCheckpoint {
        /// The run directory.
        run_dir: PathBuf,
        /// One line per damaged file.
        damaged: Vec<String>,
    },
}

impl StoreError {
    /// An I/O error with its file and action.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The file this error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            StoreError::Io { path, .. }
            | StoreError::Json { path, .. }
            | StoreError::BadMetadata { path, .. }
            | StoreError::Damaged { path, .. }
            | StoreError::BadTensorFile { path, .. } => path,
            StoreError::RunNotFound { dir, .. } => dir,
            StoreError::Locked { run_dir, .. }
            | StoreError::ReadOnly { run_dir, .. }
            | StoreError::SeedRun { run_dir, .. }
            | StoreError::MissingCheckpoint { run_dir, .. }
            | StoreError::NoValidCheckpoint { run_dir, .. } => run_dir,
        }
    }
}

/// Adds the file and action to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    /// Names the action and the file on error.
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| StoreError::io(action, path, e))
    }
}
