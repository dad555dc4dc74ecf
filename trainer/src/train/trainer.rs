//! The `Trainer` loop and its `Callback` hooks (the seed's Lightning usage, minus Lightning):
//! train an epoch, validate, let callbacks log and checkpoint, repeat; stop cleanly on request.

use std::io::IsTerminal;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use format::metadata::Metrics;
use model::data::Dataset;
use model::diffusion::{ddpm_eval_loss_labeled, NoiseSchedule};
use model::rng::{mix_seed, Rng};
use model::DiffiT;

use super::collective::{any_rank, share_state, Collective, Reader, SingleProcess, Wait, Writer};
use super::config::DEFAULT_LABEL_DROPOUT;
use super::epoch::{batch_labels, train_epoch, Learner, StepProgress};
use super::error::TrainError;
use super::state::{streams, TrainState};

/// How a fit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitOutcome {
    /// Every configured epoch was trained.
    Finished,
    /// A stop was requested (Ctrl-C); the last saved checkpoint is intact.
    Interrupted,
    /// An error stopped training.
    Failed,
}

/// Hooks called by [`Trainer::fit`], in the order listed. Every hook has a no-op default.
pub trait Callback {
    /// Before anything is trained (a resume callback restores state here).
    fn on_fit_start(&mut self, _state: &mut TrainState) -> Result<(), TrainError> {
        Ok(())
    }
    /// After the base model alone was validated (fresh runs only, before epoch 1).
    fn on_base_validation_end(
        &mut self,
        _state: &mut TrainState,
        _metrics: &Metrics,
    ) -> Result<(), TrainError> {
        Ok(())
    }
    /// After an epoch's validation; `metrics` holds `train_loss`, `lr` and, on the epochs that
    /// were validated (`check_val_every_n_epoch`), `val_loss`.
    fn on_validation_end(
        &mut self,
        _state: &mut TrainState,
        _metrics: &Metrics,
    ) -> Result<(), TrainError> {
        Ok(())
    }
    /// After each optimizer step (infallible: what runs here must not stop training).
    fn on_train_step(&mut self, _step: &StepProgress) {}
    /// At the end of an epoch (checkpoints are written here).
    fn on_epoch_end(
        &mut self,
        _state: &mut TrainState,
        _metrics: &Metrics,
    ) -> Result<(), TrainError> {
        Ok(())
    }
    /// When an error stopped the fit, with that error, just before [`Callback::on_fit_end`].
    fn on_fit_error(&mut self, _state: &mut TrainState, _error: &TrainError) {}
    /// Once, however the fit ended (also after an error, with [`FitOutcome::Failed`]).
    fn on_fit_end(
        &mut self,
        _state: &mut TrainState,
        _outcome: FitOutcome,
    ) -> Result<(), TrainError> {
        Ok(())
    }
}

/// Validation repeats each held-out image at this many random timesteps, to steady the loss.
pub const VAL_REPEATS: u64 = 4;

/// Runs epochs over a dataset with callbacks.
pub struct Trainer {
    train: Dataset,
    val: Dataset,
    schedule: NoiseSchedule,
    callbacks: Vec<Box<dyn Callback>>,
    stop: Arc<AtomicBool>,
    show_progress: bool,
    collective: Rc<dyn Collective>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("train_images", &self.train.len())
            .field("val_images", &self.val.len())
            .field("callbacks", &self.callbacks.len())
            .finish_non_exhaustive()
    }
}

/// Mean validation loss of `model` over `val`: each batch uses its own RNG seeded from
/// `(seed, repeat, batch)`, so the number is comparable across epochs and runs. A labelled
/// model sees every image's label (no dropout).
pub fn validation_loss(
    model: &DiffiT,
    val: &Dataset,
    schedule: &NoiseSchedule,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<f64, TrainError> {
    validation_loss_over(
        &SingleProcess,
        model,
        val,
        schedule,
        batch_size,
        seed,
        device,
    )
}

/// [`validation_loss`] with its batches split over the ranks of `collective` (batch `i` of
/// the repeats on rank `i mod ranks`) and summed in batch order on every rank: the same value,
/// bit for bit, as one process computes.
pub fn validation_loss_over(
    collective: &dyn Collective,
    model: &DiffiT,
    val: &Dataset,
    schedule: &NoiseSchedule,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<f64, TrainError> {
    const WHAT: &str = "gathering validation losses";
    let indices: Vec<usize> = (0..val.len()).collect();
    let val_seed = mix_seed(seed, streams::VALIDATION);
    let batches: Vec<(u64, usize, &[usize])> = (0..VAL_REPEATS)
        .flat_map(|repeat| {
            indices
                .chunks(batch_size.max(1))
                .enumerate()
                .map(move |(b, chunk)| (repeat, b, chunk))
        })
        .collect();
    let (ranks, rank) = (collective.ranks(), collective.rank());
    // Each batch's mean loss (as f32, the model's own precision) and its image count.
    let mut losses: Vec<Option<(f32, usize)>> = vec![None; batches.len()];
    for (i, (repeat, b, chunk)) in batches.iter().enumerate() {
        if i % ranks != rank {
            continue;
        }
        let mut rng = Rng::new(mix_seed(mix_seed(val_seed, *repeat), *b as u64));
        let x = val.batch(chunk, device)?;
        let labels = batch_labels(model, val, chunk)?;
        let loss = ddpm_eval_loss_labeled(model, &x, labels.as_deref(), schedule, &mut rng)?
            .to_scalar::<f32>()?;
        losses[i] = Some((loss, chunk.len()));
    }
    if ranks > 1 {
        let mut w = Writer::new();
        for (i, slot) in losses.iter().enumerate() {
            if let Some((loss, _)) = slot {
                w.u64(i as u64).u64(u64::from(loss.to_bits()));
            }
        }
        for (from, message) in collective
            .all_gather(WHAT, Wait::Bounded, &w.finish())?
            .iter()
            .enumerate()
        {
            let mut r = Reader::new(message, WHAT);
            while !r.is_empty() {
                let i = r.len()?;
                let bits = u32::try_from(r.u64()?).map_err(|_| {
                    TrainError::Distributed(format!("{WHAT}: rank {from} sent a malformed loss"))
                })?;
                let Some((_, _, chunk)) = batches.get(i) else {
                    return Err(TrainError::Distributed(format!(
                        "{WHAT}: rank {from} sent batch {i} of {}",
                        batches.len()
                    )));
                };
                losses[i] = Some((f32::from_bits(bits), chunk.len()));
            }
        }
    }
    let (mut total, mut count) = (0.0f64, 0usize);
    for (i, slot) in losses.iter().enumerate() {
        let Some((loss, len)) = slot else {
            return Err(TrainError::Distributed(format!(
                "{WHAT}: no rank sent batch {i}"
            )));
        };
        total += f64::from(*loss) * *len as f64;
        count += len;
    }
    Ok(if count == 0 {
        f64::NAN
    } else {
        total / count as f64
    })
}

/// The base model alone (no adapters), built from the state's frozen weights.
pub fn base_only_model(state: &TrainState) -> Result<DiffiT, TrainError> {
    let vb = VarBuilder::from_tensors(state.base.clone(), DType::F32, &state.device);
    Ok(DiffiT::new(&state.model_config, vb, None)?)
}

/// Progress display: bars on a terminal, one line per epoch otherwise.
struct Progress {
    multi: MultiProgress,
    epochs: ProgressBar,
    steps: ProgressBar,
    terminal: bool,
}

impl Progress {
    fn new(show: bool, total_epochs: u32, done_epochs: u32, steps_per_epoch: u64) -> Self {
        let terminal = show && std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let epoch_style = ProgressStyle::with_template("{prefix:>7} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let step_style = ProgressStyle::with_template(
            "{prefix:>7} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let epochs = multi.add(
            ProgressBar::new(u64::from(total_epochs))
                .with_style(epoch_style)
                .with_prefix("epochs"),
        );
        epochs.set_position(u64::from(done_epochs));
        let steps = multi.add(
            ProgressBar::new(steps_per_epoch)
                .with_style(step_style)
                .with_prefix("steps"),
        );
        Self {
            multi,
            epochs,
            steps,
            terminal,
        }
    }

    fn line(&self, show: bool, text: &str) {
        if !show {
            return;
        }
        if self.terminal {
            // Printed above the bars so they stay at the bottom.
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }
}

impl Trainer {
    /// A trainer over `train` (shuffled each epoch) validated on `val`.
    pub fn new(train: Dataset, val: Dataset, stop: Arc<AtomicBool>) -> Self {
        Self {
            train,
            val,
            schedule: NoiseSchedule::default(),
            callbacks: Vec::new(),
            stop,
            show_progress: false,
            collective: Rc::new(SingleProcess),
        }
    }

    /// Trains as one rank of `collective`: steps and validation are split over its ranks,
    /// every rank ends each step with the same state, and a stop seen by one rank stops all.
    /// Only the callbacks of rank 0 should write.
    pub fn with_collective(mut self, collective: Rc<dyn Collective>) -> Self {
        self.collective = collective;
        self
    }

    /// Adds a callback (called in the order added).
    pub fn with_callback(mut self, callback: impl Callback + 'static) -> Self {
        self.callbacks.push(Box::new(callback));
        self
    }

    /// Shows progress bars on a terminal and epoch lines otherwise.
    pub fn with_progress(mut self, show: bool) -> Self {
        self.show_progress = show;
        self
    }

    /// The training images.
    pub fn train_set(&self) -> &Dataset {
        &self.train
    }

    /// The held-out images.
    pub fn val_set(&self) -> &Dataset {
        &self.val
    }

    /// Optimizer steps per epoch for `batch_size` (the last batch may be smaller).
    pub fn steps_per_epoch(train_len: usize, batch_size: usize) -> u64 {
        train_len.div_ceil(batch_size.max(1)) as u64
    }

    /// Whether a stop was requested, here or on any other rank.
    fn stop_requested(&self) -> Result<bool, TrainError> {
        any_rank(
            &*self.collective,
            "checking for a stop",
            self.stop.load(Ordering::SeqCst),
        )
    }

    /// Trains from `state.epoch` up to `state.config.training.epochs`, calling the callbacks.
    pub fn fit(&mut self, state: &mut TrainState) -> Result<FitOutcome, TrainError> {
        let mut callbacks = std::mem::take(&mut self.callbacks);
        let result = self.fit_inner(state, &mut callbacks);
        let outcome = match &result {
            Ok(outcome) => *outcome,
            Err(e) => {
                for cb in callbacks.iter_mut() {
                    cb.on_fit_error(state, e);
                }
                FitOutcome::Failed
            }
        };
        let mut end_error = None;
        for cb in callbacks.iter_mut() {
            if let Err(e) = cb.on_fit_end(state, outcome) {
                end_error.get_or_insert(e);
            }
        }
        self.callbacks = callbacks;
        let outcome = result?;
        match end_error {
            Some(e) => Err(e),
            None => Ok(outcome),
        }
    }

    fn fit_inner(
        &mut self,
        state: &mut TrainState,
        callbacks: &mut [Box<dyn Callback>],
    ) -> Result<FitOutcome, TrainError> {
        for cb in callbacks.iter_mut() {
            cb.on_fit_start(state)?;
        }
        share_state(&*self.collective, state)?;
        let show = self.show_progress;
        let total_epochs = state.config.training.epochs;
        let progress = Progress::new(
            show,
            total_epochs,
            state.epoch.min(total_epochs),
            state.steps_per_epoch,
        );
        if state.epoch == 0 {
            progress.steps.set_message("validating the base model");
            let base = base_only_model(state)?;
            let val_loss = self.validate(&base, state)?;
            let metrics = Metrics::from([("val_loss".to_string(), val_loss)]);
            progress.line(show, &format!("base model: val_loss={val_loss:.5}"));
            for cb in callbacks.iter_mut() {
                cb.on_base_validation_end(state, &metrics)?;
            }
        } else if let Some(epoch) = state.resumed_from {
            progress.line(
                show,
                &format!("resumed after epoch {epoch} (step {})", state.global_step),
            );
        }
        while state.epoch < total_epochs {
            if self.stop_requested()? {
                return Ok(FitOutcome::Interrupted);
            }
            let epoch = state.epoch + 1;
            progress.steps.reset();
            progress.steps.set_length(state.steps_per_epoch);
            let started = Instant::now();
            let Some((train_loss, lr)) =
                self.train_epoch(state, epoch, &progress.steps, callbacks)?
            else {
                progress.line(
                    show,
                    &format!("stopped during epoch {epoch}; it will be trained again on resume"),
                );
                return Ok(FitOutcome::Interrupted);
            };
            let secs = started.elapsed().as_secs_f64();
            // Validated every `check_val_every_n_epoch` epochs and after the last; the epochs
            // in between record no val_loss (and so never become best by it).
            let every = state.config.training.check_val_every_n_epoch.max(1);
            let val_loss = if epoch.is_multiple_of(every) || epoch >= total_epochs {
                progress.steps.set_message("validating");
                Some(self.validate(&state.model, state)?)
            } else {
                None
            };
            // A diverged epoch is neither recorded nor saved: resuming must start from the last
            // finite state, not from weights that are already NaN.
            let watched = val_loss.unwrap_or(train_loss);
            if !watched.is_finite() {
                progress.steps.finish_and_clear();
                progress.epochs.finish_and_clear();
                return Err(TrainError::Diverged {
                    epoch,
                    step: state.global_step,
                    loss: watched,
                });
            }
            state.epoch = epoch;
            let mut metrics = Metrics::from([
                ("train_loss".to_string(), train_loss),
                ("lr".to_string(), lr),
            ]);
            if let Some(val_loss) = val_loss {
                metrics.insert("val_loss".to_string(), val_loss);
            }
            state.last_metrics = metrics.clone();
            // Every rank has finished the epoch before rank 0 commits it.
            self.collective.barrier("ending an epoch")?;
            for cb in callbacks.iter_mut() {
                cb.on_validation_end(state, &metrics)?;
            }
            for cb in callbacks.iter_mut() {
                cb.on_epoch_end(state, &metrics)?;
            }
            let ips = self.train.len() as f64 / secs.max(1e-9);
            let val_text = match val_loss {
                Some(v) => format!("val_loss={v:.5}"),
                None => "(not validated)".to_string(),
            };
            progress.epochs.set_position(u64::from(epoch));
            if let Some(v) = val_loss {
                progress.epochs.set_message(format!("val_loss {v:.4}"));
            }
            progress.line(
                show,
                &format!(
                    "epoch {epoch}/{total_epochs}: train_loss={train_loss:.5} {val_text} lr={lr:.2e} ({ips:.1} images/s)"
                ),
            );
        }
        progress.steps.finish_and_clear();
        progress.epochs.finish_and_clear();
        Ok(FitOutcome::Finished)
    }

    fn validate(&self, model: &DiffiT, state: &TrainState) -> Result<f64, TrainError> {
        validation_loss_over(
            &*self.collective,
            model,
            &self.val,
            &self.schedule,
            state
                .config
                .training
                .val_batch_size
                .unwrap_or(state.config.training.batch_size),
            state.config.training.seed,
            &state.device,
        )
    }

    /// One epoch; `None` when a stop was requested before it ended (the epoch is discarded:
    /// its partial updates live only in memory and the last checkpoint is what resumes).
    fn train_epoch(
        &self,
        state: &mut TrainState,
        epoch: u32,
        bar: &ProgressBar,
        callbacks: &mut [Box<dyn Callback>],
    ) -> Result<Option<(f64, f64)>, TrainError> {
        let mut learner = Learner {
            model: &state.model,
            params: &state.params,
            optimizer: &mut state.optimizer,
            scheduler: &mut state.scheduler,
            data_rng: &mut state.data_rng,
            noise_rng: &mut state.noise_rng,
            global_step: &mut state.global_step,
            device: &state.device,
            label_dropout: state
                .config
                .training
                .label_dropout
                .unwrap_or(DEFAULT_LABEL_DROPOUT),
            augmentation: state.config.data.augmentation,
            augment_seed: mix_seed(state.config.training.seed, streams::AUGMENT),
            collective: &*self.collective,
            data_shards: state.config.training.data_shards,
        };
        let started = Instant::now();
        let done = train_epoch(
            &mut learner,
            &self.train,
            state.config.training.batch_size,
            &self.schedule,
            epoch,
            &self.stop,
            |progress| {
                for cb in callbacks.iter_mut() {
                    cb.on_train_step(&progress);
                }
                let ips = progress.images as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.inc(1);
                bar.set_message(format!("loss {:.4} | {ips:.1} img/s", progress.mean_loss));
            },
        )?;
        Ok(done.map(|loss| (loss.mean, loss.last_lr)))
    }
}
