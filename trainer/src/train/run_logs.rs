//! What a run logs under `logs/` beside TensorBoard's event files: the per-step training log
//! (`logs/steps/epoch_NNN.json`, one [`StepLog`] per epoch, written by [`StepLogCallback`]) and
//! the sample grids drawn during training (`logs/samples/epoch_NNN.png`). Every file is written
//! atomically, and only by the process that writes the run (rank 0 of a job).

use std::path::{Path, PathBuf};

use format::logs::{StepLog, StepRecord};
use format::metadata::Metrics;
use format::RunLayout;
use image::ImageEncoder;

use super::epoch::StepProgress;
use super::error::TrainError;
use super::state::TrainState;
use super::trainer::Callback;

/// Which steps of an epoch are logged: every step whose global step is a multiple of `every`
/// (the steps MLflow's `train_loss_step` gets, so every epoch's points line up across
/// epochs and trackers), and the epoch's last step, so each epoch's log ends where it ended.
#[derive(Debug, Clone)]
pub struct StepRecorder {
    every: u64,
    kept: Vec<StepRecord>,
    last: Option<StepRecord>,
}

impl StepRecorder {
    /// Keeps every `every`-th step (0 is taken as 1).
    pub fn new(every: u64) -> Self {
        Self {
            every: every.max(1),
            kept: Vec::new(),
            last: None,
        }
    }

    /// The logging interval in steps.
    pub fn every(&self) -> u64 {
        self.every
    }

    /// Notes one optimizer step.
    pub fn record(&mut self, step: &StepProgress) {
        let record = StepRecord {
            step: step.global_step,
            loss: step.loss,
            lr: step.lr,
        };
        if step.global_step.is_multiple_of(self.every) {
            self.kept.push(record);
        }
        self.last = Some(record);
    }

    /// The steps kept since the last call, the last step noted included, in order; the
    /// recorder starts the next epoch empty.
    pub fn finish_epoch(&mut self) -> Vec<StepRecord> {
        let mut steps = std::mem::take(&mut self.kept);
        if let Some(last) = self.last.take() {
            if steps.last().map(|s| s.step) != Some(last.step) {
                steps.push(last);
            }
        }
        steps
    }
}

/// Whether epoch `epoch` (1-based) of a run of `total` epochs draws a sample grid when grids
/// are drawn every `every` epochs: every `every`-th epoch and the last; never when `every` is 0.
pub fn samples_due(epoch: u32, every: u32, total: u32) -> bool {
    every > 0 && (epoch.is_multiple_of(every) || epoch >= total)
}

/// Writes each epoch's [`StepLog`] when the epoch ends. It must run before the callback that
/// commits the epoch (it writes in `on_validation_end`, which every callback gets before any
/// gets `on_epoch_end`, and before metadata records the epoch's metrics), so that metadata
/// never names an epoch whose step log is missing. An epoch cut short writes nothing.
#[derive(Debug)]
pub struct StepLogCallback {
    layout: RunLayout,
    recorder: StepRecorder,
}

impl StepLogCallback {
    /// Logs every `log_every_n_steps`-th step of the run at `layout`.
    pub fn new(layout: RunLayout, log_every_n_steps: u64) -> Self {
        Self {
            layout,
            recorder: StepRecorder::new(log_every_n_steps),
        }
    }
}

impl Callback for StepLogCallback {
    fn on_train_step(&mut self, step: &StepProgress) {
        self.recorder.record(step);
    }

    fn on_validation_end(
        &mut self,
        state: &mut TrainState,
        _metrics: &Metrics,
    ) -> Result<(), TrainError> {
        let every = u32::try_from(self.recorder.every()).map_err(|_| {
            TrainError::Internal("log_every_n_steps does not fit a step log".into())
        })?;
        let log = StepLog {
            epoch: state.epoch,
            steps: self.recorder.finish_epoch(),
            every,
        };
        write_step_log(&self.layout, &log)
    }
}

/// Writes `log` as `logs/steps/epoch_NNN.json` of the run at `layout`, atomically.
pub fn write_step_log(layout: &RunLayout, log: &StepLog) -> Result<(), TrainError> {
    let path = layout.step_log(log.epoch);
    let bytes = serde_json::to_vec(log)
        .map_err(|e| TrainError::Internal(format!("cannot encode {}: {e}", path.display())))?;
    create_dirs(&layout.steps_dir())?;
    store::atomic::write_bytes_atomic(&path, &bytes)?;
    Ok(())
}

/// Writes an RGB8 grid (`width * height * 3` bytes) as `logs/samples/epoch_NNN.png` of the
/// run at `layout`, atomically; returns the path written.
pub fn write_sample_grid(
    layout: &RunLayout,
    epoch: u32,
    rgb: &[u8],
    width: u32,
    height: u32,
) -> Result<PathBuf, TrainError> {
    let path = layout.sample_grid(epoch);
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| TrainError::Internal(format!("cannot encode {}: {e}", path.display())))?;
    create_dirs(&layout.samples_dir())?;
    store::atomic::write_bytes_atomic(&path, &png)?;
    Ok(path)
}

/// Creates `dir` and any missing parents, fsyncing the parent of each folder created so that
/// the files written into it are reachable after a power loss.
fn create_dirs(dir: &Path) -> Result<(), TrainError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
        match std::fs::create_dir(dir) {
            Ok(()) => store::atomic::sync_dir(parent)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(TrainError::io("create", dir, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(global_step: u64) -> StepProgress {
        StepProgress {
            mean_loss: 0.5,
            images: 16,
            loss: 1.0 / global_step as f64,
            lr: 1e-3,
            global_step,
        }
    }

    fn steps_kept(every: u64, epochs: &[std::ops::RangeInclusive<u64>]) -> Vec<Vec<u64>> {
        let mut recorder = StepRecorder::new(every);
        epochs
            .iter()
            .map(|range| {
                for s in range.clone() {
                    recorder.record(&step(s));
                }
                recorder.finish_epoch().iter().map(|r| r.step).collect()
            })
            .collect()
    }

    #[test]
    fn every_nth_global_step_and_each_epochs_last_are_kept() {
        // 4 steps an epoch, every 3rd: 3 and the last (4); 6 and 8; 9 and 12 (a multiple).
        assert_eq!(
            steps_kept(3, &[1..=4, 5..=8, 9..=12]),
            [vec![3, 4], vec![6, 8], vec![9, 12]]
        );
        // Every step; and an interval longer than an epoch keeps each epoch's last only.
        assert_eq!(steps_kept(1, &[1..=3, 4..=5]), [vec![1, 2, 3], vec![4, 5]]);
        assert_eq!(steps_kept(10, &[1..=4, 5..=8]), [vec![4], vec![8]]);
        // A resumed run goes on from its global step.
        assert_eq!(steps_kept(5, &[21..=30]), [vec![25, 30]]);
        // 0 is taken as 1; an epoch with no step logs none.
        assert_eq!(steps_kept(0, &[1..=2]), [vec![1, 2]]);
        assert!(StepRecorder::new(2).finish_epoch().is_empty());
    }

    #[test]
    fn a_record_holds_the_steps_loss_and_lr() {
        let mut recorder = StepRecorder::new(2);
        recorder.record(&step(2));
        assert_eq!(
            recorder.finish_epoch(),
            [StepRecord {
                step: 2,
                loss: 0.5,
                lr: 1e-3
            }]
        );
    }

    #[test]
    fn samples_are_due_every_nth_epoch_and_at_the_last_never_at_zero() {
        let due = |every, total| {
            (1..=total)
                .filter(|&e| samples_due(e, every, total))
                .collect::<Vec<u32>>()
        };
        assert_eq!(due(1, 3), [1, 2, 3]);
        assert_eq!(due(2, 3), [2, 3]);
        assert_eq!(due(2, 4), [2, 4]);
        assert_eq!(due(5, 3), [3]);
        assert_eq!(due(0, 3), Vec::<u32>::new());
    }

    #[test]
    fn logs_are_written_into_folders_created_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let layout = RunLayout::new(dir.path(), 1);
        let log = StepLog {
            epoch: 2,
            steps: vec![StepRecord {
                step: 10,
                loss: 0.25,
                lr: 1e-3,
            }],
            every: 10,
        };
        write_step_log(&layout, &log).unwrap();
        let back: StepLog =
            serde_json::from_slice(&std::fs::read(layout.step_log(2)).unwrap()).unwrap();
        assert_eq!(back, log);
        let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| i as u8).collect();
        let path = write_sample_grid(&layout, 2, &rgb, 5, 3).unwrap();
        assert_eq!(path, layout.sample_grid(2));
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (5, 3));
        assert_eq!(img.into_raw(), rgb);
        // Only the two files: no temporary file is left beside them.
        for folder in [layout.steps_dir(), layout.samples_dir()] {
            assert_eq!(std::fs::read_dir(folder).unwrap().count(), 1);
        }
    }
}
