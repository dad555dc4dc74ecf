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

use format::tensors::{meta_keys, BASE_MODEL_FORMAT};
use model::data::{Augmentation, Dataset};
use model::diffusion::NoiseSchedule;
use model::rng::{mix_seed, Rng};
use model::{base_tensor_shapes, init_base_tensors, Config, DiffiT};

use super::config::Preset;
use super::epoch::{train_epoch, Learner};
use super::error::TrainError;
use super::export::write_safetensors;
use super::optim::{AdamW, AdamWParams};
use super::scheduler::LrScheduler;

/// Seed of the cached base models.
pub const DEFAULT_PRETRAIN_SEED: u64 = 0;

/// Settings of a pretraining run.
#[derive(Debug, Clone, PartialEq)]
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
            Preset::Small | Preset::PublishedSmall => Self {
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
    let steps_per_epoch = cfg.num_images.div_ceil(cfg.batch_size) as u64;
    let total = steps_per_epoch * u64::from(cfg.epochs);
    let mut opt = AdamW::new(AdamWParams {
        lr: cfg.learning_rate,
        weight_decay: 0.0,
        ..Default::default()
    })?;
    let mut sched = LrScheduler::new(
        cfg.learning_rate,
        cfg.learning_rate * 0.05,
        (total / 20).max(1),
        total,
    )?;
    let schedule = NoiseSchedule::default();
    let mut data_rng = Rng::new(mix_seed(cfg.seed, 13));
    let mut noise_rng = Rng::new(mix_seed(cfg.seed, 14));

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
    let mut global_step = 0;
    let mut learner = Learner {
        model: &model,
        params: &params,
        optimizer: &mut opt,
        scheduler: &mut sched,
        data_rng: &mut data_rng,
        noise_rng: &mut noise_rng,
        global_step: &mut global_step,
        device: &device,
        // The generic set has no labels: a labelled base learns the null class here.
        label_dropout: 0.0,
        augmentation: Augmentation::NONE,
        augment_seed: 0,
    };
    for epoch in 1..=cfg.epochs {
        let done = train_epoch(
            &mut learner,
            &data,
            cfg.batch_size,
            &schedule,
            epoch,
            stop,
            |progress| {
                bar.inc(1);
                bar.set_message(format!(
                    "epoch {epoch}/{} loss {:.4}",
                    cfg.epochs, progress.mean_loss
                ));
            },
        )?;
        let Some(loss) = done else {
            return Err(TrainError::Interrupted);
        };
        if show_progress && !std::io::stderr().is_terminal() {
            eprintln!(
                "pretrain epoch {epoch}/{}: loss={:.5}",
                cfg.epochs, loss.mean
            );
        }
    }
    bar.finish_and_clear();
    let mut out = HashMap::new();
    for (name, _) in base_tensor_shapes(&model_cfg) {
        let var = params
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| TrainError::Internal(format!("pretrained model lacks {name}")))?;
        out.insert(name, var.1.as_tensor().copy()?);
    }
    Ok(out)
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
