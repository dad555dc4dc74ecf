//! One training epoch, the loop both LoRA fine-tuning ([`super::Trainer`]) and pretraining
//! ([`super::pretrain`]) run: shuffle the images, then for each batch the data-parallel loss and
//! gradients and one AdamW step at the scheduled learning rate. What is trained (adapters or a
//! whole base model) is only which parameters the [`Learner`] names.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Var};

use model::data::{Augmentation, Dataset};
use model::diffusion::{BatchLabels, NoiseSchedule};
use model::rng::Rng;
use model::DiffiT;

use super::collective::{any_rank, Collective};
use super::error::TrainError;
use super::optim::AdamW;
use super::parallel::{loss_and_grads, shard_count};
use super::scheduler::LrScheduler;

/// The model being trained and everything a training step reads or advances.
#[derive(Debug)]
pub struct Learner<'a> {
    /// The network (its trainable tensors are `params`).
    pub model: &'a DiffiT,
    /// The tensors the optimizer updates, in a fixed (sorted) order.
    pub params: &'a [(String, Var)],
    /// AdamW and its moments.
    pub optimizer: &'a mut AdamW,
    /// The learning-rate schedule, advanced once per step.
    pub scheduler: &'a mut LrScheduler,
    /// Shuffles the images at the start of each epoch.
    pub data_rng: &'a mut Rng,
    /// Timesteps and noise of each step (forked per shard).
    pub noise_rng: &'a mut Rng,
    /// Optimizer steps taken so far; one is added per step.
    pub global_step: &'a mut u64,
    /// Where the batches are built.
    pub device: &'a Device,
    /// For a model with labels and a labelled dataset: the probability that an image is
    /// conditioned on the null class instead (ignored otherwise).
    pub label_dropout: f64,
    /// How each training image is varied: a function of (`augment_seed`, epoch, image index),
    /// so that a resumed epoch sees exactly the images an uninterrupted one would.
    pub augmentation: Augmentation,
    /// The seed of the augmentation draws.
    pub augment_seed: u64,
    /// The processes the steps are split over (one, or the ranks of an MPI job).
    pub collective: &'a dyn Collective,
    /// Shards per step over all processes (`training.data_shards`); unset: by the cores.
    pub data_shards: Option<usize>,
}

/// What one epoch did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochLoss {
    /// Mean training loss over the epoch's images.
    pub mean: f64,
    /// The learning rate of the epoch's last step.
    pub last_lr: f64,
}

/// Progress of an epoch after each step, for progress bars and per-step logging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    /// Mean loss of the epoch so far.
    pub mean_loss: f64,
    /// Images trained on so far in this epoch.
    pub images: usize,
    /// This step's loss.
    pub loss: f64,
    /// This step's learning rate.
    pub lr: f64,
    /// Optimizer steps taken, this one included.
    pub global_step: u64,
}

/// Trains one epoch (`epoch`, 1-based, for messages) over `data` in batches of `batch_size`.
/// `None` when `stop` was set before the epoch ended: its updates so far stay in memory only.
pub fn train_epoch(
    learner: &mut Learner<'_>,
    data: &Dataset,
    batch_size: usize,
    schedule: &NoiseSchedule,
    epoch: u32,
    stop: &AtomicBool,
    mut on_step: impl FnMut(StepProgress),
) -> Result<Option<EpochLoss>, TrainError> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    learner.data_rng.shuffle(&mut order);
    let (mut loss_sum, mut seen) = (0.0f64, 0usize);
    let mut lr = learner.scheduler.lr();
    for chunk in order.chunks(batch_size.max(1)) {
        // Every rank stops at the same step when any of them was asked to.
        if any_rank(
            learner.collective,
            "checking for a stop",
            stop.load(Ordering::SeqCst),
        )? {
            return Ok(None);
        }
        let x = data.augmented_batch(
            chunk,
            learner.device,
            &learner.augmentation,
            learner.augment_seed,
            epoch,
        )?;
        let classes = batch_labels(learner.model, data, chunk)?;
        let labels = classes.as_deref().map(|classes| BatchLabels {
            classes,
            dropout: learner.label_dropout,
        });
        let shards = shard_count(
            chunk.len(),
            learner.device,
            learner.data_shards,
            learner.collective,
        );
        let (value, grads) = loss_and_grads(
            learner.model,
            &x,
            labels,
            schedule,
            learner.noise_rng,
            shards,
            learner.params,
            learner.collective,
        )?;
        if !value.is_finite() {
            return Err(TrainError::Diverged {
                epoch,
                step: *learner.global_step,
                loss: value,
            });
        }
        lr = learner.scheduler.lr();
        learner.optimizer.set_lr(lr);
        learner.optimizer.step(learner.params, &grads)?;
        learner.scheduler.advance();
        *learner.global_step += 1;
        loss_sum += value * chunk.len() as f64;
        seen += chunk.len();
        on_step(StepProgress {
            mean_loss: loss_sum / seen as f64,
            images: seen,
            loss: value,
            lr,
            global_step: *learner.global_step,
        });
    }
    Ok(Some(EpochLoss {
        mean: loss_sum / seen.max(1) as f64,
        last_lr: lr,
    }))
}

/// The labels a batch of `data` is conditioned on: the images' own when both the model (a
/// label embedder with classes) and the data have labels; `None` (the null class, or no labels
/// at all) otherwise.
pub fn batch_labels(
    model: &DiffiT,
    data: &Dataset,
    indices: &[usize],
) -> Result<Option<Vec<u32>>, TrainError> {
    if !model.config().is_class_conditional() {
        return Ok(None);
    }
    Ok(data.batch_labels(indices)?)
}
