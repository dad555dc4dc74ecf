//! Prints parameter counts of the presets and the time of forward passes and training steps.
//!
//! `cargo run --release -p trainer --example model_bench [-- PRESET...]`
//! (set `RAYON_NUM_THREADS` to compare thread counts).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use model::diffusion::{ddpm_loss, NoiseSchedule};
use model::rng::Rng;
use model::{
    init_base_tensors, init_lora_tensors, lora_parameter_count, parameter_count, Config, DiffiT,
    LoraConfig,
};

/// Median of `reps` timed runs of `f`, in milliseconds, after one warm-up run.
fn time_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[reps / 2])
}

fn main() -> Result<()> {
    let presets: Vec<String> = std::env::args().skip(1).collect();
    let presets = if presets.is_empty() {
        vec!["tiny".into(), "small".into()]
    } else {
        presets
    };
    let device = Device::Cpu;
    let lora = LoraConfig::default();
    let schedule = NoiseSchedule::default();
    for name in presets {
        let Some(cfg) = Config::preset(&name) else {
            anyhow::bail!("unknown preset {name}");
        };
        println!(
            "{name}: {} base parameters, {} LoRA parameters (r={}), {} tokens",
            parameter_count(&cfg),
            lora_parameter_count(&cfg, &lora),
            lora.r,
            cfg.num_tokens()
        );
        let mut rng = Rng::new(0);
        let base = init_base_tensors(&cfg, &mut rng, &device)?;
        let plain = DiffiT::new(
            &cfg,
            VarBuilder::from_tensors(base.clone(), DType::F32, &device),
            None,
        )?;
        for b in [1usize, 16] {
            let s = cfg.image_size;
            let x = rng.normal_tensor((b, cfg.in_channels, s, s), &device)?;
            let t = Tensor::full(500f32, b, &device)?;
            let ms = time_ms(10, || {
                plain.forward(&x, &t)?;
                Ok(())
            })?;
            println!("  forward, batch {b:>2}: {ms:.2} ms");
        }
        // One full-model training step (pretraining) and one LoRA step (fine-tuning).
        let full = VarMap::new();
        {
            let mut data = full
                .data()
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            for (k, v) in &base {
                data.insert(k.clone(), Var::from_tensor(v)?);
            }
        }
        let model = DiffiT::new(
            &cfg,
            VarBuilder::from_varmap(&full, DType::F32, &device),
            None,
        )?;
        let x0 = rng
            .normal_tensor(
                (16, cfg.in_channels, cfg.image_size, cfg.image_size),
                &device,
            )?
            .clamp(-1f32, 1f32)?;
        let ms = time_ms(5, || {
            let loss = ddpm_loss(&model, &x0, &schedule, &mut rng)?;
            loss.backward()?;
            Ok(())
        })?;
        println!("  pretrain step (forward + backward), batch 16: {ms:.1} ms");
        let adapters: HashMap<String, Tensor> = init_lora_tensors(&cfg, &lora, &mut rng, &device)?;
        let lvm = VarMap::new();
        {
            let mut data = lvm.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            for (k, v) in &adapters {
                data.insert(k.clone(), Var::from_tensor(v)?);
            }
        }
        let tuned = DiffiT::new(
            &cfg,
            VarBuilder::from_tensors(base.clone(), DType::F32, &device),
            Some((&lora, VarBuilder::from_varmap(&lvm, DType::F32, &device))),
        )?;
        let ms = time_ms(5, || {
            let loss = ddpm_loss(&tuned, &x0, &schedule, &mut rng)?;
            loss.backward()?;
            Ok(())
        })?;
        println!("  LoRA step (forward + backward), batch 16: {ms:.1} ms");
    }
    Ok(())
}
