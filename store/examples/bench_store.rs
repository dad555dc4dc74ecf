//! Run-store numbers: `list_all_runs` over 10,000 runs, and LoRA checkpoint save throughput
//! (fsync'd) next to a plain fsync'd write of the same bytes on the same disk.
//!
//! `cargo run --release -p store --example bench_store [-- DIR]` (default: a temporary
//! directory). Prints numbers only; nothing is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use format::{Mode, RunLayout};
use serde_json::Value;
use store::{list_all_runs, CheckpointManager, LoraCheckpoint, StoredTensor};

const RUNS: u32 = 10_000;

fn main() -> anyhow::Result<()> {
    let holder = tempfile::tempdir_in(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| std::env::temp_dir().display().to_string()),
    )?;
    let root = holder.path();
    println!("bench directory: {}", root.display());
    bench_listing(&root.join("listing"))?;
    bench_saves(&root.join("saves"))?;
    Ok(())
}

/// Builds 10,000 runs (one real, the rest copies of its metadata renumbered), then lists them.
fn bench_listing(base: &Path) -> anyhow::Result<()> {
    let mut template_run = CheckpointManager::create(base, "diffit_lora_trees")?;
    for epoch in 1..=20 {
        let mut c = LoraCheckpoint::new(epoch, u64::from(epoch) * 100);
        c.lora.insert(
            "m.lora_A.weight".into(),
            StoredTensor::new(vec![2, 2], vec![0.0; 4]).ok_or_else(|| anyhow::anyhow!("shape"))?,
        );
        c.metrics.insert("val_loss".into(), 1.0 / f64::from(epoch));
        c.metrics
            .insert("train_loss".into(), 1.1 / f64::from(epoch));
        template_run.save_lora_weights(&c, "val_loss", Mode::Min)?;
    }
    template_run.cleanup_old_checkpoints(5, true)?;
    let template: Value = serde_json::from_slice(&fs::read(template_run.layout().metadata())?)?;
    drop(template_run);
    let started = Instant::now();
    for n in 2..=RUNS {
        let layout = RunLayout::new(base, n);
        fs::create_dir(layout.root())?;
        let mut meta = template.clone();
        meta["run_number"] = n.into();
        fs::write(layout.metadata(), serde_json::to_vec_pretty(&meta)?)?;
    }
    println!(
        "built {RUNS} runs ({} bytes of metadata each) in {:.1} s",
        fs::metadata(RunLayout::new(base, 1).metadata())?.len(),
        started.elapsed().as_secs_f64()
    );
    for _ in 0..3 {
        let started = Instant::now();
        let mut bytes = 0;
        for n in 1..=RUNS {
            bytes += fs::read(RunLayout::new(base, n).metadata())?.len();
        }
        let read = started.elapsed();
        println!(
            "  read only: {bytes} bytes of metadata.json in {:.1} ms",
            read.as_secs_f64() * 1e3
        );
    }
    let mut times = Vec::new();
    for attempt in 1..=5 {
        let started = Instant::now();
        let runs = list_all_runs(base)?;
        let elapsed = started.elapsed();
        let ok = runs.iter().filter(|r| r.info.is_ok()).count();
        println!(
            "list_all_runs #{attempt}: {} runs ({ok} ok) in {:.1} ms",
            runs.len(),
            elapsed.as_secs_f64() * 1e3
        );
        times.push(elapsed.as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "BENCH {}",
        serde_json::json!({"kind": "listing", "runs": RUNS, "median_ms": times[times.len() / 2]})
    );
    Ok(())
}

fn lora_checkpoint(megabytes: usize) -> anyhow::Result<LoraCheckpoint> {
    let mut c = LoraCheckpoint::new(1, 1);
    // 256 KiB per tensor: LoRA-like shapes.
    let per_tensor = 64 * 1024;
    let tensors = megabytes * 1024 * 1024 / 4 / per_tensor;
    for i in 0..tensors {
        let values: Vec<f32> = (0..per_tensor)
            .map(|j| (i * per_tensor + j) as f32 * 1e-6)
            .collect();
        let t =
            StoredTensor::new(vec![256, 256], values).ok_or_else(|| anyhow::anyhow!("shape"))?;
        if i % 3 == 0 {
            c.lora.insert(format!("blocks.{i}.lora_A.weight"), t);
        } else {
            c.optimizer_tensors
                .insert(format!("optimizer.exp_avg.blocks.{i}.lora_A.weight"), t);
        }
    }
    c.metrics.insert("val_loss".into(), 0.5);
    Ok(c)
}

/// Alternates our checkpoint save with a plain write + fsync of the same bytes, `BENCH_ROUNDS`
/// times (default 11) per size; each round's pair gives one ratio.
fn bench_saves(base: &Path) -> anyhow::Result<()> {
    let rounds: u32 = match std::env::var("BENCH_ROUNDS") {
        Ok(n) => n
            .parse()
            .map_err(|e| anyhow::anyhow!("BENCH_ROUNDS={n}: {e}"))?,
        Err(_) => 11,
    };
    anyhow::ensure!(rounds >= 1, "BENCH_ROUNDS must be at least 1");
    // 1 MB is about a `small` LoRA checkpoint (adapters + AdamW moments, 0.8 MB).
    for megabytes in [1usize, 8, 64] {
        let mut run = CheckpointManager::create(base, "bench")?;
        let mut checkpoint = lora_checkpoint(megabytes)?;
        let plain = base.join(format!("plain_{megabytes}.bin"));
        let mut pairs = Vec::new();
        for round in 1..=rounds {
            checkpoint.epoch = round;
            let started = Instant::now();
            let saved = run.save_lora_weights(&checkpoint, "val_loss", Mode::Min)?;
            let ours = started.elapsed().as_secs_f64();
            let bytes = fs::read(&saved.path)?;
            let started = Instant::now();
            let mut file = fs::File::create(&plain)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            drop(file);
            pairs.push((ours, started.elapsed().as_secs_f64()));
            run.cleanup_old_checkpoints(1, false)?;
        }
        let size = fs::metadata(&plain)?.len() as f64 / 1e6;
        let rates = |pick: fn(&(f64, f64)) -> f64| -> String {
            pairs
                .iter()
                .map(|p| format!("{:.0}", size / pick(p)))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        println!(
            "LoRA save  {size:>6.1} MB: MB/s per round {}",
            rates(|p| p.0)
        );
        println!(
            "plain write {size:>5.1} MB: MB/s per round {}",
            rates(|p| p.1)
        );
        let median = |pick: fn(&(f64, f64)) -> f64| {
            let mut secs: Vec<f64> = pairs.iter().map(pick).collect();
            secs.sort_by(f64::total_cmp);
            secs[secs.len() / 2]
        };
        let (ours, theirs) = (median(|p| p.0), median(|p| p.1));
        println!(
            "  median: save_lora_weights {:.0} MB/s, plain write+fsync {:.0} MB/s",
            size / ours,
            size / theirs
        );
        // Per round: [our ms, plain ms]; the report takes each round's ratio.
        let rounds: Vec<[f64; 2]> = pairs.iter().map(|p| [p.0 * 1e3, p.1 * 1e3]).collect();
        println!(
            "BENCH {}",
            serde_json::json!({"kind": "save", "megabytes": size, "save_mb_s": size / ours,
                               "plain_mb_s": size / theirs, "save_ms": ours * 1e3,
                               "rounds_ms": rounds})
        );
    }
    Ok(())
}
