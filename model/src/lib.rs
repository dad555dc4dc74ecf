//! The model, shared by the trainer and the browser app: DiffiT (time-dependent self-attention
//! diffusion transformer) and LoRA adapters, the diffusion process ([`diffusion`]), our seeded
//! RNG ([`rng`]) and the procedural datasets ([`data`]). Touches no filesystem and builds for
//! `wasm32-unknown-unknown`.
//!
//! The module tree built through `VarBuilder::pp` *is* the tensor naming of our safetensors
//! files: `x_embedder.proj.weight`, `t_embedder.mlp.0.weight`, `blocks.0.attn.qkv.weight`,
//! `blocks.0.attn.qkv_temb.weight`, `blocks.0.attn.relative_position_bias_table`,
//! `blocks.0.attn.proj.weight`, `blocks.0.mlp.fc1.weight`, `blocks.0.mlp.fc2.weight`,
//! `blocks.0.adaLN_modulation.weight`, `final_layer.adaLN_modulation.weight`,
//! `final_layer.linear.weight` (each linear also has a `.bias`; the `adaLN_modulation` layers
//! exist when [`Config::adaln`] is set; `y_embedder.embedding_table.weight` when
//! [`Config::num_classes`] is). LoRA tensors follow PEFT:
//! `<module>.lora_A.weight` / `<module>.lora_B.weight` (see [`format::tensors`]).
//!
//! Two architectures share this code ([`Architecture`]): our hybrid (the presets) and
//! NVlabs' published DiffiT, whose state_dict [`official`] converts to and from ours.

pub mod data;
pub mod diffusion;
pub mod rng;

pub mod official;

mod diffit;
mod lora;
mod ops;
mod params;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use diffit::{
    patchify, timestep_embedding, unpatchify, Attention, DiffiT, DiffiTBlock, ForwardTrace,
};
pub use lora::{
    fuse_lora_weights, init_lora_tensors, lora_parameter_count, lora_target_paths,
    lora_tensor_shapes, unfuse_lora_weights, validate_lora, LoraLinear,
};
pub use params::{base_tensor_shapes, init_base_tensors, parameter_count, LABEL_EMBEDDER};

/// Model hyper-parameters (serialised into every checkpoint's metadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Square image side in pixels.
    pub image_size: usize,
    /// Image channels (3 for RGB).
    pub in_channels: usize,
    /// Side of a square patch; one patch becomes one token.
    pub patch_size: usize,
    /// Token width.
    pub hidden_size: usize,
    /// Number of DiffiT blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// MLP width as a multiple of `hidden_size`.
    pub mlp_ratio: f64,
    /// Width of the sinusoidal timestep features fed to the time MLP.
    #[serde(default = "default_time_freq_dim")]
    pub time_freq_dim: usize,
    /// What the network's output means. Files written before this field existed hold
    /// ε-prediction models, hence the serde default.
    #[serde(default)]
    pub prediction: Prediction,
    /// Whether the output head applies SiLU between its LayerNorm and linear layer. It did in
    /// files written before this field existed; it squashes the negative half of every feature,
    /// which the head needs to reproduce the input's per-pixel noise, so new models have none.
    #[serde(default = "legacy_final_silu")]
    pub final_silu: bool,
    /// adaLN-Zero (DiT): the time token also scales, shifts and gates each block's LayerNorm
    /// outputs and the output head's, from zero-initialised `adaLN_modulation` layers. TMSA's
    /// additive time terms alone cannot make the MLPs and the head behave differently at
    /// different noise levels. Files written before this field existed have none.
    #[serde(default)]
    pub adaln: bool,
    /// Which conventions the network follows. Files written before this field existed hold
    /// the hybrid; the field is left out of a hybrid's JSON so configs (and the checksums of
    /// the files that carry them) stay byte-identical to those older versions wrote.
    #[serde(default, skip_serializing_if = "Architecture::is_hybrid")]
    pub architecture: Architecture,
    /// Class conditioning: with `Some(n)` a label embedder (`y_embedder`) holds `n` classes
    /// and, last, the null class `n` (unconditional, for classifier-free guidance); its
    /// embedding is added to the time token. `None`: no labels (every file before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Learned variance (improved DDPM, as the published model at 256 px): the head outputs
    /// `2 × in_channels` channels, the prediction first and then the variance interpolation.
    #[serde(default, skip_serializing_if = "is_false")]
    pub learn_sigma: bool,
}

fn legacy_final_silu() -> bool {
    true
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The network's conventions: ours, or NVlabs' published DiffiT module for module.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// Our variant (the presets): TMSA blocks, optionally with adaLN-Zero
    /// ([`Config::adaln`]), positions row half first, time frequencies computed in `f64`,
    /// a locality-initialised position bias.
    #[default]
    Hybrid,
    /// NVlabs' published DiffiT (`diffit/diffit.py`): TMSA blocks without adaLN, a label
    /// embedder (with its null class), LayerNorm → SiLU → Linear head, the 2-D sin-cos
    /// positions column half first and the time frequencies computed in `f32` as PyTorch
    /// does, so that weights trained there compute the same function here.
    Published,
}

impl Architecture {
    /// True for [`Architecture::Hybrid`].
    pub fn is_hybrid(&self) -> bool {
        *self == Architecture::Hybrid
    }
}

/// The quantity the network is trained to predict from a noised image `x_t`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise `ε` (DDPM). Ill-conditioned at high noise: the clean-image estimate divides
    /// the network's error by `√ᾱ_t`, which is 0.014 at the last cosine step.
    #[default]
    Epsilon,
    /// The velocity `v = √ᾱ·ε − √(1−ᾱ)·x₀` (Salimans & Ho, 2022): the clean-image estimate
    /// `√ᾱ·x_t − √(1−ᾱ)·v` stays well-conditioned at every noise level.
    V,
}

fn default_time_freq_dim() -> usize {
    128
}

impl Config {
    /// Trains a test epoch of ~64 images in seconds on 2 cores (16×16 RGB, 64 tokens).
    pub fn tiny() -> Self {
        Self {
            image_size: 16,
            in_channels: 3,
            patch_size: 2,
            hidden_size: 32,
            depth: 2,
            num_heads: 2,
            mlp_ratio: 4.0,
            time_freq_dim: 32,
            prediction: Prediction::V,
            final_silu: false,
            adaln: true,
            architecture: Architecture::Hybrid,
            num_classes: None,
            learn_sigma: false,
        }
    }

    /// The published architecture at test size (8×8 RGB, patch 2, 16 tokens, 3 classes,
    /// learned variance): what the parity fixture holds.
    pub fn published_fixture() -> Self {
        Self {
            image_size: 8,
            in_channels: 3,
            patch_size: 2,
            hidden_size: 16,
            depth: 2,
            num_heads: 2,
            mlp_ratio: 4.0,
            time_freq_dim: 256,
            prediction: Prediction::Epsilon,
            final_silu: true,
            adaln: false,
            architecture: Architecture::Published,
            num_classes: Some(3),
            learn_sigma: true,
        }
    }

    /// The official constructor `Diffit()` (DiffiT-XL/2: width 1152, 28 blocks, 16 heads,
    /// patch 2) for `latent_size`² latents of 4 channels (32 for 256 px images, 64 for
    /// 512 px), 1000 ImageNet classes, learned variance, ε-prediction.
    pub fn published_xl_2(latent_size: usize) -> Self {
        Self {
            image_size: latent_size,
            in_channels: 4,
            patch_size: 2,
            hidden_size: 1152,
            depth: 28,
            num_heads: 16,
            mlp_ratio: 4.0,
            time_freq_dim: 256,
            prediction: Prediction::Epsilon,
            final_silu: true,
            adaln: false,
            architecture: Architecture::Published,
            num_classes: Some(1000),
            learn_sigma: true,
        }
    }

    /// The demo model: 16×16 RGB, patch 2 (64 tokens of 2×2 pixels), small enough to pretrain
    /// and fine-tune on a laptop CPU in minutes. At the same cost per step, 32×32 with 4×4
    /// patches left 4×4 blocks of inconsistent colour in the samples; 2×2 patches give trees.
    pub fn small() -> Self {
        Self {
            image_size: 16,
            in_channels: 3,
            patch_size: 2,
            hidden_size: 128,
            depth: 4,
            num_heads: 4,
            mlp_ratio: 4.0,
            time_freq_dim: 128,
            prediction: Prediction::V,
            final_silu: false,
            adaln: true,
            architecture: Architecture::Hybrid,
            num_classes: None,
            learn_sigma: false,
        }
    }

    /// The demo's default: [`Config::small`] (our hybrid) with a label table of the tree
    /// species, so that it samples each species with classifier-free guidance. At the demo's
    /// budget it ties `small` on val_loss, beats the published architecture at every noise
    /// level, and its guided samples are the clearest trees of the four (`arch_compare`).
    pub fn small_labels() -> Self {
        Self {
            num_classes: Some(data::TREE_SPECIES.len()),
            ..Self::small()
        }
    }

    /// The published architecture (no adaLN, label embedder with the null class) at the
    /// `tiny` preset's sizes, labelled with the procedural tree species. It trains with our
    /// objective (v-prediction, no learned variance) rather than the paper's ε and learned σ,
    /// which at 16×16 samples badly (see [`Prediction::Epsilon`]).
    pub fn published_tiny() -> Self {
        Self {
            architecture: Architecture::Published,
            adaln: false,
            final_silu: true,
            time_freq_dim: 256,
            num_classes: Some(data::TREE_SPECIES.len()),
            ..Self::tiny()
        }
    }

    /// The published architecture at the `small` preset's sizes, labelled with the tree
    /// species (v-prediction, as [`Config::published_tiny`]).
    pub fn published_small() -> Self {
        Self {
            architecture: Architecture::Published,
            adaln: false,
            final_silu: true,
            time_freq_dim: 256,
            num_classes: Some(data::TREE_SPECIES.len()),
            ..Self::small()
        }
    }

    /// 32×32 RGB for a GPU (256 tokens of 2×2 pixels, width 256, 8 blocks, about 8 M
    /// parameters), the published architecture with 10 classes (CIFAR-10's count; the tree
    /// species use the first 7). Too slow to train on a laptop CPU.
    pub fn published_32() -> Self {
        Self {
            image_size: 32,
            in_channels: 3,
            patch_size: 2,
            hidden_size: 256,
            depth: 8,
            num_heads: 4,
            mlp_ratio: 4.0,
            time_freq_dim: 256,
            prediction: Prediction::V,
            final_silu: true,
            adaln: false,
            architecture: Architecture::Published,
            num_classes: Some(10),
            learn_sigma: false,
        }
    }

    /// A preset by name (one of [`Config::PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "tiny" => Some(Self::tiny()),
            "small" => Some(Self::small()),
            "small-labels" => Some(Self::small_labels()),
            "published-tiny" => Some(Self::published_tiny()),
            "published-small" => Some(Self::published_small()),
            "published-32" => Some(Self::published_32()),
            _ => None,
        }
    }

    /// Names accepted by [`Config::preset`]: the hybrid `tiny`, `small` and `small-labels`, and
    /// the published architecture with labels at those sizes and at 32×32.
    pub const PRESETS: [&'static str; 6] = [
        "tiny",
        "small",
        "small-labels",
        "published-tiny",
        "published-small",
        "published-32",
    ];

    /// True when both configs describe the same network sizes (image, patch, width, depth,
    /// heads, ...). They may still differ in what the network predicts, in
    /// [`Config::final_silu`] and in [`Config::adaln`]: variants that older files were made
    /// with, which a file's own header config tells apart.
    pub fn same_sizes(&self, other: &Config) -> bool {
        let mut other = other.clone();
        other.prediction = self.prediction;
        other.final_silu = self.final_silu;
        other.adaln = self.adaln;
        *self == other
    }

    /// Tokens per side of the patch grid.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image.
    pub fn num_tokens(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    /// Values per patch token (`patch² × channels`).
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_channels
    }

    /// Channels of the network's output: `in_channels`, twice that with
    /// [`Config::learn_sigma`].
    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }

    /// Hidden width of the block MLPs (rounded; truncated, as `int()` in PyTorch, for the
    /// published architecture).
    pub fn mlp_hidden(&self) -> usize {
        let width = self.hidden_size as f64 * self.mlp_ratio;
        match self.architecture {
            Architecture::Hybrid => width.round() as usize,
            Architecture::Published => width as usize,
        }
    }

    /// True for a class-conditional model: a label embedder with at least one class besides
    /// the null class (a published model with `num_classes: Some(0)` is unconditional).
    pub fn is_class_conditional(&self) -> bool {
        self.num_classes.is_some_and(|n| n > 0)
    }

    /// This config with no label embedder.
    pub fn without_labels(&self) -> Config {
        Config {
            num_classes: None,
            ..self.clone()
        }
    }

    /// Rows of the label embedder's table (`num_classes` + the null class), if it has one.
    pub fn label_rows(&self) -> Option<usize> {
        self.num_classes.map(|n| n + 1)
    }

    /// Checks the numbers fit together (divisibility, non-zero sizes).
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::InvalidConfig(msg));
        if self.image_size == 0 || self.in_channels == 0 || self.patch_size == 0 {
            return bad("image_size, in_channels and patch_size must be positive".into());
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.hidden_size == 0
            || self.num_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_heads)
        {
            return bad(format!(
                "hidden_size {} must be a positive multiple of num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if !self.hidden_size.is_multiple_of(4) {
            return bad(format!(
                "hidden_size {} must be a multiple of 4 (2-D sin-cos positions)",
                self.hidden_size
            ));
        }
        if self.time_freq_dim < 2 || !self.time_freq_dim.is_multiple_of(2) {
            return bad(format!(
                "time_freq_dim {} must be even and ≥ 2",
                self.time_freq_dim
            ));
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 || self.mlp_hidden() == 0 {
            return bad(format!("mlp_ratio {} must be positive", self.mlp_ratio));
        }
        if self.architecture == Architecture::Published {
            if self.adaln || !self.final_silu {
                return bad(
                    "the published architecture has no adaLN and a SiLU in its head \
                     (adaln false, final_silu true)"
                        .into(),
                );
            }
            if self.num_classes.is_none() {
                return bad(
                    "the published architecture always has a label embedder: set num_classes \
                     (0 for an unconditional model, which keeps only the null class)"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// LoRA hyper-parameters, named as in PEFT's `LoraConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// Rank of the update `B·A`.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `lora_alpha / r`.
    pub lora_alpha: f64,
    /// Dropout probability on the adapter input while training.
    pub lora_dropout: f64,
    /// Module-name suffixes that get adapters, matched at a `.` boundary as PEFT does
    /// (`attn.qkv` matches `blocks.3.attn.qkv`, not `blocks.3.attn.qkv_temb`).
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: [
                "attn.qkv",
                "attn.proj",
                "mlp.fc1",
                "mlp.fc2",
                "adaLN_modulation",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }
}

impl LoraConfig {
    /// `lora_alpha / r`, the factor applied to `B·A`.
    pub fn scaling(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// Checks rank, dropout and targets are usable.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.r == 0 {
            return Err(ModelError::InvalidConfig(
                "LoRA rank r must be positive".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(ModelError::InvalidConfig(format!(
                "lora_dropout {} must be in [0, 1)",
                self.lora_dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(ModelError::InvalidConfig(
                "LoRA target_modules is empty".into(),
            ));
        }
        Ok(())
    }
}

/// Errors building, loading or merging a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The configuration is unusable.
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// A required tensor is absent.
    #[error("tensor `{name}` is missing")]
    MissingTensor {
        /// Tensor name.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Shape the model needs.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// A tensor that this model/adapter configuration does not use.
    #[error("unexpected tensor `{name}`: {reason}")]
    UnexpectedTensor {
        /// Tensor name.
        name: String,
        /// Why it does not fit.
        reason: String,
    },
}

/// Largest absolute element-wise difference of two `f32` tensors of one shape (for checks of
/// numerical agreement: fused vs composite ops, fused vs unfused LoRA, CPU vs GPU).
pub fn max_abs_difference(
    a: &candle_core::Tensor,
    b: &candle_core::Tensor,
) -> candle_core::Result<f32> {
    (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
}

/// [`max_abs_difference`] for the unit tests, where tensors are comparable by construction.
#[cfg(test)]
#[allow(clippy::expect_used)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    max_abs_difference(a, b).expect("comparable tensors")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_round_trip_through_json() {
        for name in Config::PRESETS {
            let cfg = Config::preset(name).unwrap();
            cfg.validate().unwrap();
            let back: Config = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
            assert_eq!(back, cfg);
        }
        assert!(Config::preset("huge").is_none());
    }

    #[test]
    fn configs_saved_before_the_newer_fields_mean_the_older_model() {
        let mut json = serde_json::to_value(Config::small()).unwrap();
        assert_eq!(json["prediction"], "v");
        assert_eq!(json["final_silu"], false);
        json.as_object_mut().unwrap().remove("prediction");
        json.as_object_mut().unwrap().remove("final_silu");
        json.as_object_mut().unwrap().remove("adaln");
        let old: Config = serde_json::from_value(json).unwrap();
        assert_eq!(old.prediction, Prediction::Epsilon);
        assert!(old.final_silu);
        assert_ne!(old, Config::small());
        assert!(!old.adaln);
        assert!(old.same_sizes(&Config::small()));
        assert!(!Config::tiny().same_sizes(&Config::small()));
    }

    #[test]
    fn hybrid_configs_serialise_as_before_and_the_published_one_round_trips() {
        // No new keys in a hybrid's JSON: base files (and their checksums, which resumes
        // check) stay byte-identical to what older versions wrote.
        let json = serde_json::to_value(Config::small()).unwrap();
        for key in ["architecture", "num_classes", "learn_sigma"] {
            assert!(json.get(key).is_none(), "{key}");
        }
        let published = Config::published_fixture();
        published.validate().unwrap();
        let json = serde_json::to_value(&published).unwrap();
        assert_eq!(json["architecture"], "published");
        assert_eq!(json["num_classes"], 3);
        assert_eq!(json["learn_sigma"], true);
        let back: Config = serde_json::from_value(json).unwrap();
        assert_eq!(back, published);
        assert_eq!(published.out_channels(), 6);
        assert_eq!(published.label_rows(), Some(4));
        Config::published_xl_2(32).validate().unwrap();
    }

    #[test]
    fn the_published_architecture_refuses_hybrid_parts() {
        let with = |f: fn(&mut Config)| {
            let mut c = Config::published_fixture();
            f(&mut c);
            c.validate()
        };
        assert!(with(|c| c.adaln = true).is_err());
        assert!(with(|c| c.final_silu = false).is_err());
        assert!(with(|c| c.num_classes = None).is_err());
        assert!(with(|c| c.num_classes = Some(0)).is_ok());
        // PyTorch's `int(hidden · ratio)` truncates; the hybrid rounds.
        let mut c = Config::published_fixture();
        c.mlp_ratio = 2.99;
        assert_eq!(c.mlp_hidden(), 47);
        c.architecture = Architecture::Hybrid;
        assert_eq!(c.mlp_hidden(), 48);
    }

    #[test]
    fn bad_configs_are_rejected() {
        let mut c = Config::tiny();
        c.patch_size = 3;
        assert!(matches!(c.validate(), Err(ModelError::InvalidConfig(_))));
        let mut c = Config::tiny();
        c.num_heads = 3;
        assert!(c.validate().is_err());
        let l = LoraConfig {
            r: 0,
            ..LoraConfig::default()
        };
        assert!(l.validate().is_err());
    }

    #[test]
    fn lora_config_defaults_fill_missing_fields() {
        let l: LoraConfig = serde_json::from_str(r#"{"r": 4}"#).unwrap();
        assert_eq!(l.r, 4);
        assert_eq!(l.target_modules, LoraConfig::default().target_modules);
    }
}
