//! Measurement: the demo's budget spent on each architecture. Pretrains the `small` base the
//! way the demo does (same steps, data, seed and learning rate) for four networks of the
//! `small` sizes: our hybrid (adaLN-Zero) and the published architecture, each with and without
//! class labels; fine-tunes each with the demo's LoRA run (`diffit train --base FILE`, the
//! trees, their species as labels where the model has a label table); then prints every run's
//! val_loss and, per noise level, the held-out loss and clean-image error (as `denoise_check`),
//! and writes the sample grids side by side (`OUT/compare.png`; guided by class for the
//! labelled models, plus their unconditional samples).
//!
//! `cargo run --release -p trainer --example arch_compare -- OUT [LORA_EPOCHS|report] [VARIANTS]`
//! (release build of `diffit` first: `cargo build --release -p trainer`; VARIANTS a comma list
//! of hybrid, hybrid-labels, published-uncond, published; `report` only measures and samples
//! the runs an earlier call left in `OUT/checkpoints`, each found by its experiment name).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use model::data::{Dataset, TREE_SPECIES};
use model::diffusion::{Guidance, NoiseSchedule, DEFAULT_ETA};
use model::rng::Rng;
use model::{Config, Prediction};
use trainer::train::base_runs::{run_base_training, BaseRunRequest};
use trainer::train::config::Preset;
use trainer::train::epoch::batch_labels;
use trainer::train::pretrain::PretrainConfig;
use trainer::train::sample::{load_fused, sample_grid, FusedModel};

/// Noise levels of the per-level table (as `denoise_check`).
const LEVELS: [usize; 7] = [50, 200, 400, 600, 800, 950, 990];
/// Held-out tree images per level (a seed the training set does not use).
const HELD_OUT: usize = 64;

fn variants() -> Vec<(&'static str, Config)> {
    vec![
        ("hybrid", Config::small()),
        ("hybrid-labels", Config::small_labels()),
        (
            "published-uncond",
            Config {
                num_classes: Some(0),
                ..Config::published_small()
            },
        ),
        ("published", Config::published_small()),
    ]
}

fn main() -> anyhow::Result<()> {
    // As the `diffit` binary: batches split over the cores, candle on one thread each.
    trainer::train::parallel::prefer_data_parallel();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: arch_compare OUT [LORA_EPOCHS|report] [VARIANTS]";
    let out = PathBuf::from(args.first().context(usage)?);
    let wanted: Option<Vec<&str>> = args.get(2).map(|s| s.split(',').collect());
    let checkpoints = out.join("checkpoints");
    let chosen: Vec<(&str, Config)> = variants()
        .into_iter()
        .filter(|(name, _)| wanted.as_ref().is_none_or(|w| w.contains(name)))
        .collect();
    if args.get(1).map(String::as_str) == Some("report") {
        let rows = chosen
            .iter()
            .map(|(name, _)| Ok((*name, run_named(&checkpoints, name)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        return report(&out, &checkpoints, &rows);
    }
    let epochs: u32 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(12);
    let diffit = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .context("no target directory")?
        .join("diffit");
    if !diffit.exists() {
        bail!(
            "{} is missing: cargo build --release -p trainer",
            diffit.display()
        );
    }
    std::fs::create_dir_all(&checkpoints)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut rows = Vec::new();
    for (name, model) in chosen {
        let base = out.join(format!("base-{name}.safetensors"));
        let started = std::time::Instant::now();
        // A base an earlier call finished is used again.
        if !base.exists() {
            let mut config = PretrainConfig::for_preset(Preset::Small);
            config.model = model;
            run_base_training(
                &BaseRunRequest {
                    config,
                    resume_epochs: None,
                    checkpoints: checkpoints.clone(),
                    run_number: None,
                    resume: false,
                    keep_last_n: 1,
                    out: Some(base.clone()),
                    show_progress: false,
                },
                &stop,
            )?;
        }
        let pretrain_s = started.elapsed().as_secs_f64();
        let status = Command::new(&diffit)
            .args([
                "train",
                "--experiment",
                name,
                "--epochs",
                &epochs.to_string(),
            ])
            .arg("--base")
            .arg(&base)
            .arg("--checkpoints")
            .arg(&checkpoints)
            .status()?;
        if !status.success() {
            bail!("diffit train for {name} failed: {status}");
        }
        let run = run_named(&checkpoints, name)?;
        eprintln!(
            "{name}: pretrained in {pretrain_s:.0} s, LoRA run {run:03} after {:.0} s",
            started.elapsed().as_secs_f64()
        );
        rows.push((name, run));
    }
    report(&out, &checkpoints, &rows)
}

/// The newest LoRA run in `checkpoints` of experiment `name`.
fn run_named(checkpoints: &Path, name: &str) -> anyhow::Result<u32> {
    let mut found = None;
    for entry in std::fs::read_dir(checkpoints)? {
        let dir = entry?.path();
        let Some(n) = dir
            .file_name()
            .and_then(|f| f.to_str()?.strip_prefix("run_")?.parse::<u32>().ok())
        else {
            continue;
        };
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("metadata.json"))?)?;
        if meta["experiment_name"] == name {
            found = found.max(Some(n));
        }
    }
    found.with_context(|| format!("no run of experiment {name} in {}", checkpoints.display()))
}

fn report(out: &Path, checkpoints: &Path, rows: &[(&str, u32)]) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let schedule = NoiseSchedule::default();
    let mut levels = String::from("| variant | val_loss (best) |");
    for t in LEVELS {
        levels.push_str(&format!(" t={t} |"));
    }
    levels.push_str(&format!("\n|---|---|{}\n", "---|".repeat(LEVELS.len())));
    let mut panels = Vec::new();
    for &(name, run) in rows {
        let fused = load_fused(checkpoints, run, "best".parse()?)?;
        let val = best_val_loss(checkpoints, run)?;
        let net = fused.network()?;
        let cfg = &fused.model_config;
        let data = Dataset::trees(HELD_OUT, cfg.image_size, 5);
        let all: Vec<usize> = (0..HELD_OUT).collect();
        let x0 = data.batch(&all, &device)?;
        let labels = batch_labels(&net, &data, &all)?
            .map(|l| Tensor::new(l, &device))
            .transpose()?;
        let mut cells = format!("| {name} | {val:.5} |");
        let mut rng = Rng::new(9);
        for t in LEVELS {
            let (loss, x0_mse) = denoise(&net, cfg, &x0, labels.as_ref(), t, &schedule, &mut rng)?;
            cells.push_str(&format!(" {loss:.4} / {x0_mse:.4} |"));
        }
        levels.push_str(&cells);
        levels.push('\n');
        panels.push(sample_panel(out, &fused, name, None)?);
        if cfg.is_class_conditional() {
            let guidance = Guidance {
                classes: (0..16).map(|i| (i % TREE_SPECIES.len()) as u32).collect(),
                scale: 2.0,
            };
            panels.push(sample_panel(out, &fused, name, Some(guidance))?);
        }
    }
    println!("held-out loss / clean-image MSE per noise level ({HELD_OUT} tree images):\n");
    println!("{levels}");
    let path = side_by_side(out, &panels)?;
    println!("sample grids (seed 0, 50 DDIM steps, eta {DEFAULT_ETA}), left to right:");
    for (label, _) in &panels {
        println!("  {label}");
    }
    println!("written to {}", path.display());
    Ok(())
}

/// The network's loss (its own objective) and clean-image MSE at noise level `t`, with two
/// noise draws per image.
fn denoise(
    net: &model::DiffiT,
    cfg: &Config,
    x0: &Tensor,
    labels: Option<&Tensor>,
    t: usize,
    schedule: &NoiseSchedule,
    rng: &mut Rng,
) -> anyhow::Result<(f32, f32)> {
    let (ab, n) = (schedule.alpha_bar(t), x0.dim(0)?);
    let (mut loss, mut x0_mse) = (0.0, 0.0);
    for _ in 0..2 {
        let eps = rng.normal_tensor(x0.shape(), x0.device())?;
        let xt = ((x0 * ab.sqrt())? + (&eps * (1.0 - ab).sqrt())?)?;
        let ts = Tensor::full(t as f32, n, x0.device())?;
        let out = net.forward_labeled(&xt, &ts, labels, None)?;
        let target = match cfg.prediction {
            Prediction::Epsilon => eps.clone(),
            Prediction::V => ((&eps * ab.sqrt())? - (x0 * (1.0 - ab).sqrt())?)?,
        };
        loss += (&out - &target)?.sqr()?.mean_all()?.to_scalar::<f32>()? / 2.0;
        let x0_hat = cfg
            .prediction
            .x0_estimate(&xt, &out, ab)?
            .clamp(-1f32, 1f32)?;
        x0_mse += (&x0_hat - x0)?.sqr()?.mean_all()?.to_scalar::<f32>()? / 2.0;
    }
    Ok((loss, x0_mse))
}

fn best_val_loss(checkpoints: &Path, run: u32) -> anyhow::Result<f64> {
    let path = checkpoints.join(format!("run_{run:03}/metadata.json"));
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    meta["best_checkpoint"]["metrics"]["val_loss"]
        .as_f64()
        .with_context(|| format!("{}: no best val_loss", path.display()))
}

/// Samples 16 images of `fused` into `OUT/samples-<name>[-guided].png`; returns (label, path).
fn sample_panel(
    out: &Path,
    fused: &FusedModel,
    name: &str,
    guidance: Option<Guidance>,
) -> anyhow::Result<(String, PathBuf)> {
    let (label, file) = match &guidance {
        Some(g) => (
            format!("{name}, guided (scale {}, species in turn)", g.scale),
            format!("{name}-guided"),
        ),
        None if fused.model_config.is_class_conditional() => {
            (format!("{name}, unconditional"), name.to_string())
        }
        None => (name.to_string(), name.to_string()),
    };
    let path = out.join(format!("samples-{file}.png"));
    sample_grid(fused, 16, 0, 50, DEFAULT_ETA, guidance, &path)?;
    Ok((label, path))
}

/// The panels' PNGs in one row with a white gap.
fn side_by_side(out: &Path, panels: &[(String, PathBuf)]) -> anyhow::Result<PathBuf> {
    let images: Vec<image::RgbImage> = panels
        .iter()
        .map(|(_, p)| Ok(image::open(p)?.to_rgb8()))
        .collect::<anyhow::Result<_>>()?;
    let gap = 8;
    let width = images.iter().map(|i| i.width() + gap).sum::<u32>() - gap;
    let height = images.iter().map(|i| i.height()).max().unwrap_or(1);
    let mut canvas = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let mut x = 0;
    for img in &images {
        image::imageops::replace(&mut canvas, img, i64::from(x), 0);
        x += img.width() + gap;
    }
    let path = out.join("compare.png");
    canvas.save(&path)?;
    Ok(path)
}
