//! Diagnostic: the sampler's clean-image estimate along one DDIM trajectory. Writes one PNG row
//! per recorded step.
//!
//! `cargo run --release -p trainer --example sample_trace -- CHECKPOINTS RUN OUT.png [STEPS] [ETA]`
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use anyhow::Context;
use candle_core::Device;
use model::diffusion::{to_rgb8, DdimSampler, NoiseSchedule};
use trainer::train::sample::{grid, load_fused};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: sample_trace CHECKPOINTS RUN OUT.png [STEPS] [ETA]";
    let dir = args.first().context(usage)?;
    let run: u32 = args.get(1).context(usage)?.parse()?;
    let out = args.get(2).context(usage)?;
    let steps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(50);
    let eta: f64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(0.0);
    let fused = load_fused(dir.as_ref(), run, "best".parse()?)?;
    let device = Device::Cpu;
    let model = fused.network()?;
    let n = 8;
    let mut sampler = DdimSampler::new(
        &NoiseSchedule::default(),
        steps,
        n,
        &fused.model_config,
        0,
        &device,
    )?
    .with_eta(eta);
    let record = [1, 2, 3, 5, 10, steps / 2, steps * 3 / 4, steps];
    let mut rows = Vec::new();
    while sampler.step(&model)? {
        let (done, _) = sampler.progress();
        if record.contains(&done) {
            let x0 = sampler.current_x0()?;
            let std = x0.flatten_all()?.var(0)?.sqrt()?.to_scalar::<f32>()?;
            println!("step {done:3}: x0 estimate std {std:.3}");
            rows.extend(to_rgb8(&x0)?);
        }
    }
    rows.extend(to_rgb8(&sampler.finish()?)?);
    let (w, h, px) = grid(&rows, fused.model_config.image_size, n, 2)?;
    image::save_buffer(out, &px, w, h, image::ExtendedColorType::Rgb8)?;
    Ok(())
}
