//! `list_all_runs`: one row per run directory, read from metadata.json alone, so listing
//! thousands of runs stays fast; a broken run is a row with its error, never hiding the others.
//! Runs the seed system wrote are rows too, marked by their `seed` field;
//! `list_base_training_runs` lists the `base_training/` folder.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use format::api::{BestSummary, RunInfo};
use format::layout::parse_run_dir_name;
use format::metadata::{metric_values, Metrics};
use format::query::flatten_params;
use format::seed::{SeedMarks, BASE_TRAINING_DIR};
use format::{RunLayout, RunStatus};

use super::annotations::read_annotations;
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
    // What tells a seed run from ours.
    #[serde(default)]
    format_version: u32,
    #[serde(default)]
    lora_config: Value,
    #[serde(default)]
    base_model: Option<ListedFile>,
}

#[derive(Deserialize)]
struct ListedFile {
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct ListedCheckpoint {
    epoch: u32,
    #[serde(default)]
    path: String,
    #[serde(default)]
    removed: bool,
    #[serde(default)]
    damaged: Option<String>,
}

#[derive(Deserialize)]
struct ListedBest {
    epoch: u32,
    #[serde(default)]
    path: String,
    #[serde(deserialize_with = "metric_values::deserialize")]
    metrics: Metrics,
}

/// Reads one run's row (the API's [`RunInfo`]).
pub fn run_info(layout: &RunLayout) -> Result<RunInfo> {
    let m = read_metadata_as(layout, |m: &ListedMetadata| m.run_number)?;
    let mut info = row(m, writer_active(layout), layout.in_base_training_dir());
    // Tags, note and config values only add to the row: a run whose annotations.json or
    // config.json cannot be read is listed without them (`diffit runs tag` names the file).
    match read_annotations(layout) {
        Ok(annotations) => {
            info.tags = annotations.tags;
            info.note = annotations.note;
        }
        Err(e) => tracing::warn!("{e}"),
    }
    info.params = config_params(layout);
    Ok(info)
}

/// Largest `config.json` read for a listing's config values.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The run's `config.json` as dotted config values; none when it is absent, too big or not
/// a JSON object.
fn config_params(layout: &RunLayout) -> BTreeMap<String, Value> {
    let path = layout.config();
    let small = fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() <= MAX_CONFIG_BYTES);
    let parsed = small
        .then(|| fs::read(&path).ok())
        .flatten()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    match parsed {
        Some(config) if config.is_object() => flatten_params(&config),
        _ => BTreeMap::new(),
    }
}

/// One run's row from the bytes of its `metadata.json` read elsewhere (an object store), for
/// run `run_number`; `writer_active` says whether a writer is known to hold it. The error says
/// what is wrong with the bytes. The row has no tags, note or config values (those files are
/// not read from the bucket).
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
    Ok(row(m, writer_active, false))
}

fn row(m: ListedMetadata, writer_active: bool, in_base_training_dir: bool) -> RunInfo {
    let seed = SeedMarks {
        format_version: m.format_version,
        recorded_paths: m
            .checkpoints
            .iter()
            .map(|c| c.path.as_str())
            .chain(m.best_checkpoint.iter().map(|b| b.path.as_str()))
            .chain(m.base_model.iter().map(|b| b.path.as_str()))
            .collect(),
        lora_config: &m.lora_config,
        in_base_training_dir,
    }
    .seed_run();
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
        seed,
        tags: Vec::new(),
        note: None,
        params: BTreeMap::new(),
    }
}

/// The base-training runs of the checkpoints dir `base_dir` (`base_dir/base_training/run_NNN`,
/// the seed system's layout), by number; those the seed wrote are marked by their `seed` field.
/// None when the folder does not exist.
pub fn list_base_training_runs(base_dir: impl AsRef<Path>) -> Result<Vec<RunListing>> {
    list_all_runs(base_dir.as_ref().join(BASE_TRAINING_DIR))
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

    /// Seed-written runs are rows (microsecond stamps, `.ckpt` paths), marked as seed runs;
    /// its base-training runs are listed from their own folder; ours stay unmarked.
    #[test]
    fn seed_runs_are_listed_and_marked() {
        use format::SeedRunKind;

        let dir = tempfile::tempdir().unwrap();
        let write = |layout: &RunLayout, text: &str| {
            fs::create_dir_all(layout.root()).unwrap();
            fs::write(layout.metadata(), text).unwrap();
        };
        write(
            &RunLayout::new(dir.path(), 1),
            r#"{"run_number": 1, "experiment_name": "diffit_lora_trees",
                "created_at": "2025-01-15T10:30:00.123456",
                "checkpoints": [{"epoch": 1, "path": "checkpoints/run_001/lora_weights/epoch_001.ckpt",
                                 "metrics": {"val_loss": 0.3}, "saved_at": "2025-01-15T11:00:00.654321"}],
                "best_checkpoint": {"epoch": 1, "path": "run_001/lora_weights/best.ckpt",
                                    "metrics": {"val_loss": 0.3}},
                "training_config": {}, "lora_config": {"rank": 8, "alpha": 16, "enabled": true}}"#,
        );
        write(
            &RunLayout::new(dir.path(), 2),
            r#"{"run_number": 2, "experiment_name": "ours", "created_at": "2025-01-16T10:30:00",
                "format_version": 1, "checkpoints": [], "training_config": {},
                "lora_config": {"r": 8}}"#,
        );
        write(
            &RunLayout::base_training(dir.path(), 1),
            r#"{"run_number": 1, "experiment_name": "base", "created_at": "2025-01-10T09:00:00.000042",
                "checkpoints": [{"epoch": 1, "path": "checkpoints/base_training/run_001/epoch_001.ckpt",
                                 "metrics": {}, "saved_at": "2025-01-10T10:00:00.5"}],
                "best_checkpoint": null, "training_config": {}}"#,
        );
        let runs = list_all_runs(dir.path()).unwrap();
        assert_eq!(runs.len(), 2, "base_training/ is not a run");
        let seed = runs[0].info.as_ref().unwrap();
        assert_eq!(seed.seed.as_ref().map(|s| s.kind), Some(SeedRunKind::Lora));
        assert_eq!(seed.created_at, "2025-01-15T10:30:00.123456");
        assert_eq!(
            (seed.checkpoints_count, seed.best.as_ref().map(|b| b.epoch)),
            (1, Some(1))
        );
        assert_eq!(runs[1].info.as_ref().unwrap().seed, None);

        let base = list_base_training_runs(dir.path()).unwrap();
        assert_eq!(base.len(), 1);
        let info = base[0].info.as_ref().unwrap();
        assert_eq!(
            info.seed.as_ref().map(|s| s.kind),
            Some(SeedRunKind::BaseTraining)
        );
        assert_eq!(info.checkpoints_count, 1);
        let none = tempfile::tempdir().unwrap();
        assert!(list_base_training_runs(none.path()).unwrap().is_empty());
    }
}
