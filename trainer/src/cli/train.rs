//! `diffit train`: fine-tune LoRA (new run or `--resume`), stopping cleanly on request.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::train::config::{Overrides, Preset, TrainingConfig};
use crate::train::error::TrainError;
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
                .map_err(|e| TrainError::Usage(format!("--preset: {e}")))?,
        ),
        None => None,
    };
    let data_dir = match args.data.as_deref() {
        None | Some("trees") => None,
        Some(dir) => {
            let path = PathBuf::from(dir);
            if !path.is_dir() {
                return Err(TrainError::Usage(format!(
                    "--data {dir}: not a directory (give a folder of PNG/JPEG images, or `trees`)"
                ))
                .into());
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

/// Runs `diffit train`; once `stop` is set it ends after the checkpoint in progress and fails
/// with [`TrainError::Interrupted`].
pub fn train(args: &TrainArgs, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let req = request_from_args(args)?;
    let report = run_training(&req, stop.clone())?;
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
        return Err(TrainError::Interrupted.into());
    }
    Ok(())
}
