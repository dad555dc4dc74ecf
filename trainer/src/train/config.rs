//! Training configuration: defaults, the seed's YAML (`configs/training/lora_finetuning.yaml`)
//! and command-line overrides, in that order of precedence.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use format::layout::DEFAULT_BASE_DIR;
use format::Mode;

/// Default experiment name (the seed's).
pub const DEFAULT_EXPERIMENT: &str = "diffit_lora_trees";

/// Metrics a run can monitor for `best`.
pub const MONITORABLE: &[&str] = &["val_loss", "train_loss"];

/// Errors of reading or validating a configuration; each names the file or the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The YAML file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The YAML is malformed or has an unknown key / wrong type.
    #[error("invalid config {path}: {message}")]
    Yaml {
        /// The YAML file.
        path: PathBuf,
        /// serde's message, which names the key (and its section) and the line.
        message: String,
    },
    /// A setting is out of range.
    #[error("invalid setting {key} = {value}: {reason}")]
    Invalid {
        /// Dotted key, e.g. `training.batch_size`.
        key: &'static str,
        /// The offending value.
        value: String,
        /// What is allowed.
        reason: String,
    },
}

/// The model size presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// For tests: trains in seconds.
    Tiny,
    /// The demo model.
    #[default]
    Small,
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
        })
    }
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tiny" => Ok(Preset::Tiny),
            "small" => Ok(Preset::Small),
            other => Err(format!("invalid preset {other:?}: expected tiny or small")),
        }
    }
}

/// The seed's `training.checkpoint` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSettings {
    /// Whether LoRA checkpoints are written at all.
    pub enabled: bool,
    /// The checkpoints dir.
    pub base_dir: PathBuf,
    /// Run to create or open; `None` auto-increments.
    pub run_number: Option<u32>,
    /// Save a LoRA checkpoint every N epochs (the last epoch is always saved).
    pub save_every_n_epochs: u32,
    /// Keep only the newest N epoch files (best and last are kept apart).
    pub keep_last_n: u32,
    /// Metric deciding `best`.
    pub monitor: String,
    /// Whether lower or higher `monitor` is better.
    pub mode: Mode,
    /// Write the frozen base model into the run (once).
    pub save_base_model: bool,
    /// Resume this run from its last valid checkpoint.
    pub resume_from_run: Option<u32>,
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            base_dir: PathBuf::from(DEFAULT_BASE_DIR),
            run_number: None,
            save_every_n_epochs: 1,
            keep_last_n: 5,
            monitor: "val_loss".into(),
            mode: Mode::Min,
            save_base_model: true,
            resume_from_run: None,
        }
    }
}

/// LoRA hyper-parameters (PEFT names) as the YAML config and flags give them. The fields are
/// [`model::LoraConfig`]'s, but unknown keys are errors here (a typo in a config file must
/// not be silently ignored), while the model's type, read back from checkpoint files, tolerates
/// fields a newer version may add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSettings {
    /// Rank.
    pub r: usize,
    /// Scale numerator: the update is `(lora_alpha / r) · B A x`.
    pub lora_alpha: f64,
    /// Dropout on the LoRA branch input during training.
    pub lora_dropout: f64,
    /// Module-name suffixes that get adapters, matched at a `.` boundary (`attn.qkv`).
    pub target_modules: Vec<String>,
}

impl Default for LoraSettings {
    /// The model's defaults ([`model::LoraConfig::default`]), defined there once.
    fn default() -> Self {
        Self::from_model(&model::LoraConfig::default())
    }
}

impl LoraSettings {
    /// The model's LoRA config.
    pub fn to_model(&self) -> model::LoraConfig {
        model::LoraConfig {
            r: self.r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            target_modules: self.target_modules.clone(),
        }
    }

    /// Settings of a model LoRA config.
    pub fn from_model(c: &model::LoraConfig) -> Self {
        Self {
            r: c.r,
            lora_alpha: c.lora_alpha,
            lora_dropout: c.lora_dropout,
            target_modules: c.target_modules.clone(),
        }
    }
}

/// Where the fine-tuning images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSettings {
    /// A folder of the user's images; `None` uses the procedural trees.
    pub dir: Option<PathBuf>,
    /// Number of procedural tree images (ignored with `dir`).
    pub num_images: usize,
    /// Fraction of the images held out for validation.
    pub val_fraction: f64,
}

impl Default for DataSettings {
    fn default() -> Self {
        Self {
            dir: None,
            num_images: 1024,
            val_fraction: 0.2,
        }
    }
}

/// Everything a fine-tuning run needs; stored as the run's `training_config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Experiment name recorded in metadata.
    pub experiment_name: String,
    /// Model size.
    pub preset: Preset,
    /// Base model file; `None` uses the cached base of the preset.
    pub base: Option<PathBuf>,
    /// Total epochs (a resumed run trains up to this).
    pub epochs: u32,
    /// Images per optimizer step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// Seed of data order, noise and LoRA initialisation.
    pub seed: u64,
    /// Fine-tuning data.
    pub data: DataSettings,
    /// LoRA hyper-parameters.
    pub lora: LoraSettings,
    /// The seed's checkpoint section.
    pub checkpoint: CheckpointSettings,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            experiment_name: DEFAULT_EXPERIMENT.into(),
            preset: Preset::default(),
            base: None,
            epochs: 6,
            batch_size: 16,
            learning_rate: 2e-3,
            min_lr: 1e-5,
            weight_decay: 0.0,
            warmup_steps: 4,
            seed: 42,
            data: DataSettings::default(),
            lora: LoraSettings::default(),
            checkpoint: CheckpointSettings::default(),
        }
    }
}

/// The YAML file's shape: the seed's sections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlFile {
    #[serde(default)]
    model: Option<YamlModel>,
    #[serde(default)]
    lora: Option<LoraSettings>,
    #[serde(default)]
    data: Option<DataSettings>,
    #[serde(default)]
    training: Option<YamlTraining>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlModel {
    preset: Option<Preset>,
    base: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlTraining {
    experiment_name: Option<String>,
    epochs: Option<u32>,
    batch_size: Option<usize>,
    learning_rate: Option<f64>,
    min_lr: Option<f64>,
    weight_decay: Option<f64>,
    warmup_steps: Option<u64>,
    seed: Option<u64>,
    checkpoint: Option<CheckpointSettings>,
}

/// Settings given on the command line; `Some` overrides the file and the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--experiment`.
    pub experiment_name: Option<String>,
    /// `--preset`.
    pub preset: Option<Preset>,
    /// `--base`.
    pub base: Option<PathBuf>,
    /// `--epochs`.
    pub epochs: Option<u32>,
    /// `--batch-size`.
    pub batch_size: Option<usize>,
    /// `--learning-rate`.
    pub learning_rate: Option<f64>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `--data`.
    pub data_dir: Option<PathBuf>,
    /// `--checkpoints`.
    pub base_dir: Option<PathBuf>,
    /// `--run-number`.
    pub run_number: Option<u32>,
    /// `--keep-last-n`.
    pub keep_last_n: Option<u32>,
    /// `--monitor`.
    pub monitor: Option<String>,
    /// `--mode`.
    pub mode: Option<Mode>,
    /// `--save-every-n-epochs`.
    pub save_every_n_epochs: Option<u32>,
}

impl TrainingConfig {
    /// Defaults overlaid with a YAML file; unknown keys are errors naming the key and file.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str(&text, path)
    }

    /// Defaults overlaid with YAML text; `path` is only used in messages.
    pub fn from_yaml_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        // An empty file is a valid (all-default) config; serde_yaml_ng sees it as null.
        let file: YamlFile = if text.trim().is_empty() {
            YamlFile::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        };
        let mut cfg = Self::default();
        if let Some(m) = file.model {
            cfg.preset = m.preset.unwrap_or(cfg.preset);
            cfg.base = m.base.or(cfg.base);
        }
        if let Some(l) = file.lora {
            cfg.lora = l;
        }
        if let Some(d) = file.data {
            cfg.data = d;
        }
        if let Some(t) = file.training {
            cfg.experiment_name = t.experiment_name.unwrap_or(cfg.experiment_name);
            cfg.epochs = t.epochs.unwrap_or(cfg.epochs);
            cfg.batch_size = t.batch_size.unwrap_or(cfg.batch_size);
            cfg.learning_rate = t.learning_rate.unwrap_or(cfg.learning_rate);
            cfg.min_lr = t.min_lr.unwrap_or(cfg.min_lr);
            cfg.weight_decay = t.weight_decay.unwrap_or(cfg.weight_decay);
            cfg.warmup_steps = t.warmup_steps.unwrap_or(cfg.warmup_steps);
            cfg.seed = t.seed.unwrap_or(cfg.seed);
            if let Some(c) = t.checkpoint {
                cfg.checkpoint = c;
            }
        }
        Ok(cfg)
    }

    /// Applies command-line settings over this config.
    pub fn apply(&mut self, o: &Overrides) {
        fn set<T: Clone>(slot: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *slot = v.clone();
            }
        }
        set(&mut self.experiment_name, &o.experiment_name);
        set(&mut self.preset, &o.preset);
        if o.base.is_some() {
            self.base = o.base.clone();
        }
        set(&mut self.epochs, &o.epochs);
        set(&mut self.batch_size, &o.batch_size);
        set(&mut self.learning_rate, &o.learning_rate);
        set(&mut self.seed, &o.seed);
        if o.data_dir.is_some() {
            self.data.dir = o.data_dir.clone();
        }
        set(&mut self.checkpoint.base_dir, &o.base_dir);
        if o.run_number.is_some() {
            self.checkpoint.run_number = o.run_number;
        }
        set(&mut self.checkpoint.keep_last_n, &o.keep_last_n);
        set(&mut self.checkpoint.monitor, &o.monitor);
        set(&mut self.checkpoint.mode, &o.mode);
        set(
            &mut self.checkpoint.save_every_n_epochs,
            &o.save_every_n_epochs,
        );
    }

    /// Checks every range; the error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(
            key: &'static str,
            value: impl ToString,
            reason: &str,
        ) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                value: value.to_string(),
                reason: reason.into(),
            })
        }
        if self.experiment_name.trim().is_empty() {
            return invalid("training.experiment_name", "\"\"", "must not be empty");
        }
        if self.epochs == 0 {
            return invalid("training.epochs", self.epochs, "must be at least 1");
        }
        if self.batch_size == 0 {
            return invalid("training.batch_size", self.batch_size, "must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return invalid(
                "training.learning_rate",
                self.learning_rate,
                "must be a positive number",
            );
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return invalid("training.min_lr", self.min_lr, "must be >= 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return invalid("training.weight_decay", self.weight_decay, "must be >= 0");
        }
        if !(self.data.val_fraction > 0.0 && self.data.val_fraction < 1.0) {
            return invalid(
                "data.val_fraction",
                self.data.val_fraction,
                "must be strictly between 0 and 1",
            );
        }
        if self.data.dir.is_none() && self.data.num_images < 2 {
            return invalid(
                "data.num_images",
                self.data.num_images,
                "must be at least 2",
            );
        }
        if self.lora.r == 0 {
            return invalid("lora.r", self.lora.r, "must be at least 1");
        }
        if !(self.lora.lora_alpha.is_finite() && self.lora.lora_alpha > 0.0) {
            return invalid(
                "lora.lora_alpha",
                self.lora.lora_alpha,
                "must be a positive number",
            );
        }
        if !(0.0..1.0).contains(&self.lora.lora_dropout) {
            return invalid(
                "lora.lora_dropout",
                self.lora.lora_dropout,
                "must be in [0, 1)",
            );
        }
        if self.lora.target_modules.is_empty() {
            return invalid("lora.target_modules", "[]", "must name at least one module");
        }
        let c = &self.checkpoint;
        if c.save_every_n_epochs == 0 {
            return invalid(
                "training.checkpoint.save_every_n_epochs",
                0,
                "must be at least 1",
            );
        }
        if c.keep_last_n == 0 {
            return invalid("training.checkpoint.keep_last_n", 0, "must be at least 1");
        }
        if !MONITORABLE.contains(&c.monitor.as_str()) {
            return invalid(
                "training.checkpoint.monitor",
                &c.monitor,
                &format!("expected one of {MONITORABLE:?}"),
            );
        }
        if c.run_number == Some(0) {
            return invalid(
                "training.checkpoint.run_number",
                0,
                "run numbers start at 1",
            );
        }
        if c.resume_from_run == Some(0) {
            return invalid(
                "training.checkpoint.resume_from_run",
                0,
                "run numbers start at 1",
            );
        }
        if let (Some(run), Some(resume)) = (c.run_number, c.resume_from_run) {
            if run != resume {
                return invalid(
                    "training.checkpoint.resume_from_run",
                    resume,
                    &format!("differs from run_number {run}; give one of them"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/training/lora_finetuning.yaml")
    }

    #[test]
    fn the_shipped_yaml_parses_and_validates() {
        let cfg = TrainingConfig::from_yaml_file(&shipped()).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.experiment_name, DEFAULT_EXPERIMENT);
        assert!(cfg.checkpoint.enabled);
        assert_eq!(cfg.checkpoint.base_dir, PathBuf::from("checkpoints"));
        assert_eq!(cfg.checkpoint.run_number, None);
        assert_eq!(cfg.checkpoint.keep_last_n, 5);
        assert_eq!(cfg.checkpoint.monitor, "val_loss");
        assert_eq!(cfg.checkpoint.mode, Mode::Min);
        assert!(cfg.checkpoint.save_base_model);
        assert_eq!(cfg.checkpoint.resume_from_run, None);
    }

    #[test]
    fn the_seed_snippet_alone_is_a_valid_config() {
        let seed = r#"
training:
  checkpoint:
    enabled: true
    base_dir: "checkpoints"
    run_number: null  # Auto-increment if null
    save_every_n_epochs: 1
    keep_last_n: 5  # Keep last 5 checkpoints
    monitor: "val_loss"
    mode: "min"
    save_base_model: true
    resume_from_run: null  # Run number to resume from
"#;
        let cfg = TrainingConfig::from_yaml_str(seed, Path::new("seed.yaml")).unwrap();
        assert_eq!(cfg.checkpoint, CheckpointSettings::default());
        assert_eq!(cfg.epochs, TrainingConfig::default().epochs);
    }

    #[test]
    fn yaml_values_override_defaults_and_flags_override_yaml() {
        let text = "training:\n  epochs: 3\n  learning_rate: 1e-4\n  checkpoint:\n    keep_last_n: 2\n    mode: max\n    monitor: train_loss\ndata:\n  val_fraction: 0.25\nmodel:\n  preset: tiny\n";
        let mut cfg = TrainingConfig::from_yaml_str(text, Path::new("x.yaml")).unwrap();
        assert_eq!(
            (cfg.epochs, cfg.learning_rate, cfg.preset),
            (3, 1e-4, Preset::Tiny)
        );
        assert_eq!(
            (cfg.checkpoint.keep_last_n, cfg.checkpoint.mode),
            (2, Mode::Max)
        );
        // A section given in part keeps the defaults of its other keys.
        assert!(cfg.checkpoint.save_base_model);
        assert_eq!(cfg.data.val_fraction, 0.25);
        cfg.apply(&Overrides {
            epochs: Some(9),
            keep_last_n: Some(7),
            run_number: Some(4),
            data_dir: Some("imgs".into()),
            ..Default::default()
        });
        assert_eq!(
            (
                cfg.epochs,
                cfg.checkpoint.keep_last_n,
                cfg.checkpoint.run_number
            ),
            (9, 7, Some(4))
        );
        assert_eq!(cfg.learning_rate, 1e-4, "not given on the command line");
        assert_eq!(cfg.data.dir, Some(PathBuf::from("imgs")));
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        for (text, key) in [
            ("training:\n  epochs: 3\n  epoch: 4\n", "epoch"),
            ("training:\n  checkpoint:\n    keep_last: 2\n", "keep_last"),
            ("lora:\n  rank: 4\n", "rank"),
            ("optimizer: {}\n", "optimizer"),
        ] {
            let err = TrainingConfig::from_yaml_str(text, Path::new("configs/my.yaml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("configs/my.yaml"),
                "{err}"
            );
        }
    }

    #[test]
    fn wrong_types_and_missing_files_are_clear() {
        let err = TrainingConfig::from_yaml_str("training:\n  epochs: many\n", Path::new("a.yaml"))
            .unwrap_err();
        assert!(err.to_string().contains("epochs"), "{err}");
        let err = TrainingConfig::from_yaml_str(
            "training:\n  checkpoint:\n    mode: lowest\n",
            Path::new("a.yaml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("lowest"), "{err}");
        let err = TrainingConfig::from_yaml_file(Path::new("/nonexistent/cfg.yaml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cfg.yaml"), "{err}");
    }

    type Mutation = Box<dyn Fn(&mut TrainingConfig)>;

    #[test]
    fn validation_names_the_setting() {
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.epochs = 0), "training.epochs"),
            (Box::new(|c| c.batch_size = 0), "training.batch_size"),
            (
                Box::new(|c| c.learning_rate = -1.0),
                "training.learning_rate",
            ),
            (Box::new(|c| c.data.val_fraction = 1.0), "data.val_fraction"),
            (Box::new(|c| c.lora.r = 0), "lora.r"),
            (
                Box::new(|c| c.checkpoint.monitor = "accuracy".into()),
                "training.checkpoint.monitor",
            ),
            (
                Box::new(|c| c.checkpoint.keep_last_n = 0),
                "training.checkpoint.keep_last_n",
            ),
            (
                Box::new(|c| c.checkpoint.save_every_n_epochs = 0),
                "training.checkpoint.save_every_n_epochs",
            ),
            (
                Box::new(|c| {
                    c.checkpoint.run_number = Some(2);
                    c.checkpoint.resume_from_run = Some(3);
                }),
                "resume_from_run",
            ),
        ];
        for (mutate, key) in cases {
            let mut cfg = TrainingConfig::default();
            mutate(&mut cfg);
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn config_round_trips_through_json() {
        let cfg = TrainingConfig {
            learning_rate: 0.000_123_456_789_012_345_67,
            ..Default::default()
        };
        let back: TrainingConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.learning_rate.to_bits(), cfg.learning_rate.to_bits());
    }
}
