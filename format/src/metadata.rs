//! The `metadata.json` schema: the seed's fields, kept exactly, plus additions. Fields this
//! version does not know are kept in `extra` and written back unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::seed::{SeedMarks, SeedRun};

/// Version of the run format written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// Metric name → value (`val_loss`, `train_loss`, `lr`, ...).
pub type Metrics = BTreeMap<String, f64>;

/// How [`Metrics`] are written in JSON, where non-finite numbers do not exist: finite values as
/// numbers, NaN and ±∞ as the strings `"NaN"`, `"Infinity"` and `"-Infinity"` (JavaScript's
/// spellings). Reading also takes `null` as NaN, which is how older versions wrote it, so their
/// runs are readable again. Use with `#[serde(with = "metric_values")]`.
pub mod metric_values {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{self, MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Metrics;

    /// `"NaN"` in JSON.
    pub const NAN: &str = "NaN";
    /// `"Infinity"` in JSON.
    pub const INFINITY: &str = "Infinity";
    /// `"-Infinity"` in JSON.
    pub const NEG_INFINITY: &str = "-Infinity";

    /// Writes `metrics`, non-finite values by name.
    pub fn serialize<S: Serializer>(metrics: &Metrics, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(metrics.len()))?;
        for (name, &value) in metrics {
            if value.is_finite() {
                map.serialize_entry(name, &value)?;
            } else if value.is_nan() {
                map.serialize_entry(name, NAN)?;
            } else if value > 0.0 {
                map.serialize_entry(name, INFINITY)?;
            } else {
                map.serialize_entry(name, NEG_INFINITY)?;
            }
        }
        map.end()
    }

    /// Reads metrics written by [`serialize`] (or by older versions, `null` for NaN).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Metrics, D::Error> {
        deserializer.deserialize_map(MetricsVisitor)
    }

    struct MetricsVisitor;

    impl<'de> Visitor<'de> for MetricsVisitor {
        type Value = Metrics;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of metric names to numbers")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Metrics, A::Error> {
            let mut metrics = BTreeMap::new();
            while let Some((name, value)) = access.next_entry::<String, MetricValue>()? {
                metrics.insert(name, value.0);
            }
            Ok(metrics)
        }
    }

    /// One value: a number, a non-finite value's name, or `null` (NaN).
    struct MetricValue(f64);

    impl<'de> Deserialize<'de> for MetricValue {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(ValueVisitor).map(MetricValue)
        }
    }

    struct ValueVisitor;

    impl Visitor<'_> for ValueVisitor {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, \"NaN\", \"Infinity\", \"-Infinity\" or null")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
            Ok(f64::NAN)
        }
        fn visit_none<E: de::Error>(self) -> Result<f64, E> {
            Ok(f64::NAN)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                NAN => Ok(f64::NAN),
                INFINITY => Ok(f64::INFINITY),
                NEG_INFINITY => Ok(f64::NEG_INFINITY),
                other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
            }
        }
    }
}

/// Whether a lower or a higher monitored metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Lower is better (losses).
    #[default]
    Min,
    /// Higher is better (accuracies).
    Max,
}

impl Mode {
    /// True when `candidate` improves on `incumbent`. NaN never improves.
    pub fn is_better(self, candidate: f64, incumbent: f64) -> bool {
        match self {
            Mode::Min => candidate < incumbent,
            Mode::Max => candidate > incumbent,
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "min" => Ok(Mode::Min),
            "max" => Ok(Mode::Max),
            other => Err(format!("invalid mode {other:?}: expected min or max")),
        }
    }
}

/// Lifecycle of a run as its writer last recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Created, nothing trained yet.
    #[default]
    Created,
    /// A writer is (or was, if it died) training.
    Running,
    /// Training reached its last epoch.
    Finished,
    /// Stopped early by the user (Ctrl-C); resumable.
    Interrupted,
    /// Stopped by an error; resumable from the last valid checkpoint.
    Failed,
}

/// An MLflow tracking run a run is logged to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlflowLink {
    /// The tracking server (without credentials).
    pub tracking_uri: String,
    /// The MLflow experiment's id.
    pub experiment_id: String,
    /// The MLflow run's id.
    pub run_id: String,
}

/// What a base model file is known by: its checksum and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseIdentity {
    /// `blake3:<hex>` of the whole base model file as the store writes it.
    pub checksum: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Where a LoRA run's base came from when it was taken from a managed base-training run
/// (`diffit train --base-run N --base-checkpoint best`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseLineage {
    /// The base run's number under `base_training/`.
    pub run_number: u32,
    /// The epoch its checkpoint ended.
    pub epoch: u32,
    /// Which checkpoint was asked for: `best`, `last` or `epoch_NNN`.
    pub checkpoint: String,
    /// `blake3:<hex>` of that checkpoint file, as the base run's metadata records it.
    pub checksum: String,
}

/// A tensor file with its integrity data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Relative to the checkpoints dir, `/`-separated.
    pub path: String,
    /// `blake3:<hex>` of the whole file.
    pub checksum: String,
    /// Size in bytes.
    pub size: u64,
    /// Fields unknown to this version.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One saved epoch (the seed's `checkpoints[]` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// 1-based epoch.
    pub epoch: u32,
    /// `run_001/lora_weights/epoch_001.safetensors`.
    pub path: String,
    /// Metrics at the end of this epoch.
    #[serde(with = "metric_values")]
    pub metrics: Metrics,
    /// Local time, `2025-01-15T11:00:00`.
    pub saved_at: String,
    /// `blake3:<hex>` of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Size of the file in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Optimizer steps taken when this was saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_step: Option<u64>,
    /// The file was deleted by retention; the entry stays for the metric history.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Why the file failed to load when a resume passed over it; a damaged epoch is kept on
    /// disk for inspection but is never resumed from, pruned, `best` or `last`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    /// The file keeps the LoRA weights and metrics but no optimizer state
    /// (`keep_optimizer_last_n`): it can be sampled and exported, not resumed from.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub weights_only: bool,
    /// Fields unknown to this version.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CheckpointRecord {
    /// Its file is on disk and usable: neither removed by retention nor found damaged.
    pub fn is_live(&self) -> bool {
        !self.removed && self.damaged.is_none()
    }

    /// Training can resume from it: live, with its optimizer state.
    pub fn is_resumable(&self) -> bool {
        self.is_live() && !self.weights_only
    }
}

/// The seed's `best_checkpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestCheckpoint {
    /// Epoch whose file `best.safetensors` holds.
    pub epoch: u32,
    /// `run_001/lora_weights/best.safetensors`.
    pub path: String,
    /// Metrics of that epoch.
    #[serde(with = "metric_values")]
    pub metrics: Metrics,
    /// Fields unknown to this version.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Validation metrics of one epoch, logged whether or not the epoch was saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: u32,
    /// Metrics at the end of this epoch.
    #[serde(with = "metric_values")]
    pub metrics: Metrics,
}

/// The whole `metadata.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The run's number (`run_003` → 3).
    pub run_number: u32,
    /// Experiment name (default `diffit_lora_trees`).
    pub experiment_name: String,
    /// Local time, `2025-01-15T10:30:00`.
    pub created_at: String,
    /// Saved epochs in order, including ones retention removed.
    pub checkpoints: Vec<CheckpointRecord>,
    /// Best epoch by the monitored metric, once one exists.
    pub best_checkpoint: Option<BestCheckpoint>,
    /// Training configuration (see `config.json`).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub training_config: Value,
    /// LoRA configuration (PEFT-like: r, lora_alpha, lora_dropout, target_modules). Absent
    /// (`Null`) in the seed's base-training runs.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub lora_config: Value,
    /// Run format version.
    #[serde(default)]
    pub format_version: u32,
    /// Lifecycle as last recorded by the writer.
    #[serde(default)]
    pub status: RunStatus,
    /// Why the writer stopped, when it stopped on an error (`status: failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Monitored metric for `best`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
    /// Whether lower or higher `monitor` is better.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Local time of the last metadata write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// The frozen base model file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<FileRecord>,
    /// The checksum and size the run's base model file has, or would have: recorded even when
    /// the weights are not stored in the run (`save_base_model: false`), so that a resume can
    /// find them elsewhere and know them by their checksum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_identity: Option<BaseIdentity>,
    /// The base-training run and checkpoint the base was taken from, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_lineage: Option<BaseLineage>,
    /// The MLflow run this run is also logged to, so that a resume continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow: Option<MlflowLink>,
    /// Metrics of the base model alone on the validation set (`val_loss`), before any LoRA.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "metric_values"
    )]
    pub base_metrics: Metrics,
    /// Every epoch's validation metrics, saved or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_history: Vec<EpochMetrics>,
    /// Fields unknown to this version.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Metadata {
    /// A fresh run's metadata.
    pub fn new(
        run_number: u32,
        experiment_name: impl Into<String>,
        created_at: impl Into<String>,
    ) -> Self {
        Self {
            run_number,
            experiment_name: experiment_name.into(),
            created_at: created_at.into(),
            checkpoints: Vec::new(),
            best_checkpoint: None,
            training_config: Value::Object(Map::new()),
            lora_config: Value::Object(Map::new()),
            format_version: FORMAT_VERSION,
            status: RunStatus::Created,
            status_reason: None,
            monitor: None,
            mode: None,
            updated_at: None,
            base_model: None,
            base_identity: None,
            base_lineage: None,
            mlflow: None,
            base_metrics: Metrics::new(),
            metric_history: Vec::new(),
            extra: Map::new(),
        }
    }

    /// The record of `epoch`, if it was saved.
    pub fn checkpoint(&self, epoch: u32) -> Option<&CheckpointRecord> {
        self.checkpoints.iter().find(|c| c.epoch == epoch)
    }

    /// Saved epochs whose files still exist (not removed by retention), oldest first.
    pub fn live_checkpoints(&self) -> impl Iterator<Item = &CheckpointRecord> {
        self.checkpoints.iter().filter(|c| c.is_live())
    }

    /// The newest saved epoch, removed or not.
    pub fn last_epoch(&self) -> Option<u32> {
        self.checkpoints.iter().map(|c| c.epoch).max()
    }

    /// The run as the seed system wrote it, when it did (see [`crate::seed`]);
    /// `in_base_training_dir`: the run lies in a `base_training/` folder.
    pub fn seed_run(&self, in_base_training_dir: bool) -> Option<SeedRun> {
        let recorded_paths = self
            .checkpoints
            .iter()
            .map(|c| c.path.as_str())
            .chain(self.best_checkpoint.iter().map(|b| b.path.as_str()))
            .chain(self.base_model.iter().map(|b| b.path.as_str()))
            .collect();
        SeedMarks {
            format_version: self.format_version,
            recorded_paths,
            lora_config: &self.lora_config,
            in_base_training_dir,
        }
        .seed_run()
    }

    /// The metric series for charts: every logged epoch, falling back to checkpoint records
    /// for runs written without `metric_history`.
    pub fn metric_series(&self) -> Vec<EpochMetrics> {
        if !self.metric_history.is_empty() {
            return self.metric_history.clone();
        }
        self.checkpoints
            .iter()
            .map(|c| EpochMetrics {
                epoch: c.epoch,
                metrics: c.metrics.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_metrics_round_trip_and_older_nulls_read_as_nan() {
        let mut record = EpochMetrics {
            epoch: 1,
            metrics: Metrics::new(),
        };
        for (name, value) in [
            ("a", f64::NAN),
            ("b", f64::INFINITY),
            ("c", f64::NEG_INFINITY),
            ("d", 0.5),
        ] {
            record.metrics.insert(name.into(), value);
        }
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            r#"{"epoch":1,"metrics":{"a":"NaN","b":"Infinity","c":"-Infinity","d":0.5}}"#
        );
        let back: EpochMetrics = serde_json::from_str(&json).unwrap();
        assert!(back.metrics["a"].is_nan());
        assert_eq!(back.metrics["b"], f64::INFINITY);
        assert_eq!(back.metrics["c"], f64::NEG_INFINITY);
        assert_eq!(back.metrics["d"], 0.5);
        // What older versions wrote for NaN, and integers.
        let old: EpochMetrics =
            serde_json::from_str(r#"{"epoch":2,"metrics":{"val_loss":null,"n":3}}"#).unwrap();
        assert!(old.metrics["val_loss"].is_nan());
        assert_eq!(old.metrics["n"], 3.0);
        let err = serde_json::from_str::<EpochMetrics>(r#"{"epoch":2,"metrics":{"x":"big"}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("big"), "{err}");
    }

    const SEED_EXAMPLE: &str = r#"{
      "run_number": 1,
      "experiment_name": "diffit_lora_trees",
      "created_at": "2025-01-15T10:30:00",
      "checkpoints": [
        {
          "epoch": 1,
          "path": "run_001/lora_weights/epoch_001.safetensors",
          "metrics": {"val_loss": 0.234, "train_loss": 0.189},
          "saved_at": "2025-01-15T11:00:00"
        }
      ],
      "best_checkpoint": {
        "epoch": 3,
        "path": "run_001/lora_weights/best.safetensors",
        "metrics": {"val_loss": 0.198}
      },
      "training_config": {"epochs": 10},
      "lora_config": {"r": 8},
      "wandb_id": "abc123"
    }"#;

    #[test]
    fn reads_the_seed_schema_and_keeps_unknown_fields() {
        let meta: Metadata = serde_json::from_str(SEED_EXAMPLE).unwrap();
        assert_eq!(meta.run_number, 1);
        assert_eq!(meta.checkpoints[0].metrics["val_loss"], 0.234);
        assert_eq!(meta.best_checkpoint.as_ref().unwrap().epoch, 3);
        assert_eq!(meta.format_version, 0, "a seed file has no version");
        let back: Value = serde_json::to_value(&meta).unwrap();
        assert_eq!(back["wandb_id"], "abc123");
        let original: Value = serde_json::from_str(SEED_EXAMPLE).unwrap();
        for key in [
            "run_number",
            "experiment_name",
            "created_at",
            "checkpoints",
            "best_checkpoint",
            "training_config",
            "lora_config",
        ] {
            assert_eq!(back[key], original[key], "{key}");
        }
    }

    /// What the seed system itself writes: microsecond timestamps without a zone, `.ckpt`
    /// paths (prefixed by its checkpoints dir or not), its own `lora_config` keys.
    const SEED_WRITTEN: &str = r#"{
      "run_number": 1,
      "experiment_name": "diffit_lora_trees",
      "created_at": "2025-01-15T10:30:00.123456",
      "checkpoints": [
        {"epoch": 1, "path": "checkpoints/run_001/lora_weights/epoch_001.ckpt",
         "metrics": {"val_loss": 0.234, "train_loss": 0.189}, "saved_at": "2025-01-15T11:00:00.654321"},
        {"epoch": 2, "path": "run_001/lora_weights/epoch_002.ckpt",
         "metrics": {"val_loss": 0.21}, "saved_at": "2025-01-15T11:30:00.000001"}
      ],
      "best_checkpoint": {"epoch": 2, "path": "run_001/lora_weights/best.ckpt",
                          "metrics": {"val_loss": 0.21}},
      "training_config": {"num_epochs": 10},
      "lora_config": {"rank": 8, "alpha": 16, "enabled": true}
    }"#;

    #[test]
    fn seed_written_runs_read_and_are_recognised() {
        use crate::seed::SeedRunKind;

        let meta: Metadata = serde_json::from_str(SEED_WRITTEN).unwrap();
        assert_eq!(meta.created_at, "2025-01-15T10:30:00.123456");
        assert_eq!(meta.checkpoints[1].saved_at, "2025-01-15T11:30:00.000001");
        assert_eq!(
            meta.seed_run(false).map(|s| s.kind),
            Some(SeedRunKind::Lora)
        );
        // A base-training run records no lora_config, and stays without one when written back.
        let mut base: Value = serde_json::from_str(SEED_WRITTEN).unwrap();
        base.as_object_mut().unwrap().remove("lora_config");
        let base: Metadata = serde_json::from_value(base).unwrap();
        assert!(base.lora_config.is_null());
        assert_eq!(
            base.seed_run(false).map(|s| s.kind),
            Some(SeedRunKind::BaseTraining)
        );
        assert!(serde_json::to_value(&base)
            .unwrap()
            .get("lora_config")
            .is_none());
        // Ours are not: the seed's schema with our files, and anything we wrote.
        let ours: Metadata = serde_json::from_str(SEED_EXAMPLE).unwrap();
        assert_eq!(ours.seed_run(false), None);
        assert_eq!(Metadata::new(1, "e", "t").seed_run(false), None);
        assert_eq!(Metadata::new(1, "e", "t").seed_run(true), None);
    }

    #[test]
    fn metric_series_falls_back_to_checkpoints() {
        let mut meta: Metadata = serde_json::from_str(SEED_EXAMPLE).unwrap();
        assert_eq!(meta.metric_series().len(), 1);
        meta.metric_history.push(EpochMetrics {
            epoch: 1,
            metrics: Metrics::new(),
        });
        meta.metric_history.push(EpochMetrics {
            epoch: 2,
            metrics: Metrics::new(),
        });
        assert_eq!(meta.metric_series().len(), 2);
    }

    #[test]
    fn mode_compares() {
        assert!(Mode::Min.is_better(0.1, 0.2));
        assert!(!Mode::Min.is_better(f64::NAN, 0.2));
        assert!(Mode::Max.is_better(0.3, 0.2));
    }
}
