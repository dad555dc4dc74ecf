//! Bytes on disk for 3 runs × 10 epochs of the `small` preset on one base, written by the real
//! run store (base deduplicated across runs, `best`/`last` as hard links, keep_last_n = 5),
//! next to the seed's scheme (a base per run, `best` and `last` as copies) and to a full
//! model per epoch, both computed from the sizes of the very files written here.
//! Prints a `BENCH {json}` line; asserts nothing.
//!
//! `cargo run --release -p trainer --example bench_disk [-- DIR [KEEP_IN]]`
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::fs;

use candle_core::Device;
use format::Mode;
use model::rng::Rng;
use model::{init_base_tensors, init_lora_tensors, Config, LoraConfig};
use serde_json::json;
use store::{CheckpointManager, LoraCheckpoint, TensorMap};
use trainer::tensors::map_to_stored;

const RUNS: u32 = 3;
const EPOCHS: u32 = 10;
const KEEP_LAST_N: usize = 5;

fn main() -> anyhow::Result<()> {
    let holder = tempfile::tempdir_in(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| std::env::temp_dir().display().to_string()),
    )?;
    // A second argument keeps the runs there (bench/run.sh measures them in a bucket too).
    let root = std::env::args().nth(2).map_or_else(
        || holder.path().join("checkpoints"),
        std::path::PathBuf::from,
    );
    let device = Device::Cpu;
    let cfg = Config::small();
    let lora_cfg = LoraConfig::default();
    let base: TensorMap = map_to_stored(&init_base_tensors(&cfg, &mut Rng::new(0), &device)?)?;
    let model_config = serde_json::to_value(&cfg)?;
    let (mut base_size, mut lora_size, mut total_kept) = (0u64, 0u64, 0u64);
    for run in 0..RUNS {
        let mut manager = CheckpointManager::create(&root, "diffit_lora_trees")?;
        let saved = manager.save_base_model(&base, &model_config)?;
        base_size = fs::metadata(&saved.path)?.len();
        let mut rng = Rng::new(u64::from(run) + 1);
        for epoch in 1..=EPOCHS {
            let lora = init_lora_tensors(&cfg, &lora_cfg, &mut rng, &device)?;
            let mut checkpoint = LoraCheckpoint::new(epoch, u64::from(epoch) * 13);
            let lora = map_to_stored(&lora)?;
            for (name, t) in &lora {
                // AdamW's two moments per trainable tensor, as the trainer saves them.
                for moment in ["exp_avg", "exp_avg_sq"] {
                    checkpoint
                        .optimizer_tensors
                        .insert(format!("optimizer.{moment}.{name}"), t.clone());
                }
            }
            checkpoint.lora = lora;
            checkpoint.model_config = model_config.clone();
            checkpoint.lora_config = serde_json::to_value(&lora_cfg)?;
            // A noisy, mostly falling val_loss, so best is not always the newest epoch.
            let val = 1.0 / f64::from(epoch) + 0.05 * rng.uniform_f64();
            checkpoint.metrics.insert("val_loss".into(), val);
            let saved = manager.save_lora_weights(&checkpoint, "val_loss", Mode::Min)?;
            lora_size = fs::metadata(&saved.path)?.len();
            manager.cleanup_old_checkpoints(KEEP_LAST_N, true)?;
        }
        let kept = manager.list_checkpoints().len() as u64;
        total_kept += kept;
        println!(
            "run {:03}: {kept} epoch files kept, best epoch {:?}",
            manager.run_number(),
            manager.get_best_checkpoint_info().map(|b| b.epoch)
        );
    }
    let ours = store::disk_usage(&root)?;
    // Block-rounded sizes for the computed schemes, as `du` would count them.
    let block = |n: u64| n.div_ceil(4096) * 4096;
    // Same retention in every scheme: the epoch files kept here, plus best and last per run.
    let files = total_kept + 2 * u64::from(RUNS);
    let seed_scheme = u64::from(RUNS) * block(base_size) + files * block(lora_size);
    let full_per_epoch = files * block(base_size + lora_size);
    println!(
        "BENCH {}",
        json!({
            "kind": "disk", "runs": RUNS, "epochs": EPOCHS, "keep_last_n": KEEP_LAST_N,
            "base_bytes": base_size, "lora_checkpoint_bytes": lora_size, "epoch_files_kept": total_kept,
            "ours_bytes": ours, "seed_scheme_bytes": seed_scheme,
            "full_model_per_epoch_bytes": full_per_epoch,
        })
    );
    Ok(())
}
