//! Bytes on disk for 3 runs × 10 epochs of the `small` preset with `keep_optimizer_last_n: 1`
//! (older epochs keep LoRA weights and metrics, not AdamW's moments), written by the real run
//! store (base deduplicated across runs, `best`/`last` as hard links, keep_last_n 5 + best),
//! against the seed's scheme for the same epochs (a base per run, every epoch file with its
//! optimizer state, `best` and `last` as copies), computed from the sizes of files written here.
//! Also measures the same runs without `keep_optimizer_last_n`. Prints a `BENCH {json}` line
//! with the ratios; asserts nothing.
//!
//! `cargo run --release -p trainer --example bench_disk_optimizer [-- DIR]`
#![allow(clippy::unwrap_used, clippy::expect_used)] // Benchmarks fail loudly.

use std::fs;
use std::path::Path;

use candle_core::Device;
use format::Mode;
use model::rng::Rng;
use model::{init_base_tensors, init_lora_tensors, Config, LoraConfig};
use serde_json::json;
use store::{CheckpointManager, LoraCheckpoint, RetentionPolicy, TensorMap};
use trainer::tensors::map_to_stored;

const RUNS: u32 = 3;
const EPOCHS: u32 = 10;
const KEEP_LAST_N: usize = 5;

/// What one set of runs left: bytes on disk, live epoch files, and the sizes of a base file and
/// of a whole (resumable) epoch file.
struct Written {
    bytes: u64,
    epoch_files: u64,
    base_size: u64,
    full_epoch_size: u64,
}

fn write_runs(root: &Path, policy: RetentionPolicy) -> anyhow::Result<Written> {
    let device = Device::Cpu;
    let cfg = Config::small();
    let lora_cfg = LoraConfig::default();
    let base: TensorMap = map_to_stored(&init_base_tensors(&cfg, &mut Rng::new(0), &device)?)?;
    let model_config = serde_json::to_value(&cfg)?;
    let (mut base_size, mut full_epoch_size, mut epoch_files) = (0, 0, 0);
    for run in 0..RUNS {
        let mut manager = CheckpointManager::create(root, "diffit_lora_trees")?;
        base_size = fs::metadata(manager.save_base_model(&base, &model_config)?.path)?.len();
        let mut rng = Rng::new(u64::from(run) + 1);
        for epoch in 1..=EPOCHS {
            let lora = map_to_stored(&init_lora_tensors(&cfg, &lora_cfg, &mut rng, &device)?)?;
            let mut checkpoint = LoraCheckpoint::new(epoch, u64::from(epoch) * 13);
            for (name, t) in &lora {
                checkpoint.insert_moments(name, t.clone(), t.clone());
            }
            checkpoint.lora = lora;
            checkpoint.model_config = model_config.clone();
            checkpoint.lora_config = serde_json::to_value(&lora_cfg)?;
            checkpoint.optimizer = json!({"step": epoch * 13});
            // A noisy, mostly falling val_loss, so best is not always the newest epoch.
            let val = 1.0 / f64::from(epoch) + 0.05 * rng.uniform_f64();
            checkpoint.metrics.insert("val_loss".into(), val);
            let saved = manager.save_lora_weights(&checkpoint, "val_loss", Mode::Min)?;
            full_epoch_size = fs::metadata(&saved.path)?.len();
            manager.apply_retention(policy)?;
        }
        let live: Vec<_> = manager.metadata().live_checkpoints().collect();
        let weights_only = live.iter().filter(|c| c.weights_only).count();
        println!(
            "run {:03}: {} epoch files kept ({weights_only} weights only), best epoch {:?}",
            manager.run_number(),
            live.len(),
            manager.get_best_checkpoint_info().map(|b| b.epoch)
        );
        epoch_files += live.len() as u64;
    }
    Ok(Written {
        bytes: store::disk_usage(root)?,
        epoch_files,
        base_size,
        full_epoch_size,
    })
}

fn main() -> anyhow::Result<()> {
    let holder = tempfile::tempdir_in(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| std::env::temp_dir().display().to_string()),
    )?;
    let plain = RetentionPolicy::new(KEEP_LAST_N, true);
    let moments_for_newest = RetentionPolicy {
        keep_optimizer_last_n: Some(1),
        ..plain
    };
    let with = write_runs(&holder.path().join("with"), moments_for_newest)?;
    let without = write_runs(&holder.path().join("without"), plain)?;
    // The seed's scheme for the same epochs, block-rounded as `du` counts: a base per run, every
    // kept epoch file whole, plus best and last as copies per run.
    let block = |n: u64| n.div_ceil(4096) * 4096;
    let files = with.epoch_files + 2 * u64::from(RUNS);
    let seed_scheme = u64::from(RUNS) * block(with.base_size) + files * block(with.full_epoch_size);
    let ratio = |ours: u64| ours as f64 / seed_scheme as f64;
    println!(
        "keep_optimizer_last_n 1: {} bytes = {:.3}x the seed's {seed_scheme}; without it: {} bytes = {:.3}x",
        with.bytes,
        ratio(with.bytes),
        without.bytes,
        ratio(without.bytes)
    );
    println!(
        "BENCH {}",
        json!({
            "kind": "disk_optimizer_retention", "runs": RUNS, "epochs": EPOCHS,
            "keep_last_n": KEEP_LAST_N, "keep_optimizer_last_n": 1,
            "base_bytes": with.base_size, "full_epoch_bytes": with.full_epoch_size,
            "epoch_files_kept": with.epoch_files,
            "ours_bytes": with.bytes, "ours_without_bytes": without.bytes,
            "seed_scheme_bytes": seed_scheme,
            "ratio": ratio(with.bytes), "ratio_without": ratio(without.bytes),
        })
    );
    Ok(())
}
