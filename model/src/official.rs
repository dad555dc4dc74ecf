//! NVlabs' official DiffiT state_dict (`diffit/diffit.py`) and our base tensors, both ways.
//!
//! Our module tree follows the official one, so every weight keeps its name; the table
//! [`STATE_DICT`] says what each official tensor is to us. Two are laid out differently or
//! not stored by us at all: the patch embedding is a `Conv2d` there (`[h, C, p, p]`) and a
//! linear map over patchified tokens here (`[h, p·p·C]`, patches flattened `(py, px, c)`),
//! and the fixed sin-cos `pos_embed` and each block's `relative_position_index` buffer are
//! saved there but recomputed here: an import checks they hold what we compute and drops
//! them, an export writes them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor};
use thiserror::Error;

use super::diffit::{pos_embed, relative_position_index};
use super::params::{base_tensor_shapes, LABEL_TABLE};
use super::{Architecture, Config, ModelError, Prediction};

/// What one tensor of the official state_dict is to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A weight with our name, shape and layout.
    Same,
    /// The patch embedding's `Conv2d` kernel `[h, C, p, p]`; ours is `[h, p·p·C]`
    /// (`permute(0, 2, 3, 1)` then `reshape`).
    PatchKernel,
    /// The fixed 2-D sin-cos position embedding `[1, N, h]` (a parameter without gradient
    /// there): checked against ours and dropped on import.
    PositionEmbedding,
    /// A block's `relative_position_index` buffer `[N, N]` (int64): checked against ours and
    /// dropped on import.
    RelativePositionIndex,
}

/// Every tensor of the official state_dict, in its module order; `{i}` stands for each
/// block's index.
pub const STATE_DICT: &[(&str, Role)] = &[
    ("pos_embed", Role::PositionEmbedding),
    ("x_embedder.proj.weight", Role::PatchKernel),
    ("x_embedder.proj.bias", Role::Same),
    ("t_embedder.mlp.0.weight", Role::Same),
    ("t_embedder.mlp.0.bias", Role::Same),
    ("t_embedder.mlp.2.weight", Role::Same),
    ("t_embedder.mlp.2.bias", Role::Same),
    ("y_embedder.embedding_table.weight", Role::Same),
    ("blocks.{i}.attn.relative_position_bias_table", Role::Same),
    (
        "blocks.{i}.attn.relative_position_index",
        Role::RelativePositionIndex,
    ),
    ("blocks.{i}.attn.qkv_temb.weight", Role::Same),
    ("blocks.{i}.attn.qkv_temb.bias", Role::Same),
    ("blocks.{i}.attn.qkv.weight", Role::Same),
    ("blocks.{i}.attn.qkv.bias", Role::Same),
    ("blocks.{i}.attn.proj.weight", Role::Same),
    ("blocks.{i}.attn.proj.bias", Role::Same),
    ("blocks.{i}.mlp.fc1.weight", Role::Same),
    ("blocks.{i}.mlp.fc1.bias", Role::Same),
    ("blocks.{i}.mlp.fc2.weight", Role::Same),
    ("blocks.{i}.mlp.fc2.bias", Role::Same),
    ("final_layer.linear.weight", Role::Same),
    ("final_layer.linear.bias", Role::Same),
];

/// How far a file's `pos_embed` may be from ours: both are the `f64` sin-cos rounded to the
/// file's type, so they differ by at most an ulp of values in `[-1, 1]` of that type (where
/// the `f64` sines differ in their last bit): 6e-8 in `f32`, 2⁻¹⁰ in `f16`, 2⁻⁷ in `bf16`.
/// The hybrid's order or a shifted grid is off by 0.1 or more.
fn pos_embed_tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 2f32.powi(-10),
        DType::BF16 => 2f32.powi(-7),
        _ => 1e-6,
    }
}

/// One official tensor of a configuration: its name, shape and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfficialTensor {
    /// Name in the official state_dict (and, for [`Role::Same`], ours).
    pub name: String,
    /// Shape in the official state_dict.
    pub shape: Vec<usize>,
    /// What it is to us.
    pub role: Role,
}

/// What is wrong with one tensor of a state_dict.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// The model needs it and the file lacks it.
    Missing {
        /// Tensor name.
        name: String,
    },
    /// The file holds it and the model has no such tensor.
    Unexpected {
        /// Tensor name.
        name: String,
    },
    /// It has another shape than the model needs.
    Shape {
        /// Tensor name.
        name: String,
        /// Shape the model needs.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// Its shape is right (or unusable to size the model) but its values or type are not.
    Value {
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing { name } => write!(f, "missing tensor `{name}`"),
            Problem::Unexpected { name } => {
                write!(f, "unexpected tensor `{name}` (not in the official model)")
            }
            Problem::Shape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{name}` has shape {found:?}, expected {expected:?}"
            ),
            Problem::Value { name, reason } => write!(f, "tensor `{name}` {reason}"),
        }
    }
}

/// Why a state_dict could not be converted.
#[derive(Debug, Error)]
pub enum StateDictError {
    /// The tensors do not form the official model (every problem found, in name order).
    #[error("{}", describe(.0))]
    Problems(Vec<Problem>),
    /// The sizes read from the tensors do not make a usable model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

fn describe(problems: &[Problem]) -> String {
    let list: Vec<String> = problems.iter().map(Problem::to_string).collect();
    match list.len() {
        1 => list.join(""),
        n => format!("{n} problems: {}", list.join("; ")),
    }
}

/// A state_dict converted to our base tensors.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The model the tensors make: the published architecture, ε-prediction (as the
    /// official training), sizes read from the shapes.
    pub config: Config,
    /// Our base tensors, `f32`, named as [`crate::base_tensor_shapes`] says.
    pub tensors: HashMap<String, Tensor>,
}

/// The official state_dict of `cfg` (which must be the published architecture), in module
/// order.
pub fn official_tensors(cfg: &Config) -> Result<Vec<OfficialTensor>, ModelError> {
    require_published(cfg)?;
    let ours: HashMap<String, Vec<usize>> = base_tensor_shapes(cfg).into_iter().collect();
    let (h, n) = (cfg.hidden_size, cfg.num_tokens());
    let mut out = Vec::new();
    let mut push = |name: String, role: Role| -> Result<(), ModelError> {
        let shape = match role {
            Role::Same => ours
                .get(&name)
                .cloned()
                .ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?,
            Role::PatchKernel => vec![h, cfg.in_channels, cfg.patch_size, cfg.patch_size],
            Role::PositionEmbedding => vec![1, n, h],
            Role::RelativePositionIndex => vec![n, n],
        };
        out.push(OfficialTensor { name, shape, role });
        Ok(())
    };
    for &(pattern, role) in STATE_DICT {
        if pattern.contains("{i}") {
            for i in 0..cfg.depth {
                push(pattern.replace("{i}", &i.to_string()), role)?;
            }
        } else {
            push(pattern.to_string(), role)?;
        }
    }
    // The official order is module order, blocks one after another.
    let rank = |name: &str| block_index(name).unwrap_or(0);
    out.sort_by_key(|t| {
        (
            u8::from(t.name.starts_with("blocks.")) + 2 * u8::from(t.name.starts_with("final")),
            rank(&t.name),
        )
    });
    Ok(out)
}

fn require_published(cfg: &Config) -> Result<(), ModelError> {
    cfg.validate()?;
    if cfg.architecture != Architecture::Published {
        return Err(ModelError::InvalidConfig(
            "only the published architecture has an official state_dict (this model is the \
             hybrid, whose position embedding, time features and adaLN layers differ)"
                .into(),
        ));
    }
    Ok(())
}

/// `blocks.{i}.…` → `i`.
fn block_index(name: &str) -> Option<usize> {
    name.strip_prefix("blocks.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The shape of `name`, or a problem saying it is missing.
fn shape_of<'a>(
    shapes: &'a HashMap<String, Vec<usize>>,
    name: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'a [usize]> {
    let shape = shapes.get(name).map(Vec::as_slice);
    if shape.is_none() {
        problems.push(Problem::Missing { name: name.into() });
    }
    shape
}

/// A dimension of a tensor used to size the model, or a problem when its rank is not `rank`.
fn dims<const R: usize>(
    name: &str,
    shape: Option<&[usize]>,
    layout: &str,
    problems: &mut Vec<Problem>,
) -> Option<[usize; R]> {
    let shape = shape?;
    match <[usize; R]>::try_from(shape) {
        Ok(d) => Some(d),
        Err(_) => {
            problems.push(Problem::Value {
                name: name.into(),
                reason: format!("has shape {shape:?}; the official model's is {layout}"),
            });
            None
        }
    }
}

/// The model a state_dict's shapes describe (the published architecture), or every problem
/// that prevents reading its sizes.
pub fn infer_config(shapes: &HashMap<String, Vec<usize>>) -> Result<Config, StateDictError> {
    let mut problems = Vec::new();
    let pos = "pos_embed";
    let patch = "x_embedder.proj.weight";
    let time = "t_embedder.mlp.0.weight";
    let bias = "blocks.0.attn.relative_position_bias_table";
    let fc1 = "blocks.0.mlp.fc1.weight";
    let head = "final_layer.linear.weight";
    let mut get = |name: &str| shape_of(shapes, name, &mut problems);
    let found = [
        get(pos),
        get(patch),
        get(time),
        get(LABEL_TABLE),
        get(bias),
        get(fc1),
        get(head),
    ];
    let pos_d = dims::<3>(pos, found[0], "[1, tokens, hidden]", &mut problems);
    let patch_d = dims::<4>(
        patch,
        found[1],
        "[hidden, channels, patch, patch]",
        &mut problems,
    );
    let time_d = dims::<2>(time, found[2], "[hidden, frequencies]", &mut problems);
    let label_d = dims::<2>(
        LABEL_TABLE,
        found[3],
        "[classes + 1, hidden]",
        &mut problems,
    );
    let bias_d = dims::<2>(bias, found[4], "[offsets, heads]", &mut problems);
    let fc1_d = dims::<2>(fc1, found[5], "[mlp width, hidden]", &mut problems);
    let head_d = dims::<2>(head, found[6], "[outputs, hidden]", &mut problems);
    let (
        Some([_, tokens, hidden]),
        Some([_, channels, p, _]),
        Some([_, freqs]),
        Some([rows, _]),
        Some([_, heads]),
        Some([mlp, _]),
        Some([outputs, _]),
    ) = (pos_d, patch_d, time_d, label_d, bias_d, fc1_d, head_d)
    else {
        return Err(StateDictError::Problems(problems));
    };
    let grid = (tokens as f64).sqrt().round() as usize;
    if grid * grid != tokens {
        problems.push(Problem::Value {
            name: pos.into(),
            reason: format!("has {tokens} tokens, not a square grid"),
        });
    }
    if rows == 0 {
        problems.push(Problem::Value {
            name: LABEL_TABLE.into(),
            reason: "has no rows (it needs at least the null class)".into(),
        });
    }
    let depth = shapes
        .keys()
        .filter_map(|k| block_index(k))
        .max()
        .map_or(0, |i| i + 1);
    if depth > shapes.len() {
        // A stray `blocks.1000000.…` must not make us list a million missing blocks.
        problems.push(Problem::Value {
            name: format!("blocks.{}", depth - 1),
            reason: format!(
                "is a block index beyond the file's {} tensors",
                shapes.len()
            ),
        });
    }
    if !problems.is_empty() {
        return Err(StateDictError::Problems(problems));
    }
    let cfg = Config {
        image_size: grid * p,
        in_channels: channels,
        patch_size: p,
        hidden_size: hidden,
        depth,
        num_heads: heads,
        mlp_ratio: mlp as f64 / hidden.max(1) as f64,
        time_freq_dim: freqs,
        prediction: Prediction::Epsilon,
        final_silu: true,
        adaln: false,
        architecture: Architecture::Published,
        num_classes: Some(rows - 1),
        // Any other width is named by the shape check against the `learn_sigma: false` head.
        learn_sigma: outputs == 2 * p * p * channels,
    };
    cfg.validate()?;
    if cfg.mlp_hidden() != mlp {
        return Err(StateDictError::Problems(vec![Problem::Value {
            name: fc1.into(),
            reason: format!(
                "has MLP width {mlp}, which width {hidden} times a ratio cannot give back"
            ),
        }]));
    }
    Ok(cfg)
}

/// Every mismatch between `shapes` and the official tensors `expected`, in name order.
fn check_shapes(shapes: &HashMap<String, Vec<usize>>, expected: &[OfficialTensor]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let wanted: BTreeSet<&str> = expected.iter().map(|t| t.name.as_str()).collect();
    for t in expected {
        match shapes.get(&t.name) {
            None => problems.push(Problem::Missing {
                name: t.name.clone(),
            }),
            Some(found) if *found != t.shape => problems.push(Problem::Shape {
                name: t.name.clone(),
                expected: t.shape.clone(),
                found: found.clone(),
            }),
            Some(_) => {}
        }
    }
    let mut extra: Vec<&String> = shapes
        .keys()
        .filter(|k| !wanted.contains(k.as_str()))
        .collect();
    extra.sort();
    problems.extend(
        extra
            .into_iter()
            .map(|name| Problem::Unexpected { name: name.clone() }),
    );
    problems.sort_by(|a, b| problem_name(a).cmp(problem_name(b)));
    problems
}

fn problem_name(p: &Problem) -> &str {
    match p {
        Problem::Missing { name }
        | Problem::Unexpected { name }
        | Problem::Shape { name, .. }
        | Problem::Value { name, .. } => name,
    }
}

fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// Converts an official state_dict (any float type; the index buffers any integer type) into
/// our base tensors. Every missing, unexpected or mis-shaped tensor is named, as is a
/// non-float weight, a non-finite value, or a `pos_embed` / `relative_position_index` that
/// is not the official one.
pub fn import_state_dict(tensors: HashMap<String, Tensor>) -> Result<Imported, StateDictError> {
    let shapes: HashMap<String, Vec<usize>> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let config = infer_config(&shapes)?;
    let expected = official_tensors(&config)?;
    let problems = check_shapes(&shapes, &expected);
    if !problems.is_empty() {
        return Err(StateDictError::Problems(problems));
    }
    let device = Device::Cpu;
    let positions = pos_embed(
        config.grid_size(),
        config.hidden_size,
        config.architecture,
        &device,
    )?;
    let n = config.num_tokens();
    // N² entries: computed only when the file holds index buffers of that size (a model
    // without blocks needs none, whatever its token count).
    let index: Vec<i64> = if config.depth > 0 {
        relative_position_index(config.grid_size(), &device)?
            .to_dtype(DType::I64)?
            .to_vec1()?
    } else {
        Vec::new()
    };
    let mut problems = Vec::new();
    let mut out = HashMap::new();
    for t in &expected {
        let Some(value) = tensors.get(&t.name) else {
            continue;
        };
        let value = value.to_device(&device)?;
        let bad = |reason: String| Problem::Value {
            name: t.name.clone(),
            reason,
        };
        if t.role == Role::RelativePositionIndex {
            if is_float(value.dtype()) {
                problems.push(bad(format!(
                    "has type {:?}, expected an integer index",
                    value.dtype()
                )));
            } else if value
                .to_dtype(DType::I64)?
                .flatten_all()?
                .to_vec1::<i64>()?
                != index
            {
                problems.push(bad(format!(
                    "is not the relative position index of a {g}×{g} token grid",
                    g = config.grid_size()
                )));
            }
            continue;
        }
        if !is_float(value.dtype()) {
            problems.push(bad(format!(
                "has type {:?}, expected floating point",
                value.dtype()
            )));
            continue;
        }
        let stored = value.dtype();
        let value = value.to_dtype(DType::F32)?;
        let values = value.flatten_all()?.to_vec1::<f32>()?;
        if values.iter().any(|v| !v.is_finite()) {
            problems.push(bad("holds NaN or infinite values".into()));
            continue;
        }
        match t.role {
            Role::Same => {
                out.insert(t.name.clone(), value);
            }
            Role::PatchKernel => {
                let [h, c, p, _] = [t.shape[0], t.shape[1], t.shape[2], t.shape[3]];
                let linear = value
                    .permute((0, 2, 3, 1))?
                    .contiguous()?
                    .reshape((h, p * p * c))?;
                out.insert(t.name.clone(), linear);
            }
            Role::PositionEmbedding => {
                let diff = crate::max_abs_difference(
                    &value.reshape((1, n, config.hidden_size))?,
                    &positions,
                )?;
                if diff > pos_embed_tolerance(stored) {
                    problems.push(bad(format!(
                        "is not the fixed 2-D sin-cos embedding (off by up to {diff:e})"
                    )));
                }
            }
            Role::RelativePositionIndex => {}
        }
    }
    if !problems.is_empty() {
        return Err(StateDictError::Problems(problems));
    }
    Ok(Imported {
        config,
        tensors: out,
    })
}

/// Our base tensors of `cfg` (the published architecture) as the official state_dict: the
/// patch kernel in `Conv2d` layout, `pos_embed` and the index buffers added. Every missing,
/// unexpected or mis-shaped tensor of `tensors` is named.
pub fn export_state_dict(
    cfg: &Config,
    tensors: &HashMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, StateDictError> {
    let expected = official_tensors(cfg)?;
    let ours: Vec<(String, Vec<usize>)> = base_tensor_shapes(cfg);
    let mut problems = Vec::new();
    for (name, shape) in &ours {
        match tensors.get(name) {
            None => problems.push(Problem::Missing { name: name.clone() }),
            Some(t) if t.dims() != shape.as_slice() => problems.push(Problem::Shape {
                name: name.clone(),
                expected: shape.clone(),
                found: t.dims().to_vec(),
            }),
            Some(_) => {}
        }
    }
    let known: BTreeSet<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
    let mut extra: Vec<&String> = tensors
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .collect();
    extra.sort();
    problems.extend(
        extra
            .into_iter()
            .map(|name| Problem::Unexpected { name: name.clone() }),
    );
    if !problems.is_empty() {
        return Err(StateDictError::Problems(problems));
    }
    let device = Device::Cpu;
    let n = cfg.num_tokens();
    let index = relative_position_index(cfg.grid_size(), &device)?
        .to_dtype(DType::I64)?
        .reshape((n, n))?;
    let mut out = BTreeMap::new();
    for t in expected {
        let value = match t.role {
            Role::Same => tensors
                .get(&t.name)
                .ok_or_else(|| ModelError::MissingTensor {
                    name: t.name.clone(),
                })?
                .to_device(&device)?
                .to_dtype(DType::F32)?
                .contiguous()?,
            Role::PatchKernel => {
                let [h, c, p, _] = [t.shape[0], t.shape[1], t.shape[2], t.shape[3]];
                tensors
                    .get(&t.name)
                    .ok_or_else(|| ModelError::MissingTensor {
                        name: t.name.clone(),
                    })?
                    .to_device(&device)?
                    .to_dtype(DType::F32)?
                    .reshape((h, p, p, c))?
                    .permute((0, 3, 1, 2))?
                    .contiguous()?
            }
            Role::PositionEmbedding => {
                pos_embed(cfg.grid_size(), cfg.hidden_size, cfg.architecture, &device)?
            }
            Role::RelativePositionIndex => index.clone(),
        };
        out.insert(t.name, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init_base_tensors;
    use crate::rng::Rng;

    fn names(list: &[OfficialTensor], role: Role) -> BTreeSet<String> {
        list.iter()
            .filter(|t| t.role == role)
            .map(|t| t.name.clone())
            .collect()
    }

    #[test]
    fn the_table_covers_exactly_our_tensors_plus_the_buffers() {
        let cfg = Config::published_fixture();
        let list = official_tensors(&cfg).unwrap();
        let ours: BTreeSet<String> = base_tensor_shapes(&cfg)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let mut mapped = names(&list, Role::Same);
        mapped.extend(names(&list, Role::PatchKernel));
        assert_eq!(mapped, ours);
        assert_eq!(names(&list, Role::PositionEmbedding).len(), 1);
        assert_eq!(names(&list, Role::RelativePositionIndex).len(), cfg.depth);
        // Module order: embedders, then block 0 whole, then block 1, then the head.
        assert_eq!(list[0].name, "pos_embed");
        assert_eq!(list[8].name, "blocks.0.attn.relative_position_bias_table");
        assert_eq!(list[20].name, "blocks.1.attn.relative_position_bias_table");
        assert_eq!(list.last().unwrap().name, "final_layer.linear.bias");
        assert!(
            official_tensors(&Config::tiny()).is_err(),
            "the hybrid has none"
        );
    }

    #[test]
    fn export_then_import_gives_back_the_weights_and_the_config() {
        let cfg = Config::published_fixture();
        let ours = init_base_tensors(&cfg, &mut Rng::new(7), &Device::Cpu).unwrap();
        let official = export_state_dict(&cfg, &ours).unwrap();
        assert_eq!(official["x_embedder.proj.weight"].dims(), &[16, 3, 2, 2]);
        assert_eq!(
            official["blocks.0.attn.relative_position_index"].dtype(),
            DType::I64
        );
        let back = import_state_dict(official.into_iter().collect()).unwrap();
        assert_eq!(back.config, cfg);
        assert_eq!(back.tensors.len(), ours.len());
        for (name, t) in &ours {
            assert_eq!(crate::max_abs_diff(t, &back.tensors[name]), 0.0, "{name}");
        }
    }

    #[test]
    fn the_patch_kernel_is_the_linear_map_over_patchified_pixels() {
        // Kernel element [o, c, py, px] multiplies pixel (py, px) of channel c; our column for
        // it is (py·p + px)·C + c, the order patchify flattens a patch in.
        let cfg = Config::published_fixture();
        let mut ours = init_base_tensors(&cfg, &mut Rng::new(8), &Device::Cpu).unwrap();
        let (h, c, p) = (cfg.hidden_size, cfg.in_channels, cfg.patch_size);
        let w: Vec<f32> = (0..h * p * p * c).map(|v| v as f32).collect();
        ours.insert(
            "x_embedder.proj.weight".into(),
            Tensor::from_vec(w, (h, p * p * c), &Device::Cpu).unwrap(),
        );
        let kernel: Vec<f32> = export_state_dict(&cfg, &ours).unwrap()["x_embedder.proj.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for o in 0..h {
            for ch in 0..c {
                for py in 0..p {
                    for px in 0..p {
                        let v = kernel[((o * c + ch) * p + py) * p + px];
                        let col = (py * p + px) * c + ch;
                        assert_eq!(v, (o * p * p * c + col) as f32);
                    }
                }
            }
        }
    }

    #[test]
    fn half_precision_files_import_with_their_rounding() {
        let cfg = Config::published_fixture();
        let ours = init_base_tensors(&cfg, &mut Rng::new(11), &Device::Cpu).unwrap();
        let half: HashMap<String, Tensor> = export_state_dict(&cfg, &ours)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let v = if v.dtype() == DType::F32 {
                    v.to_dtype(DType::F16).unwrap()
                } else {
                    v
                };
                (k, v)
            })
            .collect();
        let back = import_state_dict(half).unwrap();
        assert_eq!(back.config, cfg);
        let w = "blocks.0.attn.qkv.weight";
        assert_eq!(back.tensors[w].dtype(), DType::F32);
        assert!(crate::max_abs_diff(&back.tensors[w], &ours[w]) < 1e-3);
    }

    #[test]
    fn every_problem_is_named() {
        let cfg = Config::published_fixture();
        let ours = init_base_tensors(&cfg, &mut Rng::new(9), &Device::Cpu).unwrap();
        let mut sd: HashMap<String, Tensor> = export_state_dict(&cfg, &ours)
            .unwrap()
            .into_iter()
            .collect();
        sd.remove("blocks.1.mlp.fc2.bias");
        sd.insert(
            "blocks.0.attn.proj.weight".into(),
            Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap(),
        );
        sd.insert(
            "ema.decay".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = import_state_dict(sd).unwrap_err().to_string();
        assert!(err.starts_with("3 problems"), "{err}");
        assert!(
            err.contains("missing tensor `blocks.1.mlp.fc2.bias`"),
            "{err}"
        );
        assert!(
            err.contains("`blocks.0.attn.proj.weight` has shape [4, 4], expected [16, 16]"),
            "{err}"
        );
        assert!(err.contains("unexpected tensor `ema.decay`"), "{err}");
    }

    #[test]
    fn wrong_buffers_and_values_are_refused() {
        let cfg = Config::published_fixture();
        let ours = init_base_tensors(&cfg, &mut Rng::new(10), &Device::Cpu).unwrap();
        let sd: HashMap<String, Tensor> = export_state_dict(&cfg, &ours)
            .unwrap()
            .into_iter()
            .collect();
        let with = |name: &str, t: Tensor| {
            let mut sd = sd.clone();
            sd.insert(name.into(), t);
            import_state_dict(sd).unwrap_err().to_string()
        };
        // The hybrid's order (row half first) is not the official embedding.
        let hybrid = pos_embed(
            cfg.grid_size(),
            cfg.hidden_size,
            Architecture::Hybrid,
            &Device::Cpu,
        )
        .unwrap();
        let err = with("pos_embed", hybrid);
        assert!(
            err.contains("`pos_embed` is not the fixed 2-D sin-cos"),
            "{err}"
        );
        let n = cfg.num_tokens();
        let err = with(
            "blocks.1.attn.relative_position_index",
            Tensor::zeros((n, n), DType::I64, &Device::Cpu).unwrap(),
        );
        assert!(
            err.contains("`blocks.1.attn.relative_position_index` is not"),
            "{err}"
        );
        let err = with(
            "t_embedder.mlp.2.bias",
            Tensor::full(f32::NAN, cfg.hidden_size, &Device::Cpu).unwrap(),
        );
        assert!(err.contains("`t_embedder.mlp.2.bias` holds NaN"), "{err}");
        let err = with(
            "blocks.0.attn.qkv.bias",
            Tensor::zeros(3 * cfg.hidden_size, DType::I64, &Device::Cpu).unwrap(),
        );
        assert!(err.contains("expected floating point"), "{err}");
    }

    #[test]
    fn sizes_come_from_the_shapes_and_unreadable_ones_are_named() {
        let cfg = Config::published_xl_2(32);
        let shapes: HashMap<String, Vec<usize>> = official_tensors(&cfg)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect();
        assert_eq!(infer_config(&shapes).unwrap(), cfg);

        let mut broken = shapes.clone();
        broken.remove("pos_embed");
        broken.insert("x_embedder.proj.weight".into(), vec![1152, 16]);
        let err = infer_config(&broken).unwrap_err().to_string();
        assert!(err.contains("missing tensor `pos_embed`"), "{err}");
        assert!(
            err.contains("`x_embedder.proj.weight` has shape [1152, 16]; the official model's is [hidden, channels, patch, patch]"),
            "{err}"
        );
        let mut far = shapes;
        far.insert("blocks.99999999.attn.qkv.weight".into(), vec![1]);
        let err = infer_config(&far).unwrap_err().to_string();
        assert!(err.contains("block index beyond"), "{err}");
    }
}
