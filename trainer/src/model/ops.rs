//! Fused CPU kernels with hand-written backward passes, used while training.
//!
//! Written with candle's primitives, tanh-GELU is 7 element-wise passes, an affine-free
//! LayerNorm 7 (4 of them broadcasts) and a differentiable softmax 5, each with a backward of
//! about twice as many: small tensors, many passes, an allocation per pass. Each op here is one
//! pass forward and one backward. Inference (no gradient) keeps candle's own fused kernels, and
//! so does every non-CPU device.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};

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
        let n = width as f32;
        let mut dx = Vec::with_capacity(x.len());
        for ((xr, yr), gr) in x.chunks(width).zip(y.chunks(width)).zip(g.chunks(width)) {
            let (_, rstd) = self.stats(xr);
            let g_mean = gr.iter().sum::<f32>() / n;
            let gy_mean = gr.iter().zip(yr).map(|(g, y)| g * y).sum::<f32>() / n;
            dx.extend(
                gr.iter()
                    .zip(yr)
                    .map(|(g, y)| (g - g_mean - y * gy_mean) * rstd),
            );
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

/// True when `x` needs a gradient and lives where these kernels run.
fn fused_training(x: &Tensor) -> bool {
    x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32
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
    use crate::model::max_abs_diff;
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
