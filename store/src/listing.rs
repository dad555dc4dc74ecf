//! `list_all_runs`: one row per run directory, read from metadata.json alone, so listing
//! thousands of runs stays fast; a broken run is a row with its error, never hiding the others.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use format::api::{BestSummary, RunInfo};
use format::layout::parse_run_dir_name;
use format::metadata::{metric_values, Metrics};
use format::{RunLayout, RunStatus};

use super::error::{IoContext, Result, StoreError};
use super::lock::writer_active;
use super::manager::read_metadata_as;

/// One run directory in a listing.
#[derive(Debug)]
pub struct RunListing {
    /// Number from the directory name.
    pub run_number: u32,
    /// The run directory.
    pub dir: PathBuf,
    /// The run's summary, or why it could not be read.
    pub info: Result<RunInfo>,
}

/// The part of metadata.json a listing needs; the rest is skipped unparsed.
#[derive(Deserialize)]
struct ListedMetadata {
    run_number: u32,
    experiment_name: String,
    created_at: String,
    checkpoints: Vec<ListedCheckpoint>,
    #[serde(default)]
    best_checkpoint: Option<ListedBest>,
    #[serde(default)]
    status: RunStatus,
    #[serde(default)]
    status_reason: Option<String>,
    #[serde(default)]
    monitor: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default, deserialize_with = "metric_values::deserialize")]
    base_metrics: Metrics,
}

#[derive(Deserialize)]
struct ListedCheckpoint {
    epoch: u32,
    #[serde(default)]
    removed: bool,
    #[serde(default)]
    damaged: Option<String>,
}

#[derive(Deserialize)]
struct ListedBest {
    epoch: u32,
    #[serde(deserialize_with = "metric_values::deserialize")]
    metrics: Metrics,
}

/// Reads one run's row (the API's [`RunInfo`]).
pub fn run_info(layout: &RunLayout) -> Result<RunInfo> {
    let m = read_metadata_as(layout, |m: &ListedMetadata| m.run_number)?;
    Ok(row(m, writer_active(layout)))
}

/// One run's row from the bytes of its `metadata.json` read elsewhere (an object store), for
/// run `run_number`; `writer_active` says whether a writer is known to hold it. The error says
/// what is wrong with the bytes.
pub fn run_info_from_json(
    bytes: &[u8],
    run_number: u32,
    writer_active: bool,
) -> std::result::Result<RunInfo, String> {
    let m: ListedMetadata = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if m.run_number != run_number {
        return Err(format!(
            "run_number is {}, but the directory is run {run_number}",
            m.run_number
        ));
    }
    Ok(row(m, writer_active))
}

fn row(m: ListedMetadata, writer_active: bool) -> RunInfo {
    let monitor = m.monitor.unwrap_or_else(|| "val_loss".to_string());
    RunInfo {
        experiment_name: m.experiment_name,
        created_at: m.created_at,
        updated_at: m.updated_at,
        recorded_status: m.status,
        status_reason: m.status_reason,
        checkpoints_count: m
            .checkpoints
            .iter()
            .filter(|c| !c.removed && c.damaged.is_none())
            .count(),
        last_epoch: m.checkpoints.iter().map(|c| c.epoch).max(),
        best: m.best_checkpoint.map(|b| BestSummary {
            epoch: b.epoch,
            value: b.metrics.get(&monitor).copied(),
            monitor,
        }),
        base_val_loss: m.base_metrics.get("val_loss").copied(),
        writer_active,
    }
}

/// Every run under `base_dir`, by number. A missing `base_dir` has no runs; directories not
/// named `run_NNN` are ignored.
pub fn list_all_runs(base_dir: impl AsRef<Path>) -> Result<Vec<RunListing>> {
    let base_dir = base_dir.as_ref();
    let entries = match fs::read_dir(base_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("list", base_dir, e)),
    };
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry.ctx("list", base_dir)?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_run_dir_name) {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    let row = |n: u32| {
        let layout = RunLayout::new(base_dir, n);
        RunListing {
            run_number: n,
            dir: layout.root(),
            info: run_info(&layout),
        }
    };
    // Reading a run is a few syscalls and a JSON parse; spread thousands over the cores, in
    // order-preserving chunks.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || numbers.len() < 256 {
        return Ok(numbers.into_iter().map(row).collect());
    }
    let chunk = numbers.len().div_ceil(threads);
    let parts: Vec<Vec<RunListing>> = std::thread::scope(|scope| {
        let handles: Vec<_> = numbers
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(|&n| row(n)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    Ok(parts.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Enough runs for the parallel path: every run in order, a broken one reported in place.
    #[test]
    fn many_runs_are_listed_in_order_with_broken_ones_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let total = 600u32;
        for n in 1..=total {
            let layout = RunLayout::new(dir.path(), n);
            fs::create_dir_all(layout.root()).unwrap();
            let text = if n == 300 {
                "{ not json".to_string()
            } else {
                format!(
                    r#"{{"run_number": {n}, "experiment_name": "e{n}", "created_at": "2025-01-01T00:00:00", "checkpoints": []}}"#
                )
            };
            fs::write(layout.metadata(), text).unwrap();
        }
        let runs = list_all_runs(dir.path()).unwrap();
        assert_eq!(runs.len(), total as usize);
        for (i, run) in runs.iter().enumerate() {
            let n = i as u32 + 1;
            assert_eq!(run.run_number, n);
            match &run.info {
                Ok(info) => assert_eq!(info.experiment_name, format!("e{n}")),
                Err(e) => {
                    assert_eq!(n, 300, "only run 300 is broken");
                    assert!(e.to_string().contains("metadata.json"), "{e}");
                }
            }
        }
        assert!(runs[299].info.is_err());
    }
}
