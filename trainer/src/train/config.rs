//! Training configuration, defined once: the nested serde structs below *are* the YAML file's
//! shape (`configs/training/lora_finetuning.yaml`), each section with its own defaults; the
//! command line is an override layer on top ([`Overrides`], whose fields are the `diffit train`
//! flags). Precedence: defaults, then the YAML file, then the flags.
//!
//! A run stores its configuration in the older flat form ([`TrainingConfig::to_stored`]), which
//! is what the dashboard shows and what resuming reads back.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use format::layout::DEFAULT_BASE_DIR;
use format::Mode;
use model::{Config, LoraConfig};

use crate::cli::values;
use crate::data::{Background, DataFormat};
use model::data::Augmentation;

use super::seed_config::{SeedKeys, SEED_KEYS};

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
    /// The YAML is malformed or a value has the wrong type.
    #[error("invalid config {path}: {message}")]
    Yaml {
        /// The YAML file.
        path: PathBuf,
        /// The parser's message, which names the key and the line.
        message: String,
    },
    /// The YAML has keys no setting has (a typo must not be silently ignored).
    #[error("invalid config {path}: unknown key {}", keys.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    UnknownKeys {
        /// The YAML file.
        path: PathBuf,
        /// The unknown keys, each with the closest valid one.
        keys: Vec<UnknownKey>,
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

/// The model presets, as `--preset` and the YAML's `model.preset` name them: our hybrid
/// (TMSA with adaLN-Zero; without labels, or with the tree species) and the published
/// architecture (class labels, guidance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// For tests: trains in seconds (hybrid).
    Tiny,
    /// Our hybrid at the demo's size, unconditional.
    #[default]
    Small,
    /// `small` with the tree species as class labels (guided sampling): the demo's model.
    #[serde(rename = "small-labels")]
    SmallLabels,
    /// The published architecture at `tiny` size, labelled with the tree species.
    #[serde(rename = "published-tiny")]
    PublishedTiny,
    /// The published architecture at `small` size, labelled with the tree species.
    #[serde(rename = "published-small")]
    PublishedSmall,
    /// The published architecture at 32×32 with 10 classes, for a GPU.
    #[serde(rename = "published-32")]
    #[value(name = "published-32")]
    Published32,
}

impl Preset {
    /// The model hyper-parameters of this preset.
    pub fn model_config(self) -> Config {
        match self {
            Preset::Tiny => Config::tiny(),
            Preset::Small => Config::small(),
            Preset::SmallLabels => Config::small_labels(),
            Preset::PublishedTiny => Config::published_tiny(),
            Preset::PublishedSmall => Config::published_small(),
            Preset::Published32 => Config::published_32(),
        }
    }
}

/// The label dropout of a labelled model when the config sets none: the share of training
/// images conditioned on the null class, which classifier-free guidance needs.
pub const DEFAULT_LABEL_DROPOUT: f64 = 0.1;

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_possible_value() {
            Some(value) => f.write_str(value.get_name()),
            None => Ok(()),
        }
    }
}

/// The YAML's `model` section: which network to fine-tune.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelSettings {
    /// Model size.
    pub preset: Preset,
    /// Base model file; `None` uses the cached base of the preset (pretrained when absent).
    pub base: Option<PathBuf>,
    /// Take the base from this managed base-training run (`base_training/run_NNN`) instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_run: Option<u32>,
    /// Which checkpoint of `base_run`: `best` (default), `last` or an epoch number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_checkpoint: Option<String>,
}

/// The YAML's `data` section: where the fine-tuning images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataSettings {
    /// A folder of the user's images, or CIFAR-10/100 batch files (one file, or the folder
    /// holding them); `None` uses the procedural trees.
    #[serde(alias = "path")]
    pub dir: Option<PathBuf>,
    /// How `dir` is read: `auto` (CIFAR batches by name or record size, else images),
    /// `images`, `cifar10` or `cifar100`.
    #[serde(skip_serializing_if = "DataFormat::is_auto")]
    pub format: DataFormat,
    /// CIFAR labels to train on (e.g. CIFAR-100's trees: 47, 52, 56, 59, 96), relabelled in
    /// this order; empty keeps every class.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<u32>,
    /// Random flips and rotations of the training images.
    #[serde(skip_serializing_if = "Augmentation::is_off")]
    pub augmentation: Augmentation,
    /// Number of procedural tree images (ignored with `dir`).
    pub num_images: usize,
    /// Fraction of the images held out for validation.
    pub val_fraction: f64,
    /// The colour transparent pixels of the folder's images are composited onto.
    #[serde(skip_serializing_if = "Background::is_white")]
    pub background: Background,
}

impl Default for DataSettings {
    fn default() -> Self {
        Self {
            dir: None,
            format: DataFormat::Auto,
            classes: Vec::new(),
            augmentation: Augmentation::NONE,
            num_images: 1024,
            val_fraction: 0.2,
            background: Background::WHITE,
        }
    }
}

/// The YAML's `training` section: optimisation and the run it is recorded in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainingSettings {
    /// Experiment name recorded in metadata.
    pub experiment_name: String,
    /// Total epochs (a resumed run trains up to this).
    pub epochs: u32,
    /// Images per optimizer step.
    pub batch_size: usize,
    /// Images per validation batch (the seed's `batch_size_test`); `batch_size` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_batch_size: Option<usize>,
    /// Validate every N epochs (and after the last); epochs in between have no `val_loss`.
    #[serde(skip_serializing_if = "is_one")]
    pub check_val_every_n_epoch: u32,
    /// Clip the gradients of each step to this global L2 norm (the seed's
    /// `gradient_clip_val`); unset: no clipping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gradient_clip_val: Option<f64>,
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
    /// Per-step metrics (the step's loss and learning rate) are logged every N optimizer steps.
    pub log_every_n_steps: u64,
    /// A grid of samples (fixed seed) is drawn every N epochs and after the last, into
    /// TensorBoard and `logs/samples/epoch_NNN.png`; 0 draws none.
    #[serde(skip_serializing_if = "is_one")]
    pub sample_every_n_epochs: u32,
    /// Shards each batch is split into, over every process of the job (each shard draws its
    /// own noise): a run gives the same numbers for the same count, however many processes
    /// or cores share it. Unset: each process's cores (divided by candle's threads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_shards: Option<usize>,
    /// For a model with class labels: the probability that a training image's label is
    /// replaced by the null class (unset: [`DEFAULT_LABEL_DROPOUT`], recorded when a labelled
    /// run is created).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_dropout: Option<f64>,
    /// The seed's checkpoint section.
    pub checkpoint: CheckpointSettings,
    /// MLflow tracking (off unless a tracking URI is given).
    #[serde(skip_serializing_if = "MlflowSettings::is_off")]
    pub mlflow: MlflowSettings,
}

/// The `training.mlflow` section.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MlflowSettings {
    /// The tracking server, `http(s)://host:port` (`--mlflow-uri`; `MLFLOW_TRACKING_URI` when
    /// unset). Credentials come from `MLFLOW_TRACKING_TOKEN` or `MLFLOW_TRACKING_USERNAME` and
    /// `MLFLOW_TRACKING_PASSWORD`, never from the URI, so they are never stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_uri: Option<String>,
    /// The MLflow experiment; the run's `experiment_name` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiment_name: Option<String>,
}

impl MlflowSettings {
    /// True when nothing is set (it is then left out of stored configs).
    pub fn is_off(&self) -> bool {
        self.tracking_uri.is_none() && self.experiment_name.is_none()
    }
}

impl Default for TrainingSettings {
    fn default() -> Self {
        Self {
            experiment_name: store::DEFAULT_EXPERIMENT.into(),
            epochs: 6,
            batch_size: 16,
            val_batch_size: None,
            check_val_every_n_epoch: 1,
            gradient_clip_val: None,
            learning_rate: 2e-3,
            min_lr: 1e-5,
            weight_decay: 0.0,
            warmup_steps: 4,
            seed: 42,
            log_every_n_steps: 10,
            sample_every_n_epochs: 1,
            data_shards: None,
            label_dropout: None,
            checkpoint: CheckpointSettings::default(),
            mlflow: MlflowSettings::default(),
        }
    }
}

/// The seed's `training.checkpoint` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckpointSettings {
    /// Whether LoRA checkpoints are written at all.
    pub enabled: bool,
    /// The checkpoints dir.
    pub base_dir: PathBuf,
    /// Run to create or open; `None` auto-increments.
    pub run_number: Option<u32>,
    /// Save a LoRA checkpoint every N epochs (the last epoch is always saved).
    pub save_every_n_epochs: u32,
    /// Keep only the newest N epoch files (best and last are kept apart); 0 keeps every one.
    pub keep_last_n: u32,
    /// Also keep the k best epochs by `monitor` (Lightning's `save_top_k`); 0: only `best`.
    #[serde(skip_serializing_if = "is_zero")]
    pub save_top_k: u32,
    /// Keep AdamW's moments only in the newest N epoch files; older ones keep their LoRA
    /// weights and metrics and can no longer be resumed from. Unset: every epoch keeps them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_optimizer_last_n: Option<u32>,
    /// Metric deciding `best`.
    pub monitor: String,
    /// Whether lower or higher `monitor` is better.
    pub mode: Mode,
    /// Write the frozen base model into the run (once).
    pub save_base_model: bool,
    /// Resume this run from its last valid checkpoint.
    pub resume_from_run: Option<u32>,
    /// Upload every commit of a local run to this object-store URL in the background.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            base_dir: PathBuf::from(DEFAULT_BASE_DIR),
            run_number: None,
            save_every_n_epochs: 1,
            keep_last_n: 5,
            save_top_k: 0,
            keep_optimizer_last_n: None,
            monitor: "val_loss".into(),
            mode: Mode::Min,
            save_base_model: true,
            resume_from_run: None,
            mirror: None,
        }
    }
}

/// Everything a fine-tuning run needs, shaped as the YAML file: one field per section.
///
/// Unknown keys are errors when reading a YAML file ([`TrainingConfig::from_yaml_str`]) but not
/// in the types themselves, so that the `lora` section is the model's own [`LoraConfig`] (which
/// must tolerate fields a newer version adds to checkpoint files) and so that a run's stored
/// config can be read back through [`TrainingConfig::from_stored`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainingConfig {
    /// The network to fine-tune.
    pub model: ModelSettings,
    /// LoRA hyper-parameters (PEFT names).
    pub lora: LoraConfig,
    /// Fine-tuning data.
    pub data: DataSettings,
    /// Optimisation and checkpointing.
    pub training: TrainingSettings,
}

/// How a run stores its [`TrainingConfig`] (config.json's `training`, metadata's
/// `training_config`): the `model` and `training` sections' keys at the top level, as runs have
/// been written since the first version.
#[derive(Serialize, Deserialize)]
struct StoredConfig {
    #[serde(flatten)]
    model: ModelSettings,
    #[serde(default)]
    lora: LoraConfig,
    #[serde(default)]
    data: DataSettings,
    #[serde(flatten)]
    training: TrainingSettings,
}

/// A key of a config file that no setting has, and the valid key closest to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// Its dotted path, e.g. `training.epoch`.
    pub key: String,
    /// The closest valid dotted key, e.g. `training.epochs`.
    pub closest: Option<String>,
}

impl std::fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.closest {
            Some(closest) => write!(f, "{} (closest valid key: {closest})", self.key),
            None => f.write_str(&self.key),
        }
    }
}

/// A config file read: the settings, and one warning per key accepted without effect.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// Defaults overlaid with the file.
    pub config: TrainingConfig,
    /// `config FILE: KEY is accepted but has no effect here: WHY`, one per such key.
    pub warnings: Vec<String>,
}

/// What `--data` names: the procedural trees (`trees`), or a path: a folder of images, or
/// CIFAR-10/100 batch files (a file, or the folder holding them), as `data.format` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// The procedural tree images.
    Trees,
    /// A folder of PNG/JPEG images, or CIFAR batches.
    Path(PathBuf),
}

impl DataSource {
    /// `trees`, or any other text as a path.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "trees" => DataSource::Trees,
            path => DataSource::Path(PathBuf::from(path)),
        })
    }
}

/// Settings given on the command line (they are the `diffit train` flags); `Some` overrides the
/// file and the defaults. On resume they override the run's stored config.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct Overrides {
    /// Experiment name recorded in a new run.
    #[arg(long = "experiment", value_name = "NAME")]
    pub experiment_name: Option<String>,
    /// Model size.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Base model to fine-tune (a safetensors file).
    #[arg(
        long,
        visible_alias = "base-model",
        value_name = "FILE",
        conflicts_with = "base_run"
    )]
    pub base: Option<PathBuf>,
    /// Take the base from this base-training run (`diffit pretrain`'s `base_training/run_NNN`).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub base_run: Option<u32>,
    /// Which checkpoint of --base-run: `best` (default), `last` or an epoch number.
    #[arg(long, value_name = "best|last|N", requires = "base_run",
          value_parser = |t: &str| super::base_runs::parse_base_checkpoint(t).map(|_| t.to_string()))]
    pub base_checkpoint: Option<String>,
    /// Epochs to train (in total, counting resumed ones).
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub epochs: Option<u32>,
    /// Images per batch.
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<usize>())]
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long, allow_hyphen_values = true, value_parser = values::positive)]
    pub learning_rate: Option<f64>,
    /// Seed for data order, initialisation and noise.
    #[arg(long, allow_negative_numbers = true, value_parser = values::seed)]
    pub seed: Option<u64>,
    /// Training data: `trees` (procedural) or a folder of PNG/JPEG images.
    #[arg(long, value_name = "trees|DIR", value_parser = DataSource::parse)]
    pub data: Option<DataSource>,
    /// How `--data PATH` is read: `auto` (CIFAR batches by name or record size, else a
    /// folder of images), `images`, `cifar10` or `cifar100`.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub data_format: Option<DataFormat>,
    /// CIFAR labels to train on, relabelled in this order (CIFAR-100's trees:
    /// `47,52,56,59,96`).
    #[arg(long, value_name = "L,L,...", value_delimiter = ',', num_args = 1..)]
    pub classes: Option<Vec<u32>>,
    /// Augment the training images as the seed system does: a horizontal flip with
    /// probability 0.5 and a rotation within ±5° (finer control: `data.augmentation`).
    #[arg(long)]
    pub augment: bool,
    /// Colour transparent pixels are composited onto: `#rrggbb`, `r,g,b`, `white` (default)
    /// or `black`.
    #[arg(long, value_name = "COLOUR", value_parser = Background::from_str)]
    pub background: Option<Background>,
    /// Where the runs are: a directory (default: the config's `base_dir`, else
    /// `checkpoints`) or an object-store URL (`s3://bucket/prefix`, `gs://…`, `az://…`).
    #[arg(long = "checkpoints", value_name = "DIR|URL")]
    pub base_dir: Option<PathBuf>,
    /// Also upload every commit to this bucket (`s3://bucket/prefix`) in the background.
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// Local directory a bucket's runs are written through (default: under
    /// `~/.cache/diffit-lora/buckets/`).
    #[arg(long, value_name = "DIR")]
    pub staging: Option<PathBuf>,
    /// Run to use: an existing number opens that run, a new number creates it.
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub run_number: Option<u32>,
    /// Keep only the newest N epoch files (the best is always kept); 0 keeps every one.
    #[arg(long, allow_negative_numbers = true, value_parser = values::at_least_zero::<u32>())]
    pub keep_last_n: Option<u32>,
    /// Keep AdamW's moments only in the newest N epoch files (older ones: weights and
    /// metrics, not resumable).
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub keep_optimizer_last_n: Option<u32>,
    /// Metric that picks the best checkpoint.
    #[arg(long)]
    pub monitor: Option<String>,
    /// Whether a lower (`min`) or higher (`max`) monitored metric is better.
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Save a checkpoint every N epochs.
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub save_every_n_epochs: Option<u32>,
    /// Draw a grid of samples every N epochs and after the last (0: none).
    #[arg(long, allow_negative_numbers = true, value_parser = values::at_least_zero::<u32>())]
    pub sample_every_n_epochs: Option<u32>,
    /// Store the frozen base model in the run (`true`/`false`); on resume, `true` stores it
    /// into a run that lacks it.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub save_base_model: Option<bool>,
    /// For a labelled model: the probability in [0, 1) that a training image is conditioned
    /// on the null class instead of its label (default 0.1).
    #[arg(long, allow_hyphen_values = true, value_parser = values::unit_interval)]
    pub label_dropout: Option<f64>,
    /// Shards each batch is split into over every process of the job (`training.data_shards`):
    /// the same count gives the same run on any number of processes or cores.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = values::count::<usize>())]
    pub data_shards: Option<usize>,
    /// Log the run to this MLflow tracking server (`http://HOST:PORT`).
    #[arg(long, value_name = "URI")]
    pub mlflow_uri: Option<String>,
    /// The MLflow experiment to log into (default: the run's experiment name).
    #[arg(long, value_name = "NAME")]
    pub mlflow_experiment: Option<String>,
}

impl TrainingConfig {
    /// Defaults overlaid with a YAML file (ours or the seed system's keys); unknown keys are
    /// errors naming the key, the file and the closest valid key.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str(&text, path)
    }

    /// Defaults overlaid with YAML text; `path` is only used in messages. The seed system's
    /// own keys are mapped onto ours, each accepted without effect logged as a warning.
    pub fn from_yaml_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let loaded = Self::load_yaml_str(text, path)?;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        Ok(loaded.config)
    }

    /// [`from_yaml_str`](Self::from_yaml_str), returning the warnings instead of logging them.
    ///
    /// The text is read twice, as our sections and as the seed's keys, each pass naming what
    /// it did not know: a key is unknown only when neither pass knows it (or an enclosing
    /// key), and every unknown key is reported with the closest valid one.
    pub fn load_yaml_str(text: &str, path: &Path) -> Result<LoadedConfig, ConfigError> {
        let (ours, ours_ignored) = parse_yaml::<Self>(text, path)?;
        let (seed, seed_ignored) = parse_yaml::<SeedKeys>(text, path)?;
        let within = |key: &str, outer: &str| {
            key == outer || key.strip_prefix(outer).is_some_and(|r| r.starts_with('.'))
        };
        let mut unknown: Vec<String> = Vec::new();
        for (keys, others) in [
            (&ours_ignored, &seed_ignored),
            (&seed_ignored, &ours_ignored),
        ] {
            for key in keys {
                if others.iter().any(|o| within(key, o)) && !unknown.contains(key) {
                    unknown.push(key.clone());
                }
            }
        }
        // `training.epoch` is reported, not also its enclosing `training` (when one pass knows
        // no such section at all).
        let reported: Vec<String> = unknown
            .iter()
            .filter(|k| !unknown.iter().any(|inner| inner != *k && within(inner, k)))
            .cloned()
            .collect();
        if !reported.is_empty() {
            let valid = valid_keys();
            return Err(ConfigError::UnknownKeys {
                path: path.to_path_buf(),
                keys: reported
                    .into_iter()
                    .map(|key| {
                        let closest = closest_key(&key, &valid);
                        UnknownKey { key, closest }
                    })
                    .collect(),
            });
        }
        let mut config = ours.unwrap_or_default();
        let warnings = seed.unwrap_or_default().apply(&mut config, path)?;
        Ok(LoadedConfig { config, warnings })
    }

    /// The form a run stores (see [`StoredConfig`]): flat, as the dashboard shows it.
    pub fn to_stored(&self) -> serde_json::Value {
        let stored = StoredConfig {
            model: self.model.clone(),
            lora: self.lora.clone(),
            data: self.data.clone(),
            training: self.training.clone(),
        };
        // Plain data with string keys: serialising it cannot fail.
        serde_json::to_value(stored).unwrap_or_default()
    }

    /// A config read back from its stored form ([`TrainingConfig::to_stored`]); keys it does
    /// not know (from a newer version) are ignored.
    pub fn from_stored(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        let stored: StoredConfig = serde_json::from_value(value)?;
        Ok(Self {
            model: stored.model,
            lora: stored.lora,
            data: stored.data,
            training: stored.training,
        })
    }

    /// Checks every range; the error names the setting by its YAML path.
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
        let t = &self.training;
        if t.experiment_name.trim().is_empty() {
            return invalid("training.experiment_name", "\"\"", "must not be empty");
        }
        if t.epochs == 0 {
            return invalid("training.epochs", t.epochs, "must be at least 1");
        }
        if t.batch_size == 0 {
            return invalid("training.batch_size", t.batch_size, "must be at least 1");
        }
        if t.val_batch_size == Some(0) {
            return invalid("training.val_batch_size", 0, "must be at least 1");
        }
        if t.check_val_every_n_epoch == 0 {
            return invalid("training.check_val_every_n_epoch", 0, "must be at least 1");
        }
        if let Some(clip) = t.gradient_clip_val.filter(|v| !(v.is_finite() && *v > 0.0)) {
            return invalid(
                "training.gradient_clip_val",
                clip,
                "must be a positive number (leave it unset for no clipping)",
            );
        }
        if t.log_every_n_steps == 0 || t.log_every_n_steps > u64::from(u32::MAX) {
            return invalid(
                "training.log_every_n_steps",
                t.log_every_n_steps,
                "must be in 1..=4294967295",
            );
        }
        if let Some(uri) = &t.mlflow.tracking_uri {
            if let Err(reason) = super::mlflow::check_tracking_uri(uri) {
                // The URI is not echoed: it may hold credentials.
                return invalid("training.mlflow.tracking_uri", "(given)", &reason);
            }
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return invalid(
                "training.learning_rate",
                t.learning_rate,
                "must be a positive number",
            );
        }
        if !(t.min_lr.is_finite() && t.min_lr >= 0.0) {
            return invalid("training.min_lr", t.min_lr, "must be >= 0");
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return invalid("training.weight_decay", t.weight_decay, "must be >= 0");
        }
        if let Some(p) = t.label_dropout.filter(|p| !(0.0..1.0).contains(p)) {
            return invalid("training.label_dropout", p, "must be in [0, 1)");
        }
        if let Some(n) = t.data_shards.filter(|n| !(1..=256).contains(n)) {
            return invalid("training.data_shards", n, "must be in 1..=256");
        }
        let m = &self.model;
        if m.base.is_some() && m.base_run.is_some() {
            return invalid(
                "model.base_run",
                m.base_run.unwrap_or_default(),
                "give model.base (a file) or model.base_run, not both",
            );
        }
        if let Some(which) = &m.base_checkpoint {
            if m.base_run.is_none() {
                return invalid("model.base_checkpoint", which, "needs model.base_run");
            }
            if let Err(reason) = super::base_runs::parse_base_checkpoint(which) {
                return invalid("model.base_checkpoint", which, &reason);
            }
        }
        if m.base_run == Some(0) {
            return invalid("model.base_run", 0, "run numbers start at 1");
        }
        let d = &self.data;
        if !(d.val_fraction > 0.0 && d.val_fraction < 1.0) {
            return invalid(
                "data.val_fraction",
                d.val_fraction,
                "must be strictly between 0 and 1",
            );
        }
        if let Some((field, value, reason)) = d.augmentation.problem() {
            let key = match field {
                "horizontal_flip" => "data.augmentation.horizontal_flip",
                _ => "data.augmentation.rotation",
            };
            return invalid(key, value, reason);
        }
        if d.dir.is_none() && (!d.classes.is_empty() || !d.format.is_auto()) {
            return invalid(
                "data.dir",
                "(unset)",
                "data.classes and data.format read a path: give --data PATH",
            );
        }
        if d.dir.is_none() && d.num_images < 2 {
            return invalid("data.num_images", d.num_images, "must be at least 2");
        }
        let l = &self.lora;
        if l.r == 0 {
            return invalid("lora.r", l.r, "must be at least 1");
        }
        if !(l.lora_alpha.is_finite() && l.lora_alpha > 0.0) {
            return invalid("lora.lora_alpha", l.lora_alpha, "must be a positive number");
        }
        if !(0.0..1.0).contains(&l.lora_dropout) {
            return invalid("lora.lora_dropout", l.lora_dropout, "must be in [0, 1)");
        }
        if l.target_modules.is_empty() {
            return invalid("lora.target_modules", "[]", "must name at least one module");
        }
        let c = &t.checkpoint;
        if c.save_every_n_epochs == 0 {
            return invalid(
                "training.checkpoint.save_every_n_epochs",
                0,
                "must be at least 1",
            );
        }
        if c.keep_optimizer_last_n == Some(0) {
            return invalid(
                "training.checkpoint.keep_optimizer_last_n",
                0,
                "must be at least 1 (the newest epoch is what a resume needs)",
            );
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

/// A YAML file read as `T`: the value (`None` for an empty document) and the dotted keys `T`
/// did not know.
fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<(Option<T>, Vec<String>), ConfigError> {
    let mut ignored = Vec::new();
    let mut failed_at = None;
    let value = serde_saphyr::with_deserializer_from_str(text, |de| {
        let mut note = |key: serde_ignored::Path| ignored.push(dotted_key(&key));
        let de = serde_ignored::Deserializer::new(de, &mut note);
        // An empty document (no keys, only comments) is a valid, all-default config.
        serde_path_to_error::deserialize::<_, Option<T>>(de).map_err(|e| {
            failed_at = Some(e.path().to_string());
            e.into_inner()
        })
    })
    .map_err(|e| {
        // One line: the key path, then the parser's message with its line and column.
        let message = e.render_with_options(serde_saphyr::render_options! {
            snippets: serde_saphyr::SnippetMode::Off,
        });
        ConfigError::Yaml {
            path: path.to_path_buf(),
            message: match failed_at.filter(|key| key != ".") {
                Some(key) => format!("{key}: {message}"),
                None => message,
            },
        }
    })?;
    Ok((value, ignored))
}

/// Every dotted key a config file may hold: ours (from a config with every optional setting
/// set, so that none is left out of its serialized form) and the seed's.
fn valid_keys() -> Vec<String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = value {
            for (key, inner) in map {
                let dotted = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                walk(&dotted, inner, out);
                out.push(dotted);
            }
        }
    }
    let mut full = TrainingConfig::default();
    let t = &mut full.training;
    t.val_batch_size = Some(1);
    t.check_val_every_n_epoch = 2;
    t.sample_every_n_epochs = 2;
    t.gradient_clip_val = Some(1.0);
    t.label_dropout = Some(0.1);
    t.data_shards = Some(1);
    t.mlflow.tracking_uri = Some(String::new());
    t.mlflow.experiment_name = Some(String::new());
    t.checkpoint.mirror = Some(String::new());
    t.checkpoint.save_top_k = 1;
    t.checkpoint.keep_optimizer_last_n = Some(1);
    full.data.background = Background([0, 0, 0]);
    full.model.base_run = Some(1);
    full.model.base_checkpoint = Some("best".into());
    full.data.format = DataFormat::Images;
    full.data.classes = vec![0];
    full.data.augmentation = Augmentation::SEED;
    let mut keys = Vec::new();
    if let Ok(value) = serde_json::to_value(&full) {
        walk("", &value, &mut keys);
    }
    keys.extend(SEED_KEYS.iter().map(|k| k.to_string()));
    keys
}

/// The valid key nearest to `key` by edit distance (ties: the first listed).
fn closest_key(key: &str, valid: &[String]) -> Option<String> {
    valid
        .iter()
        .min_by_key(|candidate| strsim::levenshtein(key, candidate))
        .cloned()
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `training.epoch` for a key serde ignored: the YAML keys from the top, without serde's
/// markers for the `Option` layers on the way.
fn dotted_key(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    let mut keys = Vec::new();
    let mut at = path;
    loop {
        match at {
            Path::Root => break,
            Path::Map { parent, key } => {
                keys.push(key.clone());
                at = parent;
            }
            Path::Seq { parent, index } => {
                keys.push(index.to_string());
                at = parent;
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => at = parent,
        }
    }
    keys.reverse();
    keys.join(".")
}

impl TrainingConfig {
    /// Applies command-line settings over this config.
    pub fn apply(&mut self, o: &Overrides) {
        fn set<T: Clone>(slot: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *slot = v.clone();
            }
        }
        set(&mut self.model.preset, &o.preset);
        if o.base.is_some() {
            self.model.base = o.base.clone();
            self.model.base_run = None;
            self.model.base_checkpoint = None;
        }
        if o.base_run.is_some() {
            self.model.base_run = o.base_run;
            self.model.base = None;
            self.model.base_checkpoint = o.base_checkpoint.clone();
        }
        match &o.data {
            None => {}
            Some(DataSource::Trees) => self.data.dir = None,
            Some(DataSource::Path(dir)) => self.data.dir = Some(dir.clone()),
        }
        set(&mut self.data.background, &o.background);
        set(&mut self.data.format, &o.data_format);
        set(&mut self.data.classes, &o.classes);
        if o.augment {
            self.data.augmentation = Augmentation::SEED;
        }
        let t = &mut self.training;
        set(&mut t.experiment_name, &o.experiment_name);
        set(&mut t.epochs, &o.epochs);
        set(&mut t.batch_size, &o.batch_size);
        set(&mut t.learning_rate, &o.learning_rate);
        set(&mut t.seed, &o.seed);
        set(&mut t.sample_every_n_epochs, &o.sample_every_n_epochs);
        if o.label_dropout.is_some() {
            t.label_dropout = o.label_dropout;
        }
        if o.data_shards.is_some() {
            t.data_shards = o.data_shards;
        }
        let c = &mut t.checkpoint;
        set(&mut c.base_dir, &o.base_dir);
        if o.mirror.is_some() {
            c.mirror = o.mirror.clone();
        }
        if o.run_number.is_some() {
            c.run_number = o.run_number;
        }
        set(&mut c.keep_last_n, &o.keep_last_n);
        if o.keep_optimizer_last_n.is_some() {
            c.keep_optimizer_last_n = o.keep_optimizer_last_n;
        }
        set(&mut c.monitor, &o.monitor);
        set(&mut c.mode, &o.mode);
        set(&mut c.save_every_n_epochs, &o.save_every_n_epochs);
        set(&mut c.save_base_model, &o.save_base_model);
        if o.mlflow_uri.is_some() {
            t.mlflow.tracking_uri = o.mlflow_uri.clone();
        }
        if o.mlflow_experiment.is_some() {
            t.mlflow.experiment_name = o.mlflow_experiment.clone();
        }
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
        assert_eq!(cfg.training.experiment_name, store::DEFAULT_EXPERIMENT);
        let c = &cfg.training.checkpoint;
        assert!(c.enabled);
        assert_eq!(c.base_dir, PathBuf::from("checkpoints"));
        assert_eq!(c.run_number, None);
        assert_eq!(c.keep_last_n, 5);
        assert_eq!(c.monitor, "val_loss");
        assert_eq!(c.mode, Mode::Min);
        assert!(c.save_base_model);
        assert_eq!(c.resume_from_run, None);
        // The shipped file spells out the defaults.
        assert_eq!(cfg, TrainingConfig::default());
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
        assert_eq!(cfg, TrainingConfig::default());
        for empty in ["", "\n", "# only comments\n", "---\n"] {
            let cfg = TrainingConfig::from_yaml_str(empty, Path::new("empty.yaml")).unwrap();
            assert_eq!(cfg, TrainingConfig::default(), "{empty:?}");
        }
    }

    #[test]
    fn yaml_values_override_defaults_and_flags_override_yaml() {
        let text = "training:\n  epochs: 3\n  learning_rate: 1e-4\n  checkpoint:\n    keep_last_n: 2\n    mode: max\n    monitor: train_loss\ndata:\n  val_fraction: 0.25\nmodel:\n  preset: tiny\n";
        let mut cfg = TrainingConfig::from_yaml_str(text, Path::new("x.yaml")).unwrap();
        assert_eq!(
            (
                cfg.training.epochs,
                cfg.training.learning_rate,
                cfg.model.preset
            ),
            (3, 1e-4, Preset::Tiny)
        );
        let c = &cfg.training.checkpoint;
        assert_eq!((c.keep_last_n, c.mode), (2, Mode::Max));
        // A section given in part keeps the defaults of its other keys.
        assert!(c.save_base_model);
        assert_eq!(cfg.training.batch_size, 16);
        assert_eq!(cfg.data.val_fraction, 0.25);
        assert_eq!(cfg.data.num_images, 1024);
        cfg.apply(&Overrides {
            epochs: Some(9),
            keep_last_n: Some(7),
            run_number: Some(4),
            data: Some(DataSource::Path("imgs".into())),
            ..Default::default()
        });
        let c = &cfg.training.checkpoint;
        assert_eq!(
            (cfg.training.epochs, c.keep_last_n, c.run_number),
            (9, 7, Some(4))
        );
        assert_eq!(
            cfg.training.learning_rate, 1e-4,
            "not given on the command line"
        );
        assert_eq!(cfg.data.dir, Some(PathBuf::from("imgs")));
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        for (text, key) in [
            ("training:\n  epochs: 3\n  epoch: 4\n", "training.epoch"),
            (
                "training:\n  checkpoint:\n    keep_last: 2\n",
                "training.checkpoint.keep_last",
            ),
            ("lora:\n  rank: 4\n", "lora.rank"),
            ("model:\n  preset: tiny\n  size: 3\n", "model.size"),
            ("optimiser: {}\n", "optimiser"),
        ] {
            let err = TrainingConfig::from_yaml_str(text, Path::new("configs/my.yaml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("configs/my.yaml"),
                "{err}"
            );
        }
        let err = TrainingConfig::from_yaml_str(
            "training:\n  epoch: 3\nlora:\n  rank: 4\n",
            Path::new("my.yaml"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid config my.yaml: unknown key training.epoch (closest valid key: training.epochs), lora.rank (closest valid key: lora.r)"
        );
    }

    #[test]
    fn wrong_types_and_missing_files_are_clear() {
        let err = TrainingConfig::from_yaml_str("training:\n  epochs: many\n", Path::new("a.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.yaml") && err.contains("training.epochs") && err.contains("line 2"),
            "{err}"
        );
        let err = TrainingConfig::from_yaml_str("lora: [\n", Path::new("a.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.yaml") && err.contains("line 1"), "{err}");
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
            (Box::new(|c| c.training.epochs = 0), "training.epochs"),
            (
                Box::new(|c| c.training.batch_size = 0),
                "training.batch_size",
            ),
            (
                Box::new(|c| c.training.learning_rate = -1.0),
                "training.learning_rate",
            ),
            (Box::new(|c| c.data.val_fraction = 1.0), "data.val_fraction"),
            (Box::new(|c| c.lora.r = 0), "lora.r"),
            (
                Box::new(|c| c.training.checkpoint.monitor = "accuracy".into()),
                "training.checkpoint.monitor",
            ),
            (
                Box::new(|c| c.training.checkpoint.keep_optimizer_last_n = Some(0)),
                "training.checkpoint.keep_optimizer_last_n",
            ),
            (
                Box::new(|c| c.training.gradient_clip_val = Some(-1.0)),
                "training.gradient_clip_val",
            ),
            (
                Box::new(|c| c.training.check_val_every_n_epoch = 0),
                "training.check_val_every_n_epoch",
            ),
            (
                Box::new(|c| c.training.log_every_n_steps = u64::from(u32::MAX) + 1),
                "training.log_every_n_steps",
            ),
            (
                Box::new(|c| c.training.checkpoint.save_every_n_epochs = 0),
                "training.checkpoint.save_every_n_epochs",
            ),
            (
                Box::new(|c| {
                    c.training.checkpoint.run_number = Some(2);
                    c.training.checkpoint.resume_from_run = Some(3);
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
    fn the_stored_form_is_flat_and_round_trips() {
        let mut cfg = TrainingConfig::default();
        cfg.training.learning_rate = 0.000_123_456_789_012_345_67;
        cfg.model.preset = Preset::Tiny;
        cfg.lora.r = 4;
        let stored = cfg.to_stored();
        // The keys runs have always stored, at the top level.
        assert_eq!(stored["preset"], "tiny");
        assert_eq!(stored["epochs"], 6);
        assert_eq!(stored["lora"]["r"], 4);
        assert_eq!(stored["checkpoint"]["keep_last_n"], 5);
        assert!(stored.get("model").is_none() && stored.get("training").is_none());
        let back = TrainingConfig::from_stored(stored).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(
            back.training.learning_rate.to_bits(),
            cfg.training.learning_rate.to_bits()
        );
    }

    #[test]
    fn mlflow_and_step_logging_are_read_from_the_yaml_and_checked() {
        let text = "training:\n  log_every_n_steps: 5\n  mlflow:\n    tracking_uri: http://127.0.0.1:5000\n    experiment_name: trees\n";
        let cfg = TrainingConfig::from_yaml_str(text, Path::new("x.yaml")).unwrap();
        assert_eq!(cfg.training.log_every_n_steps, 5);
        assert_eq!(
            cfg.training.mlflow.tracking_uri.as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(
            cfg.training.mlflow.experiment_name.as_deref(),
            Some("trees")
        );
        cfg.validate().unwrap();
        // The flags win, and what is stored reads back.
        let mut flagged = cfg.clone();
        flagged.apply(&Overrides {
            mlflow_uri: Some("https://tracking.example".into()),
            ..Overrides::default()
        });
        assert_eq!(
            flagged.training.mlflow.tracking_uri.as_deref(),
            Some("https://tracking.example")
        );
        let back = TrainingConfig::from_stored(flagged.to_stored()).unwrap();
        assert_eq!(back, flagged);
        // Credentials in the URI are refused without echoing them.
        let secret = "training:\n  mlflow:\n    tracking_uri: https://me:hunter2@host\n";
        let err = TrainingConfig::from_yaml_str(secret, Path::new("x.yaml"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("training.mlflow.tracking_uri"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let typo = "training:\n  mlflow:\n    tracking_url: http://h\n";
        let err = TrainingConfig::from_yaml_str(typo, Path::new("x.yaml")).unwrap_err();
        assert!(
            err.to_string().contains("training.mlflow.tracking_url"),
            "{err}"
        );
    }

    #[test]
    fn a_stored_config_of_an_older_main_reads_back() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/main-36b41c4/checkpoints/run_001/config.json");
        let text = std::fs::read_to_string(path).unwrap();
        let saved: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cfg = TrainingConfig::from_stored(saved["training"].clone()).unwrap();
        assert_eq!(cfg.model.preset, Preset::Tiny);
        assert_eq!(cfg.model.base, Some(PathBuf::from("base_tiny.safetensors")));
        assert_eq!(cfg.training.epochs, 3);
        assert_eq!(cfg.training.checkpoint.keep_last_n, 2);
        assert_eq!(cfg.lora, LoraConfig::default());
        // And it is stored again as that version stored it, plus the settings added since,
        // at their defaults.
        let mut again = cfg.to_stored();
        let added = again
            .as_object_mut()
            .and_then(|m| m.remove("log_every_n_steps"));
        assert_eq!(added, Some(serde_json::json!(10)));
        assert_eq!(again, saved["training"]);
    }

    #[test]
    fn data_trees_on_the_command_line_overrides_a_folder_in_the_file() {
        let mut cfg =
            TrainingConfig::from_yaml_str("data:\n  dir: imgs\n", Path::new("x.yaml")).unwrap();
        assert_eq!(cfg.data.dir, Some(PathBuf::from("imgs")));
        let mut keep = cfg.clone();
        keep.apply(&Overrides::default());
        assert_eq!(keep.data.dir, Some(PathBuf::from("imgs")));
        cfg.apply(&Overrides {
            data: Some(DataSource::Trees),
            ..Default::default()
        });
        assert_eq!(cfg.data.dir, None);
    }

    #[test]
    fn presets_parse_and_print_by_name() {
        for preset in Preset::value_variants() {
            let name = preset.to_string();
            assert_eq!(Preset::from_str(&name, false), Ok(*preset));
            let yaml = format!("model:\n  preset: {name}\n");
            let cfg = TrainingConfig::from_yaml_str(&yaml, Path::new("p.yaml")).unwrap();
            assert_eq!(cfg.model.preset, *preset);
            assert_eq!(
                Config::preset(&name),
                Some(preset.model_config()),
                "the model crate knows the preset by the same name"
            );
        }
    }

    fn seed_fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed_lora_finetuning.yaml")
    }

    #[test]
    fn the_seed_systems_own_yaml_maps_onto_our_settings() {
        let path = seed_fixture();
        let text = std::fs::read_to_string(&path).unwrap();
        let loaded = TrainingConfig::load_yaml_str(&text, &path).unwrap();
        let cfg = &loaded.config;
        let t = &cfg.training;
        assert_eq!((t.epochs, t.batch_size, t.val_batch_size), (3, 16, Some(8)));
        assert_eq!(
            (
                t.check_val_every_n_epoch,
                t.log_every_n_steps,
                t.gradient_clip_val
            ),
            (2, 1, Some(1.0))
        );
        assert_eq!((t.learning_rate, t.weight_decay), (2e-3, 0.0));
        assert_eq!((t.warmup_steps, t.min_lr, t.seed), (2, 1e-5, 7));
        assert_eq!(
            cfg.model.base,
            Some(PathBuf::from("pretrained/base_tiny.safetensors"))
        );
        let c = &t.checkpoint;
        assert_eq!(c.base_dir, PathBuf::from("checkpoints"));
        assert_eq!(c.monitor, "val_loss");
        assert_eq!(
            (c.save_top_k, c.keep_last_n, c.keep_optimizer_last_n),
            (1, 1, Some(1))
        );
        assert_eq!((cfg.lora.r, cfg.lora.lora_alpha), (4, 8.0));
        assert_eq!(cfg.data.dir, None);
        assert_eq!((cfg.data.val_fraction, cfg.data.num_images), (0.25, 40));
        cfg.validate().unwrap();
        // One warning for each key that means nothing here, naming it and the file.
        assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
        for (warning, key) in loaded
            .warnings
            .iter()
            .zip(["data.num_workers", "data.pin_memory"])
        {
            assert!(
                warning.contains(key) && warning.contains("seed_lora_finetuning.yaml"),
                "{warning}"
            );
        }
    }

    #[test]
    fn the_seeds_cifar_dataset_class_filter_and_augmentation_take_effect() {
        let text = "dataset: cifar100\ndata_config: {root: ./data, classes: [47, 52, 56, 59, 96]}\ndata:\n  augmentation: true\n";
        let loaded = TrainingConfig::load_yaml_str(text, Path::new("seed.yaml")).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let d = &loaded.config.data;
        assert_eq!(d.format, DataFormat::Cifar100);
        assert_eq!(d.dir, Some(PathBuf::from("./data")));
        assert_eq!(d.classes, [47, 52, 56, 59, 96]);
        assert_eq!(d.augmentation, Augmentation::SEED);
        loaded.config.validate().unwrap();
        // Ours, with the seed's spellings inside the map; and the flags.
        let ours = TrainingConfig::from_yaml_str(
            "data:\n  dir: c\n  format: cifar10\n  classes: [3]\n  augmentation: {hflip: 0.25, rotation: 10}\n",
            Path::new("x.yaml"),
        )
        .unwrap();
        assert_eq!(ours.data.augmentation.horizontal_flip, 0.25);
        let stored = TrainingConfig::from_stored(ours.to_stored()).unwrap();
        assert_eq!(stored, ours);
        let mut flagged = TrainingConfig::default();
        flagged.apply(&Overrides {
            data: Some(DataSource::Path("c".into())),
            data_format: Some(DataFormat::Cifar100),
            classes: Some(vec![47, 52]),
            augment: true,
            ..Overrides::default()
        });
        assert_eq!(flagged.data.classes, [47, 52]);
        assert_eq!(flagged.data.augmentation, Augmentation::SEED);
        // Errors name the key.
        let err = TrainingConfig::from_yaml_str(
            "data:\n  augmentation: {crop: 2}\n",
            Path::new("x.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("data.augmentation") && err.contains("crop"),
            "{err}"
        );
        let mut bad = ours.clone();
        bad.data.augmentation.rotation = 400.0;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("data.augmentation.rotation"));
        let mut bad = ours;
        bad.data.dir = None;
        assert!(bad.validate().unwrap_err().to_string().contains("data.dir"));
    }

    #[test]
    fn seed_keys_without_effect_here_warn_once_each() {
        let text = "precision: 16-mixed\naccelerator: gpu\ndevices: 4\nfreeze_base_model: false\nenable_ema: true\nmodel_config: {hidden_size: 384}\ndataset: imagenet\ndata_config: {transform: resize}\ndata:\n  img_size: 32\noptimizer:\n  type: SGD\n  eps: 1.0e-6\nscheduler:\n  type: step\n  warmup_epochs: 2\nsave_top_k: -1\ngradient_clip_val: 0\n";
        let loaded = TrainingConfig::load_yaml_str(text, Path::new("seed.yaml")).unwrap();
        let keys = [
            "optimizer.type",
            "optimizer.eps",
            "scheduler.type",
            "scheduler.warmup_epochs",
            "precision",
            "accelerator",
            "devices",
            "freeze_base_model",
            "enable_ema",
            "model_config",
            "dataset",
            "data_config.transform",
            "data.img_size",
        ];
        assert_eq!(loaded.warnings.len(), keys.len(), "{:#?}", loaded.warnings);
        for (warning, key) in loaded.warnings.iter().zip(keys) {
            assert!(
                warning.contains(&format!(": {key} is accepted")),
                "{warning}"
            );
        }
        // save_top_k: -1 keeps every epoch; gradient_clip_val: 0 is no clipping.
        assert_eq!(loaded.config.training.checkpoint.keep_last_n, 0);
        assert_eq!(loaded.config.training.gradient_clip_val, None);
        // What would silently train something else is refused.
        let err = TrainingConfig::load_yaml_str(
            "lora_config:\n  enabled: false\n",
            Path::new("seed.yaml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("lora_config.enabled"), "{err}");
        let err =
            TrainingConfig::load_yaml_str("save_top_k: -2\n", Path::new("seed.yaml")).unwrap_err();
        assert!(err.to_string().contains("save_top_k"), "{err}");
        let err = TrainingConfig::load_yaml_str("num_epochs: many\n", Path::new("seed.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("num_epochs") && err.contains("line 1"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_names_the_file_and_the_closest_valid_key() {
        for (text, key, closest) in [
            (
                "training:\n  epoch: 4\n",
                "training.epoch",
                "training.epochs",
            ),
            ("num_epoch: 3\n", "num_epoch", "num_epochs"),
            ("optimizer:\n  lrr: 0.1\n", "optimizer.lrr", "optimizer.lr"),
            (
                "data:\n  val_splt: 0.1\n",
                "data.val_splt",
                "data.val_split",
            ),
            (
                "training:\n  checkpoint:\n    keep_optimizer_last: 2\n",
                "training.checkpoint.keep_optimizer_last",
                "training.checkpoint.keep_optimizer_last_n",
            ),
            (
                "data:\n  backgrond: black\n",
                "data.backgrond",
                "data.background",
            ),
        ] {
            let err = TrainingConfig::from_yaml_str(text, Path::new("configs/my.yaml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("unknown key {key} (closest valid key: {closest})"))
                    && err.contains("configs/my.yaml"),
                "{err}"
            );
        }
    }

    #[test]
    fn new_settings_read_from_our_yaml_and_stay_out_of_stored_configs_at_defaults() {
        let text = "data:\n  background: \"#000000\"\ntraining:\n  val_batch_size: 4\n  gradient_clip_val: 0.5\n  check_val_every_n_epoch: 3\n  sample_every_n_epochs: 0\n  checkpoint:\n    keep_last_n: 0\n    save_top_k: 2\n    keep_optimizer_last_n: 1\n";
        let cfg = TrainingConfig::from_yaml_str(text, Path::new("x.yaml")).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.data.background, Background([0, 0, 0]));
        assert_eq!(cfg.training.sample_every_n_epochs, 0);
        assert_eq!(cfg.to_stored()["sample_every_n_epochs"], 0);
        assert_eq!(TrainingConfig::from_stored(cfg.to_stored()).unwrap(), cfg);
        let stored = TrainingConfig::default().to_stored();
        for key in [
            "val_batch_size",
            "gradient_clip_val",
            "check_val_every_n_epoch",
            "sample_every_n_epochs",
        ] {
            assert!(stored.get(key).is_none(), "{key}");
        }
        assert!(stored["data"].get("background").is_none());
        assert!(stored["checkpoint"].get("keep_optimizer_last_n").is_none());
        let mut flagged = cfg.clone();
        flagged.apply(&Overrides {
            background: Some(Background::WHITE),
            keep_optimizer_last_n: Some(3),
            sample_every_n_epochs: Some(2),
            ..Overrides::default()
        });
        assert_eq!(flagged.data.background, Background::WHITE);
        assert_eq!(flagged.training.checkpoint.keep_optimizer_last_n, Some(3));
        assert_eq!(flagged.training.sample_every_n_epochs, 2);
        assert_eq!(
            TrainingConfig::from_stored(flagged.to_stored()).unwrap(),
            flagged
        );
    }
}
