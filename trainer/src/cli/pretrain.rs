//! `diffit pretrain`: train a full base model on the generic set and write it.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::train::config::Preset;
use crate::train::pretrain::{model_config, pretrain as run_pretrain, save_base, PretrainConfig};

/// `diffit pretrain` flags.
#[derive(Debug, Clone, Args)]
pub struct PretrainArgs {
    /// Model size (tiny | small).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Passes over the generic set (default: the preset's).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Seed of initialisation, data and noise.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Generic images to generate (default: the preset's).
    #[arg(long)]
    pub num_images: Option<usize>,
    /// Images per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Output safetensors file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Runs `diffit pretrain`.
pub fn pretrain(args: &PretrainArgs) -> anyhow::Result<()> {
    let preset: Preset = args
        .preset
        .parse()
        .map_err(anyhow::Error::msg)
        .context("--preset")?;
    let mut cfg = PretrainConfig::for_preset(preset);
    cfg.epochs = args.epochs.unwrap_or(cfg.epochs);
    cfg.seed = args.seed.unwrap_or(cfg.seed);
    cfg.num_images = args.num_images.unwrap_or(cfg.num_images);
    cfg.batch_size = args.batch_size.unwrap_or(cfg.batch_size);
    cfg.learning_rate = args.learning_rate.unwrap_or(cfg.learning_rate);
    if cfg.epochs == 0 || cfg.batch_size == 0 || cfg.num_images == 0 {
        anyhow::bail!("--epochs, --batch-size and --num-images must be at least 1");
    }
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        anyhow::bail!("--learning-rate must be a positive number");
    }
    eprintln!(
        "pretraining the {preset} base: {} epochs over {} generic images, seed {}",
        cfg.epochs, cfg.num_images, cfg.seed
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tensors = run_pretrain(&cfg, true, &stop)?;
    save_base(&args.out, &tensors, &model_config(preset))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
