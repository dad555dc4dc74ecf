//! Diagnostic: how well a run's model denoises real training images at several noise levels.
//! Writes one PNG row per timestep (clean-image estimates) and prints the errors. A
//! class-conditional model is given each image's species.
//!
//! `cargo run --release -p trainer --example denoise_check -- CHECKPOINTS RUN OUT.png [CHECKPOINT]`
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use anyhow::Context;
use candle_core::{Device, Tensor};
use model::data::Dataset;
use model::diffusion::{to_rgb8, NoiseSchedule};
use model::rng::Rng;
use trainer::train::epoch::batch_labels;
use trainer::train::sample::{grid, load_fused};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: denoise_check CHECKPOINTS RUN OUT.png [best|last|epoch_NNN|base]";
    let dir = args.first().context(usage)?;
    let run: u32 = args.get(1).context(usage)?.parse()?;
    let out = args.get(2).context(usage)?;
    let which = args.get(3).map(String::as_str).unwrap_or("best");
    let fused = load_fused(dir.as_ref(), run, which.parse()?)?;
    let device = Device::Cpu;
    let model = fused.network()?;
    let n = 8;
    let data = Dataset::trees(n, fused.model_config.image_size, 5);
    let all: Vec<usize> = (0..n).collect();
    let x0 = data.batch(&all, &device)?;
    // A class-conditional model sees each image's own species (no guidance).
    let labels = batch_labels(&model, &data, &all)?
        .map(|l| Tensor::new(l, &device))
        .transpose()?;
    let schedule = NoiseSchedule::default();
    let mut rows = to_rgb8(&x0)?;
    let mut rng = Rng::new(9);
    for t in [50usize, 200, 400, 600, 800, 950, 990] {
        let ab = schedule.alpha_bar(t);
        let eps = rng.normal_tensor(x0.shape(), &device)?;
        let xt = ((&x0 * ab.sqrt())? + (&eps * (1.0 - ab).sqrt())?)?;
        let t_batch = Tensor::full(t as f32, n, &device)?;
        let pred = model.forward_labeled(&xt, &t_batch, labels.as_ref(), None)?;
        let x0_hat = fused
            .model_config
            .prediction
            .x0_estimate(&xt, &pred, ab)?
            .clamp(-1f32, 1f32)?;
        // The noise the estimate implies, whatever the network predicts.
        let eps_hat = ((&xt - (&x0_hat * ab.sqrt())?)? / (1.0 - ab).sqrt())?;
        let eps_mse = (&eps_hat - &eps)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
        let x0_mse = (&x0_hat - &x0)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
        println!("t={t:4} alpha_bar={ab:.5} eps_mse={eps_mse:.4} x0_mse={x0_mse:.4}");
        rows.extend(to_rgb8(&x0_hat)?);
    }
    let (w, h, px) = grid(&rows, fused.model_config.image_size, n, 2)?;
    image::save_buffer(out, &px, w, h, image::ExtendedColorType::Rgb8)?;
    Ok(())
}
