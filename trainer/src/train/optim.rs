//! AdamW with decoupled weight decay whose moments are keyed by parameter name, so its state
//! can be saved into a checkpoint and restored bit for bit (candle-nn's keeps it private).

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use format::tensors::{EXP_AVG_PREFIX, EXP_AVG_SQ_PREFIX};

/// Errors of the optimizer and of restoring its state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A tensor operation failed.
    #[error("optimizer tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The optimizer's JSON state could not be read.
    #[error("invalid optimizer state JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A moment tensor a parameter needs is absent from the checkpoint.
    #[error("optimizer state lacks tensor {0:?}")]
    MissingTensor(String),
    /// A moment tensor does not have its parameter's shape.
    #[error("optimizer tensor {name:?} has shape {found:?}, its parameter has {expected:?}")]
    ShapeMismatch {
        /// The tensor's name.
        name: String,
        /// The parameter's shape.
        expected: Vec<usize>,
        /// The stored shape.
        found: Vec<usize>,
    },
    /// The checkpoint holds moments of a parameter the model does not train.
    #[error("optimizer state has tensor {0:?} for a parameter the model does not train")]
    UnknownParameter(String),
    /// A hyper-parameter is out of its range.
    #[error("invalid AdamW hyper-parameter: {0}")]
    InvalidHyperParameter(String),
}

/// AdamW hyper-parameters (PyTorch's names and defaults, except the learning rate).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWParams {
    /// Current learning rate (set by the scheduler before each step).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator for stability.
    pub eps: f64,
    /// Decoupled weight decay (applied as `θ ← θ − lr·wd·θ`).
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWParams {
    /// Checks the ranges PyTorch checks.
    pub fn validate(&self) -> Result<(), OptimError> {
        let bad = |what: String| Err(OptimError::InvalidHyperParameter(what));
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(format!("lr = {} must be finite and >= 0", self.lr));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(format!("{name} = {b} must be in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad(format!("eps = {} must be finite and >= 0", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay = {} must be finite and >= 0",
                self.weight_decay
            ));
        }
        Ok(())
    }
}

/// The JSON part of the optimizer state (the moments travel as tensors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWState {
    /// Hyper-parameters at the time of saving.
    pub params: AdamWParams,
    /// Steps taken (drives bias correction).
    pub step: u64,
    /// Names of the parameters that have moments, sorted.
    pub param_names: Vec<String>,
}

/// AdamW over named parameters.
#[derive(Debug, Clone)]
pub struct AdamW {
    params: AdamWParams,
    step: u64,
    exp_avg: BTreeMap<String, Tensor>,
    exp_avg_sq: BTreeMap<String, Tensor>,
    /// Gradients are scaled down to this global L2 norm before each step (a setting of the
    /// run, not state: it is not saved, a resumed run sets it from its config).
    max_grad_norm: Option<f64>,
}

/// The factor that brings gradients of global L2 norm `norm` down to `max_norm`, as PyTorch's
/// `clip_grad_norm_` computes it: `max_norm / (norm + 1e-6)`, at most 1.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// The gradients an optimizer step reads: candle's own store from `backward`, or the
/// combined gradients of a sharded step ([`super::parallel::ParamGrads`]).
pub trait Gradients {
    /// The gradient of `var`, if it has one.
    fn of(&self, var: &Var) -> Option<&Tensor>;
}

impl Gradients for GradStore {
    fn of(&self, var: &Var) -> Option<&Tensor> {
        self.get(var.as_tensor())
    }
}

/// The global L2 norm of the gradients of `params` (those without a gradient count as 0).
pub fn global_grad_norm(
    params: &[(String, Var)],
    grads: &impl Gradients,
) -> Result<f64, OptimError> {
    let mut sum = 0f64;
    for (_, var) in params {
        if let Some(grad) = grads.of(var) {
            let sq = grad.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?;
            sum += sq.to_scalar::<f64>()?;
        }
    }
    Ok(sum.sqrt())
}

impl AdamW {
    /// A fresh optimizer (no moments yet; they are created at the first step).
    pub fn new(params: AdamWParams) -> Result<Self, OptimError> {
        params.validate()?;
        Ok(Self {
            params,
            step: 0,
            exp_avg: BTreeMap::new(),
            exp_avg_sq: BTreeMap::new(),
            max_grad_norm: None,
        })
    }

    /// Clips each step's gradients to this global L2 norm (`None`: no clipping).
    pub fn set_max_grad_norm(&mut self, max_norm: Option<f64>) {
        self.max_grad_norm = max_norm;
    }

    /// Current hyper-parameters.
    pub fn params(&self) -> &AdamWParams {
        &self.params
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Sets the learning rate for the next steps (the scheduler's job).
    pub fn set_lr(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Sets the weight decay (a resumed run may change it).
    pub fn set_weight_decay(&mut self, weight_decay: f64) {
        self.params.weight_decay = weight_decay;
    }

    /// One AdamW step over `params`; a parameter without a gradient is left alone.
    ///
    /// Parameters are visited in name order so the result never depends on how the caller
    /// collected them (a `VarMap` hands them out in hash order).
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &impl Gradients,
    ) -> Result<(), OptimError> {
        let mut sorted: Vec<&(String, Var)> = params.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let scale = match self.max_grad_norm {
            Some(max_norm) => clip_factor(global_grad_norm(params, grads)?, max_norm),
            None => 1.0,
        };
        self.step += 1;
        let p = self.params;
        // Powers computed in f64 then applied as scalars, exactly as each step recomputes them.
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        let bias1 = 1.0 - p.beta1.powi(t);
        let bias2 = 1.0 - p.beta2.powi(t);
        for (name, var) in sorted {
            let Some(grad) = grads.of(var) else {
                continue;
            };
            let clipped;
            let grad = if scale < 1.0 {
                clipped = (grad * scale)?;
                &clipped
            } else {
                grad
            };
            let theta = var.as_tensor();
            let m_prev = match self.exp_avg.get(name) {
                Some(m) => m.clone(),
                None => theta.zeros_like()?,
            };
            let v_prev = match self.exp_avg_sq.get(name) {
                Some(v) => v.clone(),
                None => theta.zeros_like()?,
            };
            let m = ((m_prev * p.beta1)? + (grad * (1.0 - p.beta1))?)?;
            let v = ((v_prev * p.beta2)? + (grad.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&m / bias1)?;
            let v_hat = (&v / bias2)?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let decayed = (theta * (1.0 - p.lr * p.weight_decay))?;
            let next = (decayed - (update * p.lr)?)?;
            var.set(&next)?;
            self.exp_avg.insert(name.clone(), m);
            self.exp_avg_sq.insert(name.clone(), v);
        }
        Ok(())
    }

    /// The JSON-serialisable part of the state.
    pub fn state(&self) -> AdamWState {
        AdamWState {
            params: self.params,
            step: self.step,
            param_names: self.exp_avg.keys().cloned().collect(),
        }
    }

    /// The state as JSON text (for a checkpoint's `__metadata__`).
    pub fn state_json(&self) -> Result<String, OptimError> {
        Ok(serde_json::to_string(&self.state())?)
    }

    /// The moments as named tensors: `optimizer.exp_avg.<name>`, `optimizer.exp_avg_sq.<name>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let firsts = self
            .exp_avg
            .iter()
            .map(|(n, t)| (format!("{EXP_AVG_PREFIX}{n}"), t.clone()));
        let seconds = self
            .exp_avg_sq
            .iter()
            .map(|(n, t)| (format!("{EXP_AVG_SQ_PREFIX}{n}"), t.clone()));
        firsts.chain(seconds).collect()
    }

    /// Rebuilds an optimizer from its JSON state and moment tensors, checking each moment
    /// against the trained parameters. Tensors whose names do not start with the optimizer
    /// prefixes (e.g. the LoRA weights in the same file) are ignored.
    pub fn from_state(
        state_json: &str,
        tensors: &BTreeMap<String, Tensor>,
        params: &[(String, Var)],
    ) -> Result<Self, OptimError> {
        Self::from_parts(serde_json::from_str(state_json)?, tensors, params)
    }

    /// As [`AdamW::from_state`], with the JSON part already decoded.
    pub fn from_parts(
        state: AdamWState,
        tensors: &BTreeMap<String, Tensor>,
        params: &[(String, Var)],
    ) -> Result<Self, OptimError> {
        state.params.validate()?;
        let shapes: BTreeMap<&str, Vec<usize>> = params
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_tensor().dims().to_vec()))
            .collect();
        let mut exp_avg = BTreeMap::new();
        let mut exp_avg_sq = BTreeMap::new();
        for name in &state.param_names {
            let Some(expected) = shapes.get(name.as_str()) else {
                return Err(OptimError::UnknownParameter(format!(
                    "{EXP_AVG_PREFIX}{name}"
                )));
            };
            for (prefix, map) in [
                (EXP_AVG_PREFIX, &mut exp_avg),
                (EXP_AVG_SQ_PREFIX, &mut exp_avg_sq),
            ] {
                let key = format!("{prefix}{name}");
                let tensor = tensors
                    .get(&key)
                    .ok_or_else(|| OptimError::MissingTensor(key.clone()))?;
                if tensor.dims() != expected.as_slice() {
                    return Err(OptimError::ShapeMismatch {
                        name: key,
                        expected: expected.clone(),
                        found: tensor.dims().to_vec(),
                    });
                }
                map.insert(name.clone(), tensor.clone());
            }
        }
        // A moment in the file that the JSON does not list means the two halves disagree.
        for key in tensors.keys() {
            let name = key
                .strip_prefix(EXP_AVG_SQ_PREFIX)
                .or_else(|| key.strip_prefix(EXP_AVG_PREFIX));
            if let Some(name) = name {
                if !exp_avg.contains_key(name) {
                    return Err(OptimError::UnknownParameter(key.clone()));
                }
            }
        }
        // After some steps every trained parameter must have moments, or resuming would
        // silently restart its bias correction.
        if state.step > 0 {
            for (name, _) in params {
                if !exp_avg.contains_key(name) {
                    return Err(OptimError::MissingTensor(format!("{EXP_AVG_PREFIX}{name}")));
                }
            }
        }
        Ok(Self {
            params: state.params,
            step: state.step,
            exp_avg,
            exp_avg_sq,
            max_grad_norm: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn gradients_are_clipped_to_the_global_norm() {
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert!((clip_factor(5.0, 1.0) - 0.2).abs() < 1e-6);
        let params = vars(0.0);
        let grads = loss(&params).backward().unwrap();
        let norm = global_grad_norm(&params, &grads).unwrap();
        // d/dθ Σ(θ − 0.3)² = 2(θ − 0.3), over both tensors.
        let expected: f64 = params
            .iter()
            .flat_map(|(_, v)| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .map(|t| (2.0 * (f64::from(t) - 0.3)).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - expected).abs() < 1e-4, "{norm} vs {expected}");
        let max_norm = norm / 4.0;
        let first_moments = |clip: Option<f64>| {
            let mut opt = AdamW::new(AdamWParams::default()).unwrap();
            opt.set_max_grad_norm(clip);
            let ps = vars(0.0);
            opt.step(&ps, &loss(&ps).backward().unwrap()).unwrap();
            opt.state_tensors()
                .into_iter()
                .filter(|(name, _)| name.starts_with(EXP_AVG_PREFIX))
                .collect::<Vec<_>>()
        };
        // The first moment after one step is (1 − β1)·g: a quarter of it when clipped, and
        // untouched by a limit above the norm.
        let plain = first_moments(None);
        for (limit, factor) in [(max_norm, clip_factor(norm, max_norm)), (norm * 2.0, 1.0)] {
            let clipped = first_moments(Some(limit));
            assert_eq!(clipped.len(), 2);
            for ((name, got), (_, unclipped)) in clipped.iter().zip(&plain) {
                let diff = (got - (unclipped * factor).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(diff < 1e-6, "{name}: {diff}");
            }
        }
    }

    fn vars(seed: f32) -> Vec<(String, Var)> {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 6., &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let a = ((a * 0.1).unwrap() + seed as f64).unwrap();
        let b = Tensor::new(&[0.5f32, -0.25, 1.5, 2.0], &dev).unwrap();
        // Deliberately not sorted: order must not matter.
        vec![
            ("z.weight".to_string(), Var::from_tensor(&b).unwrap()),
            ("a.weight".to_string(), Var::from_tensor(&a).unwrap()),
        ]
    }

    fn loss(params: &[(String, Var)]) -> Tensor {
        let mut total = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
        for (_, v) in params {
            let l = (v.as_tensor() - 0.3)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            total = (total + l).unwrap();
        }
        total
    }

    fn run(opt: &mut AdamW, params: &[(String, Var)], steps: usize) {
        for _ in 0..steps {
            let grads = loss(params).backward().unwrap();
            opt.step(params, &grads).unwrap();
        }
    }

    fn values(params: &[(String, Var)]) -> Vec<(String, Vec<u32>)> {
        let mut out: Vec<_> = params
            .iter()
            .map(|(n, v)| {
                let bits = v
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                (n.clone(), bits.into_iter().map(f32::to_bits).collect())
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn matches_a_hand_computed_first_step() {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1.0f32], &dev).unwrap()).unwrap();
        let params = vec![("w".to_string(), var.clone())];
        let mut opt = AdamW::new(AdamWParams {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        })
        .unwrap();
        // loss = 3 w → grad = 3; the first bias-corrected Adam update is sign(grad) (± eps).
        let grads = (var.as_tensor() * 3.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&params, &grads).unwrap();
        let w = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        let expected = 1.0 * (1.0 - 0.1 * 0.5) - 0.1 * 1.0;
        assert!((w as f64 - expected).abs() < 1e-6, "{w} vs {expected}");
    }

    #[test]
    fn converges_on_a_quadratic() {
        let params = vars(1.0);
        let mut opt = AdamW::new(AdamWParams {
            lr: 0.05,
            weight_decay: 0.0,
            ..Default::default()
        })
        .unwrap();
        let before = loss(&params).to_scalar::<f32>().unwrap();
        run(&mut opt, &params, 200);
        let after = loss(&params).to_scalar::<f32>().unwrap();
        assert!(after < before * 1e-3, "{before} -> {after}");
        assert_eq!(opt.step_count(), 200);
    }

    #[test]
    fn state_round_trip_is_bit_exact() {
        let hp = AdamWParams {
            lr: 0.013,
            weight_decay: 0.1,
            ..Default::default()
        };
        let straight = vars(0.7);
        let mut opt = AdamW::new(hp).unwrap();
        run(&mut opt, &straight, 7);

        let resumed = vars(0.7);
        let mut first = AdamW::new(hp).unwrap();
        run(&mut first, &resumed, 3);
        let json = first.state_json().unwrap();
        // Through a safetensors file, as a checkpoint does.
        let named: std::collections::HashMap<String, Tensor> =
            first.state_tensors().into_iter().collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("opt.safetensors");
        candle_core::safetensors::save(&named, &file).unwrap();
        let loaded: BTreeMap<String, Tensor> = candle_core::safetensors::load(&file, &Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
        let mut second = AdamW::from_state(&json, &loaded, &resumed).unwrap();
        assert_eq!(second.state(), first.state());
        run(&mut second, &resumed, 4);

        assert_eq!(values(&straight), values(&resumed));
        let a: BTreeMap<_, _> = opt.state_tensors().into_iter().collect();
        let b: BTreeMap<_, _> = second.state_tensors().into_iter().collect();
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, t) in &a {
            let x = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = b[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{k}"
            );
        }
    }

    #[test]
    fn state_uses_the_shared_tensor_names() {
        let params = vars(0.0);
        let mut opt = AdamW::new(AdamWParams::default()).unwrap();
        run(&mut opt, &params, 1);
        let names: Vec<String> = opt.state_tensors().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "optimizer.exp_avg.a.weight",
                "optimizer.exp_avg.z.weight",
                "optimizer.exp_avg_sq.a.weight",
                "optimizer.exp_avg_sq.z.weight"
            ]
        );
    }

    #[test]
    fn import_names_the_missing_or_misshaped_tensor() {
        let params = vars(0.0);
        let mut opt = AdamW::new(AdamWParams::default()).unwrap();
        run(&mut opt, &params, 2);
        let json = opt.state_json().unwrap();
        let full: BTreeMap<String, Tensor> = opt.state_tensors().into_iter().collect();

        let mut missing = full.clone();
        missing.remove("optimizer.exp_avg_sq.z.weight");
        let err = AdamW::from_state(&json, &missing, &params).unwrap_err();
        assert!(
            matches!(&err, OptimError::MissingTensor(n) if n == "optimizer.exp_avg_sq.z.weight"),
            "{err}"
        );
        assert!(err.to_string().contains("optimizer.exp_avg_sq.z.weight"));

        let mut misshaped = full.clone();
        misshaped.insert(
            "optimizer.exp_avg.a.weight".into(),
            Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap(),
        );
        let err = AdamW::from_state(&json, &misshaped, &params).unwrap_err();
        assert!(
            err.to_string().contains("optimizer.exp_avg.a.weight")
                && err.to_string().contains("[3, 2]"),
            "{err}"
        );

        let fewer_params = vec![params[0].clone()];
        let err = AdamW::from_state(&json, &full, &fewer_params).unwrap_err();
        assert!(matches!(err, OptimError::UnknownParameter(_)), "{err}");

        let err = AdamW::from_state("{not json", &full, &params).unwrap_err();
        assert!(matches!(err, OptimError::Json(_)));
    }

    #[test]
    fn rejects_bad_hyper_parameters() {
        assert!(AdamW::new(AdamWParams {
            beta1: 1.0,
            ..Default::default()
        })
        .is_err());
        assert!(AdamW::new(AdamWParams {
            lr: f64::NAN,
            ..Default::default()
        })
        .is_err());
        assert!(AdamW::new(AdamWParams {
            weight_decay: -1.0,
            ..Default::default()
        })
        .is_err());
    }
}
