//! The DiffiT network: patch tokens, a time (and label) token, DiffiT blocks with
//! time-dependent self-attention (TMSA) and a relative position bias, and a zero-initialised
//! output layer. Both [`Architecture`]s are built here; where the published one differs (the
//! order of the position embedding's halves, how the time frequencies are rounded, the
//! label embedder every published model has) the difference is one `match` on it.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::lora::{matches_target, LoraLinear};
use super::ops::{gated_add, gelu, softmax};
use super::params::{
    bias_table_shape, label_table_shape, linear_specs, InitKind, LinearSpec, LABEL_EMBEDDER,
    LABEL_TABLE,
};
use super::{Architecture, Config, LoraConfig, ModelError};
use crate::rng::Rng;

/// LayerNorm epsilon (no affine parameters, as in DiffiT).
const LN_EPS: f64 = 1e-6;

/// The equivalent candle initialiser, used when a `VarMap` is asked for a tensor it lacks.
fn candle_init(kind: InitKind, in_dim: usize, out_dim: usize) -> Init {
    match kind {
        InitKind::Xavier => {
            let bound = (6.0 / (in_dim + out_dim) as f64).sqrt();
            Init::Uniform {
                lo: -bound,
                up: bound,
            }
        }
        InitKind::Normal(stdev) => Init::Randn { mean: 0.0, stdev },
        InitKind::Zeros => Init::Const(0.0),
    }
}

/// Image `[B, C, H, W]` → patch tokens `[B, (H/p)·(W/p), p·p·C]` (row-major patches,
/// each patch flattened as `(py, px, c)`).
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h % p != 0 || w % p != 0 {
        candle_core::bail!("image {h}×{w} is not divisible by patch size {p}");
    }
    let (gh, gw) = (h / p, w / p);
    x.reshape(vec![b, c, gh, p, gw, p])?
        .permute(vec![0, 2, 4, 3, 5, 1])?
        .reshape((b, gh * gw, p * p * c))
}

/// Inverse of [`patchify`] for a square `grid × grid` of patches with `c` channels.
pub fn unpatchify(tokens: &Tensor, p: usize, c: usize, grid: usize) -> Result<Tensor> {
    let (b, n, d) = tokens.dims3()?;
    if n != grid * grid || d != p * p * c {
        candle_core::bail!(
            "cannot unpatchify [{b}, {n}, {d}] into {grid}×{grid} patches of {p}×{p}×{c}"
        );
    }
    tokens
        .reshape(vec![b, grid, grid, p, p, c])?
        .permute(vec![0, 5, 1, 3, 2, 4])?
        .reshape((b, c, grid * p, grid * p))
}

/// Sinusoidal features of (possibly fractional) timesteps `[B]` → `[B, dim]` (`cos` then `sin`),
/// the hybrid's (frequencies computed in `f64`).
pub fn timestep_embedding(t: &Tensor, dim: usize) -> Result<Tensor> {
    time_features(t, dim, Architecture::Hybrid)
}

/// The `dim / 2` frequencies `10000^(−i / half)` of the time features. The published model's
/// are PyTorch's `exp(−ln(10000) · i / half)` with the argument rounded in `f32` step by step
/// as PyTorch rounds it and `exp` correctly rounded: at t = 999 a frequency one ulp off moves
/// a feature by up to 6e-5, and the hybrid's (`f64` throughout, then rounded) differ from
/// PyTorch's in the last bit for many `i`. PyTorch's own `exp` is accurate to about an ulp
/// and differs between builds, so no choice matches them all (see `tests/official_parity.rs`).
fn time_frequencies(dim: usize, architecture: Architecture) -> Vec<f32> {
    let half = dim / 2;
    match architecture {
        Architecture::Hybrid => (0..half)
            .map(|i| libm::exp(-libm::log(10_000.0) * i as f64 / half as f64) as f32)
            .collect(),
        Architecture::Published => {
            let scale = -(libm::log(10_000.0) as f32);
            // `f64` exp of the `f32` argument, rounded once: the correctly rounded `expf`.
            (0..half)
                .map(|i| libm::exp(f64::from(scale * i as f32 / half as f32)) as f32)
                .collect()
        }
    }
}

/// Sinusoidal features of timesteps `[B]` → `[B, dim]` (`cos` then `sin`) with the
/// frequencies of `architecture`.
fn time_features(t: &Tensor, dim: usize, architecture: Architecture) -> Result<Tensor> {
    let half = dim / 2;
    let freqs = Tensor::from_vec(time_frequencies(dim, architecture), (1, half), t.device())?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], 1)
}

/// Fixed 2-D sin-cos position embedding `[1, grid², dim]`: half the width encodes the row,
/// half the column, each as `sin` then `cos`. The hybrid puts the row's half first; the
/// published model (DiT's and MAE's helper, whose `meshgrid` is `w` first) the column's.
pub(crate) fn pos_embed(
    grid: usize,
    dim: usize,
    architecture: Architecture,
    device: &Device,
) -> Result<Tensor> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 1.0 / libm::pow(10_000.0, i as f64 / quarter as f64))
        .collect();
    let mut data = Vec::with_capacity(grid * grid * dim);
    for row in 0..grid {
        for col in 0..grid {
            let halves = match architecture {
                Architecture::Hybrid => [row, col],
                Architecture::Published => [col, row],
            };
            for pos in halves {
                data.extend(omega.iter().map(|w| libm::sin(pos as f64 * w) as f32));
                data.extend(omega.iter().map(|w| libm::cos(pos as f64 * w) as f32));
            }
        }
    }
    Tensor::from_vec(data, (1, grid * grid, dim), device)
}

/// For each token pair `(i, j)` of a `grid × grid` layout, its row in the bias table (Swin's
/// `relative_position_index`, flattened).
pub(crate) fn relative_position_index(grid: usize, device: &Device) -> Result<Tensor> {
    let n = grid * grid;
    let span = 2 * grid - 1;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            let dy = i / grid + grid - 1 - j / grid;
            let dx = i % grid + grid - 1 - j % grid;
            idx.push((dy * span + dx) as u32);
        }
    }
    Tensor::from_vec(idx, n * n, device)
}

fn layer_norm(x: &Tensor) -> Result<Tensor> {
    super::ops::layer_norm(x, LN_EPS)
}

/// Builds the linear layers of one model, wiring LoRA adapters into targeted modules.
struct LayerFactory<'a> {
    specs: HashMap<String, LinearSpec>,
    lora: Option<(&'a LoraConfig, VarBuilder<'a>)>,
}

impl LayerFactory<'_> {
    fn linear(&self, vb: &VarBuilder) -> std::result::Result<LoraLinear, ModelError> {
        let path = vb.prefix();
        let spec = self.specs.get(&path).ok_or_else(|| {
            ModelError::InvalidConfig(format!("internal: no layer spec for module `{path}`"))
        })?;
        let (i, o) = (spec.in_dim, spec.out_dim);
        let weight = vb.get_with_hints((o, i), "weight", candle_init(spec.init, i, o))?;
        let bias = vb.get_with_hints(o, "bias", Init::Const(0.0))?;
        let adapter = match &self.lora {
            Some((cfg, lvb)) if cfg.target_modules.iter().any(|t| matches_target(&path, t)) => {
                Some(LoraLinear::load_adapter(cfg, lvb, &path, i, o)?)
            }
            _ => None,
        };
        Ok(LoraLinear::new(weight, Some(bias), adapter))
    }
}

/// Time-dependent multi-head self-attention (TMSA) with a Swin-style relative position bias.
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: LoraLinear,
    qkv_temb: LoraLinear,
    proj: LoraLinear,
    bias_table: Tensor,
    bias_index: Tensor,
    num_heads: usize,
    head_dim: usize,
    num_tokens: usize,
}

impl Attention {
    fn new(
        cfg: &Config,
        vb: VarBuilder,
        f: &LayerFactory,
        bias_index: &Tensor,
    ) -> std::result::Result<Self, ModelError> {
        let shape = bias_table_shape(cfg);
        let bias_table = vb.get_with_hints(
            (shape[0], shape[1]),
            "relative_position_bias_table",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        Ok(Self {
            qkv: f.linear(&vb.pp("qkv"))?,
            qkv_temb: f.linear(&vb.pp("qkv_temb"))?,
            proj: f.linear(&vb.pp("proj"))?,
            bias_table,
            bias_index: bias_index.clone(),
            num_heads: cfg.num_heads,
            head_dim: cfg.hidden_size / cfg.num_heads,
            num_tokens: cfg.num_tokens(),
        })
    }

    /// `x`: `[B, N, C]` normalised tokens, `temb`: `[B, C]` time token.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, mut rng: Option<&mut Rng>) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let (h, d) = (self.num_heads, self.head_dim);
        // The time term is one bias per sample, shared by every token.
        let qkv_t = self
            .qkv_temb
            .forward(temb, rng.as_deref_mut())?
            .unsqueeze(1)?;
        let qkv = self
            .qkv
            .forward(x, rng.as_deref_mut())?
            .broadcast_add(&qkv_t)?;
        let qkv = qkv.reshape((b, n, 3, h, d))?.permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * (d as f64).powf(-0.5))?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let nt = self.num_tokens;
        let bias = self
            .bias_table
            .index_select(&self.bias_index, 0)?
            .reshape((nt, nt, h))?
            .permute((2, 0, 1))?;
        let logits = q.matmul(&k.t()?)?.broadcast_add(&bias.unsqueeze(0)?)?;
        let attn = softmax(&logits)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        self.proj.forward(&out, rng)
    }
}

/// One DiffiT block: `x + TMSA(LN(x), t)`, then `x + MLP(LN(x))`; with
/// [`Config::adaln`], `x + g₁·TMSA(LN(x)·(1+s₁)+b₁, t)`, then `x + g₂·MLP(LN(x)·(1+s₂)+b₂)`,
/// where `(b₁, s₁, g₁, b₂, s₂, g₂)` are a linear map of `SiLU(t)` (all zero at initialisation,
/// so each block starts as the identity).
#[derive(Debug, Clone)]
pub struct DiffiTBlock {
    attn: Attention,
    fc1: LoraLinear,
    fc2: LoraLinear,
    modulation: Option<LoraLinear>,
}

/// `LN(x)·(1 + scale) + shift` with per-sample `scale`, `shift` `[B, 1, C]`.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    super::ops::modulate(x, shift, scale, LN_EPS)
}

/// Splits a modulation output `[B, k·C]` into `k` contiguous tensors `[B, 1, C]` (candle's
/// broadcasting ops take their fast path only for contiguous operands).
fn modulation_chunks(m: &Tensor, k: usize) -> Result<Vec<Tensor>> {
    m.unsqueeze(1)?
        .chunk(k, 2)?
        .into_iter()
        .map(|c| c.contiguous())
        .collect()
}

impl DiffiTBlock {
    fn new(
        cfg: &Config,
        vb: VarBuilder,
        f: &LayerFactory,
        bias_index: &Tensor,
    ) -> std::result::Result<Self, ModelError> {
        Ok(Self {
            attn: Attention::new(cfg, vb.pp("attn"), f, bias_index)?,
            fc1: f.linear(&vb.pp("mlp").pp("fc1"))?,
            fc2: f.linear(&vb.pp("mlp").pp("fc2"))?,
            modulation: if cfg.adaln {
                Some(f.linear(&vb.pp("adaLN_modulation"))?)
            } else {
                None
            },
        })
    }

    /// `x`: `[B, N, C]`, `temb`: `[B, C]`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, mut rng: Option<&mut Rng>) -> Result<Tensor> {
        let Some(modulation) = &self.modulation else {
            let x = (x + self
                .attn
                .forward(&layer_norm(x)?, temb, rng.as_deref_mut())?)?;
            let hidden = gelu(&self.fc1.forward(&layer_norm(&x)?, rng.as_deref_mut())?)?;
            return x + self.fc2.forward(&hidden, rng)?;
        };
        let m = modulation.forward(&temb.silu()?, rng.as_deref_mut())?;
        let m = modulation_chunks(&m, 6)?;
        let attn = self
            .attn
            .forward(&modulate(x, &m[0], &m[1])?, temb, rng.as_deref_mut())?;
        let x = gated_add(x, &attn, &m[2])?;
        let hidden = gelu(
            &self
                .fc1
                .forward(&modulate(&x, &m[3], &m[4])?, rng.as_deref_mut())?,
        )?;
        gated_add(&x, &self.fc2.forward(&hidden, rng)?, &m[5])
    }
}

/// Every intermediate of one forward pass, as the official model's modules produce them
/// (checked stage by stage against PyTorch by the parity test).
#[derive(Debug, Clone)]
pub struct ForwardTrace {
    /// The sinusoidal time features `[B, time_freq_dim]`.
    pub time_features: Tensor,
    /// The time embedder's output `[B, hidden]`.
    pub time_token: Tensor,
    /// The condition every block sees `[B, hidden]`: the time token plus the label's
    /// embedding when the model has labels.
    pub condition: Tensor,
    /// Patch tokens plus the position embedding `[B, N, hidden]`.
    pub tokens: Tensor,
    /// Each block's output `[B, N, hidden]`.
    pub blocks: Vec<Tensor>,
    /// The network's output `[B, out_channels, H, W]`.
    pub output: Tensor,
}

/// The DiffiT noise-prediction network, optionally with LoRA adapters.
#[derive(Debug, Clone)]
pub struct DiffiT {
    cfg: Config,
    x_embedder: LoraLinear,
    pos_embed: Tensor,
    t_mlp0: LoraLinear,
    t_mlp2: LoraLinear,
    label_table: Option<Tensor>,
    /// A LoRA adapter `(A, B, scaling)` of the label table ([`LABEL_EMBEDDER`] targeted).
    label_adapter: Option<(Tensor, Tensor, f64)>,
    blocks: Vec<DiffiTBlock>,
    final_modulation: Option<LoraLinear>,
    final_linear: LoraLinear,
    has_lora: bool,
}

impl DiffiT {
    /// Builds the model from `base` (names = module paths). With `lora`, adapters for
    /// [`super::lora_target_paths`] are taken from its `VarBuilder`: a `VarMap` there makes
    /// only the adapters trainable when `base` comes from `VarBuilder::from_tensors`.
    pub fn new(
        cfg: &Config,
        base: VarBuilder,
        lora: Option<(&LoraConfig, VarBuilder)>,
    ) -> std::result::Result<Self, ModelError> {
        cfg.validate()?;
        if let Some((l, _)) = &lora {
            l.validate()?;
        }
        let has_lora = lora.is_some();
        let factory = LayerFactory {
            specs: linear_specs(cfg)
                .into_iter()
                .map(|s| (s.path.clone(), s))
                .collect(),
            lora,
        };
        let device = base.device().clone();
        let bias_index = relative_position_index(cfg.grid_size(), &device)?;
        let blocks = (0..cfg.depth)
            .map(|i| DiffiTBlock::new(cfg, base.pp("blocks").pp(i), &factory, &bias_index))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let label_table = label_table_shape(cfg)
            .map(|shape| {
                base.get_with_hints(
                    shape.as_slice(),
                    LABEL_TABLE,
                    Init::Randn {
                        mean: 0.0,
                        stdev: 0.02,
                    },
                )
            })
            .transpose()?;
        let label_adapter = match (cfg.label_rows(), &factory.lora) {
            (Some(rows), Some((l, lvb)))
                if l.target_modules
                    .iter()
                    .any(|t| matches_target(LABEL_EMBEDDER, t)) =>
            {
                let (a, b, l) =
                    LoraLinear::load_adapter(l, lvb, LABEL_EMBEDDER, cfg.hidden_size, rows)?;
                Some((a, b, l.scaling()))
            }
            _ => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            label_adapter,
            x_embedder: factory.linear(&base.pp("x_embedder").pp("proj"))?,
            pos_embed: pos_embed(cfg.grid_size(), cfg.hidden_size, cfg.architecture, &device)?,
            t_mlp0: factory.linear(&base.pp("t_embedder").pp("mlp").pp(0))?,
            t_mlp2: factory.linear(&base.pp("t_embedder").pp("mlp").pp(2))?,
            label_table,
            blocks,
            final_modulation: if cfg.adaln {
                Some(factory.linear(&base.pp("final_layer").pp("adaLN_modulation"))?)
            } else {
                None
            },
            final_linear: factory.linear(&base.pp("final_layer").pp("linear"))?,
            has_lora,
        })
    }

    /// The configuration this model was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// True when built with LoRA adapters.
    pub fn has_lora(&self) -> bool {
        self.has_lora
    }

    /// The network's output for images `x` `[B, C, H, W]` at timesteps `t` `[B]` (no
    /// dropout), unconditional: a model with labels sees the null class. With
    /// [`Config::learn_sigma`] the output has `2·C` channels, the prediction first.
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.forward_labeled(x, t, None, None)
    }

    /// As [`DiffiT::forward`], with LoRA dropout masks drawn from `rng` (training).
    pub fn forward_train(&self, x: &Tensor, t: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        self.forward_labeled(x, t, None, Some(rng))
    }

    /// As [`DiffiT::forward`] with class `labels` `[B]` (integers; `num_classes` is the
    /// null class; `None` means the null class for every image), and LoRA dropout masks
    /// from `rng` when given.
    pub fn forward_labeled(
        &self,
        x: &Tensor,
        t: &Tensor,
        labels: Option<&Tensor>,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        Ok(self.run(x, t, labels, rng, false)?.output)
    }

    /// One inference pass keeping every intermediate (for parity checks and tools).
    pub fn trace(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<ForwardTrace> {
        self.run(x, t, labels, None, true)
    }

    /// The timestep token `[B, hidden]`.
    pub fn time_embedding(&self, t: &Tensor, rng: Option<&mut Rng>) -> Result<Tensor> {
        Ok(self.time_stages(t, rng)?.1)
    }

    /// `(time features, time token)` for timesteps `t` `[B]`.
    fn time_stages(&self, t: &Tensor, mut rng: Option<&mut Rng>) -> Result<(Tensor, Tensor)> {
        let freqs = time_features(t, self.cfg.time_freq_dim, self.cfg.architecture)?;
        let h = self.t_mlp0.forward(&freqs, rng.as_deref_mut())?.silu()?;
        let token = self.t_mlp2.forward(&h, rng)?;
        Ok((freqs, token))
    }

    /// The label embeddings `[B, hidden]` of `labels` (`None`: the null class), or `None`
    /// for a model without labels (which refuses labels).
    fn label_embedding(&self, labels: Option<&Tensor>, batch: usize) -> Result<Option<Tensor>> {
        let Some(table) = &self.label_table else {
            if labels.is_some() {
                candle_core::bail!("this model has no label embedder (num_classes is unset)");
            }
            return Ok(None);
        };
        let rows = table.dim(0)?;
        let null = (rows - 1) as u32;
        let index = match labels {
            None => Tensor::full(null, batch, table.device())?,
            Some(labels) => {
                if labels.dims() != [batch] {
                    candle_core::bail!("labels have shape {:?}, expected [{batch}]", labels.dims());
                }
                let values = labels.to_dtype(DType::I64)?.to_vec1::<i64>()?;
                if let Some(bad) = values.iter().find(|&&v| v < 0 || v >= rows as i64) {
                    candle_core::bail!(
                        "label {bad} is out of range: this model has classes 0..{null} and the \
                         null class {null}"
                    );
                }
                labels.to_dtype(DType::U32)?
            }
        };
        let rows = table.index_select(&index, 0)?;
        let Some((a, b, scaling)) = &self.label_adapter else {
            return Ok(Some(rows));
        };
        // Row `y` of `table + s·B·A` is `table[y] + (s·B[y])·A` (no dropout: an embedding
        // has no input to drop, as in PEFT).
        let low = (b.index_select(&index, 0)? * *scaling)?;
        Ok(Some((rows + low.matmul(a)?)?))
    }

    fn run(
        &self,
        x: &Tensor,
        t: &Tensor,
        labels: Option<&Tensor>,
        mut rng: Option<&mut Rng>,
        keep: bool,
    ) -> Result<ForwardTrace> {
        let cfg = &self.cfg;
        let (b, c, h, w) = x.dims4()?;
        if c != cfg.in_channels || h != cfg.image_size || w != cfg.image_size {
            candle_core::bail!(
                "input [{b}, {c}, {h}, {w}] does not match the model's [B, {}, {s}, {s}]",
                cfg.in_channels,
                s = cfg.image_size
            );
        }
        if t.dims() != [b] {
            candle_core::bail!("timesteps have shape {:?}, expected [{b}]", t.dims());
        }
        let patches = patchify(x, cfg.patch_size)?;
        let tokens = self
            .x_embedder
            .forward(&patches, rng.as_deref_mut())?
            .broadcast_add(&self.pos_embed)?;
        let (time_features, time_token) = self.time_stages(t, rng.as_deref_mut())?;
        let temb = match self.label_embedding(labels, b)? {
            Some(label) => (&time_token + label)?,
            None => time_token.clone(),
        };
        let mut kept = Vec::new();
        let mut hid = tokens.clone();
        for block in &self.blocks {
            hid = block.forward(&hid, &temb, rng.as_deref_mut())?;
            if keep {
                kept.push(hid.clone());
            }
        }
        let normed = match &self.final_modulation {
            Some(modulation) => {
                let m = modulation.forward(&temb.silu()?, rng.as_deref_mut())?;
                let m = modulation_chunks(&m, 2)?;
                modulate(&hid, &m[0], &m[1])?
            }
            None => layer_norm(&hid)?,
        };
        let normed = if cfg.final_silu {
            normed.silu()?
        } else {
            normed
        };
        let out = self.final_linear.forward(&normed, rng)?;
        let output = unpatchify(&out, cfg.patch_size, cfg.out_channels(), cfg.grid_size())?;
        Ok(ForwardTrace {
            time_features,
            time_token,
            condition: temb,
            tokens,
            blocks: kept,
            output,
        })
    }

    /// Block `i`, if it exists (for inspecting TMSA in tests and tools).
    pub fn block(&self, i: usize) -> Option<&DiffiTBlock> {
        self.blocks.get(i)
    }
}

impl DiffiTBlock {
    /// This block's attention layer.
    pub fn attention(&self) -> &Attention {
        &self.attn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{base_tensor_shapes, init_base_tensors};
    use candle_nn::VarMap;

    #[test]
    fn adaln_blocks_start_as_the_identity_and_their_modulation_depends_on_time() {
        let cfg = Config::tiny();
        assert!(cfg.adaln);
        let device = Device::Cpu;
        let mut tensors = init_base_tensors(&cfg, &mut Rng::new(3), &device).unwrap();
        let build = |tensors: &HashMap<String, Tensor>| {
            DiffiT::new(
                &cfg,
                VarBuilder::from_tensors(tensors.clone(), DType::F32, &device),
                None,
            )
            .unwrap()
        };
        let x = Rng::new(4)
            .normal_tensor((2, cfg.num_tokens(), cfg.hidden_size), &device)
            .unwrap();
        let t = Tensor::new(&[10f32, 900.0], &device).unwrap();
        let model = build(&tensors);
        let temb = model.time_embedding(&t, None).unwrap();
        let block = model.block(0).unwrap();
        // Zero-initialised gates: the block adds nothing.
        let out = block.forward(&x, &temb, None).unwrap();
        assert_eq!(crate::max_abs_diff(&out, &x), 0.0);

        // With non-zero modulation weights the block's change differs between the two times
        // even for the same tokens.
        let name = "blocks.0.adaLN_modulation.weight";
        let shape = tensors[name].dims().to_vec();
        tensors.insert(
            name.into(),
            Rng::new(5)
                .normal_tensor(shape.as_slice(), &device)
                .unwrap(),
        );
        let model = build(&tensors);
        let same = Tensor::cat(&[x.get(0).unwrap(), x.get(0).unwrap()], 0)
            .unwrap()
            .reshape(x.dims())
            .unwrap();
        let delta = (model.block(0).unwrap().forward(&same, &temb, None).unwrap() - &same).unwrap();
        let d0 = delta.get(0).unwrap();
        let d1 = delta.get(1).unwrap();
        assert!(
            d0.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
        assert!(crate::max_abs_diff(&d0, &d1) > 1e-3);
    }

    #[test]
    fn patchify_round_trips() {
        let x = Rng::new(0)
            .normal_tensor((2, 3, 8, 8), &Device::Cpu)
            .unwrap();
        let tok = patchify(&x, 2).unwrap();
        assert_eq!(tok.dims(), &[2, 16, 12]);
        let back = unpatchify(&tok, 2, 3, 4).unwrap();
        assert_eq!(crate::max_abs_diff(&back, &x), 0.0);
        // The first token is the top-left 2×2 patch, flattened as (py, px, c).
        let first: Vec<f32> = tok.get(0).unwrap().get(0).unwrap().to_vec1().unwrap();
        let img: Vec<Vec<Vec<f32>>> = x.get(0).unwrap().to_vec3().unwrap();
        assert_eq!(first[0], img[0][0][0]);
        assert_eq!(first[1], img[1][0][0]);
        assert_eq!(first[3], img[0][0][1]);
        assert_eq!(first[6], img[0][1][0]);
    }

    #[test]
    fn gelu_matches_candles_tanh_gelu() {
        let x = Tensor::arange(-60i64, 60, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let x = (x * 0.1).unwrap();
        let ours: Vec<f32> = gelu(&x).unwrap().to_vec1().unwrap();
        let theirs: Vec<f32> = x.gelu().unwrap().to_vec1().unwrap();
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn published_time_frequencies_round_pytorchs_f32_arguments_once() {
        // The argument of exp is PyTorch's f32 `(−ln(10000) · i) / half`, bit for bit (checked
        // against PyTorch 1.13 by the parity fixture's time features at t = 0 and 437).
        let freqs = time_frequencies(256, Architecture::Published);
        let scale = -(libm::log(10_000.0) as f32);
        for (i, f) in freqs.iter().enumerate() {
            let arg = scale * i as f32 / 128.0;
            assert_eq!(f.to_bits(), (libm::exp(f64::from(arg)) as f32).to_bits());
        }
        // The hybrid's differ in the last bit for many.
        let hybrid = time_frequencies(256, Architecture::Hybrid);
        let differ = freqs.iter().zip(&hybrid).filter(|(a, b)| a != b).count();
        assert!(differ > 10, "{differ}");
    }

    #[test]
    fn published_positions_put_the_column_half_first() {
        let (g, d) = (4, 16);
        let hybrid: Vec<Vec<f32>> = pos_embed(g, d, Architecture::Hybrid, &Device::Cpu)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        let published: Vec<Vec<f32>> = pos_embed(g, d, Architecture::Published, &Device::Cpu)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        for token in 0..g * g {
            assert_eq!(hybrid[token][..d / 2], published[token][d / 2..]);
            assert_eq!(hybrid[token][d / 2..], published[token][..d / 2]);
        }
        // Token 1 is row 0, column 1: its first half encodes position 1, sin(1·1) first.
        assert_eq!(published[1][0], libm::sin(1.0) as f32);
        assert_eq!(published[1][d / 2], 0.0);
    }

    #[test]
    fn relative_index_is_symmetric_in_offset() {
        let idx: Vec<u32> = relative_position_index(3, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        // Same offset → same row: (0 → 1) and (3 → 4) are both one step right.
        assert_eq!(idx[1], idx[3 * 9 + 4]);
        // The diagonal is the centre of the (2g-1)² table.
        assert!(idx.iter().step_by(10).all(|&i| i == 12));
    }

    #[test]
    fn varmap_names_match_the_declared_shapes() {
        let cfg = Config::tiny();
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        DiffiT::new(&cfg, vb, None).unwrap();
        let data = vm.data().lock().unwrap();
        let mut got: Vec<(String, Vec<usize>)> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().dims().to_vec()))
            .collect();
        got.sort();
        let mut want = base_tensor_shapes(&cfg);
        want.sort();
        assert_eq!(got, want);
    }
}
