//! Where every file of a run lives, and the grammar of run and checkpoint names.
//!
//! ```text
//! checkpoints/
//!   run_001/
//!     config.json  metadata.json
//!     base_model/base_model.safetensors
//!     lora_weights/epoch_001.safetensors ... best.safetensors last.safetensors
//!     annotations.json             (tags and a note, set by `diffit runs tag/note`)
//!     logs/  events.out.tfevents.*  steps/epoch_001.json  samples/epoch_001.png
//!   base_training/run_001/ ...   (base-training runs, in the seed system's layout)
//! ```
//!
//! Runs the seed system wrote keep its names with `.ckpt` files
//! ([`CheckpointName::seed_file_name`], [`RunLayout::seed_checkpoint`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::seed::{BASE_TRAINING_DIR, SEED_CKPT_EXT};

/// Default checkpoints directory (the seed's `base_dir`).
pub const DEFAULT_BASE_DIR: &str = "checkpoints";
/// Training + LoRA (+ model) configuration of a run.
pub const CONFIG_FILE: &str = "config.json";
/// Run metadata and checkpoint history.
pub const METADATA_FILE: &str = "metadata.json";
/// Folder of the frozen base model.
pub const BASE_MODEL_DIR: &str = "base_model";
/// File name of the frozen base model.
pub const BASE_MODEL_FILE: &str = "base_model.safetensors";
/// Folder of the per-epoch LoRA checkpoints.
pub const LORA_DIR: &str = "lora_weights";
/// Folder of the TensorBoard event files.
pub const LOGS_DIR: &str = "logs";
/// The user's tags and note of a run (`diffit runs tag` / `note`), kept apart from
/// `metadata.json` so that annotating never races the run's writer.
pub const ANNOTATIONS_FILE: &str = "annotations.json";
/// Folder under `logs/` of the per-step training log, one JSON file per epoch
/// ([`crate::logs::StepLog`]).
pub const STEPS_DIR: &str = "steps";
/// Folder under `logs/` of the sample grids drawn during training, one PNG per epoch.
pub const SAMPLES_DIR: &str = "samples";
/// Extension of a sample grid.
pub const SAMPLE_EXT: &str = "png";
/// Lock file held (OS advisory lock) by the one process writing a run.
pub const LOCK_FILE: &str = ".lock";
/// Extension of every tensor file.
pub const TENSOR_EXT: &str = "safetensors";
/// Marker in the name of temporary files; anything holding it is a crash leftover.
pub const TEMP_MARKER: &str = ".tmp-";
/// Suffix of an epoch file's replacement that metadata already names but that is not yet
/// renamed into place (an epoch losing its optimizer state); a writer finishes the rename.
pub const PENDING_SUFFIX: &str = ".pending";

/// `run_001`, ..., `run_999`, `run_1000`: at least three digits.
pub fn run_dir_name(run_number: u32) -> String {
    format!("run_{run_number:03}")
}

/// `epoch_007.json`-style name of epoch `epoch`'s file in a log folder.
pub fn epoch_file_name(epoch: u32, ext: &str) -> String {
    format!("epoch_{epoch:03}.{ext}")
}

/// Parses an [`epoch_file_name`] with extension `ext`: only the canonical spelling, epoch ≥ 1.
pub fn parse_epoch_file_name(name: &str, ext: &str) -> Option<u32> {
    let digits = name
        .strip_prefix("epoch_")?
        .strip_suffix(ext)?
        .strip_suffix('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let epoch: u32 = digits.parse().ok()?;
    (epoch >= 1 && epoch_file_name(epoch, ext) == name).then_some(epoch)
}

/// Parses a run directory name; only the canonical spelling (`run_007`, not `run_7` or `run_0007`).
pub fn parse_run_dir_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("run_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    (run_dir_name(n) == name).then_some(n)
}

/// A checkpoint a client can ask for: `base`, `best`, `last` or `epoch_NNN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckpointName {
    /// The frozen base model.
    Base,
    /// The epoch with the best monitored metric.
    Best,
    /// The newest epoch.
    Last,
    /// One epoch (1-based).
    Epoch(u32),
}

/// A string that is not a checkpoint name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid checkpoint name {0:?}: expected base, best, last or epoch_NNN")]
pub struct InvalidCheckpointName(pub String);

impl CheckpointName {
    /// File name inside its folder, e.g. `epoch_003.safetensors`.
    pub fn file_name(self) -> String {
        match self {
            CheckpointName::Base => BASE_MODEL_FILE.to_string(),
            other => format!("{other}.{TENSOR_EXT}"),
        }
    }

    /// The seed system's file name for it, e.g. `epoch_003.ckpt`, `base_model.ckpt`.
    pub fn seed_file_name(self) -> String {
        match self {
            CheckpointName::Base => format!("base_model.{SEED_CKPT_EXT}"),
            other => format!("{other}.{SEED_CKPT_EXT}"),
        }
    }

    /// Path relative to the checkpoints dir with `/` separators, as recorded in metadata:
    /// `run_001/lora_weights/epoch_001.safetensors`.
    pub fn relative_path(self, run_number: u32) -> String {
        let folder = match self {
            CheckpointName::Base => BASE_MODEL_DIR,
            _ => LORA_DIR,
        };
        format!("{}/{folder}/{}", run_dir_name(run_number), self.file_name())
    }
}

impl fmt::Display for CheckpointName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointName::Base => f.write_str("base"),
            CheckpointName::Best => f.write_str("best"),
            CheckpointName::Last => f.write_str("last"),
            CheckpointName::Epoch(n) => write!(f, "epoch_{n:03}"),
        }
    }
}

impl FromStr for CheckpointName {
    type Err = InvalidCheckpointName;

    /// Accepts only the canonical spelling; `epoch_000` and `epoch_01` are rejected.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = match s {
            "base" => Some(CheckpointName::Base),
            "best" => Some(CheckpointName::Best),
            "last" => Some(CheckpointName::Last),
            _ => s
                .strip_prefix("epoch_")
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u32>().ok())
                .filter(|&n| n > 0)
                .map(CheckpointName::Epoch)
                .filter(|name| name.to_string() == s),
        };
        parsed.ok_or_else(|| InvalidCheckpointName(s.to_string()))
    }
}

/// The paths of one run under a checkpoints dir. Pure path arithmetic, no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    base_dir: PathBuf,
    run_number: u32,
}

impl RunLayout {
    /// Layout of base-training run `run_number` under the checkpoints dir
    /// `base_dir` (`base_dir/base_training/run_NNN`).
    pub fn base_training(base_dir: impl AsRef<Path>, run_number: u32) -> Self {
        Self::new(base_dir.as_ref().join(BASE_TRAINING_DIR), run_number)
    }

    /// True when the run lies in a folder named `base_training/`.
    pub fn in_base_training_dir(&self) -> bool {
        self.base_dir
            .file_name()
            .is_some_and(|name| name == BASE_TRAINING_DIR)
    }

    /// Layout of run `run_number` under `base_dir`.
    pub fn new(base_dir: impl Into<PathBuf>, run_number: u32) -> Self {
        Self {
            base_dir: base_dir.into(),
            run_number,
        }
    }
    /// The run's number.
    pub fn run_number(&self) -> u32 {
        self.run_number
    }
    /// The checkpoints dir holding this run.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }
    /// `<base>/run_NNN`.
    pub fn root(&self) -> PathBuf {
        self.base_dir.join(run_dir_name(self.run_number))
    }
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.root().join(CONFIG_FILE)
    }
    /// `metadata.json`.
    pub fn metadata(&self) -> PathBuf {
        self.root().join(METADATA_FILE)
    }
    /// The lock file held by the run's writer.
    pub fn lock(&self) -> PathBuf {
        self.root().join(LOCK_FILE)
    }
    /// `base_model/`.
    pub fn base_model_dir(&self) -> PathBuf {
        self.root().join(BASE_MODEL_DIR)
    }
    /// `lora_weights/`.
    pub fn lora_dir(&self) -> PathBuf {
        self.root().join(LORA_DIR)
    }
    /// `logs/`.
    pub fn logs_dir(&self) -> PathBuf {
        self.root().join(LOGS_DIR)
    }
    /// `annotations.json`.
    pub fn annotations(&self) -> PathBuf {
        self.root().join(ANNOTATIONS_FILE)
    }
    /// `logs/steps/`.
    pub fn steps_dir(&self) -> PathBuf {
        self.logs_dir().join(STEPS_DIR)
    }
    /// `logs/steps/epoch_NNN.json`: epoch `epoch`'s training steps.
    pub fn step_log(&self, epoch: u32) -> PathBuf {
        self.steps_dir().join(epoch_file_name(epoch, "json"))
    }
    /// `logs/samples/`.
    pub fn samples_dir(&self) -> PathBuf {
        self.logs_dir().join(SAMPLES_DIR)
    }
    /// `logs/samples/epoch_NNN.png`: the sample grid drawn after epoch `epoch`.
    pub fn sample_grid(&self, epoch: u32) -> PathBuf {
        self.samples_dir().join(epoch_file_name(epoch, SAMPLE_EXT))
    }
    /// The file of a checkpoint name.
    pub fn checkpoint(&self, name: CheckpointName) -> PathBuf {
        match name {
            CheckpointName::Base => self.base_model_dir().join(name.file_name()),
            _ => self.lora_dir().join(name.file_name()),
        }
    }
    /// The file of a checkpoint name in a run the seed wrote (`lora_weights/epoch_001.ckpt`).
    pub fn seed_checkpoint(&self, name: CheckpointName) -> PathBuf {
        match name {
            CheckpointName::Base => self.base_model_dir().join(name.seed_file_name()),
            _ => self.lora_dir().join(name.seed_file_name()),
        }
    }
    /// Resolves a path recorded in metadata (relative to the checkpoints dir, `/`-separated).
    pub fn resolve(&self, recorded: &str) -> PathBuf {
        recorded
            .split('/')
            .fold(self.base_dir.clone(), |p, part| p.join(part))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_file_names_round_trip_and_only_canonical_ones_parse() {
        for epoch in [1, 7, 999, 1000] {
            let name = epoch_file_name(epoch, "png");
            assert_eq!(parse_epoch_file_name(&name, "png"), Some(epoch));
            assert_eq!(parse_epoch_file_name(&name, "json"), None);
        }
        for bad in [
            "epoch_000.png",
            "epoch_7.png",
            "epoch_0007.png",
            "epoch_.png",
            "epoch_007png",
            "epoch_007.png.tmp-1",
            "epoch_+07.png",
            "best.png",
        ] {
            assert_eq!(parse_epoch_file_name(bad, "png"), None, "{bad}");
        }
    }

    #[test]
    fn run_names_round_trip_past_999() {
        for n in [1, 7, 42, 999, 1000, 123_456] {
            assert_eq!(parse_run_dir_name(&run_dir_name(n)), Some(n));
        }
        assert_eq!(run_dir_name(1), "run_001");
        assert_eq!(run_dir_name(1000), "run_1000");
        for bad in [
            "run_1",
            "run_0001",
            "run_",
            "run_-1",
            "run_1a",
            "Run_001",
            "run_001/..",
            "x",
        ] {
            assert_eq!(parse_run_dir_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn checkpoint_names_follow_the_grammar() {
        for good in [
            "base",
            "best",
            "last",
            "epoch_001",
            "epoch_999",
            "epoch_1000",
        ] {
            let parsed: CheckpointName = good.parse().unwrap();
            assert_eq!(parsed.to_string(), good);
        }
        for bad in [
            "",
            "epoch_",
            "epoch_1",
            "epoch_000",
            "epoch_0001",
            "epoch_1a",
            "../base",
            "best.safetensors",
            "BEST",
            "epoch_%30%30%31",
            "epoch_001/..",
            "epoch_99999999999",
        ] {
            assert!(bad.parse::<CheckpointName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn recorded_paths_match_the_seed_layout() {
        assert_eq!(
            CheckpointName::Epoch(1).relative_path(1),
            "run_001/lora_weights/epoch_001.safetensors"
        );
        assert_eq!(
            CheckpointName::Best.relative_path(3),
            "run_003/lora_weights/best.safetensors"
        );
        assert_eq!(
            CheckpointName::Base.relative_path(2),
            "run_002/base_model/base_model.safetensors"
        );
        let layout = RunLayout::new("ck", 2);
        assert_eq!(
            layout.resolve(&CheckpointName::Last.relative_path(2)),
            layout.checkpoint(CheckpointName::Last)
        );
    }

    #[test]
    fn seed_files_and_base_training_runs() {
        let layout = RunLayout::new("ck", 1);
        assert_eq!(
            layout.seed_checkpoint(CheckpointName::Epoch(1)),
            Path::new("ck/run_001/lora_weights/epoch_001.ckpt")
        );
        assert_eq!(
            layout.seed_checkpoint(CheckpointName::Best),
            Path::new("ck/run_001/lora_weights/best.ckpt")
        );
        assert_eq!(
            layout.seed_checkpoint(CheckpointName::Base),
            Path::new("ck/run_001/base_model/base_model.ckpt")
        );
        assert!(!layout.in_base_training_dir());
        let base = RunLayout::base_training("ck", 3);
        assert_eq!(base.root(), Path::new("ck/base_training/run_003"));
        assert!(base.in_base_training_dir());
    }
}
