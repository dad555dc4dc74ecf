//! `diffit train`: fine-tune LoRA (new run or `--resume`), stopping cleanly on request.

use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::Device;

use crate::train::collective::{self, Collective};
use crate::train::config::{DataSource, TrainingConfig};
use crate::train::error::TrainError;
use crate::train::session::{run_training_on, TrainRequest};
use crate::train::trainer::FitOutcome;

use super::exit::{error_text, exit_code, INTERRUPTED};
use super::TrainArgs;

/// Settles the configuration from defaults, `--config` and flags (in rising precedence).
pub fn request_from_args(args: &TrainArgs) -> anyhow::Result<TrainRequest> {
    let config = match &args.config {
        Some(path) => TrainingConfig::from_yaml_file(path)?,
        None => TrainingConfig::default(),
    };
    // Checked now, not after a base model was pretrained for minutes.
    if let Some(DataSource::Path(path)) = &args.overrides.data {
        if !path.exists() {
            return Err(TrainError::Usage(format!(
                "--data {}: no such file or directory (give a folder of PNG/JPEG images, \
                 CIFAR-10/100 batch files, or `trees`)",
                path.display()
            ))
            .into());
        }
    }
    refuse_seed_runs(&config, args)?;
    Ok(TrainRequest {
        config,
        overrides: args.overrides.clone(),
        resume: args.resume,
        show_progress: true,
        log_samples: true,
        device: args.device,
    })
}

/// Refuses at once a run the seed system wrote that the command would resume or train into,
/// before a base is settled or data is read (which can take minutes); the run store refuses it
/// again when the run is opened.
fn refuse_seed_runs(config: &TrainingConfig, args: &TrainArgs) -> anyhow::Result<()> {
    let checkpoint = &config.training.checkpoint;
    let base_dir = args
        .overrides
        .base_dir
        .as_deref()
        .unwrap_or(&checkpoint.base_dir);
    // Runs in a bucket are checked once they are brought down.
    if let Ok(remote::Location::Objects(_)) = remote::Location::parse(&base_dir.to_string_lossy()) {
        return Ok(());
    }
    // The run the session opens: the one named, resumed; else `resume_from_run`, resumed;
    // else the one named, created or trained into.
    let named = args.overrides.run_number.or(checkpoint.run_number);
    let target = if args.resume {
        named.or(checkpoint.resume_from_run)
    } else {
        checkpoint.resume_from_run.or(named)
    };
    match target {
        Some(run) => Ok(store::refuse_seed_run(
            base_dir,
            run,
            "resume or train into",
        )?),
        None => Ok(()),
    }
}

/// Runs `diffit train`; once `stop` is set it ends after the checkpoint in progress and fails
/// with [`TrainError::Interrupted`].
///
/// Under an MPI launcher this process is one rank of the job ([`collective::launched`]): rank
/// 0 reports, the others are quiet, and an error on any rank ends the whole job at once
/// (after this rank has said why), so no rank waits for one that has given up.
pub fn train(args: &TrainArgs, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let req = request_from_args(args)?;
    let device = req.device.open(collective::local_rank())?;
    let collective: Rc<dyn Collective> = Rc::from(collective::launched(&device)?);
    let result = train_on(req, stop, collective.clone(), device);
    if let Err(e) = &result {
        let code = exit_code(e);
        if collective.ranks() > 1 && code != INTERRUPTED {
            eprintln!(
                "error: rank {} of {}: {}",
                collective.rank(),
                collective.ranks(),
                error_text(e)
            );
            collective.abort(i32::from(code));
        }
    }
    result
}

fn train_on(
    mut req: TrainRequest,
    stop: &Arc<AtomicBool>,
    collective: Rc<dyn Collective>,
    device: Device,
) -> anyhow::Result<()> {
    let writer = collective.rank() == 0;
    req.show_progress &= writer;
    let report = run_training_on(&req, stop.clone(), collective, device)?;
    if !writer {
        return match report.outcome {
            FitOutcome::Interrupted => Err(TrainError::Interrupted.into()),
            _ => Ok(()),
        };
    }
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
            report.config.training.checkpoint.monitor
        );
    }
    if report.outcome == FitOutcome::Interrupted {
        return Err(TrainError::Interrupted.into());
    }
    Ok(())
}
