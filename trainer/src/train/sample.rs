//! Using a trained run: load base + LoRA of a checkpoint, fuse them, sample image grids with
//! DDIM, and export merged or PEFT weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use format::tensors::{meta_keys, BASE_MODEL_FORMAT};
use format::CheckpointName;
use model::diffusion::{ddim_sample_guided, to_rgb8, Guidance, NoiseSchedule};
use model::{fuse_lora_weights, Config, DiffiT, LoraConfig};
use store::{CheckpointManager, Which};

use crate::tensors::map_to_candle;

use super::error::TrainError;
use super::export::{write_peft_adapter, write_safetensors};

/// A run's weights at one checkpoint, LoRA fused into the base.
#[derive(Debug)]
pub struct FusedModel {
    /// Model hyper-parameters.
    pub model_config: Config,
    /// LoRA hyper-parameters (`None` for the base alone).
    pub lora_config: Option<LoraConfig>,
    /// Base weights with the adapters merged in.
    pub tensors: HashMap<String, Tensor>,
    /// The adapters alone (empty for the base).
    pub lora: HashMap<String, Tensor>,
    /// The epoch the adapters come from.
    pub epoch: Option<u32>,
    /// The class names the run recorded, in label order (empty without labels).
    pub classes: Vec<String>,
}

impl FusedModel {
    /// The network of these weights on the CPU, for inference.
    pub fn network(&self) -> Result<DiffiT, TrainError> {
        let vb = VarBuilder::from_tensors(self.tensors.clone(), DType::F32, &Device::Cpu);
        Ok(DiffiT::new(&self.model_config, vb, None)?)
    }
}

/// Loads `checkpoint` (`base`, `best`, `last`, `epoch_NNN`) of run `run_number`, read-only.
pub fn load_fused(
    base_dir: &Path,
    run_number: u32,
    checkpoint: CheckpointName,
) -> Result<FusedModel, TrainError> {
    let manager = CheckpointManager::open_read_only(base_dir, run_number)?;
    let base = manager.load_base_model()?;
    let model_config: Config =
        serde_json::from_value(base.model_config.clone()).map_err(|e| TrainError::BadFile {
            path: manager.layout().checkpoint(CheckpointName::Base),
            reason: format!("model_config is missing or invalid: {e}"),
        })?;
    let base_tensors: HashMap<String, Tensor> = map_to_candle(&base.tensors, &Device::Cpu)?;
    // Older runs and unlabelled ones record no class names.
    let classes: Vec<String> = manager
        .load_config()
        .ok()
        .and_then(|config| config.get("classes").cloned())
        .and_then(|names| serde_json::from_value(names).ok())
        .unwrap_or_default();
    let which = match checkpoint {
        CheckpointName::Base => {
            return Ok(FusedModel {
                model_config,
                lora_config: None,
                tensors: base_tensors,
                lora: HashMap::new(),
                epoch: None,
                classes,
            })
        }
        CheckpointName::Best => Which::Best,
        CheckpointName::Last => Which::Last,
        CheckpointName::Epoch(n) => Which::Epoch(n),
    };
    let ckpt = manager.load_lora_weights(which)?;
    let lora_config: LoraConfig =
        serde_json::from_value(ckpt.lora_config.clone()).map_err(|e| TrainError::BadFile {
            path: manager.layout().checkpoint(checkpoint),
            reason: format!("lora_config is missing or invalid: {e}"),
        })?;
    let lora: HashMap<String, Tensor> = map_to_candle(&ckpt.lora, &Device::Cpu)?;
    model::validate_lora(&model_config, &base_tensors, &lora, &lora_config)?;
    let tensors = fuse_lora_weights(&base_tensors, &lora, &lora_config)?;
    Ok(FusedModel {
        model_config,
        lora_config: Some(lora_config),
        tensors,
        lora,
        epoch: Some(ckpt.epoch),
        classes,
    })
}

impl FusedModel {
    /// The label of `class`: a class name the run recorded, or a number below the model's
    /// class count.
    pub fn class_label(&self, class: &str) -> Result<u32, TrainError> {
        let Some(n) = self.model_config.num_classes else {
            return Err(TrainError::Usage(
                "--class: this model has no class labels (its preset is not a published one)"
                    .into(),
            ));
        };
        if let Some(i) = self.classes.iter().position(|c| c == class) {
            return Ok(i as u32);
        }
        match class.parse::<u32>() {
            Ok(label) if (label as usize) < n => Ok(label),
            _ => {
                let names = if self.classes.is_empty() {
                    String::new()
                } else {
                    format!(" or one of {}", self.classes.join(", "))
                };
                Err(TrainError::Usage(format!(
                    "--class {class}: expected a class number below {n}{names}"
                )))
            }
        }
    }
}

/// White pixels between (and around) the images of a [`grid`].
pub const GRID_GAP: usize = 2;

/// Lays out `images` (RGB8, `size`×`size` each) in a grid of `cols` columns with a 2-pixel
/// white gap, each image scaled up by `scale`. Returns `(width, height, rgb)`.
pub fn grid(
    images: &[Vec<u8>],
    size: usize,
    cols: usize,
    scale: usize,
) -> Result<(u32, u32, Vec<u8>), TrainError> {
    let n = images.len();
    if n == 0 || size == 0 {
        return Err(TrainError::Internal("no images to lay out".into()));
    }
    let (cols, scale, gap) = (cols.clamp(1, n), scale.max(1), GRID_GAP);
    let rows = n.div_ceil(cols);
    let cell = size * scale;
    let width = cols * cell + (cols + 1) * gap;
    let height = rows * cell + (rows + 1) * gap;
    let mut out = vec![255u8; width * height * 3];
    for (i, img) in images.iter().enumerate() {
        if img.len() != size * size * 3 {
            return Err(TrainError::Internal(format!(
                "image {i} has {} bytes, expected {}",
                img.len(),
                size * size * 3
            )));
        }
        let (r, c) = (i / cols, i % cols);
        let (ox, oy) = (gap + c * (cell + gap), gap + r * (cell + gap));
        for y in 0..cell {
            for x in 0..cell {
                let src = ((y / scale) * size + x / scale) * 3;
                let dst = ((oy + y) * width + ox + x) * 3;
                out[dst..dst + 3].copy_from_slice(&img[src..src + 3]);
            }
        }
    }
    let w = u32::try_from(width).map_err(|_| TrainError::Usage("grid too wide".into()))?;
    let h = u32::try_from(height).map_err(|_| TrainError::Usage("grid too tall".into()))?;
    Ok((w, h, out))
}

/// Samples `n` images with `steps` DDIM steps of `eta` from `seed`, with classifier-free
/// guidance when given, and writes them as a PNG grid; returns the path written.
#[allow(clippy::too_many_arguments)]
pub fn sample_grid(
    model: &FusedModel,
    n: usize,
    seed: u64,
    steps: usize,
    eta: f64,
    guidance: Option<Guidance>,
    out: &Path,
) -> Result<PathBuf, TrainError> {
    if n == 0 || steps == 0 {
        return Err(TrainError::Usage(
            "--n and --steps must be at least 1".into(),
        ));
    }
    let net = model.network()?;
    let images = ddim_sample_guided(
        &net,
        &NoiseSchedule::default(),
        n,
        seed,
        steps,
        eta,
        guidance,
        &Device::Cpu,
    )?;
    let rgb = to_rgb8(&images)?;
    let size = model.model_config.image_size;
    let cols = (n as f64).sqrt().ceil() as usize;
    let scale = (128 / size).max(1);
    let (w, h, pixels) = grid(&rgb, size, cols, scale)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io("create directory", dir, e))?;
    }
    image::save_buffer(out, &pixels, w, h, image::ExtendedColorType::Rgb8).map_err(|e| {
        TrainError::BadFile {
            path: out.to_path_buf(),
            reason: format!("cannot write PNG: {e}"),
        }
    })?;
    Ok(out.to_path_buf())
}

/// Writes the fused weights as one safetensors file loadable as a plain (adapter-free) base.
pub fn export_merged(model: &FusedModel, out: &Path) -> Result<PathBuf, TrainError> {
    let tensors = model
        .tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let config = serde_json::to_string(&model.model_config)
        .map_err(|e| TrainError::Internal(format!("cannot encode model config: {e}")))?;
    let mut meta = HashMap::from([
        (meta_keys::FORMAT.to_string(), BASE_MODEL_FORMAT.to_string()),
        (meta_keys::MODEL_CONFIG.to_string(), config),
    ]);
    // What was fused in, so that the file tells itself apart from a plain base model.
    if let Some(lora) = &model.lora_config {
        let lora = serde_json::to_string(lora)
            .map_err(|e| TrainError::Internal(format!("cannot encode LoRA config: {e}")))?;
        meta.insert(meta_keys::LORA_CONFIG.to_string(), lora);
    }
    if let Some(epoch) = model.epoch {
        meta.insert(meta_keys::EPOCH.to_string(), epoch.to_string());
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io("create directory", dir, e))?;
    }
    write_safetensors(out, &tensors, Some(meta))?;
    Ok(out.to_path_buf())
}

/// Writes the adapters as a PEFT folder.
pub fn export_peft(model: &FusedModel, out: &Path, base_name: &str) -> Result<PathBuf, TrainError> {
    let lora_config = model.lora_config.as_ref().ok_or_else(|| {
        TrainError::Usage("the base checkpoint has no adapters to export as PEFT".into())
    })?;
    Ok(write_peft_adapter(
        out,
        &model.lora,
        lora_config,
        base_name,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_images_with_gaps() {
        let red = [255, 0, 0].repeat(4);
        let blue = [0, 0, 255].repeat(4);
        let (w, h, px) = grid(&[red, blue.clone(), blue], 2, 2, 2).unwrap();
        assert_eq!((w, h), (2 * 4 + 3 * 2, 2 * 4 + 3 * 2));
        let at = |x: usize, y: usize| &px[(y * w as usize + x) * 3..(y * w as usize + x) * 3 + 3];
        assert_eq!(at(0, 0), [255, 255, 255]);
        assert_eq!(at(2, 2), [255, 0, 0]);
        assert_eq!(at(8, 2), [0, 0, 255]);
        assert_eq!(at(2, 8), [0, 0, 255]);
        assert_eq!(at(8, 8), [255, 255, 255], "the empty cell stays white");
        assert!(grid(&[], 2, 1, 1).is_err());
    }
}
