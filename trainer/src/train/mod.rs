//! Training: the `Trainer` loop with callbacks, AdamW, LR scheduler, TensorBoard logs,
//! pretraining of base models, and sampling/export of trained runs.
//!
//! - [`trainer`]: [`Trainer`], the [`Callback`] trait and validation.
//! - [`epoch`]: the epoch loop itself, shared by fine-tuning and pretraining.
//! - [`callbacks`]: the seed's checkpoint and resume callbacks on the run store, TensorBoard.
//! - [`run_logs`]: the per-step log and the sample grids under a run's `logs/`.
//! - [`state`]: [`TrainState`] and its checkpoint round trip.
//! - [`session`]: one `diffit train` end to end (new run or resume).
//! - [`optim`], [`scheduler`]: AdamW and warmup + cosine, both with saved state.
//! - [`parallel`]: data-parallel loss and gradients over the CPU cores and the ranks;
//!   [`collective`]: what the ranks of a job (one process, or MPI) exchange.
//! - [`config`]: defaults, the seed's YAML, command-line overrides; `seed_config`: the seed
//!   system's own top-level YAML keys, mapped onto ours.
//! - [`mlflow`]: MLflow tracking over its REST API, off the training thread.
//! - [`pretrain`], [`sample`], [`export`], [`tensorboard`].

pub mod base_runs;
pub mod callbacks;
pub mod collective;
pub mod config;
pub mod device;
pub mod epoch;
pub mod error;
pub mod export;
pub mod mlflow;
pub mod optim;
pub mod parallel;
pub mod pretrain;
pub mod replica;
pub mod run_logs;
pub mod sample;
pub mod scheduler;
mod seed_config;
pub mod session;
pub mod state;
pub mod tensorboard;
pub mod trainer;

pub use callbacks::{
    DistributedCheckpointCallback, ResumeFromCheckpointCallback, TensorBoardCallback,
};
pub use config::{ConfigError, Overrides, Preset, TrainingConfig};
pub use error::TrainError;
pub use optim::{AdamW, AdamWParams, OptimError};
pub use scheduler::{LrScheduler, SchedulerError};
pub use session::{run_training, TrainReport, TrainRequest};
pub use state::TrainState;
pub use tensorboard::{EventWriter, TensorBoardError};
pub use trainer::{Callback, FitOutcome, Trainer};
