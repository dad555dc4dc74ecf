//! What a run logs beside its checkpoints, under `logs/`: the per-step training log (one file
//! per epoch, [`StepLog`]) and the sample grids drawn during training (PNG files named by
//! epoch). `metadata.json` holds only per-epoch values and stays small; these can be long.

use serde::{Deserialize, Serialize};

/// One logged optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Optimizer steps taken since the run began, this one included.
    pub step: u64,
    /// The step's training loss.
    pub loss: f64,
    /// The learning rate the step used.
    pub lr: f64,
}

/// `logs/steps/epoch_NNN.json`: the steps an epoch logged, written once, atomically, when the
/// epoch ends (an epoch cut short logs nothing; trained again, it writes the file anew).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// The epoch (1-based).
    pub epoch: u32,
    /// Every `every`-th step of the epoch, and its last one, in order.
    pub steps: Vec<StepRecord>,
    /// The logging interval in steps.
    pub every: u32,
}
