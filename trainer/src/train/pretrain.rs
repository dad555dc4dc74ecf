//! Pretraining the full base model on the generic (tree-free) procedural set, deterministically
//! for a seed, and the per-preset cache of pretrained bases.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use format::metadata::Metrics;
use format::tensors::{meta_keys, BASE_MODEL_FORMAT};
use model::data::{Augmentation, Dataset};
use model::diffusion::NoiseSchedule;
use model::rng::{mix_seed, Rng};
use model::{base_tensor_shapes, init_base_tensors, Config, DiffiT};
use store::LoraCheckpoint;

use super::collective::SingleProcess;
use super::config::Preset;
use super::epoch::{train_epoch, EpochLoss, Learner};
use super::error::TrainError;
use super::export::write_safetensors;
use super::optim::{AdamW, AdamWParams, AdamWState};
use super::scheduler::LrScheduler;
use super::state::{training_checkpoint, RngStates, TrainingProgress};
use crate::tensors::{map_to_candle, to_candle};

/// Seed of the cached base models.
pub const DEFAULT_PRETRAIN_SEED: u64 = 0;

/// Settings of a pretraining run (a managed base run stores them in its `config.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PretrainConfig {
    /// Model size.
    pub preset: Preset,
    /// The network to pretrain: the preset's (a test may shrink it).
    pub model: Config,
    /// Passes over the generic set.
    pub epochs: u32,
    /// Seed of initialisation, data and noise.
    pub seed: u64,
    /// Generic images generated.
    pub num_images: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
}

impl PretrainConfig {
    /// Defaults sized so the `tiny` base trains in seconds and `small` within the demo budget.
    pub fn for_preset(preset: Preset) -> Self {
        let model = preset.model_config();
        match preset {
            Preset::Tiny | Preset::PublishedTiny => Self {
                preset,
                model,
                epochs: 6,
                seed: DEFAULT_PRETRAIN_SEED,
                num_images: 512,
                batch_size: 32,
                learning_rate: 3e-3,
            },
            // 1,152 optimizer steps, about 3½ minutes on 2 cores, leaving the rest of the
            // demo's 10 minutes to the LoRA fine-tuning, which is what turns scenes into trees.
            // 4 epochs of batch 32 at 1e-3 (96 steps) left the base at loss 0.51 and its
            // samples pure noise.
            Preset::Small | Preset::SmallLabels | Preset::PublishedSmall => Self {
                preset,
                model,
                epochs: 24,
                seed: DEFAULT_PRETRAIN_SEED,
                num_images: 768,
                batch_size: 16,
                learning_rate: 2e-3,
            },
            // Four times the pixels of `small`, for a GPU; not tuned on this machine.
            Preset::Published32 => Self {
                preset,
                model,
                epochs: 24,
                seed: DEFAULT_PRETRAIN_SEED,
                num_images: 2048,
                batch_size: 32,
                learning_rate: 1e-3,
            },
        }
    }
}

/// Trains a base model from scratch; returns its weights. Same config ⇒ same bits (for the
/// same thread count).
pub fn pretrain(
    cfg: &PretrainConfig,
    show_progress: bool,
    stop: &Arc<AtomicBool>,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let mut run = Pretraining::new(cfg)?;
    let bar = progress_bar(run.total_steps(), show_progress);
    while run.epoch < cfg.epochs {
        let Some(loss) = run.train_epoch(stop, &bar)? else {
            return Err(TrainError::Interrupted);
        };
        if show_progress && !std::io::stderr().is_terminal() {
            eprintln!(
                "pretrain epoch {}/{}: loss={:.5}",
                run.epoch, cfg.epochs, loss.mean
            );
        }
    }
    bar.finish_and_clear();
    run.base_tensors()
}

/// The progress bar of a pretraining of `total` steps (hidden off a terminal).
pub fn progress_bar(total: u64, show_progress: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if show_progress && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("pretrain [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// A pretraining in progress: the whole base model being trained, its optimizer, schedule and
/// random streams, and how far it got. [`Pretraining::to_checkpoint`] and
/// [`Pretraining::restore`] turn it into a store checkpoint and back, bit for bit, so that a
/// managed base run ([`super::base_runs`]) resumes exactly.
#[derive(Debug)]
pub struct Pretraining {
    cfg: PretrainConfig,
    model: DiffiT,
    params: Vec<(String, Var)>,
    data: Dataset,
    optimizer: AdamW,
    scheduler: LrScheduler,
    schedule: NoiseSchedule,
    data_rng: Rng,
    noise_rng: Rng,
    device: Device,
    /// Optimizer steps taken.
    pub global_step: u64,
    /// Epochs completed.
    pub epoch: u32,
}

impl Pretraining {
    /// A fresh pretraining of `cfg`: initial weights, data, optimizer and streams from its seed.
    pub fn new(cfg: &PretrainConfig) -> Result<Self, TrainError> {
        if cfg.epochs == 0 || cfg.batch_size == 0 || cfg.num_images == 0 {
            return Err(TrainError::Usage(
                "pretraining needs at least one epoch, image and batch".into(),
            ));
        }
        let device = Device::Cpu;
        let model_cfg = cfg.model.clone();
        let mut init_rng = Rng::new(mix_seed(cfg.seed, 11));
        let init = init_base_tensors(&model_cfg, &mut init_rng, &device)?;
        let varmap = VarMap::new();
        {
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| TrainError::Internal("parameter map poisoned".into()))?;
            for (name, t) in &init {
                data.insert(name.clone(), Var::from_tensor(t)?);
            }
        }
        let model = DiffiT::new(
            &model_cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
            None,
        )?;
        let mut params: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Internal("parameter map poisoned".into()))?
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));

        let data = Dataset::generic(cfg.num_images, model_cfg.image_size, mix_seed(cfg.seed, 12));
        let total = Self::steps_per_epoch(cfg) * u64::from(cfg.epochs);
        let optimizer = AdamW::new(Self::hyper_parameters(cfg))?;
        let scheduler = LrScheduler::new(
            cfg.learning_rate,
            cfg.learning_rate * 0.05,
            (total / 20).max(1),
            total,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            model,
            params,
            data,
            optimizer,
            scheduler,
            schedule: NoiseSchedule::default(),
            data_rng: Rng::new(mix_seed(cfg.seed, 13)),
            noise_rng: Rng::new(mix_seed(cfg.seed, 14)),
            device,
            global_step: 0,
            epoch: 0,
        })
    }

    fn hyper_parameters(cfg: &PretrainConfig) -> AdamWParams {
        AdamWParams {
            lr: cfg.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        }
    }

    fn steps_per_epoch(cfg: &PretrainConfig) -> u64 {
        cfg.num_images.div_ceil(cfg.batch_size) as u64
    }

    /// Optimizer steps of the whole pretraining.
    pub fn total_steps(&self) -> u64 {
        Self::steps_per_epoch(&self.cfg) * u64::from(self.cfg.epochs)
    }

    /// The settings it trains with.
    pub fn config(&self) -> &PretrainConfig {
        &self.cfg
    }

    /// Trains to `epochs` in total instead (a resumed run asked for more): the schedule is
    /// re-targeted from the current step on, without a jump.
    pub fn set_epochs(&mut self, epochs: u32) -> Result<(), TrainError> {
        if epochs == self.cfg.epochs {
            return Ok(());
        }
        self.cfg.epochs = epochs;
        let total = self.total_steps().max(self.global_step + 1);
        self.scheduler.retarget(total, self.cfg.learning_rate)?;
        Ok(())
    }

    /// Trains the next epoch, advancing `bar` per step; `None` when `stop` was set before it
    /// ended (its updates so far stay in memory only, and the epoch count does not advance).
    pub fn train_epoch(
        &mut self,
        stop: &AtomicBool,
        bar: &ProgressBar,
    ) -> Result<Option<EpochLoss>, TrainError> {
        let epoch = self.epoch + 1;
        let epochs = self.cfg.epochs;
        let mut learner = Learner {
            model: &self.model,
            params: &self.params,
            optimizer: &mut self.optimizer,
            scheduler: &mut self.scheduler,
            data_rng: &mut self.data_rng,
            noise_rng: &mut self.noise_rng,
            global_step: &mut self.global_step,
            device: &self.device,
            // The generic set has no labels: a labelled base learns the null class here.
            label_dropout: 0.0,
            augmentation: Augmentation::NONE,
            augment_seed: 0,
            collective: &SingleProcess,
            data_shards: None,
        };
        let done = train_epoch(
            &mut learner,
            &self.data,
            self.cfg.batch_size,
            &self.schedule,
            epoch,
            stop,
            |progress| {
                bar.inc(1);
                bar.set_message(format!(
                    "epoch {epoch}/{epochs} loss {:.4}",
                    progress.mean_loss
                ));
            },
        )?;
        if done.is_some() {
            self.epoch = epoch;
        }
        Ok(done)
    }

    /// The base model's weights now (copies), by the names a base file holds.
    pub fn base_tensors(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut out = HashMap::new();
        for (name, _) in base_tensor_shapes(&self.cfg.model) {
            let var = self
                .params
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| TrainError::Internal(format!("pretrained model lacks {name}")))?;
            out.insert(name, var.1.as_tensor().copy()?);
        }
        Ok(out)
    }

    /// The state after the epoch just completed, as a store checkpoint: the whole model's
    /// weights, AdamW's moments and state, the schedule and both random streams.
    pub fn to_checkpoint(&self, metrics: &Metrics) -> Result<LoraCheckpoint, TrainError> {
        let json = |v: Result<serde_json::Value, serde_json::Error>| {
            v.map_err(|e| TrainError::Internal(format!("cannot encode state: {e}")))
        };
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
        ckpt.whole_model = true;
        ckpt.model_config = json(serde_json::to_value(&self.cfg.model))?;
        Ok(ckpt)
    }

    /// Continues from `ckpt` (one [`to_checkpoint`](Self::to_checkpoint) wrote for the same
    /// settings): weights, moments, schedule, streams and counters, exactly.
    pub fn restore(&mut self, ckpt: &LoraCheckpoint) -> Result<(), TrainError> {
        let resume = |why: String| TrainError::Resume(why);
        if !ckpt.whole_model {
            return Err(resume(
                "the checkpoint holds LoRA adapters, not a base-training epoch".into(),
            ));
        }
        let saved: Config = serde_json::from_value(ckpt.model_config.clone())
            .map_err(|e| resume(format!("checkpoint model_config is invalid: {e}")))?;
        if saved != self.cfg.model {
            return Err(resume(format!(
                "the checkpoint was trained for model {saved:?}, this run builds {:?}",
                self.cfg.model
            )));
        }
        for (name, var) in &self.params {
            let tensor = ckpt
                .lora
                .get(name)
                .ok_or_else(|| resume(format!("checkpoint lacks model tensor {name:?}")))?;
            var.set(&to_candle(tensor, &self.device)?)?;
        }
        let state: AdamWState = serde_json::from_value(ckpt.optimizer.clone())
            .map_err(|e| resume(format!("checkpoint optimizer state is invalid: {e}")))?;
        self.optimizer = AdamW::from_parts(
            state,
            &map_to_candle(&ckpt.optimizer_tensors, &self.device)?,
            &self.params,
        )?;
        self.scheduler = serde_json::from_value(ckpt.scheduler.clone())
            .map_err(|e| resume(format!("checkpoint scheduler state is invalid: {e}")))?;
        let rng: RngStates = serde_json::from_value(ckpt.rng.clone())
            .map_err(|e| resume(format!("checkpoint RNG state is invalid: {e}")))?;
        self.data_rng = Rng::from_state(rng.data);
        self.noise_rng = Rng::from_state(rng.noise);
        self.epoch = ckpt.epoch;
        self.global_step = ckpt.global_step;
        Ok(())
    }
}

/// Writes a base model file (with its model config in the header) atomically.
pub fn save_base(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    model_cfg: &Config,
) -> Result<(), TrainError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io("create directory", dir, e))?;
    }
    let config = serde_json::to_string(model_cfg)
        .map_err(|e| TrainError::Internal(format!("cannot encode model config: {e}")))?;
    let meta = HashMap::from([
        (meta_keys::FORMAT.to_string(), BASE_MODEL_FORMAT.to_string()),
        (meta_keys::MODEL_CONFIG.to_string(), config),
    ]);
    let sorted = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Atomic and durable: a torn cached base would otherwise be found on the next run.
    write_safetensors(path, &sorted, Some(meta))?;
    Ok(())
}

/// A base model file read back, checked against the preset's shapes. Its header's config may
/// differ from the preset in model variants but not in sizes ([`Config::same_sizes`]), as in files made
/// before newer model options existed.
#[derive(Debug)]
pub struct LoadedBase {
    /// The weights.
    pub tensors: HashMap<String, Tensor>,
    /// The model config stored in the header, if any.
    pub model_config: Option<Config>,
}

fn bad_file(path: &Path, reason: String) -> TrainError {
    TrainError::BadFile {
        path: path.to_path_buf(),
        reason,
    }
}

/// Parses the `model_config` metadata value of a base model file.
fn parse_model_config(path: &Path, text: &str) -> Result<Config, TrainError> {
    serde_json::from_str::<Config>(text).map_err(|e| bad_file(path, format!("model_config: {e}")))
}

/// The model config in a safetensors header (`None` when the file has none).
fn header_model_config(path: &Path, bytes: &[u8]) -> Result<Option<Config>, TrainError> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad_file(path, format!("not a safetensors file: {e}")))?;
    header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(meta_keys::MODEL_CONFIG))
        .map(|text| parse_model_config(path, text))
        .transpose()
}

/// The model config a base model file was saved with (`None` when its header has none).
/// Reads only the file's header, not its weights.
pub fn base_model_config(path: &Path) -> Result<Option<Config>, TrainError> {
    let io = |e| TrainError::io("read base model", path, e);
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let header = store::read_header(file, size).map_err(|e| match e {
        store::HeaderError::Io(e) => io(e),
        other => bad_file(path, format!("not a safetensors file: {other}")),
    })?;
    header
        .metadata_value(meta_keys::MODEL_CONFIG)
        .map(|text| parse_model_config(path, text))
        .transpose()
}

/// Reads a base model file; errors name the file and the offending tensor.
pub fn load_base(path: &Path, expected: &Config) -> Result<LoadedBase, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io("read base model", path, e))?;
    let bad = |reason: String| TrainError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let model_config = header_model_config(path, &bytes)?;
    if let Some(cfg) = &model_config {
        if !cfg.same_sizes(expected) {
            return Err(bad(format!(
                "this base model was made for {cfg:?}, which does not match the chosen preset {expected:?}: pass the matching --preset, or pretrain a new base with `diffit pretrain` (bases from older versions lack newer model features)"
            )));
        }
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| bad(format!("cannot load tensors: {e}")))?;
    // The file's own config names its tensors (an older file may lack adaLN layers).
    for (name, shape) in base_tensor_shapes(model_config.as_ref().unwrap_or(expected)) {
        match tensors.get(&name) {
            None => {
                return Err(bad(format!(
                    "missing tensor {name:?} (is this a base model of this preset?)"
                )))
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(bad(format!(
                    "tensor {name:?} has shape {:?}, the preset needs {shape:?}",
                    t.dims()
                )))
            }
            Some(_) => {}
        }
    }
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect::<Result<_, TrainError>>()?;
    Ok(LoadedBase {
        tensors,
        model_config,
    })
}

/// `<checkpoints>/.cache/base_<preset>_<seed>.safetensors`.
pub fn cached_base_path(checkpoints: &Path, preset: Preset, seed: u64) -> PathBuf {
    checkpoints
        .join(".cache")
        .join(format!("base_{preset}_{seed}.safetensors"))
}

/// True when two weight sets hold the same names, shapes and bits.
pub fn same_weights(
    a: &HashMap<String, Tensor>,
    b: &HashMap<String, Tensor>,
) -> Result<bool, TrainError> {
    if a.len() != b.len() {
        return Ok(false);
    }
    for (name, x) in a {
        let Some(y) = b.get(name) else {
            return Ok(false);
        };
        if x.dims() != y.dims() {
            return Ok(false);
        }
        let xs = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let ys = y.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if xs.iter().zip(&ys).any(|(p, q)| p.to_bits() != q.to_bits()) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_alone_gives_the_model_config_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::tiny();
        let tensors = init_base_tensors(&cfg, &mut Rng::new(1), &Device::Cpu).unwrap();
        let path = dir.path().join("base.safetensors");
        save_base(&path, &tensors, &cfg).unwrap();
        assert_eq!(base_model_config(&path).unwrap(), Some(cfg.clone()));
        // Only the header is read, but the file's size must match what it describes: a base
        // cut short after its header is named as truncated, not taken for a model.
        let bytes = std::fs::read(&path).unwrap();
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..header_end]).unwrap();
        let err = base_model_config(&cut).unwrap_err().to_string();
        assert!(
            err.contains("cut.safetensors") && err.contains("truncated"),
            "{err}"
        );

        let no_config = dir.path().join("plain.safetensors");
        write_safetensors(&no_config, &tensors.into_iter().collect(), None).unwrap();
        assert_eq!(base_model_config(&no_config).unwrap(), None);

        for (name, content) in [
            ("short.safetensors", &bytes[..5]),
            ("torn.safetensors", &bytes[..header_end - 3]),
            ("text.safetensors", b"not a model at all".as_slice()),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let err = base_model_config(&path).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
            assert!(err.contains("not a safetensors file"), "{err}");
        }
    }
}
