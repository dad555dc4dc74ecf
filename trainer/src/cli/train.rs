//! `diffit train`: fine-tune LoRA (new run or `--resume`), with Ctrl-C stopping cleanly.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

use crate::train::config::{Overrides, Preset, TrainingConfig};
use crate::train::session::{run_training, TrainRequest};
use crate::train::trainer::FitOutcome;

use super::TrainArgs;

/// Settles the configuration from defaults, `--config` and flags (in rising precedence).
pub fn request_from_args(args: &TrainArgs) -> anyhow::Result<TrainRequest> {
    let config = match &args.config {
        Some(path) => TrainingConfig::from_yaml_file(path)?,
        None => TrainingConfig::default(),
    };
    let preset = match &args.preset {
        Some(p) => Some(
            p.parse::<Preset>()
                .map_err(anyhow::Error::msg)
                .context("--preset")?,
        ),
        None => None,
    };
    let data_dir = match args.data.as_deref() {
        None | Some("trees") => None,
        Some(dir) => {
            let path = PathBuf::from(dir);
            if !path.is_dir() {
                anyhow::bail!(
                    "--data {dir}: not a directory (give a folder of PNG/JPEG images, or `trees`)"
                );
            }
            Some(path)
        }
    };
    let overrides = Overrides {
        experiment_name: args.experiment.clone(),
        preset,
        base: args.base.clone(),
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        seed: args.seed,
        data_dir,
        base_dir: args.checkpoints.clone(),
        run_number: args.run_number,
        keep_last_n: args.keep_last_n,
        monitor: args.monitor.clone(),
        mode: args.mode,
        save_every_n_epochs: args.save_every_n_epochs,
    };
    Ok(TrainRequest {
        config,
        overrides,
        resume: args.resume,
        show_progress: true,
        log_samples: true,
    })
}

/// Runs `diffit train`.
pub fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let req = request_from_args(args)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // Second Ctrl-C: every file write is atomic, so quitting now loses nothing saved.
            eprintln!("\nquitting now");
            std::process::exit(130);
        }
        eprintln!("\nstopping: finishing the checkpoint in progress (Ctrl-C again to quit now)");
    })
    .context("cannot install the Ctrl-C handler")?;
    let report = run_training(&req, stop)?;
    let run = report.run_number;
    match report.outcome {
        FitOutcome::Finished => eprintln!("run {run:03} finished {} epochs in {}", report.epochs_done, report.run_dir.display()),
        FitOutcome::Interrupted | FitOutcome::Failed => eprintln!(
            "run {run:03} interrupted after epoch {}; the last checkpoint is safe. Resume with: diffit train --run-number {run} --resume",
            report.epochs_done
        ),
    }
    if let Some(base) = report.base_val_loss {
        eprintln!("base model val_loss: {base:.5}");
    }
    if let Some((epoch, value)) = report.best {
        eprintln!(
            "best {}: {value:.5} (epoch {epoch})",
            report.config.checkpoint.monitor
        );
    }
    if report.outcome == FitOutcome::Interrupted {
        std::process::exit(130);
    }
    Ok(())
}
