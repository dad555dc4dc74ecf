//! One `diffit train` invocation end to end: settle the configuration (new run or resume),
//! find the base model, build the data, wire the callbacks, fit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{Device, DeviceLocation, Tensor};

use model::data::Dataset;
use model::rng::mix_seed;
use model::Config;
use store::CheckpointManager;

use crate::tensors::map_to_candle;

use super::callbacks::{
    DistributedCheckpointCallback, ResumeFromCheckpointCallback, TensorBoardCallback,
};
use super::collective::{Collective, Setup, SingleProcess, Wait};
use super::config::{Overrides, TrainingConfig, DEFAULT_LABEL_DROPOUT};
use super::device::DeviceChoice;
use super::error::TrainError;
use super::pretrain::{
    base_model_config, cached_base_path, load_base, pretrain, same_weights, save_base,
    PretrainConfig, DEFAULT_PRETRAIN_SEED,
};
use super::replica;
use super::run_logs::StepLogCallback;
use super::state::{streams, TrainState};
use super::tensorboard::EventWriter;
use super::trainer::{FitOutcome, Trainer};

/// What to run.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// Defaults + YAML (new runs); ignored on resume except where `overrides` say otherwise.
    pub config: TrainingConfig,
    /// Command-line settings; on resume they override the run's saved config.
    pub overrides: Overrides,
    /// Continue `run_number` (or `resume_from_run`) from its newest valid checkpoint.
    pub resume: bool,
    /// Show progress bars / epoch lines on stderr.
    pub show_progress: bool,
    /// Draw a grid of DDIM samples every `training.sample_every_n_epochs` epochs (TensorBoard
    /// and `logs/samples/`).
    pub log_samples: bool,
    /// Where to compute (`--device`); not stored with the run.
    pub device: DeviceChoice,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The run's number.
    pub run_number: u32,
    /// Its directory.
    pub run_dir: PathBuf,
    /// How the fit ended.
    pub outcome: FitOutcome,
    /// Epochs completed.
    pub epochs_done: u32,
    /// The base model's validation loss.
    pub base_val_loss: Option<f64>,
    /// Best monitored value so far.
    pub best: Option<(u32, f64)>,
    /// The configuration trained with.
    pub config: TrainingConfig,
    /// Epoch resumed from, if any.
    pub resumed_from: Option<u32>,
}

/// The operation that hands the other ranks rank 0's setup.
const SETUP: &str = "sharing the training setup";

/// A rank other than 0: takes rank 0's setup, loads the same data, and trains beside it
/// without a run store (its callbacks write nothing).
fn follow(
    stop: Arc<AtomicBool>,
    collective: Rc<dyn Collective>,
    device: Device,
) -> Result<TrainReport, TrainError> {
    let message = collective.broadcast(SETUP, Wait::Unbounded, Vec::new())?;
    let setup = Setup::decode(&message, &Device::Cpu)?;
    let cfg = TrainingConfig::from_stored(setup.config).map_err(|e| {
        TrainError::Distributed(format!("{SETUP}: the config does not decode: {e}"))
    })?;
    let model_cfg: Config = serde_json::from_value(setup.model_config).map_err(|e| {
        TrainError::Distributed(format!("{SETUP}: the model config does not decode: {e}"))
    })?;
    let (train, val) = load_data(&cfg, &model_cfg)?;
    let images = (train.len() as u64, val.len() as u64);
    if images != setup.images {
        return Err(TrainError::Distributed(format!(
            "rank {} loaded {} training and {} validation images, rank 0 loaded {} and {}: \
             every rank must read the same data (a path every machine sees)",
            collective.rank(),
            images.0,
            images.1,
            setup.images.0,
            setup.images.1
        )));
    }
    let steps = Trainer::steps_per_epoch(train.len(), cfg.training.batch_size);
    let mut state = TrainState::new(cfg.clone(), model_cfg, setup.base, device, steps)?;
    state.classes = setup.classes;
    let mut trainer = Trainer::new(train, val, stop).with_collective(collective);
    let outcome = trainer.fit(&mut state)?;
    Ok(TrainReport {
        run_number: setup.run_number,
        run_dir: PathBuf::from(setup.run_dir),
        outcome,
        epochs_done: state.epoch,
        base_val_loss: None,
        best: None,
        config: cfg,
        resumed_from: state.resumed_from,
    })
}

/// Prints a status line to stderr when progress is shown.
fn say(show: bool, text: &str) {
    if show {
        eprintln!("{text}");
    }
}

/// Loads the fine-tuning images for `cfg` at `model`'s image size and splits them. For a model
/// with a label embedder the images keep their labels (the trees' species, a folder's class
/// subfolders), which must fit its classes; for one without, the labels are dropped.
pub fn load_data(cfg: &TrainingConfig, model: &Config) -> Result<(Dataset, Dataset), TrainError> {
    let size = model.image_size;
    let all = match &cfg.data.dir {
        Some(dir) => {
            if !dir.exists() {
                return Err(TrainError::Usage(format!(
                    "--data {}: no such file or directory",
                    dir.display()
                )));
            }
            // The loader logs a warning for each file it skips.
            crate::data::load_path(
                dir,
                cfg.data.format,
                &cfg.data.classes,
                size,
                cfg.data.background,
            )?
        }
        None => Dataset::trees(
            cfg.data.num_images,
            size,
            mix_seed(cfg.training.seed, streams::TREES),
        ),
    };
    if all.len() < 2 {
        return Err(TrainError::Usage(format!(
            "need at least 2 images to hold some out for validation, found {}",
            all.len()
        )));
    }
    let all = match model.num_classes {
        // An unconditional model (no label embedder, or only the null class) ignores labels.
        None | Some(0) => all.without_labels(),
        Some(n) if all.classes().len() > n => {
            let source = match &cfg.data.dir {
                Some(dir) => format!("--data {}", dir.display()),
                None => "the procedural trees".into(),
            };
            return Err(TrainError::Usage(format!(
                "{source} has {} classes ({}), but the model's label embedder has {n}: use fewer \
                 classes (class subfolders, or --classes for CIFAR) or a base made for more \
                 classes",
                all.classes().len(),
                all.classes().join(", ")
            )));
        }
        Some(_) => all,
    };
    let (train, val) = all.split(
        cfg.data.val_fraction,
        mix_seed(cfg.training.seed, streams::SPLIT),
    );
    if train.is_empty() || val.is_empty() {
        return Err(TrainError::Usage(format!(
            "val_fraction {} leaves {} training and {} validation images; both must be non-empty",
            cfg.data.val_fraction,
            train.len(),
            val.len()
        )));
    }
    Ok((train, val))
}

/// The base of a new run taken from base-training run `run` (`--base-run`), the checkpoint
/// `--base-checkpoint` names (`best` by default) verified by its checksum: its weights, its
/// network (whatever the preset) and the lineage the run records.
fn base_from_run(
    cfg: &TrainingConfig,
    checkpoints: &Path,
    run: u32,
    show: bool,
) -> Result<
    (
        HashMap<String, Tensor>,
        Config,
        format::metadata::BaseLineage,
    ),
    TrainError,
> {
    let asked = cfg.model.base_checkpoint.as_deref().unwrap_or("best");
    let which = super::base_runs::parse_base_checkpoint(asked).map_err(TrainError::Usage)?;
    let found = super::base_runs::load_base_run_checkpoint(checkpoints, run, which)?;
    if !found
        .model_config
        .same_sizes(&cfg.model.preset.model_config())
    {
        say(
            show,
            &format!(
                "base run {run} trained a model of its own sizes ({} px, width {}, {} blocks); training it as it is, not as the {} preset",
                found.model_config.image_size,
                found.model_config.hidden_size,
                found.model_config.depth,
                cfg.model.preset
            ),
        );
    }
    say(
        show,
        &format!(
            "base: base run {run}, {asked} (epoch {}, {})",
            found.epoch, found.checksum
        ),
    );
    let lineage = format::metadata::BaseLineage {
        run_number: run,
        epoch: found.epoch,
        checkpoint: match which {
            store::Which::Epoch(e) => format!("epoch_{e:03}"),
            other => other.to_string(),
        },
        checksum: found.checksum,
    };
    Ok((found.tensors, found.model_config, lineage))
}

/// The base model for a new run and its model config: `--base FILE` (with the config in its
/// header), else the preset's cached base (pretrained now, with a message, when absent or made
/// for another config).
pub fn resolve_base(
    cfg: &TrainingConfig,
    checkpoints: &Path,
    show: bool,
    stop: &Arc<AtomicBool>,
) -> Result<(HashMap<String, Tensor>, Config), TrainError> {
    let preset = cfg.model.preset;
    let expected = preset.model_config();
    if let Some(path) = &cfg.model.base {
        // A published model (one `diffit import` made, or a published preset's) brings its
        // own sizes and classes: its header config is the network, whatever the preset.
        let expected = match base_model_config(path)? {
            Some(found) if !found.architecture.is_hybrid() => {
                if !found.same_sizes(&expected) {
                    say(
                        show,
                        &format!(
                            "the base {} is a published DiffiT of its own sizes ({} px, width {}, {} blocks, {} classes); training it as it is, not as the {preset} preset",
                            path.display(),
                            found.image_size,
                            found.hidden_size,
                            found.depth,
                            found.num_classes.unwrap_or(0)
                        ),
                    );
                }
                found
            }
            // A hybrid of the preset's network with a label table added (class-conditional
            // adaLN, as DiT's): trained with its labels.
            Some(found) if found.num_classes.is_some() && found.without_labels() == expected => {
                found
            }
            _ => expected,
        };
        let loaded = load_base(path, &expected)?;
        return Ok((loaded.tensors, loaded.model_config.unwrap_or(expected)));
    }
    let cached = cached_base_path(checkpoints, preset, DEFAULT_PRETRAIN_SEED);
    if cached.exists() {
        // A cached base that does not read back (torn, damaged, another format) is pretrained
        // again rather than failing the run; the cache is ours to rebuild.
        let usable = base_model_config(&cached).and_then(|found| match found {
            Some(found) if found != expected => Ok(Err(found)),
            _ => load_base(&cached, &expected).map(|loaded| Ok(loaded.tensors)),
        });
        match usable {
            Err(TrainError::BadFile { path, reason }) => tracing::warn!(
                "the cached {preset} base model {} is unusable ({reason}); pretraining it again",
                path.display()
            ),
            Err(e) => return Err(e),
            Ok(Err(found)) => say(
                show,
                &format!(
                    "the cached {} base model {} was made for another model config ({found:?}); pretraining it again",
                    preset,
                    cached.display()
                ),
            ),
            Ok(Ok(tensors)) => {
                say(
                    show,
                    &format!(
                        "using the cached {} base model {}",
                        preset,
                        cached.display()
                    ),
                );
                return Ok((tensors, expected));
            }
        }
    } else {
        say(
            show,
            &format!(
                "no base model given and none cached: pretraining the {} base on the generic set first (once; cached at {})",
                preset,
                cached.display()
            ),
        );
    }
    let tensors = pretrain(&PretrainConfig::for_preset(preset), show, stop)?;
    save_base(&cached, &tensors, &expected)?;
    Ok((tensors, expected))
}

/// The model config a resumed run keeps: the one its base was saved with (older runs predict
/// ε), which must fit the run's preset.
fn resumed_model_config(
    run: u32,
    cfg: &TrainingConfig,
    recorded: &serde_json::Value,
) -> Result<Config, TrainError> {
    let preset = cfg.model.preset.model_config();
    if recorded.is_null() {
        return Ok(preset);
    }
    let saved: Config = serde_json::from_value(recorded.clone()).map_err(|e| {
        TrainError::Resume(format!(
            "the model_config of run {run}'s base model is not a model config: {e}"
        ))
    })?;
    // Older runs may lack newer model features; they resume as they were made. A published
    // base may have sizes of its own (`--base` of an imported model).
    if saved.validate().is_err()
        || (saved.architecture.is_hybrid() && saved.image_size != preset.image_size)
    {
        return Err(TrainError::Resume(format!(
            "run {run}'s base model was saved for {saved:?}, which does not fit the {} preset",
            cfg.model.preset
        )));
    }
    Ok(saved)
}

/// The base model a resumed run continues on. Its own stored base when intact (a `--base`
/// must then hold the same weights); otherwise the first of `--base`, the preset's pretrain
/// cache and another run's stored base whose weights have the checksum the run records, so a
/// run saved without its base (or whose base was lost) resumes on exactly the weights it was
/// trained on.
fn resume_base(
    manager: &CheckpointManager,
    cfg: &TrainingConfig,
    saved_config: &serde_json::Value,
    requested: Option<PathBuf>,
    show: bool,
) -> Result<(HashMap<String, Tensor>, Config), TrainError> {
    let run = manager.run_number();
    let own_error = match manager.load_base_model() {
        Ok(stored) => {
            let model_cfg = resumed_model_config(run, cfg, &stored.model_config)?;
            let base = map_to_candle(&stored.tensors, &Device::Cpu)?;
            if let Some(path) = requested {
                let given = load_base(&path, &model_cfg)?.tensors;
                if !same_weights(&given, &base)? {
                    return Err(TrainError::Usage(format!(
                        "--base {} differs from the base model run {run} was trained on; drop --base to resume",
                        path.display()
                    )));
                }
            }
            return Ok((base, model_cfg));
        }
        // A run saved without its base is not damaged; say which case it is.
        Err(_) if !manager.has_base_model() => {
            format!("run {run} was saved without its base model (save_base_model: false)")
        }
        Err(e) => format!("run {run}'s stored base model is unusable ({e})"),
    };
    let Some(needed) = manager.required_base() else {
        return Err(TrainError::Resume(format!(
            "{own_error}, and the run records no base model checksum to find its weights by"
        )));
    };
    // config.json records the model config the run trained with, exactly as the base file's
    // header would hold it.
    let recorded_model = saved_config
        .get("model")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let model_cfg = resumed_model_config(run, cfg, &recorded_model)?;
    let model_value = if recorded_model.is_null() {
        serde_json::to_value(&model_cfg)
            .map_err(|e| TrainError::Internal(format!("cannot encode model config: {e}")))?
    } else {
        recorded_model
    };
    let mut candidates: Vec<(String, PathBuf)> = Vec::new();
    if let Some(path) = requested {
        candidates.push(("--base".into(), path));
    }
    candidates.push((
        "the pretrain cache".into(),
        cached_base_path(
            manager.layout().base_dir(),
            cfg.model.preset,
            DEFAULT_PRETRAIN_SEED,
        ),
    ));
    if let Some(path) = manager.find_base_in_other_runs() {
        candidates.push(("another run's base model".into(), path));
    }
    let mut tried = Vec::new();
    for (what, path) in candidates {
        if !path.exists() {
            tried.push(format!("{what} {} (absent)", path.display()));
            continue;
        }
        let loaded = match load_base(&path, &model_cfg) {
            Ok(loaded) => loaded,
            Err(e) => {
                tried.push(format!("{what} {} ({e})", path.display()));
                continue;
            }
        };
        let digest = manager.base_digest(
            &crate::tensors::map_to_stored(&loaded.tensors)?,
            &model_value,
        )?;
        if digest.checksum == needed.checksum {
            say(
                show,
                &format!(
                    "{own_error}; resuming on {what} {}, whose weights are the run's base ({})",
                    path.display(),
                    needed.checksum
                ),
            );
            return Ok((loaded.tensors, model_cfg));
        }
        tried.push(format!(
            "{what} {} (other weights: {})",
            path.display(),
            digest.checksum
        ));
    }
    Err(TrainError::Resume(format!(
        "{own_error}; it needs the base model with checksum {} ({} bytes) and none was found (tried {}). Pass --base FILE with the weights the run was trained on",
        needed.checksum,
        needed.size,
        tried.join("; ")
    )))
}

/// What a new run of a model with a label embedder records: the label table gets a LoRA
/// adapter (added to the default targets, so the run can learn its data's classes while the
/// base stays frozen) and the label dropout is fixed at its default unless set. A resumed run
/// keeps what it recorded; a model without labels changes nothing.
fn label_settings(cfg: &mut TrainingConfig, model: &Config) {
    if !model.is_class_conditional() {
        return;
    }
    let lora = &mut cfg.lora;
    if lora.target_modules == model::LoraConfig::default().target_modules {
        lora.target_modules.push(model::LABEL_EMBEDDER.to_string());
    }
    cfg.training
        .label_dropout
        .get_or_insert(DEFAULT_LABEL_DROPOUT);
}

/// Runs a training request to its end (or to a requested stop).
pub fn run_training(req: &TrainRequest, stop: Arc<AtomicBool>) -> Result<TrainReport, TrainError> {
    let device = req.device.open(0)?;
    run_training_on(req, stop, Rc::new(SingleProcess), device)
}

/// [`run_training`] as one rank of `collective`, computing on `device` (`req.device`, opened).
/// Rank 0 does everything one process does and hands the others the settled setup; the others
/// train beside it and write nothing.
pub fn run_training_on(
    req: &TrainRequest,
    stop: Arc<AtomicBool>,
    collective: Rc<dyn Collective>,
    device: Device,
) -> Result<TrainReport, TrainError> {
    if collective.rank() != 0 {
        return follow(stop, collective, device);
    }
    let show = req.show_progress;
    let resume_run = if req.resume {
        let from_flags = req
            .overrides
            .run_number
            .or(req.config.training.checkpoint.run_number);
        Some(
            from_flags
                .or(req.config.training.checkpoint.resume_from_run)
                .ok_or_else(|| {
                    TrainError::Usage(
                        "--resume needs --run-number N (or training.checkpoint.resume_from_run)"
                            .into(),
                    )
                })?,
        )
    } else {
        req.config.training.checkpoint.resume_from_run
    };

    let (cfg, manager, base, model_cfg, replica, (train, val)) = match resume_run {
        Some(run) => {
            let base_dir = req
                .overrides
                .base_dir
                .clone()
                .unwrap_or_else(|| req.config.training.checkpoint.base_dir.clone());
            let mirror = req.overrides.mirror.as_deref().or(req
                .config
                .training
                .checkpoint
                .mirror
                .as_deref());
            let placement = replica::place(&base_dir, mirror, req.overrides.staging.as_deref())?;
            let (manager, replica) = replica::open_for_resume(&placement, run, show)?;
            let saved = manager.load_config()?;
            let mut cfg = TrainingConfig::from_stored(
                saved
                    .get("training")
                    .cloned()
                    .unwrap_or_else(|| saved.clone()),
            )
            .map_err(|e| {
                TrainError::Resume(format!(
                    "config.json of run {run} is not a training config: {e}"
                ))
            })?;
            let requested_base = req.overrides.base.clone();
            let mut overrides = req.overrides.clone();
            overrides.base = None;
            cfg.apply(&overrides);
            cfg.training.checkpoint.base_dir = base_dir;
            cfg.training.checkpoint.run_number = Some(run);
            cfg.validate()?;
            let (base, model_cfg) = resume_base(&manager, &cfg, &saved, requested_base, show)?;
            let data = load_data(&cfg, &model_cfg)?;
            (cfg, manager, base, model_cfg, replica, data)
        }
        None => {
            let mut cfg = req.config.clone();
            cfg.apply(&req.overrides);
            cfg.validate()?;
            let c = &cfg.training.checkpoint;
            let placement = replica::place(
                &c.base_dir,
                c.mirror.as_deref(),
                req.overrides.staging.as_deref(),
            )?;
            // The base and the data are settled before a run is created, so that a bad base
            // or data source leaves no empty run behind.
            let (base, model_cfg, lineage) = match cfg.model.base_run {
                Some(run) => {
                    let (base, model_cfg, lineage) =
                        base_from_run(&cfg, &placement.local, run, show)?;
                    (base, model_cfg, Some(lineage))
                }
                None => {
                    let (base, model_cfg) = resolve_base(&cfg, &placement.local, show, &stop)?;
                    (base, model_cfg, None)
                }
            };
            label_settings(&mut cfg, &model_cfg);
            let data = load_data(&cfg, &model_cfg)?;
            let c = &cfg.training.checkpoint;
            let (mut manager, replica) =
                replica::create_run(&placement, &cfg.training.experiment_name, c.run_number)?;
            if !manager.metadata().checkpoints.is_empty() {
                return Err(TrainError::Usage(format!(
                    "run {} already has checkpoints; pass --resume to continue it, or choose another --run-number",
                    manager.run_number()
                )));
            }
            if let Some(lineage) = lineage {
                manager.record_base_lineage(lineage)?;
            }
            (cfg, manager, base, model_cfg, replica, data)
        }
    };
    let run_number = manager.run_number();
    let run_dir = manager.run_dir();
    let logs = manager.logs_dir();
    if !train.classes().is_empty() {
        say(
            show,
            &format!(
                "classes: {} (label dropout {})",
                train.classes().join(", "),
                cfg.training.label_dropout.unwrap_or(DEFAULT_LABEL_DROPOUT)
            ),
        );
    }
    say(
        show,
        &format!(
            "run {run_number:03} ({}): {} training / {} validation images, preset {}",
            run_dir.display(),
            train.len(),
            val.len(),
            cfg.model.preset
        ),
    );
    if collective.ranks() > 1 {
        let setup = Setup {
            config: cfg.to_stored(),
            model_config: serde_json::to_value(&model_cfg).map_err(|e| {
                TrainError::Internal(format!("cannot encode the model config: {e}"))
            })?,
            base: base.clone(),
            classes: train.classes().to_vec(),
            run_number,
            run_dir: run_dir.display().to_string(),
            images: (train.len() as u64, val.len() as u64),
        };
        collective.broadcast(SETUP, Wait::Unbounded, setup.encode()?)?;
    }
    let steps = Trainer::steps_per_epoch(train.len(), cfg.training.batch_size);
    if let DeviceLocation::Cuda { gpu_id } = device.location() {
        say(
            show,
            &format!(
                "computing on CUDA device {gpu_id} (--device {})",
                req.device
            ),
        );
    }
    let mut state = TrainState::new(cfg.clone(), model_cfg, base, device, steps)?;
    state.classes = train.classes().to_vec();
    if collective.ranks() > 1 {
        let grad_bytes: usize = state
            .params
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count() * 4)
            .sum();
        say(
            show,
            &format!(
                "training on {} ranks ({}); rank 0 writes the run; each step every rank sends \
                 {:.1} KiB of gradients for each of its shards",
                collective.ranks(),
                collective.transport(),
                grad_bytes as f64 / 1024.0
            ),
        );
    }
    let shared = Rc::new(RefCell::new(manager));
    let layout = shared.borrow().layout().clone();
    let mut tb =
        TensorBoardCallback::new(EventWriter::create(&logs)?, cfg.training.log_every_n_steps);
    tb.sample_every_n_epochs = cfg.training.sample_every_n_epochs;
    if req.log_samples {
        tb.sample_grids = Some(layout.clone());
    } else {
        tb.samples_per_epoch = 0;
    }
    let mut trainer = Trainer::new(train, val, stop)
        .with_progress(show)
        .with_collective(collective);
    if resume_run.is_some() {
        trainer = trainer.with_callback(ResumeFromCheckpointCallback::new(
            shared.clone(),
            true,
            true,
        ));
    }
    // The step log before the checkpoint callback: an epoch's steps are on disk before
    // metadata names the epoch.
    trainer = trainer
        .with_callback(StepLogCallback::new(layout, cfg.training.log_every_n_steps))
        .with_callback(DistributedCheckpointCallback::from_settings(
            shared.clone(),
            &cfg.training.checkpoint,
        ))
        .with_callback(tb);
    if let Some((replica, role)) = replica {
        say(
            show,
            &format!(
                "{} every commit of run {run_number:03} to {}",
                match role {
                    replica::Role::Home => "writing",
                    replica::Role::Mirror => "mirroring",
                },
                replica.bucket_name()
            ),
        );
        // After the checkpoint callback: each push carries what it has just committed.
        trainer = trainer.with_callback(replica::ReplicaCallback::start(replica, role, show)?);
    }
    if let Some(mlflow) = super::mlflow::callback_for(shared.clone(), &state) {
        say(
            show,
            &format!(
                "logging to MLflow at {} (experiment {:?})",
                mlflow.tracking_uri(),
                mlflow.experiment()
            ),
        );
        trainer = trainer.with_callback(mlflow);
    }
    let outcome = trainer.fit(&mut state)?;
    let m = shared.borrow();
    let meta = m.metadata();
    let best = meta.best_checkpoint.as_ref().and_then(|b| {
        b.metrics
            .get(&cfg.training.checkpoint.monitor)
            .map(|v| (b.epoch, *v))
    });
    Ok(TrainReport {
        run_number,
        run_dir,
        outcome,
        epochs_done: state.epoch,
        base_val_loss: meta.base_metrics.get("val_loss").copied(),
        best,
        config: cfg,
        resumed_from: state.resumed_from,
    })
}
