//! Training: the `Trainer` loop with callbacks, AdamW, LR scheduler, TensorBoard logs.

pub mod config;
pub mod export;
pub mod optim;
pub mod scheduler;
pub mod tensorboard;

pub use config::{ConfigError, Overrides, Preset, TrainingConfig};
pub use optim::{AdamW, AdamWParams, OptimError};
pub use scheduler::{LrScheduler, SchedulerError};
pub use tensorboard::{EventWriter, TensorBoardError};
