//! DDPM noise schedule and training objective (optionally class-conditional, with label
//! dropout to the null class), and the DDIM sampler (optionally with classifier-free
//! guidance).
//!
//! Every random number (timesteps, noise, dropped labels, the sampler's starting image) comes
//! from our own [`Rng`], so a seed gives the same numbers natively and in the browser.

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::{Config, DiffiT, Prediction};

/// How the noise variances `β_t` grow with `t`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// DDPM's linear betas from 1e-4 to 0.02.
    Linear,
    /// Nichol & Dhariwal's cosine schedule (keeps more signal at small image sizes).
    Cosine,
}

/// The forward (noising) process: `ᾱ_t` for `t = 0..steps`.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    kind: BetaSchedule,
    alphas_cumprod: Vec<f64>,
}

impl Default for NoiseSchedule {
    /// 1000 steps, cosine betas.
    fn default() -> Self {
        Self::new(BetaSchedule::Cosine, 1000)
    }
}

impl NoiseSchedule {
    /// A schedule of `steps` steps (≥ 1).
    pub fn new(kind: BetaSchedule, steps: usize) -> Self {
        let steps = steps.max(1);
        let betas: Vec<f64> = match kind {
            BetaSchedule::Linear => (0..steps)
                .map(|i| {
                    let f = if steps == 1 {
                        0.0
                    } else {
                        i as f64 / (steps - 1) as f64
                    };
                    1e-4 + f * (0.02 - 1e-4)
                })
                .collect(),
            BetaSchedule::Cosine => {
                let s = 0.008;
                let f = |t: f64| {
                    let x = (t / steps as f64 + s) / (1.0 + s) * core::f64::consts::FRAC_PI_2;
                    let c = libm::cos(x);
                    c * c
                };
                (0..steps)
                    .map(|i| (1.0 - f(i as f64 + 1.0) / f(i as f64)).min(0.999))
                    .collect()
            }
        };
        let mut acc = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Self {
            kind,
            alphas_cumprod,
        }
    }

    /// Which beta schedule this is.
    pub fn kind(&self) -> BetaSchedule {
        self.kind
    }

    /// Number of diffusion steps `T`.
    pub fn num_steps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// `ᾱ_t` (fraction of signal variance left at step `t`), clamped to the last step.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t.min(self.alphas_cumprod.len() - 1)]
    }
}

impl Prediction {
    /// The training target for `x_t = signal·x0 + noise·eps`, where `signal = √ᾱ` and
    /// `noise = √(1−ᾱ)` are per-sample `[B, 1, 1, 1]` coefficients.
    fn target(self, x0: &Tensor, eps: Tensor, signal: &Tensor, noise: &Tensor) -> Result<Tensor> {
        match self {
            Prediction::Epsilon => Ok(eps),
            Prediction::V => eps.broadcast_mul(signal)? - x0.broadcast_mul(noise)?,
        }
    }

    /// The clean image implied by the network output `out` at `x_t` with signal level `ab` (ᾱ).
    pub fn x0_estimate(self, xt: &Tensor, out: &Tensor, ab: f64) -> Result<Tensor> {
        match self {
            Prediction::Epsilon => (xt - (out * (1.0 - ab).sqrt())?)? / ab.sqrt(),
            Prediction::V => (xt * ab.sqrt())? - (out * (1.0 - ab).sqrt())?,
        }
    }
}

/// Per-sample coefficients as a `[B, 1, 1, 1]` tensor.
fn per_sample(values: Vec<f32>, device: &Device) -> Result<Tensor> {
    let n = values.len();
    Tensor::from_vec(values, (n, 1, 1, 1), device)
}

/// DDPM loss of a batch `x0` `[B, C, H, W]` in `[-1, 1]`: the mean squared error of the
/// network's output against the target of the model's [`Prediction`] (`ε` or `v`).
/// Draws, in this order, `B` timesteps, the noise, then any LoRA dropout masks from `rng`.
/// Used for training and for validation (pass an RNG seeded per batch so the validation
/// loss is comparable across epochs).
pub fn ddpm_loss(
    model: &DiffiT,
    x0: &Tensor,
    schedule: &NoiseSchedule,
    rng: &mut Rng,
) -> Result<Tensor> {
    ddpm_loss_labeled(model, x0, None, schedule, rng)
}

/// As [`ddpm_loss`] but without LoRA dropout (draws the same timesteps and noise).
pub fn ddpm_eval_loss(
    model: &DiffiT,
    x0: &Tensor,
    schedule: &NoiseSchedule,
    rng: &mut Rng,
) -> Result<Tensor> {
    ddpm_eval_loss_labeled(model, x0, None, schedule, rng)
}

/// The class labels of a training batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchLabels<'a> {
    /// Each image's class (`< num_classes`).
    pub classes: &'a [u32],
    /// The probability that an image's label is replaced by the null class while training
    /// (classifier-free guidance's label dropout), so the model also learns the
    /// unconditional prediction that guidance extrapolates from.
    pub dropout: f64,
}

/// [`ddpm_loss`] of a class-conditional model: with `labels`, each image is conditioned on
/// its class, or on the null class with probability `labels.dropout` (one uniform draw per
/// image from `rng`, after the timesteps and the noise); without, on the null class.
pub fn ddpm_loss_labeled(
    model: &DiffiT,
    x0: &Tensor,
    labels: Option<BatchLabels>,
    schedule: &NoiseSchedule,
    rng: &mut Rng,
) -> Result<Tensor> {
    let (target, pred) = noised_prediction(model, x0, labels, schedule, rng, true)?;
    (pred - target)?.sqr()?.mean_all()
}

/// [`ddpm_eval_loss`] of a class-conditional model: every image conditioned on its class
/// (no label dropout), or on the null class without `labels`.
pub fn ddpm_eval_loss_labeled(
    model: &DiffiT,
    x0: &Tensor,
    labels: Option<&[u32]>,
    schedule: &NoiseSchedule,
    rng: &mut Rng,
) -> Result<Tensor> {
    let labels = labels.map(|classes| BatchLabels {
        classes,
        dropout: 0.0,
    });
    let (target, pred) = noised_prediction(model, x0, labels, schedule, rng, false)?;
    (pred - target)?.sqr()?.mean_all()
}

/// The label tensor `[B]` a batch is conditioned on: each image's class, or the null class
/// (`num_classes`) where a draw from `rng` falls below `dropout` (`train` only).
fn condition_labels(
    model: &DiffiT,
    labels: BatchLabels,
    train: bool,
    rng: &mut Rng,
    device: &Device,
) -> Result<Tensor> {
    let Some(null) = model.config().num_classes else {
        candle_core::bail!("labels given for a model without a label embedder (num_classes unset)");
    };
    let null = null as u32;
    let dropout = if train { labels.dropout } else { 0.0 };
    let classes: Vec<u32> = labels
        .classes
        .iter()
        .map(|&c| {
            if dropout > 0.0 && rng.uniform_f64() < dropout {
                null
            } else {
                c
            }
        })
        .collect();
    let n = classes.len();
    Tensor::from_vec(classes, n, device)
}

/// Noises `x0` at random timesteps; returns `(target, network output)`.
fn noised_prediction(
    model: &DiffiT,
    x0: &Tensor,
    labels: Option<BatchLabels>,
    schedule: &NoiseSchedule,
    rng: &mut Rng,
    train: bool,
) -> Result<(Tensor, Tensor)> {
    let device = x0.device();
    let b = x0.dim(0)?;
    let steps: Vec<usize> = (0..b)
        .map(|_| rng.below(schedule.num_steps() as u64) as usize)
        .collect();
    let eps = rng.normal_tensor(x0.shape(), device)?;
    let ab: Vec<f64> = steps.iter().map(|&t| schedule.alpha_bar(t)).collect();
    let signal = per_sample(ab.iter().map(|a| a.sqrt() as f32).collect(), device)?;
    let noise = per_sample(ab.iter().map(|a| (1.0 - a).sqrt() as f32).collect(), device)?;
    let xt = (x0.broadcast_mul(&signal)? + eps.broadcast_mul(&noise)?)?;
    let target = model.config().prediction.target(x0, eps, &signal, &noise)?;
    let t = Tensor::from_vec(
        steps.iter().map(|&s| s as f32).collect::<Vec<_>>(),
        b,
        device,
    )?;
    let labels = labels
        .map(|l| condition_labels(model, l, train, rng, device))
        .transpose()?;
    let pred = if train {
        model.forward_labeled(&xt, &t, labels.as_ref(), Some(rng))?
    } else {
        model.forward_labeled(&xt, &t, labels.as_ref(), None)?
    };
    Ok((target, prediction_channels(model, pred)?))
}

/// The prediction channels of a network output: a learned-variance head's second half is the
/// variance, which the simple loss and DDIM do not use.
fn prediction_channels(model: &DiffiT, out: Tensor) -> Result<Tensor> {
    let cfg = model.config();
    if cfg.learn_sigma {
        out.narrow(1, 0, cfg.in_channels)
    } else {
        Ok(out)
    }
}

/// DDIM sampler (deterministic for η = 0, the default; see [`DdimSampler::with_eta`]), run one
/// step at a time so a browser can yield between steps. The starting noise and any fresh noise
/// come from `Rng::new(seed)`: same seed, weights, steps and η ⇒ same images on every platform
/// (up to float rounding).
#[derive(Debug, Clone)]
pub struct DdimSampler {
    x: Tensor,
    x0: Option<Tensor>,
    timesteps: Vec<usize>,
    alpha_bars: Vec<f64>,
    done: usize,
    /// DDIM's η: 0 is deterministic DDIM, 1 is DDPM's ancestral sampling.
    eta: f64,
    /// Fresh noise for η > 0 (the stream after the starting image's).
    rng: Rng,
    /// Classifier-free guidance: each image's class `[n]` and the scale.
    guidance: Option<(Tensor, f64)>,
}

/// Classifier-free guidance (Ho & Salimans, 2022) of a class-conditional model: each step's
/// output is `out_uncond + scale · (out_cond − out_uncond)`, the unconditional output being
/// the null class's. Scale 1 is plain conditional sampling, 0 unconditional, above 1 pushes
/// the images further towards their class. The network's `v` is an affine function of its
/// `ε` at a given `x_t`, so guiding either output is the same.
#[derive(Debug, Clone, PartialEq)]
pub struct Guidance {
    /// The class of each image (`< num_classes`).
    pub classes: Vec<u32>,
    /// The guidance scale `s` (finite).
    pub scale: f64,
}

impl DdimSampler {
    /// Prepares `n` images for `cfg` with `steps` denoising steps (clamped to `1..=T`).
    pub fn new(
        schedule: &NoiseSchedule,
        steps: usize,
        n: usize,
        cfg: &Config,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let total = schedule.num_steps();
        let steps = steps.clamp(1, total);
        // "Trailing" spacing: the first step is t = T-1, so sampling starts from pure noise.
        let timesteps: Vec<usize> = (0..steps)
            .map(|i| (total as f64 - i as f64 * total as f64 / steps as f64).round() as usize - 1)
            .collect();
        let alpha_bars = timesteps.iter().map(|&t| schedule.alpha_bar(t)).collect();
        let s = cfg.image_size;
        let mut rng = Rng::new(seed);
        let x = rng.normal_tensor((n, cfg.in_channels, s, s), device)?;
        Ok(Self {
            x,
            x0: None,
            timesteps,
            alpha_bars,
            done: 0,
            eta: 0.0,
            rng,
            guidance: None,
        })
    }

    /// Samples each image of its `guidance.classes` entry with classifier-free guidance
    /// ([`Guidance`]); the model must have a label embedder. A scale of 1 costs one network
    /// pass per step, any other two (conditional and unconditional, in one batch).
    pub fn with_guidance(mut self, guidance: Guidance) -> Result<Self> {
        let n = self.x.dim(0)?;
        if guidance.classes.len() != n {
            candle_core::bail!(
                "guidance gives {} classes for {n} images",
                guidance.classes.len()
            );
        }
        if !guidance.scale.is_finite() {
            candle_core::bail!("guidance scale {} is not a finite number", guidance.scale);
        }
        let classes = Tensor::from_vec(guidance.classes, n, self.x.device())?;
        self.guidance = Some((classes, guidance.scale));
        Ok(self)
    }

    /// Sets DDIM's η (clamped to `0..=1`): each step then re-draws that share of its noise.
    /// Fresh noise lets later steps correct an imperfect model's earlier mistakes.
    pub fn with_eta(mut self, eta: f64) -> Self {
        self.eta = if eta.is_nan() {
            0.0
        } else {
            eta.clamp(0.0, 1.0)
        };
        self
    }

    /// `(steps done, total steps)`.
    pub fn progress(&self) -> (usize, usize) {
        (self.done, self.timesteps.len())
    }

    /// True once every step has run.
    pub fn is_done(&self) -> bool {
        self.done >= self.timesteps.len()
    }

    /// Runs one denoising step; returns whether more steps remain.
    pub fn step(&mut self, model: &DiffiT) -> Result<bool> {
        if self.is_done() {
            return Ok(false);
        }
        let i = self.done;
        let ab = self.alpha_bars[i];
        let ab_prev = self.alpha_bars.get(i + 1).copied().unwrap_or(1.0);
        let n = self.x.dim(0)?;
        let out = self.output(model, self.timesteps[i], n)?;
        // Estimate the clean image, keep it in range, and re-derive the noise from it: this
        // keeps few-step sampling stable for an under-trained model.
        let x0 = model
            .config()
            .prediction
            .x0_estimate(&self.x, &out, ab)?
            .clamp(-1f32, 1f32)?;
        let eps = ((&self.x - (&x0 * ab.sqrt())?)? / (1.0 - ab).sqrt())?;
        // σ² of DDIM (Song et al., eq. 16), zero for η = 0 and on the last step.
        let var = self.eta * self.eta * (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev);
        let var = var.clamp(0.0, 1.0 - ab_prev);
        let mut next = ((&x0 * ab_prev.sqrt())? + (eps * (1.0 - ab_prev - var).sqrt())?)?;
        if var > 0.0 {
            let z = self.rng.normal_tensor(next.shape(), next.device())?;
            next = (next + (z * var.sqrt())?)?;
        }
        self.x = next;
        self.x0 = Some(x0);
        self.done += 1;
        Ok(!self.is_done())
    }

    /// The (guided) prediction of the network at step `t` for the `n` current images.
    fn output(&self, model: &DiffiT, t: usize, n: usize) -> Result<Tensor> {
        let device = self.x.device();
        let Some((classes, scale)) = &self.guidance else {
            let t = Tensor::full(t as f32, n, device)?;
            return prediction_channels(model, model.forward(&self.x, &t)?);
        };
        if *scale == 1.0 {
            let t = Tensor::full(t as f32, n, device)?;
            let out = model.forward_labeled(&self.x, &t, Some(classes), None)?;
            return prediction_channels(model, out);
        }
        let Some(null) = model.config().num_classes else {
            candle_core::bail!("guidance needs a model with a label embedder (num_classes unset)");
        };
        // One pass over both halves: the images with their classes, then with the null class.
        let x = Tensor::cat(&[&self.x, &self.x], 0)?;
        let t = Tensor::full(t as f32, 2 * n, device)?;
        let nulls = Tensor::full(null as u32, n, device)?;
        let labels = Tensor::cat(&[classes, &nulls], 0)?;
        let out = prediction_channels(model, model.forward_labeled(&x, &t, Some(&labels), None)?)?;
        let (cond, uncond) = (out.narrow(0, 0, n)?, out.narrow(0, n, n)?);
        &uncond + ((cond - &uncond)? * *scale)?
    }

    /// The current estimate of the clean images `[n, C, H, W]` in `[-1, 1]` (a preview).
    pub fn current_x0(&self) -> Result<Tensor> {
        match &self.x0 {
            Some(x0) => Ok(x0.clone()),
            None => self.x.clamp(-1f32, 1f32),
        }
    }

    /// The final images `[n, C, H, W]` in `[-1, 1]` (the latest preview if steps remain).
    pub fn finish(self) -> Result<Tensor> {
        if self.is_done() {
            self.x.clamp(-1f32, 1f32)
        } else {
            self.current_x0()
        }
    }
}

/// The η that `diffit sample`, the per-epoch TensorBoard samples and the dashboard use: fully
/// stochastic steps. With deterministic DDIM (η = 0) an under-trained model's early clean-image
/// estimates are never re-noised away and end up as patch-sized colour blocks in the image.
pub const DEFAULT_ETA: f64 = 1.0;

/// The classifier-free guidance scale `diffit sample --class` and the dashboard's sampler use
/// unless told otherwise.
pub const DEFAULT_CFG_SCALE: f64 = 2.0;

/// Samples `n` images with `steps` DDIM steps of the given `eta` from `seed`;
/// `[n, C, H, W]` in `[-1, 1]`.
pub fn ddim_sample(
    model: &DiffiT,
    schedule: &NoiseSchedule,
    n: usize,
    seed: u64,
    steps: usize,
    eta: f64,
    device: &Device,
) -> Result<Tensor> {
    ddim_sample_guided(model, schedule, n, seed, steps, eta, None, device)
}

/// As [`ddim_sample`], with classifier-free guidance when given ([`DdimSampler::with_guidance`]).
#[allow(clippy::too_many_arguments)]
pub fn ddim_sample_guided(
    model: &DiffiT,
    schedule: &NoiseSchedule,
    n: usize,
    seed: u64,
    steps: usize,
    eta: f64,
    guidance: Option<Guidance>,
    device: &Device,
) -> Result<Tensor> {
    let mut sampler =
        DdimSampler::new(schedule, steps, n, model.config(), seed, device)?.with_eta(eta);
    if let Some(guidance) = guidance {
        sampler = sampler.with_guidance(guidance)?;
    }
    while sampler.step(model)? {}
    sampler.finish()
}

/// Images `[n, C, H, W]` in `[-1, 1]` → one HWC RGB byte buffer per image (grey images are
/// repeated over R, G and B; only the first three channels are shown).
pub fn to_rgb8(images: &Tensor) -> Result<Vec<Vec<u8>>> {
    let (n, c, h, w) = images.dims4()?;
    let bytes = ((images.to_dtype(DType::F32)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
        .round()?
        .permute((0, 2, 3, 1))?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(n);
    for img in bytes.chunks(h * w * c) {
        let mut rgb = Vec::with_capacity(h * w * 3);
        for px in img.chunks(c) {
            for k in 0..3 {
                rgb.push(px[k.min(c - 1)] as u8);
            }
        }
        out.push(rgb);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_decay_from_one_to_near_zero() {
        for kind in [BetaSchedule::Linear, BetaSchedule::Cosine] {
            let s = NoiseSchedule::new(kind, 1000);
            assert_eq!(s.num_steps(), 1000);
            assert!(s.alpha_bar(0) > 0.99);
            assert!(s.alpha_bar(999) < 0.01);
            assert!((1..1000).all(|t| s.alpha_bar(t) < s.alpha_bar(t - 1)));
        }
    }

    #[test]
    fn the_sampler_inverts_each_training_target() {
        let dev = Device::Cpu;
        let x0 = Rng::new(1)
            .normal_tensor((1, 3, 4, 4), &dev)
            .unwrap()
            .clamp(-1f32, 1f32)
            .unwrap();
        let eps = Rng::new(2).normal_tensor((1, 3, 4, 4), &dev).unwrap();
        for prediction in [Prediction::Epsilon, Prediction::V] {
            for ab in [0.999f64, 0.6, 0.05, 0.001] {
                let signal = per_sample(vec![ab.sqrt() as f32], &dev).unwrap();
                let noise = per_sample(vec![(1.0 - ab).sqrt() as f32], &dev).unwrap();
                let xt = (x0.broadcast_mul(&signal).unwrap() + eps.broadcast_mul(&noise).unwrap())
                    .unwrap();
                let out = prediction
                    .target(&x0, eps.clone(), &signal, &noise)
                    .unwrap();
                let back = prediction.x0_estimate(&xt, &out, ab).unwrap();
                let err = crate::max_abs_diff(&back, &x0);
                // ε-prediction divides float rounding by √ᾱ; v-prediction never divides.
                let tol = if prediction == Prediction::V {
                    1e-5
                } else {
                    1e-5 / ab.sqrt()
                };
                assert!(err < tol as f32, "{prediction:?} at ᾱ={ab}: error {err}");
            }
        }
    }

    #[test]
    fn v_prediction_keeps_high_noise_errors_small() {
        // The same output error costs ε-prediction 1/√ᾱ times more in the clean-image
        // estimate; v-prediction never more than the error itself.
        let dev = Device::Cpu;
        let xt = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap();
        let err = Tensor::full(0.1f32, (1, 3, 2, 2), &dev).unwrap();
        let ab = 0.0004;
        let zero = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap();
        let amplification = |p: Prediction| {
            let a = p.x0_estimate(&xt, &err, ab).unwrap();
            let b = p.x0_estimate(&xt, &zero, ab).unwrap();
            crate::max_abs_diff(&a, &b) / 0.1
        };
        assert!((amplification(Prediction::Epsilon) - 50.0).abs() < 0.1);
        assert!(amplification(Prediction::V) <= 1.0 + 1e-6);
    }

    /// The published tiny model with a non-zero head and distinct class embeddings, so that
    /// labels change what it predicts.
    fn labelled_model() -> DiffiT {
        use candle_nn::VarBuilder;
        let cfg = Config::published_tiny();
        let dev = Device::Cpu;
        let mut rng = Rng::new(11);
        let mut tensors = crate::init_base_tensors(&cfg, &mut rng, &dev).unwrap();
        for name in [
            "final_layer.linear.weight",
            "y_embedder.embedding_table.weight",
        ] {
            let shape = tensors[name].dims().to_vec();
            let t = (rng.normal_tensor(shape.as_slice(), &dev).unwrap() * 0.5).unwrap();
            tensors.insert(name.into(), t);
        }
        DiffiT::new(
            &cfg,
            VarBuilder::from_tensors(tensors, DType::F32, &dev),
            None,
        )
        .unwrap()
    }

    #[test]
    fn guidance_extrapolates_from_the_null_class_towards_the_class() {
        let model = labelled_model();
        let cfg = model.config().clone();
        let schedule = NoiseSchedule::default();
        let dev = Device::Cpu;
        let classes = vec![0u32, 3, 6];
        let sampler = |scale: Option<f64>| {
            let s = DdimSampler::new(&schedule, 4, 3, &cfg, 5, &dev).unwrap();
            match scale {
                Some(scale) => s
                    .with_guidance(Guidance {
                        classes: classes.clone(),
                        scale,
                    })
                    .unwrap(),
                None => s,
            }
        };
        let t = 600;
        let x = sampler(None).x.clone();
        let tt = Tensor::full(t as f32, 3, &dev).unwrap();
        let labels = Tensor::new(classes.as_slice(), &dev).unwrap();
        let cond = model.forward_labeled(&x, &tt, Some(&labels), None).unwrap();
        let uncond = model.forward(&x, &tt).unwrap();
        assert!(crate::max_abs_diff(&cond, &uncond) > 1e-3, "labels matter");
        // ε = ε_uncond + s·(ε_cond − ε_uncond), the conditional and null halves in one batch.
        for scale in [0.0, 1.0, 3.0] {
            let want = (&uncond + ((&cond - &uncond).unwrap() * scale).unwrap()).unwrap();
            let got = sampler(Some(scale)).output(&model, t, 3).unwrap();
            assert!(crate::max_abs_diff(&got, &want) < 1e-5, "scale {scale}");
        }
        assert_eq!(
            crate::max_abs_diff(&sampler(None).output(&model, t, 3).unwrap(), &uncond),
            0.0
        );
        // Whole runs: deterministic, and the class changes the image.
        let run = |scale| {
            let mut s = sampler(Some(scale));
            while s.step(&model).unwrap() {}
            s.finish().unwrap()
        };
        assert_eq!(crate::max_abs_diff(&run(2.0), &run(2.0)), 0.0);
        assert!(crate::max_abs_diff(&run(2.0), &run(0.0)) > 1e-3);
        // Wrong counts and scales are refused.
        let s = DdimSampler::new(&schedule, 4, 2, &cfg, 5, &dev).unwrap();
        assert!(s
            .clone()
            .with_guidance(Guidance {
                classes: vec![0],
                scale: 1.0
            })
            .is_err());
        assert!(s
            .with_guidance(Guidance {
                classes: vec![0, 1],
                scale: f64::NAN
            })
            .is_err());
    }

    #[test]
    fn label_dropout_conditions_on_the_null_class() {
        let model = labelled_model();
        let schedule = NoiseSchedule::default();
        let x0 = Rng::new(1)
            .normal_tensor((4, 3, 16, 16), &Device::Cpu)
            .unwrap()
            .clamp(-1f32, 1f32)
            .unwrap();
        let classes = [1u32, 2, 3, 4];
        let loss = |dropout: Option<f64>| {
            let labels = dropout.map(|dropout| BatchLabels {
                classes: &classes,
                dropout,
            });
            ddpm_loss_labeled(&model, &x0, labels, &schedule, &mut Rng::new(9))
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let null = loss(None);
        assert_eq!(loss(Some(1.0)), null, "every label dropped: the null class");
        let labelled = loss(Some(0.0));
        assert_ne!(labelled, null);
        let eval = ddpm_eval_loss_labeled(&model, &x0, Some(&classes), &schedule, &mut Rng::new(9))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(eval, labelled, "validation keeps every label");
        // A model without labels refuses them.
        let hybrid = {
            let cfg = Config::tiny();
            let t = crate::init_base_tensors(&cfg, &mut Rng::new(1), &Device::Cpu).unwrap();
            DiffiT::new(
                &cfg,
                candle_nn::VarBuilder::from_tensors(t, DType::F32, &Device::Cpu),
                None,
            )
            .unwrap()
        };
        let labels = BatchLabels {
            classes: &classes,
            dropout: 0.1,
        };
        assert!(
            ddpm_loss_labeled(&hybrid, &x0, Some(labels), &schedule, &mut Rng::new(9)).is_err()
        );
    }

    #[test]
    fn to_rgb8_maps_range_and_layout() {
        // One 1×2 RGB image: pixel 0 = (-1, 0, 1), pixel 1 = (1, 1, 1).
        let x =
            Tensor::from_vec(vec![-1f32, 1., 0., 1., 1., 1.], (1, 3, 1, 2), &Device::Cpu).unwrap();
        let out = to_rgb8(&x).unwrap();
        assert_eq!(out, vec![vec![0, 128, 255, 255, 255, 255]]);
    }
}
