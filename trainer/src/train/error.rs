//! `TrainError`: every failure of training, pretraining, sampling and export.

use std::path::PathBuf;

use model::data::DataError;
use model::ModelError;
use store::StoreError;

use super::config::ConfigError;
use super::export::ExportError;
use super::optim::OptimError;
use super::scheduler::SchedulerError;
use super::tensorboard::TensorBoardError;

/// A training failure; I/O variants name the file.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Building or merging the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Loading images failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The run store failed (boxed: store errors are large and rare).
    #[error(transparent)]
    Store(Box<StoreError>),
    /// The optimizer or its saved state failed.
    #[error(transparent)]
    Optim(#[from] OptimError),
    /// The LR schedule or its saved state failed.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Writing TensorBoard logs failed.
    #[error(transparent)]
    TensorBoard(#[from] TensorBoardError),
    /// Exporting failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// Reading or writing a file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not what it should be (not safetensors, wrong model, ...).
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A saved state (checkpoint JSON, config.json) does not fit this run.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// The request is contradictory or refers to something absent.
    #[error("{0}")]
    Usage(String),
    /// A stop was requested (Ctrl-C) before the work was done; what was saved is intact.
    #[error("interrupted")]
    Interrupted,
    /// A bug: an invariant of this program broke (a poisoned lock, a value that cannot be
    /// encoded), not anything the user did.
    #[error("internal error: {0}")]
    Internal(String),
    /// The processes of a distributed training disagree or could not exchange a message.
    #[error("distributed training: {0}")]
    Distributed(String),
    /// Object storage failed (opening a bucket, claiming or bringing a run).
    #[error(transparent)]
    Remote(Box<remote::RemoteError>),
    /// The bucket a run is written to could not be brought up to its last commit.
    #[error(
        "cannot upload the run to {to}: {reason}; the last checkpoint committed there is \
         intact, and so is the local copy: resume with --resume when the bucket is reachable"
    )]
    Upload {
        /// `s3://bucket/prefix/run_NNN`.
        to: String,
        /// Why.
        reason: String,
    },
    /// Another process committed to the run in its bucket since this one last did.
    #[error(
        "{reason}: this process stopped training; the run in {to} is the other writer's, and \
         this process's own copy stays in its local directory"
    )]
    Superseded {
        /// `s3://bucket/prefix/run_NNN`.
        to: String,
        /// What the bucket reported.
        reason: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "training diverged at epoch {epoch}, step {step}: loss is {loss}; the epoch was not \
         saved and every earlier checkpoint is kept: resume with --resume and a lower \
         --learning-rate"
    )]
    Diverged {
        /// The epoch (1-based).
        epoch: u32,
        /// The global step.
        step: u64,
        /// The loss seen.
        loss: f64,
    },
}

impl From<super::collective::CollectiveError> for TrainError {
    fn from(e: super::collective::CollectiveError) -> Self {
        Self::Distributed(e.to_string())
    }
}

impl From<StoreError> for TrainError {
    fn from(e: StoreError) -> Self {
        TrainError::Store(Box::new(e))
    }
}

impl TrainError {
    /// An I/O error naming `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
