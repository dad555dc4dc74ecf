//! Whole training runs on the `tiny` preset: callbacks, exact resume (also after SIGKILL),
//! Ctrl-C, LoRA beating the base, export formats, TensorBoard logs, step logs and sample grids,
//! and clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use format::logs::StepLog;
use format::{CheckpointName, Metadata, RunLayout, RunStatus};
use model::DiffiT;
use trainer::train::config::{Overrides, Preset, TrainingConfig};
use trainer::train::pretrain::{pretrain, save_base, PretrainConfig};
use trainer::train::session::{run_training, TrainRequest};
use trainer::train::state::TrainState;
use trainer::train::trainer::{Callback, FitOutcome};

/// A tiny base pretrained once per test binary.
fn tiny_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let path = dir.join("base_tiny.safetensors");
        let cfg = PretrainConfig {
            epochs: 2,
            num_images: 128,
            ..PretrainConfig::for_preset(Preset::Tiny)
        };
        let tensors = pretrain(&cfg, false, &Arc::new(AtomicBool::new(false))).unwrap();
        save_base(&path, &tensors, &model::Config::tiny()).unwrap();
        path
    })
}

/// A quick tiny fine-tuning config writing runs under `dir`.
fn quick_config(dir: &Path, epochs: u32) -> TrainingConfig {
    let mut cfg = TrainingConfig::default();
    cfg.model.preset = Preset::Tiny;
    cfg.model.base = Some(tiny_base().to_path_buf());
    cfg.data.num_images = 80;
    let t = &mut cfg.training;
    (t.epochs, t.batch_size, t.warmup_steps) = (epochs, 16, 2);
    t.checkpoint.base_dir = dir.to_path_buf();
    cfg
}

fn request(cfg: TrainingConfig, overrides: Overrides, resume: bool) -> TrainRequest {
    TrainRequest {
        config: cfg,
        overrides,
        resume,
        show_progress: false,
        log_samples: false,
        device: Default::default(),
    }
}

fn no_stop() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

fn metadata(dir: &Path, run: u32) -> Metadata {
    let text = std::fs::read_to_string(RunLayout::new(dir, run).metadata()).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every tensor of a checkpoint file as bits, plus its header metadata.
fn checkpoint_bits(path: &Path) -> (BTreeMap<String, Vec<u32>>, BTreeMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let bits = tensors
        .into_iter()
        .map(|(k, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (k, v.into_iter().map(f32::to_bits).collect())
        })
        .collect();
    (bits, meta)
}

/// Epoch `epoch`'s step log of run `run`, parsed.
fn step_log(dir: &Path, run: u32, epoch: u32) -> StepLog {
    let path = RunLayout::new(dir, run).step_log(epoch);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// Checks the step logs of a run trained straight through `epochs` epochs: one per epoch, its
/// steps rising, every `every`-th global step of the epoch and its last, which is the last
/// step the epoch's checkpoint records. Returns how many steps they hold in all.
fn assert_step_logs(dir: &Path, run: u32, epochs: u32, every: u64) -> usize {
    let meta = metadata(dir, run);
    let saved = meta.checkpoints.iter().max_by_key(|c| c.epoch).unwrap();
    let per_epoch = saved.global_step.unwrap() / u64::from(saved.epoch);
    let mut total = 0;
    for epoch in 1..=epochs {
        let log = step_log(dir, run, epoch);
        assert_eq!((log.epoch, u64::from(log.every)), (epoch, every));
        let steps: Vec<u64> = log.steps.iter().map(|s| s.step).collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
        let last = u64::from(epoch) * per_epoch;
        assert_eq!(steps.last(), Some(&last), "epoch {epoch}: {steps:?}");
        if let Some(c) = meta.checkpoint(epoch) {
            assert_eq!(c.global_step, Some(last));
        }
        let first = last - per_epoch;
        let multiples = last / every - first / every;
        let expected = multiples + u64::from(!last.is_multiple_of(every));
        assert_eq!(steps.len() as u64, expected, "epoch {epoch}: {steps:?}");
        assert!(steps
            .iter()
            .all(|s| (first + 1..=last).contains(s) && (s.is_multiple_of(every) || *s == last)));
        assert!(log
            .steps
            .iter()
            .all(|s| s.loss.is_finite() && s.lr.is_finite()));
        total += steps.len();
    }
    assert!(!RunLayout::new(dir, run).step_log(epochs + 1).exists());
    total
}

fn assert_same_final_state(a: &Path, b: &Path) {
    let (ta, ma) = checkpoint_bits(a);
    let (tb, mb) = checkpoint_bits(b);
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    assert!(
        ta.keys().any(|k| k.starts_with("optimizer.exp_avg_sq.")),
        "optimizer state is saved"
    );
    for (k, v) in &ta {
        assert!(v == &tb[k], "tensor {k} differs");
    }
    for key in ["epoch", "global_step", "optimizer", "rng", "metrics"] {
        assert_eq!(ma.get(key), mb.get(key), "header {key}");
    }
}

/// Sets `stop` once run `run` has saved epoch `epoch` (so the stop lands at an arbitrary
/// point of the next epoch).
fn stop_after_epoch(
    dir: PathBuf,
    run: u32,
    epoch: u32,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(600) {
            let text =
                std::fs::read_to_string(RunLayout::new(&dir, run).metadata()).unwrap_or_default();
            if serde_json::from_str::<Metadata>(&text)
                .ok()
                .and_then(|m| m.last_epoch())
                .unwrap_or(0)
                >= epoch
            {
                stop.store(true, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

#[test]
fn six_epochs_straight_equal_stopping_after_two_and_resuming() {
    let dir = tempfile::tempdir().unwrap();
    let straight = run_training(
        &request(quick_config(dir.path(), 6), Overrides::default(), false),
        no_stop(),
    )
    .unwrap();
    assert_eq!(straight.outcome, FitOutcome::Finished);

    let run2 = Overrides {
        run_number: Some(2),
        ..Default::default()
    };
    let stop = no_stop();
    let watcher = stop_after_epoch(dir.path().to_path_buf(), 2, 2, stop.clone());
    let part = run_training(
        &request(quick_config(dir.path(), 6), run2.clone(), false),
        stop,
    )
    .unwrap();
    watcher.join().unwrap();
    assert_eq!(part.outcome, FitOutcome::Interrupted);
    assert!(
        part.epochs_done >= 2 && part.epochs_done < 6,
        "{}",
        part.epochs_done
    );
    assert_eq!(metadata(dir.path(), 2).status, RunStatus::Interrupted);
    assert!(
        !RunLayout::new(dir.path(), 2)
            .step_log(part.epochs_done + 1)
            .exists(),
        "an epoch cut short logs no steps"
    );

    let resumed =
        run_training(&request(quick_config(dir.path(), 6), run2, true), no_stop()).unwrap();
    assert_eq!(resumed.resumed_from, Some(part.epochs_done));
    assert_eq!(resumed.epochs_done, 6);
    // Step logs of the default interval, the same for the resumed run as for the straight one.
    assert_step_logs(dir.path(), 1, 6, 10);
    for epoch in 1..=6 {
        assert_eq!(
            step_log(dir.path(), 1, epoch),
            step_log(dir.path(), 2, epoch)
        );
    }

    let last = |run| RunLayout::new(dir.path(), run).checkpoint(CheckpointName::Last);
    assert_same_final_state(&last(straight.run_number), &last(2));
    let (a, b) = (metadata(dir.path(), 1), metadata(dir.path(), 2));
    assert_eq!(b.status, RunStatus::Finished);
    assert_eq!(
        a.best_checkpoint.as_ref().map(|x| x.epoch),
        b.best_checkpoint.as_ref().map(|x| x.epoch)
    );
}

#[test]
fn resume_with_more_epochs_and_a_new_lr_records_them() {
    let dir = tempfile::tempdir().unwrap();
    run_training(
        &request(quick_config(dir.path(), 2), Overrides::default(), false),
        no_stop(),
    )
    .unwrap();
    let more = Overrides {
        run_number: Some(1),
        epochs: Some(4),
        learning_rate: Some(5e-4),
        ..Default::default()
    };
    let resumed =
        run_training(&request(quick_config(dir.path(), 2), more, true), no_stop()).unwrap();
    assert_eq!((resumed.resumed_from, resumed.epochs_done), (Some(2), 4));
    let meta = metadata(dir.path(), 1);
    assert_eq!(meta.training_config["epochs"], 4);
    assert_eq!(meta.training_config["learning_rate"], 5e-4);
    let (_, header) =
        checkpoint_bits(&RunLayout::new(dir.path(), 1).checkpoint(CheckpointName::Last));
    let sched: serde_json::Value = serde_json::from_str(&header["scheduler"]).unwrap();
    assert_eq!(
        sched["changes"][0]["at_step"],
        serde_json::json!(resumed_steps(&meta, 2))
    );
    assert_eq!(sched["base_lr"], 5e-4);
    // The first epoch after resuming trains at the new LR (the cosine restarts from it).
    let lr3 = meta
        .metric_history
        .iter()
        .find(|h| h.epoch == 3)
        .unwrap()
        .metrics["lr"];
    assert!(lr3 <= 5e-4 && lr3 > 2e-4, "{lr3}");
}

fn resumed_steps(meta: &Metadata, epoch: u32) -> u64 {
    meta.checkpoint(epoch).and_then(|c| c.global_step).unwrap()
}

#[test]
fn lora_beats_the_base_on_trees_and_metadata_has_both() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_training(
        &request(quick_config(dir.path(), 6), Overrides::default(), false),
        no_stop(),
    )
    .unwrap();
    let meta = metadata(dir.path(), report.run_number);
    let base = meta.base_metrics["val_loss"];
    let best = meta.best_checkpoint.as_ref().unwrap().metrics["val_loss"];
    println!("base val_loss {base:.5}, best LoRA val_loss {best:.5}");
    assert!(best < base, "LoRA {best} should beat the base {base}");
    assert_eq!(meta.metric_history.len(), 6);
    for h in &meta.metric_history {
        for key in ["train_loss", "val_loss", "lr"] {
            assert!(h.metrics.contains_key(key), "epoch {} lacks {key}", h.epoch);
        }
    }
    assert!(RunLayout::new(dir.path(), 1)
        .checkpoint(CheckpointName::Base)
        .exists());
}

/// Records the order of hooks and requests a stop after epoch 2.
struct Recorder {
    log: Arc<std::sync::Mutex<Vec<String>>>,
    stop_after: Option<(u32, Arc<AtomicBool>)>,
}

impl Callback for Recorder {
    fn on_fit_start(
        &mut self,
        _s: &mut TrainState,
    ) -> Result<(), trainer::train::error::TrainError> {
        self.log.lock().unwrap().push("fit_start".into());
        Ok(())
    }
    fn on_base_validation_end(
        &mut self,
        _s: &mut TrainState,
        m: &format::metadata::Metrics,
    ) -> Result<(), trainer::train::error::TrainError> {
        assert!(m["val_loss"].is_finite());
        self.log.lock().unwrap().push("base".into());
        Ok(())
    }
    fn on_validation_end(
        &mut self,
        s: &mut TrainState,
        _m: &format::metadata::Metrics,
    ) -> Result<(), trainer::train::error::TrainError> {
        self.log.lock().unwrap().push(format!("val{}", s.epoch));
        Ok(())
    }
    fn on_epoch_end(
        &mut self,
        s: &mut TrainState,
        _m: &format::metadata::Metrics,
    ) -> Result<(), trainer::train::error::TrainError> {
        self.log.lock().unwrap().push(format!("epoch{}", s.epoch));
        if let Some((n, stop)) = &self.stop_after {
            if s.epoch == *n {
                stop.store(true, Ordering::SeqCst);
            }
        }
        Ok(())
    }
    fn on_fit_end(
        &mut self,
        _s: &mut TrainState,
        o: FitOutcome,
    ) -> Result<(), trainer::train::error::TrainError> {
        self.log.lock().unwrap().push(format!("end:{o:?}"));
        Ok(())
    }
}

#[test]
fn callbacks_run_in_order_and_a_stop_ends_cleanly() {
    use trainer::train::session::load_data;
    use trainer::train::trainer::Trainer;
    let dir = tempfile::tempdir().unwrap();
    let cfg = quick_config(dir.path(), 4);
    let (train, val) = load_data(&cfg, &model::Config::tiny()).unwrap();
    let base = trainer::train::pretrain::load_base(tiny_base(), &model::Config::tiny())
        .unwrap()
        .tensors;
    let steps = Trainer::steps_per_epoch(train.len(), cfg.training.batch_size);
    let mut state = TrainState::new(cfg, model::Config::tiny(), base, Device::Cpu, steps).unwrap();
    let stop = no_stop();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut t = Trainer::new(train, val, stop.clone()).with_callback(Recorder {
        log: log.clone(),
        stop_after: Some((2, stop.clone())),
    });
    let outcome = t.fit(&mut state).unwrap();
    assert_eq!(outcome, FitOutcome::Interrupted);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "fit_start",
            "base",
            "val1",
            "epoch1",
            "val2",
            "epoch2",
            "end:Interrupted"
        ]
    );
    assert_eq!(state.epoch, 2);
}

#[test]
fn retention_and_save_interval_follow_the_settings() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quick_config(dir.path(), 5);
    cfg.data.num_images = 40;
    cfg.training.checkpoint.save_every_n_epochs = 2;
    cfg.training.checkpoint.keep_last_n = 2;
    cfg.training.log_every_n_steps = 2;
    cfg.training.sample_every_n_epochs = 0;
    let mut req = request(cfg, Overrides::default(), false);
    req.log_samples = true;
    let report = run_training(&req, no_stop()).unwrap();
    assert_step_logs(dir.path(), report.run_number, 5, 2);
    let layout = RunLayout::new(dir.path(), report.run_number);
    assert!(!layout.samples_dir().exists(), "no sample grids at 0");
    let meta = metadata(dir.path(), report.run_number);
    let saved: Vec<u32> = meta.checkpoints.iter().map(|c| c.epoch).collect();
    assert_eq!(saved, [2, 4, 5], "every 2nd epoch and the last");
    let live: Vec<u32> = meta.live_checkpoints().map(|c| c.epoch).collect();
    assert!(live.len() <= 3 && live.contains(&5), "{live:?}");
    assert!(!layout.checkpoint(CheckpointName::Epoch(2)).exists() || live.contains(&2));
    assert!(layout.checkpoint(CheckpointName::Last).exists());
    assert!(layout.checkpoint(CheckpointName::Best).exists());
    assert_eq!(
        meta.metric_history.len(),
        5,
        "metrics of unsaved epochs are logged too"
    );
}

fn diffit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffit"));
    c.stdin(Stdio::null());
    c
}

fn train_args(dir: &Path, run: u32, epochs: u32) -> Vec<String> {
    let yaml = dir.join("quick.yaml");
    std::fs::write(
        &yaml,
        "data:\n  num_images: 80\ntraining:\n  batch_size: 16\n  warmup_steps: 2\n",
    )
    .unwrap();
    [
        "train",
        "--preset",
        "tiny",
        "--config",
        yaml.to_str().unwrap(),
        "--checkpoints",
        dir.to_str().unwrap(),
        "--base",
        tiny_base().to_str().unwrap(),
        "--run-number",
        &run.to_string(),
        "--epochs",
        &epochs.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn wait_for_epoch(dir: &Path, run: u32, epoch: u32, child: &mut std::process::Child) {
    let start = Instant::now();
    loop {
        let path = RunLayout::new(dir, run).metadata();
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(meta) = serde_json::from_str::<Metadata>(&text) {
                if meta.last_epoch().unwrap_or(0) >= epoch {
                    return;
                }
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("trainer exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no checkpoint of epoch {epoch}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn resume_after_sigkill_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = diffit().args(train_args(d, 1, 5)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut child = diffit()
        .args(train_args(d, 2, 5))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_epoch(d, 2, 2, &mut child);
    // Somewhere inside epoch 3 (or while saving it): SIGKILL leaves no chance to clean up.
    std::thread::sleep(Duration::from_millis(150));
    child.kill().unwrap();
    child.wait().unwrap();
    let mut resume = train_args(d, 2, 5);
    resume.push("--resume".into());
    let out = diffit().args(&resume).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let last = |run| RunLayout::new(d, run).checkpoint(CheckpointName::Last);
    assert_same_final_state(&last(1), &last(2));
}

#[test]
fn sigint_stops_cleanly_and_marks_the_run_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut child = diffit()
        .args(train_args(d, 1, 50))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_epoch(d, 1, 1, &mut child);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--resume"), "{stderr}");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let meta = metadata(d, 1);
    assert_eq!(meta.status, RunStatus::Interrupted);
    assert!(meta.last_epoch().unwrap() < 50);
    // And it resumes from there.
    let mut resume = train_args(d, 1, meta.last_epoch().unwrap() + 1);
    resume.push("--resume".into());
    let out = diffit().args(&resume).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(metadata(d, 1).status, RunStatus::Finished);
}

#[test]
fn sigint_during_the_automatic_pretraining_exits_as_interrupted() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No --base and nothing cached: `train` pretrains the tiny base first.
    let mut child = diffit()
        .args(["train", "--preset", "tiny", "--checkpoints"])
        .arg(d)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "exited before pretraining: {seen}"
        );
        seen.push_str(&line);
        if line.contains("pretraining the tiny base") {
            break;
        }
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(!rest.contains("error:"), "a stop is no error: {rest}");
    let cached = trainer::train::pretrain::cached_base_path(
        d,
        Preset::Tiny,
        trainer::train::pretrain::DEFAULT_PRETRAIN_SEED,
    );
    assert!(!cached.exists(), "no half-trained base is cached");
}

fn run_cli(args: &[&str]) -> (bool, String) {
    let out = diffit().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_flags_config_and_data_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, err) = run_cli(&["train", "--preset", "huge", "--checkpoints", d]);
    assert!(!ok && err.contains("huge") && err.contains("tiny"), "{err}");
    let (ok, err) = run_cli(&[
        "train",
        "--config",
        "/nonexistent/x.yaml",
        "--checkpoints",
        d,
    ]);
    assert!(!ok && err.contains("/nonexistent/x.yaml"), "{err}");
    let yaml = dir.path().join("bad.yaml");
    std::fs::write(&yaml, "training:\n  epoch: 3\n").unwrap();
    let (ok, err) = run_cli(&[
        "train",
        "--config",
        yaml.to_str().unwrap(),
        "--checkpoints",
        d,
    ]);
    assert!(
        !ok && err.contains("epoch") && err.contains("bad.yaml"),
        "{err}"
    );
    let (ok, err) = run_cli(&["train", "--data", "/nonexistent/images", "--checkpoints", d]);
    assert!(!ok && err.contains("/nonexistent/images"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, err) = run_cli(&[
        "train",
        "--preset",
        "tiny",
        "--data",
        empty.to_str().unwrap(),
        "--checkpoints",
        d,
        "--base",
        tiny_base().to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("empty"), "{err}");
    let (ok, err) = run_cli(&["train", "--resume", "--checkpoints", d]);
    assert!(!ok && err.contains("run-number"), "{err}");
    let (ok, err) = run_cli(&["train", "--run-number", "7", "--resume", "--checkpoints", d]);
    assert!(!ok && err.contains('7'), "{err}");
    let (ok, err) = run_cli(&[
        "train",
        "--epochs",
        "0",
        "--checkpoints",
        d,
        "--base",
        tiny_base().to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("epochs"), "{err}");
    let (ok, err) = run_cli(&[
        "sample",
        "--run-number",
        "1",
        "--checkpoint",
        "epoch_1",
        "--out",
        "x.png",
        "--checkpoints",
        d,
    ]);
    assert!(!ok && err.contains("epoch_1"), "{err}");
    let (ok, err) = run_cli(&[
        "export",
        "--run-number",
        "1",
        "--format",
        "onnx",
        "--out",
        "x",
        "--checkpoints",
        d,
    ]);
    assert!(!ok && err.contains("onnx"), "{err}");
    // A base of the wrong preset.
    let (ok, err) = run_cli(&[
        "train",
        "--preset",
        "small",
        "--base",
        tiny_base().to_str().unwrap(),
        "--checkpoints",
        d,
    ]);
    assert!(!ok && err.contains("preset"), "{err}");
}

#[test]
fn resume_with_a_different_base_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = diffit().args(train_args(d, 1, 1)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = d.join("other.safetensors");
    let cfg = PretrainConfig {
        epochs: 1,
        num_images: 32,
        seed: 9,
        ..PretrainConfig::for_preset(Preset::Tiny)
    };
    let tensors = pretrain(&cfg, false, &no_stop()).unwrap();
    save_base(&other, &tensors, &model::Config::tiny()).unwrap();
    let (ok, err) = run_cli(&[
        "train",
        "--run-number",
        "1",
        "--resume",
        "--epochs",
        "2",
        "--checkpoints",
        d.to_str().unwrap(),
        "--base",
        other.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("differs"), "{err}");
    // The same base is accepted.
    let mut same = train_args(d, 1, 2);
    same.push("--resume".into());
    let out = diffit().args(&same).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sample_and_export_formats() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = diffit().args(train_args(d, 1, 2)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ds = d.to_str().unwrap();

    let png = d.join("grid.png");
    let (ok, err) = run_cli(&[
        "sample",
        "--run-number",
        "1",
        "--checkpoint",
        "last",
        "--n",
        "4",
        "--steps",
        "5",
        "--seed",
        "3",
        "--out",
        png.to_str().unwrap(),
        "--checkpoints",
        ds,
    ]);
    assert!(ok, "{err}");
    let img = image::open(&png).unwrap();
    assert!(img.width() >= 2 * 16 && img.height() >= 2 * 16);

    let merged = d.join("model.safetensors");
    let (ok, err) = run_cli(&[
        "export",
        "--run-number",
        "1",
        "--format",
        "merged",
        "--out",
        merged.to_str().unwrap(),
        "--checkpoints",
        ds,
    ]);
    assert!(ok, "{err}");
    let fused = candle_core::safetensors::load(&merged, &Device::Cpu).unwrap();
    assert!(
        fused.keys().all(|k| !k.contains("lora_")),
        "no LoRA tensors in a merged export"
    );
    // The merged model predicts what base + LoRA predicts.
    let layout = RunLayout::new(d, 1);
    let base =
        candle_core::safetensors::load(layout.checkpoint(CheckpointName::Base), &Device::Cpu)
            .unwrap();
    let lora_file =
        candle_core::safetensors::load(layout.checkpoint(CheckpointName::Best), &Device::Cpu)
            .unwrap();
    let lora: std::collections::HashMap<String, Tensor> = lora_file
        .into_iter()
        .filter(|(k, _)| !k.starts_with("optimizer."))
        .collect();
    let cfg = model::Config::tiny();
    let lcfg = model::LoraConfig::default();
    let with_lora = DiffiT::new(
        &cfg,
        VarBuilder::from_tensors(base, DType::F32, &Device::Cpu),
        Some((
            &lcfg,
            VarBuilder::from_tensors(lora, DType::F32, &Device::Cpu),
        )),
    )
    .unwrap();
    let plain = DiffiT::new(
        &cfg,
        VarBuilder::from_tensors(fused, DType::F32, &Device::Cpu),
        None,
    )
    .unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 16, 16), &Device::Cpu).unwrap();
    let t = Tensor::new(&[10f32, 500.0], &Device::Cpu).unwrap();
    let diff = (with_lora.forward(&x, &t).unwrap() - plain.forward(&x, &t).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-4, "merged differs from base + LoRA by {diff}");

    let peft = d.join("adapter");
    let (ok, err) = run_cli(&[
        "export",
        "--run-number",
        "1",
        "--format",
        "peft",
        "--out",
        peft.to_str().unwrap(),
        "--checkpoints",
        ds,
    ]);
    assert!(ok, "{err}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 5);
    let adapters =
        candle_core::safetensors::load(peft.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert!(!adapters.is_empty());
    assert!(adapters.keys().all(|k| k.starts_with("base_model.model.")
        && (k.contains(".lora_A.") || k.contains(".lora_B."))));

    // Python's safetensors reads both exports, when the venv exists.
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if py.exists() {
        for file in [merged.clone(), peft.join("adapter_model.safetensors")] {
            let out = Command::new(&py)
                .args(["-c", "import sys; from safetensors.numpy import load_file; print(len(load_file(sys.argv[1])))"])
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        println!(
            "SKIPPED the Python safetensors check: {} is absent",
            py.display()
        );
    }
}

#[test]
fn tensorboard_reads_a_real_runs_logs_and_sample_grids_are_written_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut args = train_args(d, 1, 3);
    args.extend(["--sample-every-n-epochs".into(), "2".into()]);
    let out = diffit().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps_logged = assert_step_logs(d, 1, 3, 10);
    // Grids after every 2nd epoch and the last: 4 tiny 16-pixel images in a row, 2-pixel gaps.
    let layout = RunLayout::new(d, 1);
    let (width, height) = (4 * 16 + 5 * 2, 16 + 2 * 2);
    assert!(!layout.sample_grid(1).exists());
    for epoch in [2, 3] {
        let img = image::open(layout.sample_grid(epoch)).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (width, height),
            "epoch {epoch}"
        );
    }
    assert_eq!(std::fs::read_dir(layout.samples_dir()).unwrap().count(), 2);

    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if !py.exists() {
        println!("SKIPPED the TensorBoard reader: {} is absent", py.display());
        return;
    }
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0})
acc.Reload()
scalars = {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
images = {tag: [[e.step, e.width, e.height] for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
print(json.dumps({"scalars": scalars, "images": images}))
"#;
    let out = Command::new(&py)
        .args(["-c", script])
        .arg(layout.logs_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = |tag: &str| -> Vec<u64> {
        read["scalars"][tag]
            .as_array()
            .unwrap_or_else(|| panic!("no {tag} in {read}"))
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    for tag in ["train_loss", "val_loss", "lr"] {
        assert_eq!(steps(tag), [1, 2, 3], "{tag}");
    }
    let logged: Vec<u64> = (1..=3)
        .flat_map(|e| step_log(d, 1, e).steps)
        .map(|s| s.step)
        .collect();
    assert_eq!(logged.len(), steps_logged);
    assert_eq!(steps("train_loss_step"), logged);
    assert_eq!(steps("lr_step"), logged);
    assert_eq!(
        read["images"]["samples"],
        serde_json::json!([[2, width, height], [3, width, height]])
    );
}

#[test]
fn pretraining_is_deterministic_for_a_seed() {
    let cfg = PretrainConfig {
        epochs: 1,
        num_images: 32,
        seed: 5,
        ..PretrainConfig::for_preset(Preset::Tiny)
    };
    let a = pretrain(&cfg, false, &no_stop()).unwrap();
    let b = pretrain(&cfg, false, &no_stop()).unwrap();
    assert!(trainer::train::pretrain::same_weights(&a, &b).unwrap());
    let c = pretrain(&PretrainConfig { seed: 6, ..cfg }, false, &no_stop()).unwrap();
    assert!(!trainer::train::pretrain::same_weights(&a, &c).unwrap());
}

/// The model config written in a checkpoint file's header.
fn checkpoint_model_config(dir: &Path, run: u32) -> model::Config {
    let (_, header) = checkpoint_bits(&RunLayout::new(dir, run).checkpoint(CheckpointName::Last));
    serde_json::from_str(&header["model_config"]).unwrap()
}

#[test]
fn an_older_base_trains_and_resumes_as_it_was_made_and_a_stale_cache_is_replaced() {
    use model::{Config, Prediction};
    use trainer::train::pretrain::{base_model_config, cached_base_path, DEFAULT_PRETRAIN_SEED};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A base saved by an older version: ε-prediction, SiLU in the head, no adaLN layers.
    let eps_cfg = Config {
        prediction: Prediction::Epsilon,
        final_silu: true,
        adaln: false,
        ..Config::tiny()
    };
    let old = d.join("eps_base.safetensors");
    let tensors: std::collections::HashMap<_, _> =
        trainer::train::pretrain::load_base(tiny_base(), &Config::tiny())
            .unwrap()
            .tensors
            .into_iter()
            .filter(|(name, _)| !name.contains("adaLN_modulation"))
            .collect();
    assert!(tensors.len() < model::base_tensor_shapes(&Config::tiny()).len());
    save_base(&old, &tensors, &eps_cfg).unwrap();

    let mut cfg = quick_config(d, 1);
    cfg.model.base = Some(old.clone());
    run_training(
        &request(cfg.clone(), Overrides::default(), false),
        no_stop(),
    )
    .unwrap();
    assert_eq!(checkpoint_model_config(d, 1), eps_cfg);
    let more = Overrides {
        run_number: Some(1),
        epochs: Some(2),
        ..Default::default()
    };
    let resumed = run_training(&request(cfg, more, true), no_stop()).unwrap();
    assert_eq!(resumed.epochs_done, 2);
    assert_eq!(checkpoint_model_config(d, 1), eps_cfg);

    // A cached ε base is not reused for a new run: the preset's base is pretrained again.
    let cached = cached_base_path(d, Preset::Tiny, DEFAULT_PRETRAIN_SEED);
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::copy(&old, &cached).unwrap();
    let mut cfg = quick_config(d, 1);
    cfg.model.base = None;
    let report = run_training(&request(cfg, Overrides::default(), false), no_stop()).unwrap();
    assert_eq!(report.run_number, 2);
    assert_eq!(base_model_config(&cached).unwrap(), Some(Config::tiny()));
    assert_eq!(checkpoint_model_config(d, 2), Config::tiny());

    // A torn cache (a write cut short) is pretrained again instead of failing the run.
    let bytes = std::fs::read(&cached).unwrap();
    std::fs::write(&cached, &bytes[..bytes.len() / 2]).unwrap();
    assert!(base_model_config(&cached).is_err());
    let mut cfg = quick_config(d, 1);
    cfg.model.base = None;
    let report = run_training(&request(cfg, Overrides::default(), false), no_stop()).unwrap();
    assert_eq!(report.run_number, 3);
    assert_eq!(base_model_config(&cached).unwrap(), Some(Config::tiny()));
    let rebuilt = std::fs::read(&cached).unwrap();
    assert_eq!(rebuilt.len(), bytes.len(), "rebuilt whole");
}
