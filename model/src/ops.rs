//! Fused CPU kernels with hand-written backward passes, used while training.
//!
//! Written with candle's primitives, tanh-GELU is 7 element-wise passes, an affine-free
//! LayerNorm 7 (4 of them broadcasts) and a differentiable softmax 5, each with a backward of
//! about twice as many: small tensors, many passes, an allocation per pass. Each op here is one
//! pass forward and one backward. Inference (no gradient) keeps candle's own fused kernels, and
//! so does every non-CPU device.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

/// The contiguous `f32` values of a custom op's input.
fn input<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: expected an f32 tensor");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: the input must be contiguous");
    };
    Ok(&data[start..end])
}

/// All values of `t`, row-major.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// Rows of the last dimension: `(rows, width)`.
fn rows(shape: &Shape) -> Result<(usize, usize)> {
    let width = shape.dims().last().copied().unwrap_or(1).max(1);
    Ok((shape.elem_count() / width, width))
}

const GELU_K: f32 = 0.797_884_6; // √(2/π)
const GELU_C: f32 = 0.044_715;

/// tanh-GELU as `x·σ(2u)`, `u = √(2/π)(x + 0.044715x³)`.
fn gelu_value(x: f32) -> f32 {
    let s = 1.0 / (1.0 + (-2.0 * GELU_K * (x + GELU_C * x * x * x)).exp());
    x * s
}

/// d/dx of [`gelu_value`].
fn gelu_slope(x: f32) -> f32 {
    let s = 1.0 / (1.0 + (-2.0 * GELU_K * (x + GELU_C * x * x * x)).exp());
    s + x * s * (1.0 - s) * 2.0 * GELU_K * (1.0 + 3.0 * GELU_C * x * x)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh-train"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = input(storage, layout, self.name())?;
        let y = x.iter().map(|&v| gelu_value(v)).collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (x, g) = (values(arg)?, values(grad_res)?);
        let dx = x.iter().zip(&g).map(|(&x, &g)| g * gelu_slope(x)).collect();
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// LayerNorm over the last dimension, no affine parameters.
struct LayerNorm {
    eps: f32,
}

impl LayerNorm {
    /// `(mean, 1/σ)` of one row.
    fn stats(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        (mean, 1.0 / (var + self.eps).sqrt())
    }

    /// Appends one row's input gradient, `(g − mean(g) − ŷ·mean(g·ŷ)) / σ`, to `dx`, given the
    /// output gradient `g`, the normalised row `ŷ` and `1/σ`.
    fn row_backward(g: &[f32], yhat: &[f32], rstd: f32, dx: &mut Vec<f32>) {
        let n = g.len() as f32;
        let g_mean = g.iter().sum::<f32>() / n;
        let gy_mean = g.iter().zip(yhat).map(|(g, y)| g * y).sum::<f32>() / n;
        dx.extend(
            g.iter()
                .zip(yhat)
                .map(|(g, y)| (g - g_mean - y * gy_mean) * rstd),
        );
    }
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm-train"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = input(storage, layout, self.name())?;
        let (_, width) = rows(layout.shape())?;
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks(width) {
            let (mean, rstd) = self.stats(row);
            y.extend(row.iter().map(|v| (v - mean) * rstd));
        }
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    /// `dx = (g − mean(g) − ŷ·mean(g·ŷ)) / σ`, per row.
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (x, y, g) = (values(arg)?, values(res)?, values(grad_res)?);
        let (_, width) = rows(arg.shape())?;
        let mut dx = Vec::with_capacity(x.len());
        for ((xr, yr), gr) in x.chunks(width).zip(y.chunks(width)).zip(g.chunks(width)) {
            let (_, rstd) = self.stats(xr);
            Self::row_backward(gr, yr, rstd, &mut dx);
        }
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Softmax over the last dimension.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-train"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = input(storage, layout, self.name())?;
        let (_, width) = rows(layout.shape())?;
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks(width) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let start = y.len();
            y.extend(row.iter().map(|v| (v - max).exp()));
            let sum: f32 = y[start..].iter().sum();
            y[start..].iter_mut().for_each(|v| *v /= sum);
        }
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    /// `dx = y·(g − Σ g·y)`, per row.
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (y, g) = (values(res)?, values(grad_res)?);
        let (_, width) = rows(arg.shape())?;
        let mut dx = Vec::with_capacity(y.len());
        for (yr, gr) in y.chunks(width).zip(g.chunks(width)) {
            let dot: f32 = yr.iter().zip(gr).map(|(y, g)| y * g).sum();
            dx.extend(yr.iter().zip(gr).map(|(y, g)| y * (g - dot)));
        }
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// `(B, N, C)` of a `[B, N, C]` input and checks that a per-sample `[B, 1, C]` operand fits.
fn per_sample_dims(x: &Layout, per_sample: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    let (b, n, c) = x.shape().dims3()?;
    if per_sample.shape().dims() != [b, 1, c] {
        candle_core::bail!(
            "{op}: per-sample operand {:?} does not fit input {:?}",
            per_sample.shape(),
            x.shape()
        );
    }
    Ok((b, n, c))
}

/// adaLN's `LN(x)·(1 + scale) + shift`, for `x` `[B, N, C]` and per-sample `shift`, `scale`
/// `[B, 1, C]`: one pass instead of candle's LayerNorm, broadcast multiply and broadcast add,
/// whose backward passes sum over the token axis with strided reductions.
struct Modulate {
    norm: LayerNorm,
}

impl CustomOp3 for Modulate {
    fn name(&self) -> &'static str {
        "modulate-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, shift, scale) = (
            input(s1, l1, self.name())?,
            input(s2, l2, self.name())?,
            input(s3, l3, self.name())?,
        );
        let (_, n, c) = per_sample_dims(l1, l2, self.name())?;
        per_sample_dims(l1, l3, self.name())?;
        let mut y = Vec::with_capacity(x.len());
        for (i, row) in x.chunks(c).enumerate() {
            let at = (i / n) * c;
            let (sh, sc) = (&shift[at..at + c], &scale[at..at + c]);
            let (mean, rstd) = self.norm.stats(row);
            y.extend(
                row.iter()
                    .zip(sh.iter().zip(sc))
                    .map(|(v, (h, s))| (v - mean) * rstd * (1.0 + s) + h),
            );
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// With `ŷ = LN(x)`: `d shift = Σₙ g`, `d scale = Σₙ g·ŷ`, and `dx` is LayerNorm's backward
    /// of `g·(1 + scale)`.
    fn bwd(
        &self,
        x: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xv, sc, g) = (values(x)?, values(scale)?, values(grad_res)?);
        let (_, n, c) = x.dims3()?;
        let mut dx = Vec::with_capacity(xv.len());
        let mut dshift = vec![0f32; sc.len()];
        let mut dscale = vec![0f32; sc.len()];
        let mut gy = vec![0f32; c];
        let mut yhat = vec![0f32; c];
        for (i, (xr, gr)) in xv.chunks(c).zip(g.chunks(c)).enumerate() {
            let at = (i / n) * c;
            let (mean, rstd) = self.norm.stats(xr);
            for (j, (&v, &gv)) in xr.iter().zip(gr).enumerate() {
                let y = (v - mean) * rstd;
                yhat[j] = y;
                dshift[at + j] += gv;
                dscale[at + j] += gv * y;
                gy[j] = gv * (1.0 + sc[at + j]);
            }
            LayerNorm::row_backward(&gy, &yhat, rstd, &mut dx);
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dshift, shift.shape(), dev)?),
            Some(Tensor::from_vec(dscale, scale.shape(), dev)?),
        ))
    }
}

/// adaLN's gated residual `x + gate·y`, for `x`, `y` `[B, N, C]` and a per-sample `gate`
/// `[B, 1, C]`, in one pass with its own backward.
struct GatedAdd;

impl CustomOp3 for GatedAdd {
    fn name(&self) -> &'static str {
        "gated-add-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, y, gate) = (
            input(s1, l1, self.name())?,
            input(s2, l2, self.name())?,
            input(s3, l3, self.name())?,
        );
        if l1.shape() != l2.shape() {
            candle_core::bail!("{}: {:?} vs {:?}", self.name(), l1.shape(), l2.shape());
        }
        let (_, n, c) = per_sample_dims(l1, l3, self.name())?;
        let mut out = Vec::with_capacity(x.len());
        for (i, (xr, yr)) in x.chunks(c).zip(y.chunks(c)).enumerate() {
            let at = (i / n) * c;
            out.extend(
                xr.iter()
                    .zip(yr)
                    .zip(&gate[at..at + c])
                    .map(|((x, y), g)| x + g * y),
            );
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// `dx = g`, `dy = g·gate`, `d gate = Σₙ g·y`.
    fn bwd(
        &self,
        _x: &Tensor,
        y: &Tensor,
        gate: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (yv, gt, g) = (values(y)?, values(gate)?, values(grad_res)?);
        let (_, n, c) = y.dims3()?;
        let mut dy = Vec::with_capacity(yv.len());
        let mut dgate = vec![0f32; gt.len()];
        for (i, (yr, gr)) in yv.chunks(c).zip(g.chunks(c)).enumerate() {
            let at = (i / n) * c;
            for (j, (&yv, &gv)) in yr.iter().zip(gr).enumerate() {
                dy.push(gv * gt[at + j]);
                dgate[at + j] += gv * yv;
            }
        }
        let dev = y.device();
        Ok((
            Some(grad_res.clone()),
            Some(Tensor::from_vec(dy, y.shape(), dev)?),
            Some(Tensor::from_vec(dgate, gate.shape(), dev)?),
        ))
    }
}

/// True when `x` needs a gradient and lives where these kernels run.
fn fused_training(x: &Tensor) -> bool {
    x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32
}

/// True when any operand needs a gradient and all live where these kernels run.
fn fused_training_any(xs: &[&Tensor]) -> bool {
    xs.iter().any(|x| x.track_op())
        && xs
            .iter()
            .all(|x| x.device().is_cpu() && x.dtype() == DType::F32)
}

/// adaLN's `LN(x)·(1 + scale) + shift` (`x` `[B, N, C]`, `shift`, `scale` `[B, 1, C]`); one
/// fused pass with its own backward while training on the CPU.
pub(crate) fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_training_any(&[x, shift, scale]) {
        return x.contiguous()?.apply_op3(
            &shift.contiguous()?,
            &scale.contiguous()?,
            Modulate {
                norm: LayerNorm { eps: eps as f32 },
            },
        );
    }
    layer_norm(x, eps)?
        .broadcast_mul(&(scale + 1.0)?)?
        .broadcast_add(shift)
}

/// adaLN's gated residual `x + gate·y` (`x`, `y` `[B, N, C]`, `gate` `[B, 1, C]`); one fused
/// pass with its own backward while training on the CPU.
pub(crate) fn gated_add(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if fused_training_any(&[x, y, gate]) {
        return x
            .contiguous()?
            .apply_op3(&y.contiguous()?, &gate.contiguous()?, GatedAdd);
    }
    x + y.broadcast_mul(gate)?
}

/// tanh-GELU; one fused pass with its own backward while training on the CPU.
pub(crate) fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused_training(x) {
        return x.contiguous()?.apply_op1(Gelu);
    }
    let c = 2.0 * (2.0 / core::f64::consts::PI).sqrt();
    let u = ((x.sqr()? * f64::from(GELU_C))? + 1.0)?.mul(x)?;
    x.mul(&candle_nn::ops::sigmoid(&(u * c)?)?)
}

/// LayerNorm over the last dimension without affine parameters.
pub(crate) fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_training(x) {
        return x.contiguous()?.apply_op1(LayerNorm { eps: eps as f32 });
    }
    if x.track_op() {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        return centred.broadcast_div(&(var + eps)?.sqrt()?);
    }
    let d = x.dim(D::Minus1)?;
    let ones = Tensor::ones(d, x.dtype(), x.device())?;
    let zeros = Tensor::zeros(d, x.dtype(), x.device())?;
    candle_nn::ops::layer_norm(x, &ones, &zeros, eps as f32)
}

/// Softmax over the last dimension.
pub(crate) fn softmax(x: &Tensor) -> Result<Tensor> {
    if fused_training(x) {
        return x.contiguous()?.apply_op1(Softmax);
    }
    if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::max_abs_diff;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    /// The composite (candle primitives) definitions the fused ops must agree with.
    fn reference(op: &str, x: &Tensor) -> Tensor {
        match op {
            "gelu" => x.gelu().unwrap(),
            "layer_norm" => {
                let mean = x.mean_keepdim(D::Minus1).unwrap();
                let centred = x.broadcast_sub(&mean).unwrap();
                let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                centred
                    .broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap())
                    .unwrap()
            }
            _ => candle_nn::ops::softmax(x, D::Minus1).unwrap(),
        }
    }

    #[test]
    fn fused_ops_match_candle_values_and_gradients() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(11);
        for op in ["gelu", "layer_norm", "softmax"] {
            let x = Var::from_tensor(&(rng.normal_tensor((3, 5, 9), &dev).unwrap() * 2.0).unwrap())
                .unwrap();
            let ours = match op {
                "gelu" => gelu(x.as_tensor()),
                "layer_norm" => layer_norm(x.as_tensor(), 1e-6),
                _ => softmax(x.as_tensor()),
            }
            .unwrap();
            let theirs = reference(op, x.as_tensor());
            assert!(max_abs_diff(&ours, &theirs) < 1e-5, "{op} values");
            // A non-uniform loss so each output has its own gradient.
            let w = rng.normal_tensor((3, 5, 9), &dev).unwrap();
            let g_ours = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g_theirs = (theirs * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let (a, b) = (
                g_ours.get(x.as_tensor()).expect("gradient"),
                g_theirs.get(x.as_tensor()).expect("gradient"),
            );
            assert!(
                max_abs_diff(a, b) < 1e-4,
                "{op} gradient: {}",
                max_abs_diff(a, b)
            );
        }
    }

    #[test]
    fn fused_adaln_ops_match_candle_values_and_gradients() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(12);
        let mut var =
            |dims: &[usize]| Var::from_tensor(&rng.normal_tensor(dims, &dev).unwrap()).unwrap();
        let (x, y) = (var(&[2, 5, 8]), var(&[2, 5, 8]));
        let (shift, scale, gate) = (var(&[2, 1, 8]), var(&[2, 1, 8]), var(&[2, 1, 8]));
        let w = var(&[2, 5, 8]);
        let vars = [&x, &y, &shift, &scale, &gate];
        let composite = |ours: bool| {
            let m = if ours {
                modulate(x.as_tensor(), shift.as_tensor(), scale.as_tensor(), 1e-6).unwrap()
            } else {
                reference("layer_norm", x.as_tensor())
                    .broadcast_mul(&(scale.as_tensor() + 1.0).unwrap())
                    .unwrap()
                    .broadcast_add(shift.as_tensor())
                    .unwrap()
            };
            // Feed the modulated tokens through a gated residual so every input gets a gradient.
            let mixed = (m * w.as_tensor()).unwrap();
            if ours {
                gated_add(y.as_tensor(), &mixed, gate.as_tensor()).unwrap()
            } else {
                (y.as_tensor() + mixed.broadcast_mul(gate.as_tensor()).unwrap()).unwrap()
            }
        };
        let (ours, theirs) = (composite(true), composite(false));
        assert!(max_abs_diff(&ours, &theirs) < 1e-5, "values");
        let expected = theirs.detach();
        let loss_w = rng.normal_tensor((2, 5, 8), &dev).unwrap();
        let g_ours = (ours * &loss_w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_theirs = (theirs * &loss_w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (a, b) = (
                g_ours.get(v.as_tensor()).expect("gradient"),
                g_theirs.get(v.as_tensor()).expect("gradient"),
            );
            assert!(
                max_abs_diff(a, b) < 1e-4,
                "input {i}: {}",
                max_abs_diff(a, b)
            );
        }
        // Without gradients both take candle's path and agree.
        let plain = |t: &Var| t.as_tensor().detach();
        let m = modulate(&plain(&x), &plain(&shift), &plain(&scale), 1e-6).unwrap();
        assert!(!m.track_op());
        let mixed = (m * plain(&w)).unwrap();
        let out = gated_add(&plain(&y), &mixed, &plain(&gate)).unwrap();
        assert!(max_abs_diff(&out, &expected) < 1e-5);
    }

    #[test]
    fn inference_path_is_unchanged() {
        let x = Rng::new(2).normal_tensor((4, 16), &Device::Cpu).unwrap();
        assert!(max_abs_diff(&gelu(&x).unwrap(), &x.gelu().unwrap()) < 1e-5);
        assert!(
            max_abs_diff(
                &softmax(&x).unwrap(),
                &candle_nn::ops::softmax(&x, D::Minus1).unwrap()
            ) < 1e-6
        );
        assert!(max_abs_diff(&layer_norm(&x, 1e-6).unwrap(), &reference("layer_norm", &x)) < 1e-5);
    }
}
