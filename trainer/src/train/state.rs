//! `TrainState`: everything that changes while training (LoRA weights, optimizer, scheduler,
//! RNGs, counters) and its conversion to and from a [`LoraCheckpoint`].

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use format::metadata::Metrics;
use model::rng::{mix_seed, Rng, RngState};
use model::{init_lora_tensors, validate_lora, Config, DiffiT, LoraConfig};
use store::{LoraCheckpoint, TensorMap};

use crate::tensors::{map_to_candle, map_to_stored, to_candle, to_stored};

use super::config::TrainingConfig;
use super::error::TrainError;
use super::optim::{AdamW, AdamWParams, AdamWState};
use super::scheduler::LrScheduler;

/// Independent random streams derived from the run's seed, so that e.g. changing the LoRA
/// initialisation never shifts the data order.
pub mod streams {
    /// LoRA `A` initialisation.
    pub const LORA_INIT: u64 = 1;
    /// Shuffling the training images each epoch.
    pub const DATA_ORDER: u64 = 2;
    /// Timesteps, noise and dropout of training steps.
    pub const NOISE: u64 = 3;
    /// Validation batches (re-seeded per batch, never advanced across epochs).
    pub const VALIDATION: u64 = 4;
    /// Train/validation split of the images.
    pub const SPLIT: u64 = 5;
    /// Procedural tree images.
    pub const TREES: u64 = 6;
    /// Sample images logged each epoch.
    pub const SAMPLES: u64 = 7;
    /// Augmentation draws (counter-based: one generator per epoch and image, never saved).
    pub const AUGMENT: u64 = 8;
}

/// The RNG states saved in every checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngStates {
    /// Data order.
    pub data: RngState,
    /// Training noise (timesteps, ε, dropout).
    pub noise: RngState,
}

/// A JSON value of the training state, or the internal error of one that does not encode.
fn json(v: Result<Value, serde_json::Error>) -> Result<Value, TrainError> {
    v.map_err(|e| TrainError::Internal(format!("cannot encode state: {e}")))
}

/// What any training (LoRA or a whole base) has advanced by the end of an epoch.
#[derive(Debug, Clone, Copy)]
pub struct TrainingProgress<'a> {
    /// Epochs completed.
    pub epoch: u32,
    /// Optimizer steps taken.
    pub global_step: u64,
    /// The trained tensors, saved as the checkpoint's `lora` map.
    pub params: &'a [(String, Var)],
    /// AdamW (its moments and state).
    pub optimizer: &'a AdamW,
    /// The learning-rate schedule.
    pub scheduler: &'a LrScheduler,
    /// The data-order stream.
    pub data_rng: &'a Rng,
    /// The training-noise stream.
    pub noise_rng: &'a Rng,
}

/// A checkpoint of `progress` with `metrics`: the trained tensors, AdamW's moments and state,
/// the schedule and both streams (the caller adds the configs).
pub fn training_checkpoint(
    progress: TrainingProgress<'_>,
    metrics: &Metrics,
) -> Result<LoraCheckpoint, TrainError> {
    let mut ckpt = LoraCheckpoint::new(progress.epoch, progress.global_step);
    for (name, var) in progress.params {
        ckpt.lora.insert(name.clone(), to_stored(var.as_tensor())?);
    }
    ckpt.optimizer_tensors = map_to_stored(
        progress
            .optimizer
            .state_tensors()
            .iter()
            .map(|(k, v)| (k, v)),
    )?;
    ckpt.metrics = metrics.clone();
    ckpt.optimizer = json(serde_json::to_value(progress.optimizer.state()))?;
    ckpt.scheduler = json(serde_json::to_value(progress.scheduler))?;
    ckpt.rng = json(serde_json::to_value(RngStates {
        data: progress.data_rng.state(),
        noise: progress.noise_rng.state(),
    }))?;
    Ok(ckpt)
}

/// The mutable state of a LoRA fine-tuning run.
#[derive(Debug)]
pub struct TrainState {
    /// The run's configuration (after overrides).
    pub config: TrainingConfig,
    /// Model hyper-parameters.
    pub model_config: Config,
    /// LoRA hyper-parameters.
    pub lora_config: LoraConfig,
    /// Where tensors live.
    pub device: Device,
    /// The frozen base weights.
    pub base: HashMap<String, Tensor>,
    /// `blake3:<hex>` of the base model file this run trains on, once known.
    pub base_checksum: Option<String>,
    /// The trainable LoRA parameters, sorted by name.
    pub params: Vec<(String, Var)>,
    /// Base + adapters.
    pub model: DiffiT,
    /// AdamW over `params`.
    pub optimizer: AdamW,
    /// LR schedule.
    pub scheduler: LrScheduler,
    /// Data-order RNG.
    pub data_rng: Rng,
    /// Training-noise RNG.
    pub noise_rng: Rng,
    /// Epochs completed.
    pub epoch: u32,
    /// Optimizer steps taken.
    pub global_step: u64,
    /// Optimizer steps per epoch.
    pub steps_per_epoch: u64,
    /// Metrics of the last completed epoch.
    pub last_metrics: Metrics,
    /// Epoch of the checkpoint this state was resumed from, if any.
    pub resumed_from: Option<u32>,
    /// The class names of a labelled run, in label order (empty without labels).
    pub classes: Vec<String>,
}

impl TrainState {
    /// A fresh run: adapters initialised from the seed, optimizer and schedule at step 0.
    pub fn new(
        config: TrainingConfig,
        model_config: Config,
        base: HashMap<String, Tensor>,
        device: Device,
        steps_per_epoch: u64,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        let lora_config = config.lora.clone();
        let t = &config.training;
        let mut init_rng = Rng::new(mix_seed(t.seed, streams::LORA_INIT));
        let init = init_lora_tensors(&model_config, &lora_config, &mut init_rng, &device)?;
        validate_lora(&model_config, &base, &init, &lora_config)?;

        let varmap = VarMap::new();
        {
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| TrainError::Internal("LoRA parameter map poisoned".into()))?;
            for (name, tensor) in &init {
                data.insert(name.clone(), Var::from_tensor(tensor)?);
            }
        }
        let base_vb = VarBuilder::from_tensors(base.clone(), DType::F32, &device);
        let lora_vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let model = DiffiT::new(&model_config, base_vb, Some((&lora_config, lora_vb)))?;
        let mut params: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Internal("LoRA parameter map poisoned".into()))?
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));

        let mut optimizer = AdamW::new(AdamWParams {
            lr: t.learning_rate,
            weight_decay: t.weight_decay,
            ..Default::default()
        })?;
        optimizer.set_max_grad_norm(t.gradient_clip_val);
        let scheduler = LrScheduler::new(
            t.learning_rate,
            t.min_lr.min(t.learning_rate),
            t.warmup_steps,
            u64::from(t.epochs) * steps_per_epoch.max(1),
        )?;
        Ok(Self {
            data_rng: Rng::new(mix_seed(t.seed, streams::DATA_ORDER)),
            noise_rng: Rng::new(mix_seed(t.seed, streams::NOISE)),
            config,
            model_config,
            lora_config,
            device,
            base,
            base_checksum: None,
            params,
            model,
            optimizer,
            scheduler,
            epoch: 0,
            global_step: 0,
            steps_per_epoch: steps_per_epoch.max(1),
            last_metrics: Metrics::new(),
            resumed_from: None,
            classes: Vec::new(),
        })
    }

    /// Total optimizer steps the configured epochs take.
    pub fn total_steps(&self) -> u64 {
        u64::from(self.config.training.epochs) * self.steps_per_epoch
    }

    /// The current LoRA weights (copies, safe to keep while training goes on).
    pub fn lora_tensors(&self) -> Result<TensorMap, TrainError> {
        let mut out = TensorMap::new();
        for (name, var) in &self.params {
            out.insert(name.clone(), to_stored(var.as_tensor())?);
        }
        Ok(out)
    }

    /// The run's whole configuration as `config.json` stores it (and MLflow logs it as params):
    /// the training config in its stored form, the LoRA config and the model config.
    pub fn run_config(&self) -> Value {
        let mut config = serde_json::json!({
            "training": self.config.to_stored(),
            "lora": self.lora_config,
            "model": self.model_config,
        });
        // The class names, so that samples can be asked for by name (not in unlabelled runs,
        // whose config.json stays as older versions wrote it).
        if let (false, Some(map)) = (self.classes.is_empty(), config.as_object_mut()) {
            map.insert("classes".into(), serde_json::json!(self.classes));
        }
        config
    }

    /// This state as a checkpoint of the epoch just completed.
    pub fn to_checkpoint(&self, metrics: &Metrics) -> Result<LoraCheckpoint, TrainError> {
        let mut ckpt = training_checkpoint(
            TrainingProgress {
                epoch: self.epoch,
                global_step: self.global_step,
                params: &self.params,
                optimizer: &self.optimizer,
                scheduler: &self.scheduler,
                data_rng: &self.data_rng,
                noise_rng: &self.noise_rng,
            },
            metrics,
        )?;
        ckpt.lora_config = json(serde_json::to_value(&self.lora_config))?;
        ckpt.model_config = json(serde_json::to_value(&self.model_config))?;
        ckpt.base_checksum = self.base_checksum.clone();
        Ok(ckpt)
    }

    /// Restores a checkpoint into this state. Without `load_optimizer` the optimizer starts
    /// afresh; without `load_scheduler` a new schedule starts at the checkpoint's step. A
    /// changed epoch count or learning rate in `self.config` then re-targets the schedule.
    pub fn restore(
        &mut self,
        ckpt: &LoraCheckpoint,
        load_optimizer: bool,
        load_scheduler: bool,
    ) -> Result<(), TrainError> {
        let saved_lora: LoraConfig = serde_json::from_value(ckpt.lora_config.clone())
            .map_err(|e| TrainError::Resume(format!("checkpoint lora_config is invalid: {e}")))?;
        if saved_lora != self.lora_config {
            return Err(TrainError::Resume(format!(
                "the checkpoint's LoRA config {saved_lora:?} differs from this run's {:?}",
                self.lora_config
            )));
        }
        if !ckpt.model_config.is_null() {
            let saved: Config = serde_json::from_value(ckpt.model_config.clone()).map_err(|e| {
                TrainError::Resume(format!("checkpoint model_config is invalid: {e}"))
            })?;
            if saved != self.model_config {
                return Err(TrainError::Resume(format!(
                    "the checkpoint was trained for model {saved:?}, this run builds {:?}",
                    self.model_config
                )));
            }
        }
        if let (Some(saved), Some(ours)) = (&ckpt.base_checksum, &self.base_checksum) {
            if saved != ours {
                return Err(TrainError::Resume(format!(
                    "the checkpoint was trained on base model {saved}, this run's base is {ours}"
                )));
            }
        }
        let lora: HashMap<String, Tensor> = map_to_candle(&ckpt.lora, &self.device)?;
        validate_lora(&self.model_config, &self.base, &lora, &self.lora_config)?;
        for (name, var) in &self.params {
            let tensor = ckpt.lora.get(name).ok_or_else(|| {
                TrainError::Resume(format!("checkpoint lacks LoRA tensor {name:?}"))
            })?;
            var.set(&to_candle(tensor, &self.device)?)?;
        }
        let fresh_hp = AdamWParams {
            lr: self.config.training.learning_rate,
            weight_decay: self.config.training.weight_decay,
            ..Default::default()
        };
        self.optimizer = if load_optimizer {
            let state: AdamWState =
                serde_json::from_value(ckpt.optimizer.clone()).map_err(|e| {
                    TrainError::Resume(format!("checkpoint optimizer state is invalid: {e}"))
                })?;
            let mut opt = AdamW::from_parts(
                state,
                &map_to_candle(&ckpt.optimizer_tensors, &self.device)?,
                &self.params,
            )?;
            opt.set_weight_decay(self.config.training.weight_decay);
            opt
        } else {
            AdamW::new(fresh_hp)?
        };
        self.optimizer
            .set_max_grad_norm(self.config.training.gradient_clip_val);
        let total = self.total_steps();
        self.scheduler = if load_scheduler {
            serde_json::from_value(ckpt.scheduler.clone()).map_err(|e| {
                TrainError::Resume(format!("checkpoint scheduler state is invalid: {e}"))
            })?
        } else {
            let mut s = LrScheduler::new(
                self.config.training.learning_rate,
                self.config
                    .training
                    .min_lr
                    .min(self.config.training.learning_rate),
                0,
                total.max(ckpt.global_step + 1),
            )?;
            s.step = ckpt.global_step;
            s
        };
        self.scheduler.retarget(
            total.max(ckpt.global_step + 1),
            self.config.training.learning_rate,
        )?;
        let rng: RngStates = serde_json::from_value(ckpt.rng.clone())
            .map_err(|e| TrainError::Resume(format!("checkpoint RNG state is invalid: {e}")))?;
        self.data_rng = Rng::from_state(rng.data);
        self.noise_rng = Rng::from_state(rng.noise);
        self.epoch = ckpt.epoch;
        self.global_step = ckpt.global_step;
        self.last_metrics = ckpt.metrics.clone();
        self.resumed_from = Some(ckpt.epoch);
        Ok(())
    }
}
