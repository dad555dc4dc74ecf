//! `diffit sync SRC DST`: copies runs between locations (see [`remote::sync`]).

use anyhow::Context as _;
use clap::Args;

use remote::Location;

/// `diffit sync` arguments.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Where the runs are: a checkpoints dir, or `s3://bucket/prefix` (also gs://, az://).
    pub src: String,
    /// Where they go: a checkpoints dir, or an object-store URL.
    pub dst: String,
    /// Only this run.
    #[arg(long, value_parser = super::values::count::<u32>())]
    pub run_number: Option<u32>,
}

/// Runs `diffit sync`; fails (after syncing every run it can) when any run could not be synced.
pub fn sync(args: &SyncArgs) -> anyhow::Result<()> {
    let src = Location::parse(&args.src).context("SRC")?;
    let dst = Location::parse(&args.dst).context("DST")?;
    let report = remote::sync(&src, &dst, args.run_number)
        .with_context(|| format!("cannot sync {src} to {dst}"))?;
    println!(
        "synced {} run(s) from {src} to {dst}: {} file(s) copied ({} bytes), {} unchanged",
        report.runs.len(),
        report.copied,
        report.bytes,
        report.unchanged
    );
    if !report.failed.is_empty() {
        let runs: Vec<String> = report
            .failed
            .iter()
            .map(|(n, why)| format!("run {n}: {why}"))
            .collect();
        anyhow::bail!("{} run(s) not synced: {}", runs.len(), runs.join("; "));
    }
    Ok(())
}
