//! `list_all_runs`: one row per run directory, read from metadata.json alone, so listing
//! thousands of runs stays fast; a broken run is a row with its error, never hiding the others.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::format::layout::parse_run_dir_name;
use crate::format::metadata::Metrics;
use crate::format::{Mode, RunLayout, RunStatus};

use super::error::{IoContext, Result, StoreError};
use super::manager::writer_active;

/// What the run list shows about one healthy run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    /// The run's number.
    pub run_number: u32,
    /// Experiment name.
    pub experiment_name: String,
    /// `2025-01-15T10:30:00`.
    pub created_at: String,
    /// Time of the last metadata write.
    pub updated_at: Option<String>,
    /// Lifecycle as last recorded.
    pub status: RunStatus,
    /// Epoch files still on disk.
    pub checkpoints_count: usize,
    /// Newest saved epoch.
    pub last_epoch: Option<u32>,
    /// Monitored metric.
    pub monitor: Option<String>,
    /// Whether lower or higher is better.
    pub mode: Option<Mode>,
    /// Best epoch.
    pub best_epoch: Option<u32>,
    /// The monitored metric at the best epoch.
    pub best_metric: Option<f64>,
    /// The base model's own validation loss.
    pub base_val_loss: Option<f64>,
    /// A process holds the writer lock right now.
    pub writer_active: bool,
}

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
    monitor: Option<String>,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    base_metrics: Metrics,
}

#[derive(Deserialize)]
struct ListedCheckpoint {
    epoch: u32,
    #[serde(default)]
    removed: bool,
}

#[derive(Deserialize)]
struct ListedBest {
    epoch: u32,
    metrics: Metrics,
}

/// Reads one run's row.
pub fn run_info(layout: &RunLayout) -> Result<RunInfo> {
    let path = layout.metadata();
    let bytes = fs::read(&path).ctx("read", &path)?;
    let m: ListedMetadata = serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
        action: "parse",
        path: path.clone(),
        source,
    })?;
    if m.run_number != layout.run_number() {
        return Err(StoreError::BadMetadata {
            path,
            reason: format!(
                "run_number is {}, but the directory is run {}",
                m.run_number,
                layout.run_number()
            ),
        });
    }
    let monitor = m.monitor.clone().unwrap_or_else(|| "val_loss".to_string());
    Ok(RunInfo {
        run_number: m.run_number,
        experiment_name: m.experiment_name,
        created_at: m.created_at,
        updated_at: m.updated_at,
        status: m.status,
        checkpoints_count: m.checkpoints.iter().filter(|c| !c.removed).count(),
        last_epoch: m.checkpoints.iter().map(|c| c.epoch).max(),
        best_epoch: m.best_checkpoint.as_ref().map(|b| b.epoch),
        best_metric: m
            .best_checkpoint
            .as_ref()
            .and_then(|b| b.metrics.get(&monitor).copied()),
        base_val_loss: m.base_metrics.get("val_loss").copied(),
        monitor: m.monitor,
        mode: m.mode,
        writer_active: writer_active(layout),
    })
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
    Ok(numbers
        .into_iter()
        .map(|n| {
            let layout = RunLayout::new(base_dir, n);
            RunListing {
                run_number: n,
                dir: layout.root(),
                info: run_info(&layout),
            }
        })
        .collect())
}
