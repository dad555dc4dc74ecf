//! Training throughput of the `small` preset: images/s and ms per optimizer step of LoRA
//! fine-tuning (and of full pretraining) on random weights. Prints numbers, asserts nothing.
//!
//! `cargo run --release -p trainer --example bench_train [-- STEPS [SHARDS]]`
//!
//! SHARDS is how many threads split each batch (default: as the trainer, one per core). With
//! one shard, forward and backward are timed apart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::time::Instant;

use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use model::data::Dataset;
use model::diffusion::{ddpm_loss, NoiseSchedule};
use model::rng::Rng;
use model::{init_base_tensors, init_lora_tensors, Config, DiffiT, LoraConfig};
use trainer::train::collective::SingleProcess;
use trainer::train::optim::{AdamW, AdamWParams};
use trainer::train::parallel::{loss_and_grads, shard_count};

const BATCH: usize = 16;

fn params(map: &VarMap) -> Vec<(String, Var)> {
    let mut p: Vec<(String, Var)> = map
        .data()
        .lock()
        .expect("map")
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    p.sort_by(|a, b| a.0.cmp(&b.0));
    p
}

fn bench(
    label: &str,
    model: &DiffiT,
    params: &[(String, Var)],
    data: &Dataset,
    steps: usize,
    shards: usize,
) -> candle_core::Result<()> {
    let device = Device::Cpu;
    let schedule = NoiseSchedule::default();
    let mut rng = Rng::new(1);
    let mut opt = AdamW::new(AdamWParams {
        lr: 1e-3,
        ..Default::default()
    })
    .map_err(candle_core::Error::wrap)?;
    let idx: Vec<usize> = (0..BATCH).collect();
    let x = data
        .batch(&idx, &device)
        .map_err(candle_core::Error::wrap)?;
    // One warm-up step (allocations, thread pool start).
    let one = SingleProcess;
    let (_, grads) = loss_and_grads(model, &x, None, &schedule, &mut rng, shards, params, &one)
        .map_err(candle_core::Error::wrap)?;
    opt.step(params, &grads).map_err(candle_core::Error::wrap)?;
    let (mut forward, mut backward, mut update) = (0.0, 0.0, 0.0);
    let start = Instant::now();
    for _ in 0..steps {
        let t0 = Instant::now();
        let (t1, t2) = if shards == 1 {
            let loss = ddpm_loss(model, &x, &schedule, &mut rng)?;
            let t1 = Instant::now();
            let grads = loss.backward()?;
            let t2 = Instant::now();
            opt.step(params, &grads).map_err(candle_core::Error::wrap)?;
            (t1, t2)
        } else {
            // Forward and backward overlap across shards: all of it counts as backward.
            let (_, grads) =
                loss_and_grads(model, &x, None, &schedule, &mut rng, shards, params, &one)
                    .map_err(candle_core::Error::wrap)?;
            let t2 = Instant::now();
            opt.step(params, &grads).map_err(candle_core::Error::wrap)?;
            (t0, t2)
        };
        forward += (t1 - t0).as_secs_f64();
        backward += (t2 - t1).as_secs_f64();
        update += t2.elapsed().as_secs_f64();
    }
    let secs = start.elapsed().as_secs_f64();
    let ms = |s: f64| s * 1000.0 / steps as f64;
    println!(
        "{label:<28} {:>8.1} ms/step  {:>8.1} images/s  (batch {BATCH}, {steps} steps, {shards} shard(s); forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms)",
        ms(secs),
        (steps * BATCH) as f64 / secs,
        ms(forward),
        ms(backward),
        ms(update)
    );
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let device = Device::Cpu;
    let shards: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| shard_count(BATCH, &device, None, &SingleProcess));
    let cfg = Config::small();
    let lora_cfg = LoraConfig::default();
    let data = Dataset::trees(BATCH, cfg.image_size, 7);
    let base = init_base_tensors(&cfg, &mut Rng::new(0), &device)?;
    println!(
        "preset small: {}x{} images, {} tokens, hidden {}, depth {}",
        cfg.image_size,
        cfg.image_size,
        cfg.num_tokens(),
        cfg.hidden_size,
        cfg.depth
    );

    let lora_map = VarMap::new();
    for (name, t) in init_lora_tensors(&cfg, &lora_cfg, &mut Rng::new(1), &device)? {
        lora_map
            .data()
            .lock()
            .expect("map")
            .insert(name, Var::from_tensor(&t)?);
    }
    let model = DiffiT::new(
        &cfg,
        VarBuilder::from_tensors(base.clone(), DType::F32, &device),
        Some((
            &lora_cfg,
            VarBuilder::from_varmap(&lora_map, DType::F32, &device),
        )),
    )
    .map_err(candle_core::Error::wrap)?;
    bench(
        "LoRA fine-tuning (r=8)",
        &model,
        &params(&lora_map),
        &data,
        steps,
        shards,
    )?;

    let full_map = VarMap::new();
    for (name, t) in base {
        full_map
            .data()
            .lock()
            .expect("map")
            .insert(name, Var::from_tensor(&t)?);
    }
    let full = DiffiT::new(
        &cfg,
        VarBuilder::from_varmap(&full_map, DType::F32, &device),
        None,
    )
    .map_err(candle_core::Error::wrap)?;
    bench(
        "full pretraining",
        &full,
        &params(&full_map),
        &data,
        steps,
        shards,
    )?;
    Ok(())
}
