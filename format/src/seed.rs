//! Runs written by the seed system (the Python / PyTorch Lightning checkpoint manager this
//! project started from): how their `metadata.json` is told from ours, and the note every
//! reader shows. Their `.ckpt` files are PyTorch pickles, which nothing here loads, so such runs
//! are listed, shown and served read-only: never resumed, trained into, sampled or verified.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Extension of the seed's checkpoint files (`epoch_001.ckpt`, `best.ckpt`, `base_model.ckpt`).
pub const SEED_CKPT_EXT: &str = "ckpt";

/// The folder of base-training runs inside a checkpoints dir, the seed's layout
/// (`checkpoints/base_training/run_001/`).
pub const BASE_TRAINING_DIR: &str = "base_training";

/// What every reader says about a seed run.
pub const SEED_RUN_NOTE: &str = "written by the seed system (PyTorch Lightning); read-only: \
     its .ckpt files are PyTorch pickles, which this tool does not load";

/// `lora_config` keys only the seed writes (its own names; ours are PEFT's `r`, `lora_alpha`).
const SEED_LORA_KEYS: [&str; 3] = ["rank", "alpha", "enabled"];

/// What a seed run trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedRunKind {
    /// A LoRA fine-tuning run (`checkpoints/run_NNN/`).
    Lora,
    /// A base-model training run (`checkpoints/base_training/run_NNN/`, no `lora_config`).
    BaseTraining,
}

/// A run written by the seed system, as the API and the CLI describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedRun {
    /// What it trained.
    pub kind: SeedRunKind,
    /// Why it is read-only, for a person to read ([`SEED_RUN_NOTE`]).
    pub note: String,
}

impl SeedRun {
    /// A seed run of `kind`, with the standard note.
    pub fn new(kind: SeedRunKind) -> Self {
        Self {
            kind,
            note: SEED_RUN_NOTE.to_string(),
        }
    }

    /// The short mark a run table shows after the row.
    pub fn label(&self) -> &'static str {
        match self.kind {
            SeedRunKind::Lora => "seed run, read-only",
            SeedRunKind::BaseTraining => "seed base training, read-only",
        }
    }
}

/// The traces a writer leaves in `metadata.json` that tell the seed's runs from ours.
#[derive(Debug, Clone)]
pub struct SeedMarks<'a> {
    /// The recorded `format_version` (0 when absent: every version of ours writes ≥ 1).
    pub format_version: u32,
    /// Every file path metadata records (epochs, `best_checkpoint`, the base model).
    pub recorded_paths: Vec<&'a str>,
    /// `lora_config` as recorded (`Null` when absent).
    pub lora_config: &'a Value,
    /// The run lies in a `base_training/` folder (only the seed's own runs there lack a
    /// `format_version`).
    pub in_base_training_dir: bool,
}

impl SeedMarks<'_> {
    /// The seed run these marks describe, `None` for one of ours. Only metadata without a
    /// `format_version` can be the seed's; of those, a recorded `.ckpt` path, a `lora_config`
    /// in the seed's own keys (`rank`, `alpha`, `enabled`) or the `base_training/` folder marks
    /// one. A run recording no `lora_config` trained a base model.
    pub fn seed_run(self) -> Option<SeedRun> {
        if self.format_version != 0 {
            return None;
        }
        let seed_lora_keys = self
            .lora_config
            .as_object()
            .is_some_and(|config| SEED_LORA_KEYS.iter().any(|k| config.contains_key(*k)));
        let ckpt_paths = self
            .recorded_paths
            .iter()
            .any(|path| is_seed_checkpoint_path(path));
        if !(ckpt_paths || seed_lora_keys || self.in_base_training_dir) {
            return None;
        }
        let kind = if self.in_base_training_dir || self.lora_config.is_null() {
            SeedRunKind::BaseTraining
        } else {
            SeedRunKind::Lora
        };
        Some(SeedRun::new(kind))
    }
}

/// True for a path the seed records for its checkpoint files (`…/epoch_001.ckpt`).
pub fn is_seed_checkpoint_path(path: &str) -> bool {
    let file_name = path.rsplit('/').next().unwrap_or(path);
    file_name
        .rsplit_once('.')
        .is_some_and(|(stem, ext)| !stem.is_empty() && ext == SEED_CKPT_EXT)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn marks<'a>(format_version: u32, paths: &[&'a str], lora_config: &'a Value) -> SeedMarks<'a> {
        SeedMarks {
            format_version,
            recorded_paths: paths.to_vec(),
            lora_config,
            in_base_training_dir: false,
        }
    }

    #[test]
    fn seed_runs_are_told_by_ckpt_paths_lora_keys_or_folder() {
        let seed_lora = json!({"rank": 8, "alpha": 16, "enabled": true});
        let peft = json!({"r": 8, "lora_alpha": 16.0});
        let ckpt = ["checkpoints/run_001/lora_weights/epoch_001.ckpt"];
        let best = ["run_001/lora_weights/best.ckpt"];
        let ours = ["run_001/lora_weights/epoch_001.safetensors"];

        let lora = Some(SeedRun::new(SeedRunKind::Lora));
        let base = Some(SeedRun::new(SeedRunKind::BaseTraining));
        assert_eq!(marks(0, &ckpt, &seed_lora).seed_run(), lora);
        assert_eq!(marks(0, &best, &peft).seed_run(), lora);
        assert_eq!(marks(0, &[], &seed_lora).seed_run(), lora, "no epoch yet");
        assert_eq!(marks(0, &ckpt, &Value::Null).seed_run(), base);
        // Ours: any format_version, or the seed's schema with our file names and keys.
        assert_eq!(marks(1, &ckpt, &seed_lora).seed_run(), None);
        assert_eq!(marks(0, &ours, &peft).seed_run(), None);
        assert_eq!(marks(0, &[], &Value::Null).seed_run(), None);
        let in_folder = SeedMarks {
            in_base_training_dir: true,
            ..marks(0, &[], &Value::Null)
        };
        assert_eq!(in_folder.seed_run(), base);
        let ours_in_folder = SeedMarks {
            in_base_training_dir: true,
            ..marks(1, &[], &peft)
        };
        assert_eq!(ours_in_folder.seed_run(), None);
    }

    #[test]
    fn ckpt_paths() {
        assert!(is_seed_checkpoint_path("run_001/lora_weights/best.ckpt"));
        assert!(is_seed_checkpoint_path("a/base_model.ckpt"));
        for not in [
            "x.safetensors",
            ".ckpt",
            "a/.ckpt",
            "ckpt",
            "x.ckpt.tmp",
            "x.CKPT",
        ] {
            assert!(!is_seed_checkpoint_path(not), "{not}");
        }
    }

    #[test]
    fn the_note_names_pickles_and_read_only() {
        let run = SeedRun::new(SeedRunKind::Lora);
        assert!(run.note.contains("PyTorch pickles") && run.note.contains("read-only"));
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(json["kind"], "lora");
        let base = serde_json::to_value(SeedRun::new(SeedRunKind::BaseTraining)).unwrap();
        assert_eq!(base["kind"], "base_training");
    }
}
