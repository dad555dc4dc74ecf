//! The parameter inventory of a configuration: every base tensor's name, shape and
//! initialisation, defined once. The model constructor, the LoRA targets, validation, fusing and
//! the tensor-shape lists all derive from it.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};

use super::{Architecture, Config};
use crate::rng::Rng;

/// How a base tensor starts out before any training.
#[derive(Debug, Clone, Copy)]
pub(crate) enum InitKind {
    /// Xavier/Glorot uniform over `(fan_in, fan_out)`.
    Xavier,
    /// Normal with this standard deviation (DiffiT's time MLP and position-bias table).
    Normal(f64),
    /// All zeros (the final layer, so a fresh model predicts zero noise).
    Zeros,
}

/// One linear layer of the model: its module path, sizes and initialisation.
#[derive(Debug, Clone)]
pub(crate) struct LinearSpec {
    pub path: String,
    pub in_dim: usize,
    pub out_dim: usize,
    pub init: InitKind,
}

/// Every linear layer, in module order. The model constructor, the LoRA targets and the
/// tensor-shape lists all derive from this one list.
pub(crate) fn linear_specs(cfg: &Config) -> Vec<LinearSpec> {
    let h = cfg.hidden_size;
    let spec = |path: String, in_dim, out_dim, init| LinearSpec {
        path,
        in_dim,
        out_dim,
        init,
    };
    let mut out = vec![
        spec(
            "x_embedder.proj".into(),
            cfg.patch_dim(),
            h,
            InitKind::Xavier,
        ),
        spec(
            "t_embedder.mlp.0".into(),
            cfg.time_freq_dim,
            h,
            InitKind::Normal(0.02),
        ),
        spec("t_embedder.mlp.2".into(), h, h, InitKind::Normal(0.02)),
    ];
    for i in 0..cfg.depth {
        let p = format!("blocks.{i}");
        out.push(spec(format!("{p}.attn.qkv"), h, 3 * h, InitKind::Xavier));
        out.push(spec(
            format!("{p}.attn.qkv_temb"),
            h,
            3 * h,
            InitKind::Xavier,
        ));
        out.push(spec(format!("{p}.attn.proj"), h, h, InitKind::Xavier));
        out.push(spec(
            format!("{p}.mlp.fc1"),
            h,
            cfg.mlp_hidden(),
            InitKind::Xavier,
        ));
        out.push(spec(
            format!("{p}.mlp.fc2"),
            cfg.mlp_hidden(),
            h,
            InitKind::Xavier,
        ));
        if cfg.adaln {
            out.push(spec(
                format!("{p}.adaLN_modulation"),
                h,
                6 * h,
                InitKind::Zeros,
            ));
        }
    }
    if cfg.adaln {
        out.push(spec(
            "final_layer.adaLN_modulation".into(),
            h,
            2 * h,
            InitKind::Zeros,
        ));
    }
    out.push(spec(
        "final_layer.linear".into(),
        h,
        cfg.patch_size * cfg.patch_size * cfg.out_channels(),
        InitKind::Zeros,
    ));
    out
}

/// Module path of the label embedder's table, as a LoRA target names it: an adapter there is
/// a low-rank update `B·A` of the `[classes + 1, hidden]` table, so fine-tuning can learn the
/// classes of its data while the base stays frozen.
pub const LABEL_EMBEDDER: &str = "y_embedder.embedding_table";

/// Name of the label embedder's table (PyTorch's `nn.Embedding` keeps it as `.weight`).
pub(crate) const LABEL_TABLE: &str = "y_embedder.embedding_table.weight";

/// Shape of the label table, `[classes + 1, hidden]` (the null class last), if the model has
/// labels.
pub(crate) fn label_table_shape(cfg: &Config) -> Option<Vec<usize>> {
    cfg.label_rows().map(|rows| vec![rows, cfg.hidden_size])
}

/// Name of block `i`'s relative position bias table.
pub(crate) fn bias_table_name(i: usize) -> String {
    format!("blocks.{i}.attn.relative_position_bias_table")
}

/// Shape of a relative position bias table: one row per (dy, dx) offset, one column per head.
pub(crate) fn bias_table_shape(cfg: &Config) -> Vec<usize> {
    let span = 2 * cfg.grid_size() - 1;
    vec![span * span, cfg.num_heads]
}

/// Every base tensor name with its shape, in module order.
pub fn base_tensor_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for s in linear_specs(cfg) {
        out.push((format!("{}.weight", s.path), vec![s.out_dim, s.in_dim]));
        out.push((format!("{}.bias", s.path), vec![s.out_dim]));
    }
    for i in 0..cfg.depth {
        out.push((bias_table_name(i), bias_table_shape(cfg)));
    }
    if let Some(shape) = label_table_shape(cfg) {
        out.push((LABEL_TABLE.to_string(), shape));
    }
    out
}

/// Number of base parameters of a configuration.
pub fn parameter_count(cfg: &Config) -> usize {
    base_tensor_shapes(cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

/// Freshly initialised base weights drawn from our RNG, so a seed gives the same model on
/// every platform (candle's own initialisers use an unseeded generator). Put them in a
/// `VarMap` (or `VarBuilder::from_tensors`) and pass that to [`DiffiT::new`].
pub fn init_base_tensors(
    cfg: &Config,
    rng: &mut Rng,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for s in linear_specs(cfg) {
        let n = s.in_dim * s.out_dim;
        let data: Vec<f32> = match s.init {
            InitKind::Xavier => {
                let bound = (6.0 / (s.in_dim + s.out_dim) as f64).sqrt();
                (0..n).map(|_| rng.range(-bound, bound) as f32).collect()
            }
            InitKind::Normal(std) => rng
                .normal_vec(n)
                .into_iter()
                .map(|z| z * std as f32)
                .collect(),
            InitKind::Zeros => vec![0.0; n],
        };
        out.insert(
            format!("{}.weight", s.path),
            Tensor::from_vec(data, (s.out_dim, s.in_dim), device)?,
        );
        out.insert(
            format!("{}.bias", s.path),
            Tensor::zeros(s.out_dim, DType::F32, device)?,
        );
    }
    let shape = bias_table_shape(cfg);
    // The published model starts every head global (timm's truncated normal, std 0.02, cut at
    // ±2: no draw of std 0.02 gets there).
    let locality = match cfg.architecture {
        Architecture::Hybrid => locality_bias(cfg),
        Architecture::Published => vec![0.0; shape[0] * shape[1]],
    };
    for i in 0..cfg.depth {
        let data: Vec<f32> = rng
            .normal_vec(shape[0] * shape[1])
            .into_iter()
            .zip(locality.iter().copied())
            .map(|(z, local)| local + z * 0.02)
            .collect();
        out.insert(
            bias_table_name(i),
            Tensor::from_vec(data, shape.as_slice(), device)?,
        );
    }
    if let Some(shape) = label_table_shape(cfg) {
        let data: Vec<f32> = rng
            .normal_vec(shape[0] * shape[1])
            .into_iter()
            .map(|z| z * 0.02)
            .collect();
        out.insert(
            LABEL_TABLE.to_string(),
            Tensor::from_vec(data, shape.as_slice(), device)?,
        );
    }
    Ok(out)
}

/// Initial relative-position bias `[(2g−1)², heads]` that makes every head but the last start
/// as a local Gaussian blur over the token grid, each head wider than the one before (token
/// widths 0.7, 1.4, 2.1, ...); the last head starts global. Attention then denoises with its
/// neighbours from the first step, as a convolution would (ConViT's locality initialisation),
/// instead of having to discover locality from a few thousand noisy steps.
fn locality_bias(cfg: &Config) -> Vec<f32> {
    let g = cfg.grid_size() as i64;
    let heads = cfg.num_heads;
    let span = 2 * g - 1;
    let mut out = Vec::with_capacity((span * span) as usize * heads);
    for r in 0..span * span {
        let (dy, dx) = (r / span - (g - 1), r % span - (g - 1));
        let d2 = (dy * dy + dx * dx) as f64;
        for h in 0..heads {
            let bias = if h + 1 == heads {
                0.0
            } else {
                let sigma = 0.7 * (h + 1) as f64;
                -d2 / (2.0 * sigma * sigma)
            };
            out.push(bias as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_starts_local_in_all_heads_but_the_last() {
        let cfg = Config::small();
        let g = cfg.grid_size() as i64;
        let span = 2 * g - 1;
        let bias = locality_bias(&cfg);
        let at = |dy: i64, dx: i64, h: usize| {
            bias[((dy + g - 1) * span + dx + g - 1) as usize * cfg.num_heads + h]
        };
        for h in 0..cfg.num_heads - 1 {
            assert_eq!(at(0, 0, h), 0.0);
            assert!(at(0, 1, h) < 0.0 && at(1, 1, h) < at(0, 1, h) && at(3, 3, h) < at(1, 1, h));
            assert_eq!(at(2, -1, h), at(-2, 1, h));
            // Each head is wider than the one before.
            if h > 0 {
                assert!(at(1, 0, h) > at(1, 0, h - 1));
            }
        }
        let last = cfg.num_heads - 1;
        assert!((0..span * span).all(|r| bias[r as usize * cfg.num_heads + last] == 0.0));
    }
}
