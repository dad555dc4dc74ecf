//! LoRA: the adapter-carrying linear layer, which modules get adapters, and merging
//! adapters into (and back out of) the base weights.

use std::collections::{BTreeSet, HashMap};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Storage, Tensor};
use candle_nn::{Init, VarBuilder};

use super::params::{base_tensor_shapes, linear_specs, LABEL_EMBEDDER};
use super::{Config, LoraConfig, ModelError};
use crate::rng::Rng;
use format::tensors::{is_lora_tensor, lora_a_name, lora_b_name, lora_module, OPTIMIZER_PREFIX};

/// PEFT's matching rule: a target names a module exactly or is a suffix after a `.`.
pub(crate) fn matches_target(path: &str, target: &str) -> bool {
    path == target
        || path
            .strip_suffix(target)
            .is_some_and(|head| head.ends_with('.'))
}

/// `x·Wᵀ + b` with a frozen `W` and `b`, for `x` `[rows, in]` on the CPU. Its backward pass
/// returns only the input's gradient: candle's own matmul backward always computes the
/// right-hand side's gradient as well, which for a frozen base weight is a full-size matmul per
/// layer and step that LoRA fine-tuning throws away.
struct FrozenLinear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    /// The matmul runs on the input's storage and the weight's as they are (no copies in or
    /// out), and the bias is added into the product in place.
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, in_dim) = layout.shape().dims2()?;
        if layout.contiguous_offsets().is_none() {
            candle_core::bail!("frozen-linear: the input must be contiguous");
        }
        let (out_dim, weight_in) = self.weight.dims2()?;
        if weight_in != in_dim {
            candle_core::bail!("frozen-linear: input width {in_dim}, weight {out_dim}x{weight_in}");
        }
        let (weight, weight_layout) = self.weight.storage_and_layout();
        let Storage::Cpu(weight) = &*weight else {
            candle_core::bail!("frozen-linear: the weight must be on the CPU");
        };
        // Wᵀ as a view: the GEMM reads the weight with swapped strides.
        let transposed = weight_layout.transpose(0, 1)?;
        let product = storage.matmul(weight, (1, rows, out_dim, in_dim), layout, &transposed)?;
        let CpuStorage::F32(mut y) = product else {
            candle_core::bail!("frozen-linear: expected an f32 product");
        };
        if let Some(bias) = &self.bias {
            let (bias, bias_layout) = bias.storage_and_layout();
            let (Storage::Cpu(CpuStorage::F32(b)), Some((from, to))) =
                (&*bias, bias_layout.contiguous_offsets())
            else {
                candle_core::bail!("frozen-linear: the bias must be a contiguous f32 CPU tensor");
            };
            let b = &b[from..to];
            if b.len() != out_dim {
                candle_core::bail!("frozen-linear: bias of {} for {out_dim} outputs", b.len());
            }
            for row in y.chunks_exact_mut(out_dim) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, out_dim))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.weight)?))
    }
}

/// The low-rank update of one linear layer: `scaling · B · A`.
#[derive(Debug, Clone)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scaling: f64,
    dropout: f64,
}

/// A linear layer `y = x·Wᵀ + b`, plus `(alpha/r)·dropout(x)·Aᵀ·Bᵀ` when it carries an adapter.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
}

impl LoraLinear {
    pub(crate) fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        adapter: Option<(Tensor, Tensor, &LoraConfig)>,
    ) -> Self {
        let adapter = adapter.map(|(a, b, cfg)| Adapter {
            a,
            b,
            scaling: cfg.scaling(),
            dropout: cfg.lora_dropout,
        });
        Self {
            weight,
            bias,
            adapter,
        }
    }

    /// Fetches (or, from a `VarMap`, creates) the adapter of `path`: A kaiming-uniform as in
    /// PEFT, B zeros, so a fresh adapter leaves the layer unchanged.
    pub(crate) fn load_adapter<'a>(
        cfg: &'a LoraConfig,
        vb: &VarBuilder,
        path: &str,
        in_dim: usize,
        out_dim: usize,
    ) -> std::result::Result<(Tensor, Tensor, &'a LoraConfig), ModelError> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a = vb.get_with_hints(
            (cfg.r, in_dim),
            &lora_a_name(path),
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let b = vb.get_with_hints((out_dim, cfg.r), &lora_b_name(path), Init::Const(0.0))?;
        Ok((a, b, cfg))
    }

    /// True when neither the base weight nor the bias is trained.
    fn is_frozen(&self) -> bool {
        !self.weight.is_variable() && self.bias.as_ref().is_none_or(|b| !b.is_variable())
    }

    /// True when this layer carries a LoRA adapter.
    pub fn has_adapter(&self) -> bool {
        self.adapter.is_some()
    }

    /// Applies the layer to `[..., in]`. With `rng` and a non-zero dropout, the adapter's
    /// input is dropped out with masks drawn from `rng`.
    pub fn forward(&self, x: &Tensor, rng: Option<&mut Rng>) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_dim.max(1);
        // One 2-D matmul over all rows is much faster in candle than a batched broadcast.
        let x2 = x.reshape((rows, in_dim))?;
        let mut y = if x2.track_op() && self.is_frozen() && x2.device().is_cpu() {
            // Fine-tuning: the input needs a gradient, the base weight does not.
            x2.apply_op1(FrozenLinear {
                weight: self.weight.clone(),
                bias: self.bias.clone(),
            })?
        } else {
            let y = x2.matmul(&self.weight.t()?)?;
            match &self.bias {
                Some(bias) => y.broadcast_add(bias)?,
                None => y,
            }
        };
        if let Some(ad) = &self.adapter {
            let xin = match rng {
                Some(rng) if ad.dropout > 0.0 => {
                    let keep = 1.0 - ad.dropout;
                    let mask: Vec<f32> = (0..rows * in_dim)
                        .map(|_| {
                            if rng.uniform_f64() < keep {
                                (1.0 / keep) as f32
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    (&x2 * Tensor::from_vec(mask, (rows, in_dim), x.device())?
                        .to_dtype(x.dtype())?)?
                }
                _ => x2,
            };
            // Scaling the rank-r intermediate touches r values per row instead of `out`.
            let low = (xin.matmul(&ad.a.t()?)? * ad.scaling)?;
            y = (y + low.matmul(&ad.b.t()?)?)?;
        }
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.weight.dim(0)?;
        }
        y.reshape(out_dims)
    }
}

/// Module paths that get adapters under `lora` (e.g. `blocks.0.attn.qkv`), in module order.
pub fn lora_target_paths(cfg: &Config, lora: &LoraConfig) -> Vec<String> {
    adapted_modules(cfg, lora)
        .into_iter()
        .map(|(path, _, _)| path)
        .collect()
}

/// `(module path, in, out)` of every module with an adapter under `lora`, in module order:
/// the targeted linear layers, then the label table (as a linear map `hidden → rows`) when the
/// model has one and [`LABEL_EMBEDDER`] is targeted.
fn adapted_modules(cfg: &Config, lora: &LoraConfig) -> Vec<(String, usize, usize)> {
    let targeted = |path: &str| lora.target_modules.iter().any(|t| matches_target(path, t));
    let mut out: Vec<(String, usize, usize)> = linear_specs(cfg)
        .into_iter()
        .filter(|s| targeted(&s.path))
        .map(|s| (s.path, s.in_dim, s.out_dim))
        .collect();
    if let Some(rows) = cfg.label_rows() {
        if targeted(LABEL_EMBEDDER) {
            out.push((LABEL_EMBEDDER.to_string(), cfg.hidden_size, rows));
        }
    }
    out
}

/// Every LoRA tensor name with its shape (`A`: `r × in`, `B`: `out × r`), in module order.
pub fn lora_tensor_shapes(cfg: &Config, lora: &LoraConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for (path, in_dim, out_dim) in adapted_modules(cfg, lora) {
        out.push((lora_a_name(&path), vec![lora.r, in_dim]));
        out.push((lora_b_name(&path), vec![out_dim, lora.r]));
    }
    out
}

/// Number of trainable LoRA parameters.
pub fn lora_parameter_count(cfg: &Config, lora: &LoraConfig) -> usize {
    lora_tensor_shapes(cfg, lora)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

/// Fresh adapters drawn from our RNG (A uniform in ±1/√in, B zeros), so a seed gives the same
/// starting point everywhere. Load them into a `VarMap` to train.
pub fn init_lora_tensors(
    cfg: &Config,
    lora: &LoraConfig,
    rng: &mut Rng,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, shape) in lora_tensor_shapes(cfg, lora) {
        let n: usize = shape.iter().product();
        let tensor = if name.ends_with(format::tensors::LORA_A_SUFFIX) {
            let bound = 1.0 / (shape[1] as f64).sqrt();
            let data: Vec<f32> = (0..n).map(|_| rng.range(-bound, bound) as f32).collect();
            Tensor::from_vec(data, shape, device)?
        } else {
            Tensor::zeros(shape, DType::F32, device)?
        };
        out.insert(name, tensor);
    }
    Ok(out)
}

/// Checks `base` holds every tensor of `cfg` with the right shape and that `lora` holds
/// exactly the adapters `lora_cfg` asks for. Optimizer-state tensors (`optimizer.*`) in `lora`
/// are ignored, so a whole LoRA checkpoint can be passed. The error names the first offending
/// tensor.
pub fn validate_lora(
    cfg: &Config,
    base: &HashMap<String, Tensor>,
    lora: &HashMap<String, Tensor>,
    lora_cfg: &LoraConfig,
) -> std::result::Result<(), ModelError> {
    cfg.validate()?;
    lora_cfg.validate()?;
    for (name, shape) in base_tensor_shapes(cfg) {
        check_shape(base, &name, &shape)?;
    }
    let expected: HashMap<String, Vec<usize>> =
        lora_tensor_shapes(cfg, lora_cfg).into_iter().collect();
    let mut names: Vec<&String> = lora
        .keys()
        .filter(|n| !n.starts_with(OPTIMIZER_PREFIX))
        .collect();
    names.sort();
    for name in names {
        if !is_lora_tensor(name) {
            return Err(ModelError::UnexpectedTensor {
                name: name.clone(),
                reason: "not a LoRA tensor (`<module>.lora_A.weight` / `<module>.lora_B.weight`)"
                    .into(),
            });
        }
        if !expected.contains_key(name) {
            return Err(ModelError::UnexpectedTensor {
                name: name.clone(),
                reason: format!(
                    "no targeted module of this model (targets: {:?})",
                    lora_cfg.target_modules
                ),
            });
        }
    }
    let mut want: Vec<(&String, &Vec<usize>)> = expected.iter().collect();
    want.sort();
    for (name, shape) in want {
        check_shape(lora, name, shape)?;
    }
    Ok(())
}

fn check_shape(
    map: &HashMap<String, Tensor>,
    name: &str,
    shape: &[usize],
) -> std::result::Result<(), ModelError> {
    let t = map.get(name).ok_or_else(|| ModelError::MissingTensor {
        name: name.to_string(),
    })?;
    if t.dims() != shape {
        return Err(ModelError::ShapeMismatch {
            name: name.to_string(),
            expected: shape.to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// Base weights with each adapter merged in (`W + (alpha/r)·B·A`); LoRA tensors are dropped.
/// The result loads into a plain (adapter-free) [`super::DiffiT`].
pub fn fuse_lora_weights(
    base: &HashMap<String, Tensor>,
    lora: &HashMap<String, Tensor>,
    lora_cfg: &LoraConfig,
) -> std::result::Result<HashMap<String, Tensor>, ModelError> {
    merge(base, lora, lora_cfg, 1.0)
}

/// Inverse of [`fuse_lora_weights`]: subtracts each adapter's update from the merged weights.
pub fn unfuse_lora_weights(
    fused: &HashMap<String, Tensor>,
    lora: &HashMap<String, Tensor>,
    lora_cfg: &LoraConfig,
) -> std::result::Result<HashMap<String, Tensor>, ModelError> {
    merge(fused, lora, lora_cfg, -1.0)
}

fn merge(
    base: &HashMap<String, Tensor>,
    lora: &HashMap<String, Tensor>,
    lora_cfg: &LoraConfig,
    sign: f64,
) -> std::result::Result<HashMap<String, Tensor>, ModelError> {
    lora_cfg.validate()?;
    let mut modules = BTreeSet::new();
    for name in lora.keys().filter(|n| !n.starts_with(OPTIMIZER_PREFIX)) {
        match lora_module(name) {
            Some(m) => modules.insert(m.to_string()),
            None => {
                return Err(ModelError::UnexpectedTensor {
                    name: name.clone(),
                    reason: "not a LoRA tensor".into(),
                })
            }
        };
    }
    let mut out: HashMap<String, Tensor> = base
        .iter()
        .filter(|(k, _)| !is_lora_tensor(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for module in modules {
        let (a_name, b_name, w_name) = (
            lora_a_name(&module),
            lora_b_name(&module),
            format!("{module}.weight"),
        );
        let get = |map: &HashMap<String, Tensor>, name: &str| {
            map.get(name)
                .cloned()
                .ok_or_else(|| ModelError::MissingTensor {
                    name: name.to_string(),
                })
        };
        let (a, b, w) = (
            get(lora, &a_name)?,
            get(lora, &b_name)?,
            get(base, &w_name)?,
        );
        let (out_dim, in_dim) = w.dims2().map_err(|_| ModelError::ShapeMismatch {
            name: w_name.clone(),
            expected: vec![0, 0],
            found: w.dims().to_vec(),
        })?;
        let mismatch = |name: &str, expected: Vec<usize>, t: &Tensor| {
            if t.dims() == expected.as_slice() {
                Ok(())
            } else {
                Err(ModelError::ShapeMismatch {
                    name: name.to_string(),
                    expected,
                    found: t.dims().to_vec(),
                })
            }
        };
        mismatch(&a_name, vec![lora_cfg.r, in_dim], &a)?;
        mismatch(&b_name, vec![out_dim, lora_cfg.r], &b)?;
        let delta = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)?
            * (sign * lora_cfg.scaling()))?;
        let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
        out.insert(w_name, merged);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adapter_on_the_label_table_learns_classes_and_fuses_into_it() {
        use crate::{init_base_tensors, DiffiT};
        let cfg = Config::published_tiny();
        let dev = Device::Cpu;
        let mut rng = Rng::new(4);
        let mut base = init_base_tensors(&cfg, &mut rng, &dev).unwrap();
        let head = "final_layer.linear.weight";
        let shape = base[head].dims().to_vec();
        base.insert(
            head.into(),
            (rng.normal_tensor(shape.as_slice(), &dev).unwrap() * 0.3).unwrap(),
        );
        let mut lora = LoraConfig {
            r: 4,
            ..LoraConfig::default()
        };
        lora.target_modules.push(LABEL_EMBEDDER.into());
        assert!(lora_target_paths(&cfg, &lora).contains(&LABEL_EMBEDDER.to_string()));
        // Not for a model without labels.
        assert!(!lora_target_paths(&Config::tiny(), &lora).contains(&LABEL_EMBEDDER.to_string()));
        let mut adapters = init_lora_tensors(&cfg, &lora, &mut rng, &dev).unwrap();
        let rows = cfg.label_rows().unwrap();
        assert_eq!(adapters[&lora_b_name(LABEL_EMBEDDER)].dims(), &[rows, 4]);
        let build = |base: &HashMap<String, Tensor>, adapters: Option<&HashMap<String, Tensor>>| {
            let vb = VarBuilder::from_tensors(base.clone(), DType::F32, &dev);
            let lvb =
                adapters.map(|a| (&lora, VarBuilder::from_tensors(a.clone(), DType::F32, &dev)));
            DiffiT::new(&cfg, vb, lvb).unwrap()
        };
        let x = rng.normal_tensor((3, 3, 16, 16), &dev).unwrap();
        let t = Tensor::new(&[10f32, 500., 990.], &dev).unwrap();
        let y = Tensor::new(&[0u32, 2, 7], &dev).unwrap();
        let out = |m: &DiffiT| m.forward_labeled(&x, &t, Some(&y), None).unwrap();
        let plain = out(&build(&base, None));
        assert_eq!(
            crate::max_abs_diff(&plain, &out(&build(&base, Some(&adapters)))),
            0.0
        );
        let b = lora_b_name(LABEL_EMBEDDER);
        let trained = (rng.normal_tensor((rows, 4), &dev).unwrap() * 0.5).unwrap();
        adapters.insert(b, trained);
        validate_lora(&cfg, &base, &adapters, &lora).unwrap();
        let adapted = out(&build(&base, Some(&adapters)));
        assert!(crate::max_abs_diff(&plain, &adapted) > 1e-3);
        let fused = fuse_lora_weights(&base, &adapters, &lora).unwrap();
        assert!(crate::max_abs_diff(&adapted, &out(&build(&fused, None))) < 1e-5);
    }

    #[test]
    fn targets_match_at_dot_boundaries() {
        assert!(matches_target("blocks.0.attn.qkv", "attn.qkv"));
        assert!(matches_target("blocks.0.attn.qkv", "qkv"));
        assert!(!matches_target("blocks.0.attn.qkv_temb", "qkv"));
        assert!(!matches_target("blocks.0.attn.xqkv", "qkv"));
        let cfg = Config::tiny();
        let paths = lora_target_paths(&cfg, &LoraConfig::default());
        // Four linears and the adaLN modulation per block, and the head's modulation.
        assert_eq!(paths.len(), 5 * cfg.depth + 1);
        assert!(paths.contains(&"blocks.1.mlp.fc2".to_string()));
        assert!(paths.contains(&"final_layer.adaLN_modulation".to_string()));
        assert!(!paths
            .iter()
            .any(|p| p.contains("qkv_temb") || p.starts_with("x_embedder")));
    }

    /// The frozen-base path (custom backward) gives the gradients plain candle ops give.
    #[test]
    fn frozen_linear_gradients_match_plain_ops() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(3);
        let (rows, i, o, r) = (5, 6, 7, 2);
        let w = rng.normal_tensor((o, i), &dev).unwrap();
        let bias = rng.normal_tensor(o, &dev).unwrap();
        let a = candle_core::Var::from_tensor(&rng.normal_tensor((r, i), &dev).unwrap()).unwrap();
        let b = candle_core::Var::from_tensor(&rng.normal_tensor((o, r), &dev).unwrap()).unwrap();
        let x =
            candle_core::Var::from_tensor(&rng.normal_tensor((rows, i), &dev).unwrap()).unwrap();
        let cfg = LoraConfig {
            r,
            lora_alpha: 3.0,
            ..LoraConfig::default()
        };
        let layer = LoraLinear::new(
            w.clone(),
            Some(bias.clone()),
            Some((a.as_tensor().clone(), b.as_tensor().clone(), &cfg)),
        );
        let ours = layer.forward(x.as_tensor(), None).unwrap();
        let plain = (x
            .as_tensor()
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap()
            + (x.as_tensor()
                .matmul(&a.as_tensor().t().unwrap())
                .unwrap()
                .matmul(&b.as_tensor().t().unwrap())
                .unwrap()
                * cfg.scaling())
            .unwrap())
        .unwrap();
        let close = |p: &Tensor, q: &Tensor| {
            let d = crate::max_abs_diff(p, q);
            assert!(d < 1e-4, "max difference {d}");
        };
        close(&ours, &plain);
        // A non-uniform loss, so every output element has its own gradient.
        let weights = rng.normal_tensor((rows, o), &dev).unwrap();
        let g_ours = (ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_plain = (plain * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &a, &b] {
            close(
                g_ours.get(v.as_tensor()).expect("gradient"),
                g_plain.get(v.as_tensor()).expect("gradient"),
            );
        }
        assert!(
            g_ours.get(&w).is_none(),
            "no gradient for the frozen weight"
        );
    }

    /// The frozen path reads its input where it lies: a row range of a larger tensor (a
    /// contiguous view that starts past the beginning of its storage) gives the plain result.
    #[test]
    fn frozen_linear_reads_a_view_at_an_offset() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(11);
        let (i, o) = (6, 4);
        let w = rng.normal_tensor((o, i), &dev).unwrap();
        let bias = rng.normal_tensor(o, &dev).unwrap();
        let all = candle_core::Var::from_tensor(&rng.normal_tensor((9, i), &dev).unwrap()).unwrap();
        let x = all.as_tensor().narrow(0, 3, 5).unwrap();
        let layer = LoraLinear::new(w.clone(), Some(bias.clone()), None);
        let ours = layer.forward(&x, None).unwrap();
        let plain = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let d = crate::max_abs_diff(&ours, &plain);
        assert!(d < 1e-5, "max difference {d}");
    }
}
