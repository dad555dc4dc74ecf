//! The seed's callbacks on the run store: `DistributedCheckpointCallback` (base model once,
//! LoRA + optimizer + scheduler + RNG state per epoch, best/last, retention, status),
//! `ResumeFromCheckpointCallback`, and a TensorBoard logger (which also writes the sample
//! grids under `logs/samples/`).

use std::cell::RefCell;
use std::rc::Rc;

use candle_core::{Device, Tensor};
use format::metadata::Metrics;
use format::{Mode, RunLayout, RunStatus};
use model::diffusion::{
    ddim_sample_guided, to_rgb8, Guidance, NoiseSchedule, DEFAULT_CFG_SCALE, DEFAULT_ETA,
};
use model::rng::mix_seed;
use model::DiffiT;
use store::{CheckpointManager, RetentionPolicy};

use super::epoch::StepProgress;
use super::error::TrainError;
use super::run_logs::{samples_due, write_sample_grid, StepRecorder};
use super::state::{streams, TrainState};
use super::tensorboard::EventWriter;
use super::trainer::{Callback, FitOutcome};

/// A run store shared by the callbacks of one fit (as the seed passes one manager to each).
pub type SharedManager = Rc<RefCell<CheckpointManager>>;

/// Saves the base model once and a LoRA checkpoint every `save_every_n_epochs` epochs (and at
/// the last epoch), keeping `best` by `monitor`/`mode`, the newest `keep_last_n` epochs (0:
/// all), the `save_top_k` best, and optimizer state in the newest `keep_optimizer_last_n`.
#[derive(Debug)]
pub struct DistributedCheckpointCallback {
    manager: SharedManager,
    /// Metric deciding `best`.
    pub monitor: String,
    /// Whether lower or higher is better.
    pub mode: Mode,
    /// Save every N epochs.
    pub save_every_n_epochs: u32,
    /// Epoch files kept (0: every one).
    pub keep_last_n: u32,
    /// The k best epochs by `monitor` kept besides the newest.
    pub save_top_k: u32,
    /// Epochs that keep AdamW's moments (`None`: all).
    pub keep_optimizer_last_n: Option<u32>,
    /// Write the base model into the run if it is not there yet.
    pub save_base_model: bool,
    /// Write LoRA checkpoints at all (`training.checkpoint.enabled`).
    pub enabled: bool,
    /// The error that stopped the fit, recorded with the `failed` status.
    failure: Option<String>,
}

impl DistributedCheckpointCallback {
    /// The callback with the seed's defaults (`val_loss`, min, every epoch, keep 5, save base).
    pub fn new(manager: SharedManager) -> Self {
        Self {
            manager,
            monitor: "val_loss".into(),
            mode: Mode::Min,
            save_every_n_epochs: 1,
            keep_last_n: 5,
            save_top_k: 0,
            keep_optimizer_last_n: None,
            save_base_model: true,
            enabled: true,
            failure: None,
        }
    }

    /// Settings from a run's `training.checkpoint` section.
    pub fn from_settings(manager: SharedManager, s: &super::config::CheckpointSettings) -> Self {
        Self {
            manager,
            monitor: s.monitor.clone(),
            mode: s.mode,
            save_every_n_epochs: s.save_every_n_epochs.max(1),
            keep_last_n: s.keep_last_n,
            save_top_k: s.save_top_k,
            keep_optimizer_last_n: s.keep_optimizer_last_n,
            save_base_model: s.save_base_model,
            enabled: s.enabled,
            failure: None,
        }
    }

    /// The retention these settings ask for (the best epoch is always kept).
    pub fn retention(&self) -> RetentionPolicy {
        RetentionPolicy {
            keep_last_n: self.keep_last_n as usize,
            keep_best: true,
            keep_top_k: self.save_top_k as usize,
            keep_optimizer_last_n: self.keep_optimizer_last_n.map(|n| n as usize),
        }
    }

    fn due(&self, state: &TrainState) -> bool {
        state.epoch.is_multiple_of(self.save_every_n_epochs)
            || state.epoch >= state.config.training.epochs
    }
}

impl Callback for DistributedCheckpointCallback {
    fn on_fit_start(&mut self, state: &mut TrainState) -> Result<(), TrainError> {
        let mut m = self.manager.borrow_mut();
        m.save_config(&state.run_config())?;
        // A run that lacks its base (never stored, or lost and found elsewhere on resume)
        // stores it now when asked; otherwise it records at least which base it trains on.
        let wants_base = self.save_base_model && !m.own_base_intact();
        if wants_base || m.required_base().is_none() {
            let tensors = crate::tensors::map_to_stored(&state.base)?;
            let model_config = serde_json::to_value(&state.model_config)
                .map_err(|e| TrainError::Internal(format!("cannot encode model config: {e}")))?;
            if wants_base {
                m.save_base_model(&tensors, &model_config)?;
            } else {
                m.record_base_identity(&tensors, &model_config)?;
            }
        }
        state.base_checksum = m.required_base().map(|d| d.checksum);
        m.set_status(RunStatus::Running)?;
        Ok(())
    }

    fn on_base_validation_end(
        &mut self,
        _state: &mut TrainState,
        metrics: &Metrics,
    ) -> Result<(), TrainError> {
        self.manager
            .borrow_mut()
            .set_base_metrics(metrics.clone())?;
        Ok(())
    }

    fn on_validation_end(
        &mut self,
        state: &mut TrainState,
        metrics: &Metrics,
    ) -> Result<(), TrainError> {
        self.manager
            .borrow_mut()
            .record_epoch_metrics(state.epoch, metrics)?;
        Ok(())
    }

    fn on_epoch_end(
        &mut self,
        state: &mut TrainState,
        metrics: &Metrics,
    ) -> Result<(), TrainError> {
        if !self.enabled || !self.due(state) {
            return Ok(());
        }
        let ckpt = state.to_checkpoint(metrics)?;
        let mut m = self.manager.borrow_mut();
        m.save_lora_weights(&ckpt, &self.monitor, self.mode)?;
        m.apply_retention(self.retention())?;
        Ok(())
    }

    fn on_fit_error(&mut self, _state: &mut TrainState, error: &TrainError) {
        self.failure = Some(error.to_string());
    }

    fn on_fit_end(
        &mut self,
        _state: &mut TrainState,
        outcome: FitOutcome,
    ) -> Result<(), TrainError> {
        let status = match outcome {
            FitOutcome::Finished => RunStatus::Finished,
            FitOutcome::Interrupted => RunStatus::Interrupted,
            FitOutcome::Failed => RunStatus::Failed,
        };
        // Best effort: when the disk is full this write fails too, and the run then reads as
        // interrupted (no writer holds its lock) rather than failed.
        let reason = self.failure.take().filter(|_| status == RunStatus::Failed);
        self.manager
            .borrow_mut()
            .set_status_because(status, reason)?;
        Ok(())
    }
}

/// Restores the newest valid checkpoint of the run at fit start: LoRA weights and RNG states
/// always, the optimizer and scheduler states when asked (the seed's defaults: both).
#[derive(Debug)]
pub struct ResumeFromCheckpointCallback {
    manager: SharedManager,
    /// Restore Adam's moments and step.
    pub load_optimizer: bool,
    /// Restore the LR schedule.
    pub load_scheduler: bool,
    /// Damaged newer checkpoints passed over, as messages.
    pub skipped: Vec<String>,
}

impl ResumeFromCheckpointCallback {
    /// Resumes through `manager`.
    pub fn new(manager: SharedManager, load_optimizer: bool, load_scheduler: bool) -> Self {
        Self {
            manager,
            load_optimizer,
            load_scheduler,
            skipped: Vec::new(),
        }
    }
}

impl Callback for ResumeFromCheckpointCallback {
    fn on_fit_start(&mut self, state: &mut TrainState) -> Result<(), TrainError> {
        let mut m = self.manager.borrow_mut();
        if state.base_checksum.is_none() {
            state.base_checksum = m.required_base().map(|d| d.checksum);
        }
        // As the writer: damaged epochs passed over are recorded as such, out of retention,
        // `best` and `last`.
        let Some(resume) = m.resume()? else {
            return Ok(());
        };
        // The store has logged a warning for each of these.
        for err in &resume.skipped {
            self.skipped
                .push(format!("skipped damaged checkpoint: {err}"));
        }
        state.restore(&resume.checkpoint, self.load_optimizer, self.load_scheduler)?;
        Ok(())
    }
}

/// Logs `train_loss`, `val_loss`, `lr` per epoch, `train_loss_step` and `lr_step` at the
/// steps the step log keeps (step = global step), and a grid of samples every
/// `sample_every_n_epochs` epochs to TensorBoard under the run's `logs/`, fsyncing each epoch;
/// the grid is also written as `logs/samples/epoch_NNN.png` when `sample_grids` is set.
#[derive(Debug)]
pub struct TensorBoardCallback {
    writer: EventWriter,
    steps: StepRecorder,
    /// Images sampled for the `samples` image summary (0 = none).
    pub samples_per_epoch: usize,
    /// DDIM steps of those samples.
    pub sample_steps: usize,
    /// Sample every N epochs and after the last (`training.sample_every_n_epochs`; 0: never).
    pub sample_every_n_epochs: u32,
    /// The run whose `logs/samples/` gets each grid as a PNG file (`None`: TensorBoard only).
    pub sample_grids: Option<RunLayout>,
}

/// Columns of the sample grid (its rows follow from `samples_per_epoch`).
pub const SAMPLE_GRID_COLUMNS: usize = 4;

impl TensorBoardCallback {
    /// Logs into a new event file in `writer`, the step scalars every `log_every_n_steps`
    /// steps (and at each epoch's last).
    pub fn new(writer: EventWriter, log_every_n_steps: u64) -> Self {
        Self {
            writer,
            steps: StepRecorder::new(log_every_n_steps),
            samples_per_epoch: 4,
            sample_steps: 20,
            sample_every_n_epochs: 1,
            sample_grids: None,
        }
    }
}

/// The `n` images of an epoch's sample grid: unconditional, or for a class-conditional model
/// its classes in turn with the default guidance (as `diffit sample --class` draws them).
pub fn epoch_samples(
    model: &DiffiT,
    n: usize,
    seed: u64,
    steps: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let guidance = match model.config().num_classes {
        Some(classes) if classes > 0 => Some(Guidance {
            classes: (0..n).map(|i| (i % classes) as u32).collect(),
            scale: DEFAULT_CFG_SCALE,
        }),
        _ => None,
    };
    let schedule = NoiseSchedule::default();
    ddim_sample_guided(
        model,
        &schedule,
        n,
        seed,
        steps,
        DEFAULT_ETA,
        guidance,
        device,
    )
}

impl Callback for TensorBoardCallback {
    fn on_train_step(&mut self, step: &StepProgress) {
        self.steps.record(step);
    }

    fn on_base_validation_end(
        &mut self,
        _state: &mut TrainState,
        metrics: &Metrics,
    ) -> Result<(), TrainError> {
        if let Some(v) = metrics.get("val_loss") {
            self.writer.add_scalar("base_val_loss", *v, 0)?;
        }
        self.writer.sync()?;
        Ok(())
    }

    fn on_epoch_end(
        &mut self,
        state: &mut TrainState,
        metrics: &Metrics,
    ) -> Result<(), TrainError> {
        let step = i64::from(state.epoch);
        for (tag, value) in metrics {
            self.writer.add_scalar(tag, *value, step)?;
        }
        for record in self.steps.finish_epoch() {
            let at = i64::try_from(record.step).unwrap_or(i64::MAX);
            self.writer.add_scalar("train_loss_step", record.loss, at)?;
            self.writer.add_scalar("lr_step", record.lr, at)?;
        }
        let total = state.config.training.epochs;
        if self.samples_per_epoch > 0 && samples_due(state.epoch, self.sample_every_n_epochs, total)
        {
            // Sampling uses its own fixed seed, never the training RNGs, so logging cannot
            // change what is trained and every epoch's grid shows the same noise. A
            // class-conditional model draws its classes in turn, guided as `diffit sample
            // --class` is by default.
            let seed = mix_seed(state.config.training.seed, streams::SAMPLES);
            let images = epoch_samples(
                &state.model,
                self.samples_per_epoch,
                seed,
                self.sample_steps,
                &state.device,
            )?;
            let size = state.model_config.image_size;
            let rgb = to_rgb8(&images)?;
            let (w, h, grid) = super::sample::grid(&rgb, size, SAMPLE_GRID_COLUMNS, 1)?;
            self.writer.add_image_rgb8("samples", &grid, w, h, step)?;
            if let Some(layout) = &self.sample_grids {
                write_sample_grid(layout, state.epoch, &grid, w, h)?;
            }
        }
        self.writer.sync()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarBuilder;
    use model::diffusion::ddim_sample;
    use model::rng::Rng;
    use model::Config;

    /// A network of random weights everywhere: a fresh model's zero-initialised output layer
    /// would make every output, guided or not, zero.
    fn network(cfg: &Config) -> DiffiT {
        let mut rng = Rng::new(4);
        let tensors = model::init_base_tensors(cfg, &mut rng, &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(name, t)| {
                let random = rng.normal_tensor(t.shape(), &Device::Cpu).unwrap();
                (name, (random * 0.1).unwrap())
            })
            .collect();
        let vb = VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu);
        DiffiT::new(cfg, vb, None).unwrap()
    }

    #[test]
    fn epoch_samples_are_guided_by_class_for_a_labelled_model_only() {
        // How far the epoch strip of a network of `cfg` is from its unguided samples.
        let moved = |cfg: &Config| {
            let (net, dev) = (network(cfg), Device::Cpu);
            let schedule = NoiseSchedule::default();
            let unguided = ddim_sample(&net, &schedule, 3, 5, 4, DEFAULT_ETA, &dev).unwrap();
            let strip = epoch_samples(&net, 3, 5, 4, &dev).unwrap();
            let diff = (strip - unguided).unwrap().abs().unwrap();
            diff.max_all().unwrap().to_scalar::<f32>().unwrap()
        };
        assert_eq!(moved(&Config::tiny()), 0.0);
        assert!(moved(&Config::published_tiny()) > 1e-4);
    }
}
