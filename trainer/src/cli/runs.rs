//! `diffit train --list-runs` / `diffit runs list` (the seed's table) and `diffit runs show N`.

use std::path::Path;

use anyhow::Context as _;

use format::api::RunState;
use store::{list_all_runs, CheckpointManager, RunListing};

/// A rule line of the seed's table.
fn rule(c: char) -> String {
    std::iter::repeat_n(c, 80).collect()
}

/// The seed's run table: one line per run, starting with its number; broken runs say why.
pub fn format_runs_table(runs: &[RunListing]) -> String {
    let mut out = String::new();
    out.push_str("Available Training Runs:\n");
    out.push_str(&rule('='));
    out.push('\n');
    out.push_str(&format!(
        "{:<8} {:<25} {:<21} {}\n",
        "Run #", "Experiment", "Created", "Checkpoints"
    ));
    out.push_str(&rule('-'));
    out.push('\n');
    for run in runs {
        let line = match &run.info {
            Ok(info) => {
                // `2025-01-15T10:30:00` is shown as `2025-01-15 10:30:00`, as in the seed.
                let created = info.created_at.replacen('T', " ", 1);
                // Finished runs read as in the seed; any other state follows the count.
                let state = match RunState::of(info.recorded_status, info.writer_active) {
                    RunState::Finished => String::new(),
                    other => format!("  ({})", other.as_str()),
                };
                format!(
                    "{:<8} {:<25} {:<20} {}{state}",
                    run.run_number, info.experiment_name, created, info.checkpoints_count
                )
            }
            Err(e) => format!("{:<8} BROKEN: {e}", run.run_number),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&rule('='));
    out.push('\n');
    out
}

/// The checkpoints dir of a command that reads runs from a local disk; an object-store URL
/// is refused with the way to bring its runs down (`diffit sync`).
pub(crate) fn local_dir<'a>(dir: &'a Path, command: &str) -> anyhow::Result<&'a Path> {
    match remote::Location::parse(&dir.to_string_lossy()) {
        Ok(remote::Location::Objects(url)) => anyhow::bail!(
            "`diffit {command}` reads runs from a local checkpoints dir, not {url}: bring them \
             down first with `diffit sync {url} DIR`, then pass --checkpoints DIR"
        ),
        _ => Ok(dir),
    }
}

/// Prints the table of runs under `base_dir`, a checkpoints dir or an object-store URL.
pub fn print_runs_table(base_dir: &Path) -> anyhow::Result<()> {
    let location = remote::Location::parse(&base_dir.to_string_lossy())?;
    let runs = match &location {
        remote::Location::Local(dir) => list_all_runs(dir)?,
        remote::Location::Objects(url) => {
            let bucket = remote::Bucket::open(url)?;
            remote::list_runs(&bucket).with_context(|| format!("cannot list the runs in {url}"))?
        }
    };
    if runs.is_empty() {
        println!("No training runs in {location}");
        return Ok(());
    }
    print!("{}", format_runs_table(&runs));
    Ok(())
}

/// Prints the summary of run `run_number`.
pub fn show_run(base_dir: &Path, run_number: u32) -> anyhow::Result<()> {
    let run = CheckpointManager::open_read_only(local_dir(base_dir, "runs show")?, run_number)
        .with_context(|| format!("cannot show run {run_number}"))?;
    print!("{}", run.get_run_summary());
    Ok(())
}
