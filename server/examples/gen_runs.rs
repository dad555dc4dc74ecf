//! Writes synthetic runs for benchmarking: `gen_runs <checkpoints-dir> <count> [--large-bytes N]`.
//! Each run gets a `metadata.json` with ten epochs of metrics (no tensor files), a
//! `config.json` whose learning rate, batch size and LoRA rank vary from run to run, and every
//! tenth run the tag `sweep` (`annotations.json`); with
//! `--large-bytes`, run 1 also gets an `epoch_001.safetensors` of about N bytes (one sparse U8
//! tensor) with its checksum recorded, for streaming measurements.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use format::{BestCheckpoint, CheckpointName, CheckpointRecord, Metadata, RunLayout, RunStatus};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, count, large) = match args.as_slice() {
        [dir, count] => (PathBuf::from(dir), count.parse::<u32>()?, None),
        [dir, count, flag, bytes] if flag == "--large-bytes" => (
            PathBuf::from(dir),
            count.parse()?,
            Some(bytes.parse::<u64>()?),
        ),
        _ => bail!("usage: gen_runs <checkpoints-dir> <count> [--large-bytes N]"),
    };
    for n in 1..=count {
        let layout = RunLayout::new(&dir, n);
        std::fs::create_dir_all(layout.lora_dir())
            .with_context(|| format!("creating {}", layout.lora_dir().display()))?;
        let mut meta = Metadata::new(n, "diffit_lora_trees", "2025-01-15T10:30:00");
        meta.status = RunStatus::Finished;
        meta.monitor = Some("val_loss".into());
        meta.base_metrics.insert("val_loss".into(), 0.9);
        for epoch in 1..=10u32 {
            let val_loss = 0.5 / epoch as f64 + (n % 7) as f64 * 0.01;
            meta.checkpoints.push(CheckpointRecord {
                epoch,
                path: CheckpointName::Epoch(epoch).relative_path(n),
                metrics: [
                    ("val_loss".to_string(), val_loss),
                    ("train_loss".to_string(), val_loss * 0.8),
                ]
                .into(),
                saved_at: "2025-01-15T11:00:00".into(),
                checksum: None,
                size: None,
                global_step: Some(epoch as u64 * 100),
                removed: epoch <= 5,
                damaged: None,
                weights_only: false,
                extra: Default::default(),
            });
        }
        meta.best_checkpoint = Some(BestCheckpoint {
            epoch: 10,
            path: CheckpointName::Best.relative_path(n),
            metrics: [("val_loss".to_string(), 0.05)].into(),
            extra: Default::default(),
        });
        if n == 1 {
            if let Some(bytes) = large {
                let path = layout.checkpoint(CheckpointName::Epoch(1));
                write_sparse_checkpoint(&path, bytes)?;
                let record = &mut meta.checkpoints[0];
                record.removed = false;
                record.size = Some(std::fs::metadata(&path)?.len());
                record.checksum = Some(checksum(&path)?);
            }
        }
        let json = serde_json::to_vec_pretty(&meta)?;
        std::fs::write(layout.metadata(), json)
            .with_context(|| format!("writing {}", layout.metadata().display()))?;
        let learning_rate = [1e-3, 5e-4, 2e-4, 1e-4][n as usize % 4];
        let batch_size = [8, 16][n as usize % 2];
        let rank = [4, 8][(n as usize / 2) % 2];
        let config = serde_json::json!({
            "training": {"learning_rate": learning_rate, "batch_size": batch_size, "epochs": 10},
            "lora": {"rank": rank, "alpha": 8.0},
        });
        std::fs::write(layout.config(), serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", layout.config().display()))?;
        if n % 10 == 0 {
            std::fs::write(layout.annotations(), br#"{"tags": ["sweep"]}"#)
                .with_context(|| format!("writing {}", layout.annotations().display()))?;
        }
    }
    println!("wrote {count} runs under {}", dir.display());
    Ok(())
}

fn write_sparse_checkpoint(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let mut header = serde_json::to_vec(&serde_json::json!({
        "__metadata__": {"format": "diffit-lora-checkpoint", "epoch": "1"},
        "blocks.0.attn.qkv.lora_A.weight": {"dtype": "U8", "shape": [bytes], "data_offsets": [0, bytes]},
    }))?;
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&(header.len() as u64).to_le_bytes())?;
    file.write_all(&header)?;
    file.set_len(8 + header.len() as u64 + bytes)?;
    Ok(())
}

fn checksum(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}
