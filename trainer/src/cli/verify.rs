//! `diffit verify --run-number N`: every live file checked against its recorded checksum. A run
//! the seed system wrote is reported as such (it records no checksums and its `.ckpt` files are
//! PyTorch pickles), not as damaged.

use std::path::Path;

use anyhow::Context as _;

use store::{CheckpointManager, StoreError};

/// Verifies a run, printing one line per file; an error (non-zero exit) if any is damaged.
pub fn verify_run(base_dir: &Path, run_number: u32) -> anyhow::Result<()> {
    let run =
        CheckpointManager::open_read_only(super::runs::local_dir(base_dir, "verify")?, run_number)
            .with_context(|| format!("cannot verify run {run_number}"))?;
    let report = run.verify();
    if report.seed.is_some() {
        return Err(StoreError::SeedRun {
            action: "verify",
            run_number,
            run_dir: run.run_dir(),
        }
        .into());
    }
    for path in &report.ok {
        println!("ok       {}", path.display());
    }
    for damage in &report.damaged {
        println!("DAMAGED  {damage}");
    }
    if !report.is_ok() {
        anyhow::bail!(
            "run {run_number}: {} of {} files damaged",
            report.damaged.len(),
            report.damaged.len() + report.ok.len()
        );
    }
    println!("run {run_number}: all {} files verified", report.ok.len());
    Ok(())
}
