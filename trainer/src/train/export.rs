//! Exporting a trained run: PEFT adapter folders (`adapter_model.safetensors` +
//! `adapter_config.json`) and merged (LoRA fused into the base) safetensors files.
//!
//! A PEFT folder names each adapter by its module's path, which for the published
//! architecture is the official PyTorch model's (`model::official`), so Hugging Face `peft`
//! attaches it to NVlabs' DiffiT as it is (checked by `scripts/peft_check.py`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use format::tensors::{is_lora_tensor, lora_a_name, lora_b_name, lora_module};
use model::{LoraConfig, LABEL_EMBEDDER};

/// PEFT's file names inside an adapter folder.
pub const PEFT_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's adapter config file name.
pub const PEFT_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT prefixes every adapter tensor with the wrapped model's path.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// PEFT's adapter of an `nn.Embedding` is `<module>.lora_embedding_A` `[r, rows]` and
/// `<module>.lora_embedding_B` `[dim, r]` (no `.weight`): the transposes of our table adapter's
/// B `[rows, r]` and A `[r, dim]`, whose update `(B_peft·A_peft)ᵀ = B·A` is the same.
pub const PEFT_EMBEDDING_A_SUFFIX: &str = ".lora_embedding_A";
/// The `B` half of PEFT's embedding adapter (see [`PEFT_EMBEDDING_A_SUFFIX`]).
pub const PEFT_EMBEDDING_B_SUFFIX: &str = ".lora_embedding_B";

/// True for a tensor name of a PEFT adapter file: `base_model.model.<module>.lora_{A,B}.weight`
/// or an embedding's `…lora_embedding_{A,B}`.
pub fn is_peft_lora_tensor(name: &str) -> bool {
    name.strip_prefix(PEFT_PREFIX).is_some_and(|name| {
        is_lora_tensor(name)
            || name.ends_with(PEFT_EMBEDDING_A_SUFFIX)
            || name.ends_with(PEFT_EMBEDDING_B_SUFFIX)
    })
}

/// Errors of exporting; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Writing a file or folder failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Serialising tensors failed.
    #[error("cannot write tensors to {path}: {source}")]
    Tensors {
        /// The safetensors file.
        path: PathBuf,
        /// candle's error.
        source: candle_core::Error,
    },
    /// The checkpoint holds no LoRA tensors to export.
    #[error("no LoRA tensors to export")]
    NoLoraTensors,
    /// The atomic write (temp file, fsync, rename, directory fsync) failed.
    #[error(transparent)]
    Write(#[from] store::StoreError),
}

/// `adapter_config.json` as PEFT writes it for LoRA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftAdapterConfig {
    /// Always `LORA`.
    pub peft_type: String,
    /// Rank.
    pub r: usize,
    /// Scale numerator.
    pub lora_alpha: f64,
    /// Dropout used in training.
    pub lora_dropout: f64,
    /// Module-name suffixes with adapters.
    pub target_modules: Vec<String>,
    /// Which biases were trained (`none`).
    pub bias: String,
    /// Weights are stored `out × in` (candle and PyTorch `Linear` layout).
    pub fan_in_fan_out: bool,
    /// Adapters are for inference.
    pub inference_mode: bool,
    /// The base model these adapters belong to.
    pub base_model_name_or_path: String,
    /// Task type (none for a diffusion model).
    pub task_type: Option<String>,
    /// Modules trained in full besides LoRA (none).
    pub modules_to_save: Option<Vec<String>>,
}

impl PeftAdapterConfig {
    /// The PEFT config of our LoRA settings.
    pub fn new(lora: &LoraConfig, base_model: impl Into<String>) -> Self {
        Self {
            peft_type: "LORA".into(),
            r: lora.r,
            lora_alpha: lora.lora_alpha,
            lora_dropout: lora.lora_dropout,
            target_modules: lora.target_modules.clone(),
            bias: "none".into(),
            fan_in_fan_out: false,
            inference_mode: true,
            base_model_name_or_path: base_model.into(),
            task_type: None,
            modules_to_save: None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The PEFT name and value of our LoRA tensor `name`: PEFT's prefix on the same name, except
/// for the label table, whose halves become PEFT's embedding adapter, transposed.
fn peft_tensor(name: &str, tensor: &Tensor) -> candle_core::Result<(String, Tensor)> {
    let embedding = |suffix: &str| -> candle_core::Result<(String, Tensor)> {
        Ok((
            format!("{PEFT_PREFIX}{LABEL_EMBEDDER}{suffix}"),
            tensor.t()?.contiguous()?,
        ))
    };
    if name == lora_a_name(LABEL_EMBEDDER) {
        embedding(PEFT_EMBEDDING_B_SUFFIX)
    } else if name == lora_b_name(LABEL_EMBEDDER) {
        embedding(PEFT_EMBEDDING_A_SUFFIX)
    } else {
        Ok((format!("{PEFT_PREFIX}{name}"), tensor.clone()))
    }
}

/// Writes a PEFT adapter folder: only the `lora_A` / `lora_B` tensors of `tensors` (optimizer
/// state and anything else is dropped), renamed with PEFT's `base_model.model.` prefix (the
/// label table's as PEFT's embedding adapter, [`PEFT_EMBEDDING_A_SUFFIX`]).
pub fn write_peft_adapter(
    dir: &Path,
    tensors: &HashMap<String, Tensor>,
    lora: &LoraConfig,
    base_model: &str,
) -> Result<PathBuf, ExportError> {
    let weights = dir.join(PEFT_WEIGHTS_FILE);
    let adapters: BTreeMap<String, Tensor> = tensors
        .iter()
        .filter(|(name, _)| is_lora_tensor(name) && lora_module(name).is_some())
        .map(|(name, t)| peft_tensor(name, t))
        .collect::<candle_core::Result<_>>()
        .map_err(|source| ExportError::Tensors {
            path: weights.clone(),
            source,
        })?;
    if adapters.is_empty() {
        return Err(ExportError::NoLoraTensors);
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    write_safetensors(&weights, &adapters, Some(meta))?;
    let config = dir.join(PEFT_CONFIG_FILE);
    let json =
        serde_json::to_string_pretty(&PeftAdapterConfig::new(lora, base_model)).map_err(|e| {
            ExportError::Io {
                path: config.clone(),
                source: std::io::Error::other(e),
            }
        })?;
    store::atomic::write_bytes_atomic(&config, (json + "\n").as_bytes())?;
    Ok(dir.to_path_buf())
}

/// Writes tensors (sorted by name) with optional `__metadata__`, atomically (temp file, fsync,
/// rename, directory fsync): a crash leaves the old file or the new one, never a torn one.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), ExportError> {
    let views: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let bytes = safetensors::serialize(views, metadata).map_err(|e| ExportError::Tensors {
        path: path.to_path_buf(),
        source: candle_core::Error::wrap(e),
    })?;
    Ok(store::atomic::write_bytes_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn peft_folder_holds_only_adapters_and_a_peft_config() {
        let dev = Device::Cpu;
        let mut tensors = HashMap::new();
        tensors.insert(
            "blocks.0.attn.qkv.lora_A.weight".to_string(),
            Tensor::ones((4, 8), DType::F32, &dev).unwrap(),
        );
        tensors.insert(
            "blocks.0.attn.qkv.lora_B.weight".to_string(),
            Tensor::zeros((24, 4), DType::F32, &dev).unwrap(),
        );
        tensors.insert(
            "optimizer.exp_avg.blocks.0.attn.qkv.lora_A.weight".to_string(),
            Tensor::zeros((4, 8), DType::F32, &dev).unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("adapter");
        let lora = LoraConfig {
            r: 4,
            ..Default::default()
        };
        write_peft_adapter(
            &out,
            &tensors,
            &lora,
            "run_001/base_model/base_model.safetensors",
        )
        .unwrap();

        let loaded = candle_core::safetensors::load(out.join(PEFT_WEIGHTS_FILE), &dev).unwrap();
        let mut names: Vec<_> = loaded.keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "base_model.model.blocks.0.attn.qkv.lora_A.weight",
                "base_model.model.blocks.0.attn.qkv.lora_B.weight"
            ]
        );
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(PEFT_CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(cfg["peft_type"], "LORA");
        assert_eq!(cfg["r"], 4);
        assert_eq!(cfg["lora_alpha"], 16.0);
        assert_eq!(cfg["target_modules"][0], "attn.qkv");
    }

    /// A published model's adapters, the label table's included, land on the official
    /// state_dict's modules with the shapes PEFT gives them there, and the table's update is
    /// unchanged by the transposes.
    #[test]
    fn peft_names_are_the_official_modules_of_a_published_model() {
        let dev = Device::Cpu;
        let cfg = model::Config::published_tiny();
        let mut lora = LoraConfig {
            r: 4,
            ..Default::default()
        };
        lora.target_modules.push(LABEL_EMBEDDER.into());
        let mut rng = model::rng::Rng::new(3);
        let mut tensors = model::init_lora_tensors(&cfg, &lora, &mut rng, &dev).unwrap();
        // Trained-looking B halves (they start at zero).
        for (name, t) in tensors.iter_mut() {
            if name.ends_with(format::tensors::LORA_B_SUFFIX) {
                *t = rng.normal_tensor(t.shape(), &dev).unwrap();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        write_peft_adapter(dir.path(), &tensors, &lora, "base").unwrap();
        let peft =
            candle_core::safetensors::load(dir.path().join(PEFT_WEIGHTS_FILE), &dev).unwrap();
        assert_eq!(peft.len(), tensors.len());

        let official: HashMap<String, Vec<usize>> = model::official::official_tensors(&cfg)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect();
        let rows = cfg.label_rows().unwrap();
        for (name, t) in &peft {
            assert!(is_peft_lora_tensor(name), "{name}");
            let name = name.strip_prefix(PEFT_PREFIX).unwrap();
            let (module, half) = if let Some(m) = name.strip_suffix(PEFT_EMBEDDING_A_SUFFIX) {
                (m, "embedding_A")
            } else if let Some(m) = name.strip_suffix(PEFT_EMBEDDING_B_SUFFIX) {
                (m, "embedding_B")
            } else if let Some(m) = name.strip_suffix(format::tensors::LORA_A_SUFFIX) {
                (m, "A")
            } else {
                (
                    name.strip_suffix(format::tensors::LORA_B_SUFFIX).unwrap(),
                    "B",
                )
            };
            let weight = &official
                .get(&format!("{module}.weight"))
                .unwrap_or_else(|| panic!("{module} is no official module"));
            // nn.Linear [out, in]: A [r, in], B [out, r]; nn.Embedding [rows, dim]:
            // embedding_A [r, rows], embedding_B [dim, r].
            let expected = match half {
                "A" => vec![4, weight[1]],
                "B" => vec![weight[0], 4],
                "embedding_A" => vec![4, weight[0]],
                _ => vec![weight[1], 4],
            };
            assert_eq!(t.dims(), expected, "{name}");
        }
        let table = |n: &str| &peft[&format!("{PEFT_PREFIX}{LABEL_EMBEDDER}{n}")];
        let peft_update = table(PEFT_EMBEDDING_B_SUFFIX)
            .matmul(table(PEFT_EMBEDDING_A_SUFFIX))
            .unwrap()
            .t()
            .unwrap();
        let ours = tensors[&lora_b_name(LABEL_EMBEDDER)]
            .matmul(&tensors[&lora_a_name(LABEL_EMBEDDER)])
            .unwrap();
        assert_eq!(ours.dims(), [rows, cfg.hidden_size]);
        let diff = (peft_update - ours)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn nothing_to_export_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_peft_adapter(dir.path(), &HashMap::new(), &LoraConfig::default(), "x")
            .unwrap_err();
        assert!(matches!(err, ExportError::NoLoraTensors));
    }
}
