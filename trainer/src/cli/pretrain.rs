//! `diffit pretrain`: train a full base model on the generic set and write it.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Args;

use super::values;
use crate::train::config::Preset;
use crate::train::pretrain::{pretrain as run_pretrain, save_base, PretrainConfig};

/// `diffit pretrain` flags.
#[derive(Debug, Clone, Args)]
pub struct PretrainArgs {
    /// Model size.
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    pub preset: Preset,
    /// Passes over the generic set (default: the preset's).
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub epochs: Option<u32>,
    /// Seed of initialisation, data and noise.
    #[arg(long, allow_negative_numbers = true, value_parser = values::seed)]
    pub seed: Option<u64>,
    /// Generic images to generate (default: the preset's).
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<usize>())]
    pub num_images: Option<usize>,
    /// Images per step.
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<usize>())]
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long, allow_hyphen_values = true, value_parser = values::positive)]
    pub learning_rate: Option<f64>,
    /// Output safetensors file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Runs `diffit pretrain`; once `stop` is set it fails with [`TrainError::Interrupted`].
pub fn pretrain(args: &PretrainArgs, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let preset = args.preset;
    let mut cfg = PretrainConfig::for_preset(preset);
    cfg.epochs = args.epochs.unwrap_or(cfg.epochs);
    cfg.seed = args.seed.unwrap_or(cfg.seed);
    cfg.num_images = args.num_images.unwrap_or(cfg.num_images);
    cfg.batch_size = args.batch_size.unwrap_or(cfg.batch_size);
    cfg.learning_rate = args.learning_rate.unwrap_or(cfg.learning_rate);
    eprintln!(
        "pretraining the {preset} base: {} epochs over {} generic images, seed {}",
        cfg.epochs, cfg.num_images, cfg.seed
    );
    let tensors = run_pretrain(&cfg, true, stop)?;
    save_base(&args.out, &tensors, &cfg.model)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
