//! Base-model training as managed runs: `diffit pretrain` writes numbered runs under
//! `<checkpoints>/base_training/run_NNN/` through the same store as LoRA runs (the seed
//! system's layout): `config.json` with the pretraining settings, one checkpoint per epoch
//! holding the whole model with AdamW's moments, the schedule and the random streams, `best`
//! (lowest `train_loss`) and `last`, keep-last-N retention, crash safety and checksums, and an
//! exact resume. A LoRA run takes its base from one of them with `--base-run N
//! --base-checkpoint best|last|K` ([`load_base_run_checkpoint`]), verified by checksum, and
//! records that lineage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde_json::json;

use format::metadata::{Metrics, Mode, RunStatus};
use format::seed::BASE_TRAINING_DIR;
use model::Config;
use store::{CheckpointManager, RetentionPolicy, Which};

use super::error::TrainError;
use super::pretrain::{progress_bar, save_base, PretrainConfig, Pretraining};
use crate::tensors::map_to_candle;

/// The metric that picks a base run's `best` epoch.
pub const BASE_MONITOR: &str = "train_loss";

/// Epoch files a base run keeps by default (the seed system's keep-last-3); `best` is kept too.
pub const DEFAULT_BASE_KEEP_LAST_N: u32 = 3;

/// Where a checkpoints dir keeps its base-training runs.
pub fn base_training_dir(checkpoints: &Path) -> PathBuf {
    checkpoints.join(BASE_TRAINING_DIR)
}

/// What `diffit pretrain` runs.
#[derive(Debug, Clone)]
pub struct BaseRunRequest {
    /// The pretraining of a new run (a resume trains with the run's own).
    pub config: PretrainConfig,
    /// On resume: the new total of epochs; `None` keeps the run's.
    pub resume_epochs: Option<u32>,
    /// The checkpoints dir; the run goes under its `base_training/`.
    pub checkpoints: PathBuf,
    /// Run to create, or to resume; `None` creates the next.
    pub run_number: Option<u32>,
    /// Continue `run_number` from its newest valid epoch.
    pub resume: bool,
    /// Epoch files kept (the best one is kept apart); 0 keeps every one.
    pub keep_last_n: u32,
    /// Also write the final model as a plain base file here.
    pub out: Option<PathBuf>,
    /// Progress on stderr.
    pub show_progress: bool,
}

/// What a base run did.
#[derive(Debug, Clone)]
pub struct BaseRunReport {
    /// Its number under `base_training/`.
    pub run_number: u32,
    /// Its directory.
    pub run_dir: PathBuf,
    /// Epochs completed in all.
    pub epochs_done: u32,
    /// The epoch resumed after, if any.
    pub resumed_from: Option<u32>,
    /// The best epoch and its `train_loss`.
    pub best: Option<(u32, f64)>,
}

/// The run's `config.json`: what kind of run, the pretraining settings, the model.
fn run_config(cfg: &PretrainConfig) -> serde_json::Value {
    json!({
        "kind": "base_training",
        "training": cfg,
        "model": cfg.model,
    })
}

/// Runs a managed pretraining to its end, saving every epoch; a stop request ends it after the
/// epoch in progress is discarded (the run is marked interrupted, and resumes from its last
/// saved epoch) and fails with [`TrainError::Interrupted`].
pub fn run_base_training(
    req: &BaseRunRequest,
    stop: &Arc<AtomicBool>,
) -> Result<BaseRunReport, TrainError> {
    if req.checkpoints.to_string_lossy().contains("://") {
        return Err(TrainError::Usage(format!(
            "--checkpoints {}: base runs are written to a local directory (--checkpoints DIR)",
            req.checkpoints.display()
        )));
    }
    let dir = base_training_dir(&req.checkpoints);
    let (mut manager, mut run, resumed_from) = if req.resume {
        let n = req.run_number.ok_or_else(|| {
            TrainError::Usage("--resume needs --run-number N (a base-training run)".into())
        })?;
        let mut manager = CheckpointManager::open(&dir, n)?;
        let stored = manager.load_config()?;
        let cfg: PretrainConfig = stored
            .get("training")
            .cloned()
            .ok_or_else(|| TrainError::Resume("config.json has no training section".into()))
            .and_then(|t| {
                serde_json::from_value(t).map_err(|e| {
                    TrainError::Resume(format!(
                        "config.json of base run {n} is not a pretraining config: {e}"
                    ))
                })
            })?;
        let mut run = Pretraining::new(&cfg)?;
        let resumed = match manager.resume()? {
            Some(resume) => {
                run.restore(&resume.checkpoint)?;
                Some(resume.checkpoint.epoch)
            }
            None => None,
        };
        if let Some(epochs) = req.resume_epochs.filter(|&e| e != cfg.epochs) {
            run.set_epochs(epochs)?;
            manager.save_config(&run_config(run.config()))?;
        }
        (manager, run, resumed)
    } else {
        let run = Pretraining::new(&req.config)?;
        let experiment = format!("diffit_base_{}", req.config.preset);
        let mut manager = CheckpointManager::open_or_create(&dir, &experiment, req.run_number)?;
        if !manager.metadata().checkpoints.is_empty() {
            return Err(TrainError::Usage(format!(
                "base run {} already has checkpoints; pass --resume to continue it, or choose another --run-number",
                manager.run_number()
            )));
        }
        manager.save_config(&run_config(run.config()))?;
        (manager, run, None)
    };
    let run_number = manager.run_number();
    let show = req.show_progress;
    if show {
        eprintln!(
            "base run {run_number:03} ({}): {} epochs over {} generic images, seed {}{}",
            manager.run_dir().display(),
            run.config().epochs,
            run.config().num_images,
            run.config().seed,
            resumed_from.map_or(String::new(), |e| format!(", resuming after epoch {e}"))
        );
    }
    manager.set_status(RunStatus::Running)?;
    let retention = RetentionPolicy::new(req.keep_last_n as usize, true);
    let bar = progress_bar(run.total_steps(), show);
    bar.set_position(run.global_step);
    while run.epoch < run.config().epochs {
        let Some(loss) = run.train_epoch(stop, &bar)? else {
            bar.abandon();
            manager.set_status(RunStatus::Interrupted)?;
            return Err(TrainError::Interrupted);
        };
        if !loss.mean.is_finite() {
            manager.set_status(RunStatus::Failed)?;
            return Err(TrainError::Diverged {
                epoch: run.epoch,
                step: run.global_step,
                loss: loss.mean,
            });
        }
        let metrics = Metrics::from([
            (BASE_MONITOR.to_string(), loss.mean),
            ("lr".to_string(), loss.last_lr),
        ]);
        manager.save_lora_weights(&run.to_checkpoint(&metrics)?, BASE_MONITOR, Mode::Min)?;
        manager.apply_retention(retention)?;
        if show && !bar.is_hidden() {
            bar.println(format!("epoch {}: train_loss={:.5}", run.epoch, loss.mean));
        } else if show {
            eprintln!(
                "pretrain epoch {}/{}: train_loss={:.5}",
                run.epoch,
                run.config().epochs,
                loss.mean
            );
        }
    }
    bar.finish_and_clear();
    manager.set_status(RunStatus::Finished)?;
    if let Some(out) = &req.out {
        save_base(out, &run.base_tensors()?, &run.config().model)?;
        if show {
            eprintln!("wrote {}", out.display());
        }
    }
    let best = manager
        .get_best_checkpoint_info()
        .and_then(|b| b.metrics.get(BASE_MONITOR).map(|v| (b.epoch, *v)));
    Ok(BaseRunReport {
        run_number,
        run_dir: manager.run_dir(),
        epochs_done: run.epoch,
        resumed_from,
        best,
    })
}

/// Which epoch of a base run a LoRA run takes (`--base-checkpoint`): `best`, `last` or a number.
pub fn parse_base_checkpoint(text: &str) -> Result<Which, String> {
    match text {
        "best" => Ok(Which::Best),
        "last" => Ok(Which::Last),
        n => n
            .trim_start_matches("epoch_")
            .parse::<u32>()
            .ok()
            .filter(|&e| e > 0)
            .map(Which::Epoch)
            .ok_or_else(|| format!("{text:?}: expected best, last or an epoch number (1, 2, ...)")),
    }
}

/// A base model taken from a base run's checkpoint.
#[derive(Debug)]
pub struct BaseFromRun {
    /// The model's weights (the checkpoint's optimizer state left out).
    pub tensors: HashMap<String, Tensor>,
    /// The network they belong to.
    pub model_config: Config,
    /// The epoch the checkpoint ended.
    pub epoch: u32,
    /// `blake3:<hex>` of the checkpoint file, as the base run's metadata records it.
    pub checksum: String,
}

/// Loads `which` of base run `run` under `checkpoints`, verified against the checksum the run's
/// metadata records; the error names the run and the file.
pub fn load_base_run_checkpoint(
    checkpoints: &Path,
    run: u32,
    which: Which,
) -> Result<BaseFromRun, TrainError> {
    let manager = CheckpointManager::open_read_only(base_training_dir(checkpoints), run)?;
    // Loaded (and verified) first: a seed run is refused here, before its records are read.
    let ckpt = manager.load_lora_weights(which)?;
    let record = manager.checkpoint_record(which)?;
    let checksum = record.checksum.clone().ok_or_else(|| TrainError::BadFile {
        path: manager.layout().checkpoint(which.into()),
        reason: format!("base run {run} records no checksum for its {which}"),
    })?;
    let epoch = record.epoch;
    if !ckpt.whole_model {
        return Err(TrainError::BadFile {
            path: manager.layout().checkpoint(which.into()),
            reason: format!("base run {run}'s {which} holds LoRA adapters, not a whole model"),
        });
    }
    let model_config: Config =
        serde_json::from_value(ckpt.model_config.clone()).map_err(|e| TrainError::BadFile {
            path: manager.layout().checkpoint(which.into()),
            reason: format!("model_config: {e}"),
        })?;
    let tensors = map_to_candle(&ckpt.lora, &Device::Cpu)?;
    Ok(BaseFromRun {
        tensors,
        model_config,
        epoch,
        checksum,
    })
}
