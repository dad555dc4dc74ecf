//! Native DDIM sampling speed of a trained run: loads the checkpoint the way `diffit sample`
//! does (base + LoRA fused), then times each denoising step of one image, the same work the
//! dashboard does per step in the browser. Prints one JSON line; asserts nothing.
//!
//! `cargo run --release -p trainer --example bench_sample -- CHECKPOINTS_DIR RUN [CHECKPOINT]
//! [STEPS] [SEED]`
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device};
use format::CheckpointName;
use model::diffusion::{DdimSampler, NoiseSchedule, DEFAULT_ETA};
use trainer::train::sample::load_fused;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_sample CHECKPOINTS_DIR RUN [CHECKPOINT] [STEPS] [SEED]";
    let dir = PathBuf::from(args.first().context(usage)?);
    let run: u32 = args.get(1).context(usage)?.parse().context("RUN")?;
    let checkpoint: CheckpointName = args
        .get(2)
        .map_or("best", String::as_str)
        .parse()
        .context("CHECKPOINT")?;
    let steps: usize = args.get(3).map_or(Ok(50), |s| s.parse()).context("STEPS")?;
    let seed: u64 = args.get(4).map_or(Ok(0), |s| s.parse()).context("SEED")?;

    let loading = Instant::now();
    let fused = load_fused(&dir, run, checkpoint)?;
    let device = Device::Cpu;
    let model = fused.network()?;
    let load_ms = loading.elapsed().as_secs_f64() * 1e3;

    let schedule = NoiseSchedule::default();
    // One warm-up pass so the timing sees a steady state, as a reused browser tab does.
    let mut warm = DdimSampler::new(&schedule, 2, 1, &fused.model_config, seed, &device)?;
    while warm.step(&model)? {}

    // The η the dashboard samples with, so both sides draw the same per-step noise.
    let mut sampler = DdimSampler::new(&schedule, steps, 1, &fused.model_config, seed, &device)?
        .with_eta(DEFAULT_ETA);
    let started = Instant::now();
    while sampler.step(&model)? {}
    let image = sampler.finish()?;
    let _ = image.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    println!(
        "{{\"load_ms\": {load_ms:.1}, \"steps\": {steps}, \"sample_ms\": {total_ms:.1}, \"step_ms\": {:.3}, \"threads\": {}}}",
        total_ms / steps as f64,
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
