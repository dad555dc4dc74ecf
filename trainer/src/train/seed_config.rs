//! The seed system's own YAML keys (its `configs/training/lora_finetuning.yaml`: Lightning-style
//! top-level keys such as `num_epochs`, `batch_size_train`, `optimizer`, `lora_config`, and a
//! `data` section with `img_size`, `val_split`, ...), read beside our nested sections.
//!
//! Each key maps onto one of our settings ([`SeedKeys::apply`]) where one exists, or is
//! accepted with one warning naming it where it means nothing here (`num_workers`,
//! `pin_memory`, a GPU `accelerator`, ...). A key neither shape knows stays an error
//! ([`super::config::TrainingConfig::from_yaml_str`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::config::{ConfigError, TrainingConfig};
use crate::data::DataFormat;

/// The seed's keys, as its YAML spells them (unknown ones are left to the caller).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SeedKeys {
    num_epochs: Option<u32>,
    batch_size_train: Option<usize>,
    batch_size_test: Option<usize>,
    pretrained_path: Option<PathBuf>,
    output_dir: Option<PathBuf>,
    monitor_metric: Option<String>,
    save_top_k: Option<i64>,
    check_val_every_n_epoch: Option<u32>,
    log_every_n_steps: Option<u64>,
    gradient_clip_val: Option<f64>,
    optimizer: Option<SeedOptimizer>,
    scheduler: Option<SeedScheduler>,
    precision: Option<Value>,
    accelerator: Option<String>,
    devices: Option<Value>,
    freeze_base_model: Option<bool>,
    enable_ema: Option<bool>,
    model_config: Option<Value>,
    lora_config: Option<SeedLora>,
    dataset: Option<String>,
    data_config: Option<Value>,
    data: SeedData,
}

/// The seed's `optimizer` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SeedOptimizer {
    #[serde(alias = "name")]
    r#type: Option<String>,
    #[serde(alias = "learning_rate")]
    lr: Option<f64>,
    weight_decay: Option<f64>,
    betas: Option<Vec<f64>>,
    eps: Option<f64>,
}

/// The seed's `scheduler` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SeedScheduler {
    #[serde(alias = "name")]
    r#type: Option<String>,
    warmup_steps: Option<u64>,
    warmup_epochs: Option<Value>,
    #[serde(alias = "eta_min")]
    min_lr: Option<f64>,
}

/// The seed's `lora_config` (its own names, and PEFT's).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SeedLora {
    enabled: Option<bool>,
    #[serde(alias = "r")]
    rank: Option<usize>,
    #[serde(alias = "lora_alpha")]
    alpha: Option<f64>,
    #[serde(alias = "lora_dropout")]
    dropout: Option<f64>,
    target_modules: Option<Vec<String>>,
}

/// The seed's keys of the `data` section (ours, `dir` and the rest, live beside them).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SeedData {
    img_size: Option<usize>,
    num_workers: Option<Value>,
    pin_memory: Option<Value>,
    val_split: Option<f64>,
}

/// Every dotted key [`SeedKeys`] reads, for "closest valid key" suggestions.
pub(super) const SEED_KEYS: &[&str] = &[
    "num_epochs",
    "batch_size_train",
    "batch_size_test",
    "pretrained_path",
    "output_dir",
    "monitor_metric",
    "save_top_k",
    "check_val_every_n_epoch",
    "log_every_n_steps",
    "gradient_clip_val",
    "optimizer.type",
    "optimizer.lr",
    "optimizer.weight_decay",
    "optimizer.betas",
    "optimizer.eps",
    "scheduler.type",
    "scheduler.warmup_steps",
    "scheduler.warmup_epochs",
    "scheduler.min_lr",
    "precision",
    "accelerator",
    "devices",
    "freeze_base_model",
    "enable_ema",
    "model_config",
    "lora_config.enabled",
    "lora_config.rank",
    "lora_config.alpha",
    "lora_config.dropout",
    "lora_config.target_modules",
    "dataset",
    "data_config",
    "data.img_size",
    "data.num_workers",
    "data.pin_memory",
    "data.val_split",
];

/// A value that says "off" in a YAML file: absent, null, false, 0 or an empty collection.
fn is_off(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s.eq_ignore_ascii_case("none"),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// A scalar as its text (`32`, `"32-true"` → `32-true`).
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl SeedKeys {
    /// Maps each key given onto `cfg`, returning one warning per key accepted without effect.
    /// `path` is only used in messages.
    pub(super) fn apply(
        self,
        cfg: &mut TrainingConfig,
        path: &Path,
    ) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let mut warn = |key: &str, why: String| {
            warnings.push(format!(
                "config {}: {key} is accepted but has no effect here: {why}",
                path.display()
            ));
        };
        let invalid = |key: &'static str, value: String, reason: &str| ConfigError::Invalid {
            key,
            value,
            reason: reason.to_string(),
        };
        let t = &mut cfg.training;
        if let Some(v) = self.num_epochs {
            t.epochs = v;
        }
        if let Some(v) = self.batch_size_train {
            t.batch_size = v;
        }
        if let Some(v) = self.batch_size_test {
            t.val_batch_size = Some(v);
        }
        if let Some(v) = self.check_val_every_n_epoch {
            t.check_val_every_n_epoch = v;
        }
        if let Some(v) = self.log_every_n_steps {
            t.log_every_n_steps = v;
        }
        // Lightning's 0 (and null) mean "no clipping".
        if let Some(v) = self.gradient_clip_val {
            t.gradient_clip_val = (v != 0.0).then_some(v);
        }
        let c = &mut t.checkpoint;
        if let Some(v) = self.output_dir {
            c.base_dir = v;
        }
        if let Some(v) = self.monitor_metric {
            c.monitor = v;
        }
        match self.save_top_k {
            None => {}
            // Lightning's -1: keep every checkpoint.
            Some(-1) => c.keep_last_n = 0,
            Some(k) => {
                c.save_top_k = u32::try_from(k).map_err(|_| {
                    invalid(
                        "save_top_k",
                        k.to_string(),
                        "must be -1 (keep all) or a count >= 0",
                    )
                })?;
            }
        }
        if let Some(o) = self.optimizer {
            if let Some(kind) = o.r#type.filter(|k| !k.eq_ignore_ascii_case("adamw")) {
                warn(
                    "optimizer.type",
                    format!("{kind:?}: training always uses AdamW (decoupled weight decay)"),
                );
            }
            if let Some(lr) = o.lr {
                t.learning_rate = lr;
            }
            if let Some(wd) = o.weight_decay {
                t.weight_decay = wd;
            }
            if o.betas.as_deref().is_some_and(|b| b != [0.9, 0.999]) {
                warn(
                    "optimizer.betas",
                    "AdamW uses betas (0.9, 0.999) here".into(),
                );
            }
            if o.eps.is_some_and(|e| e != 1e-8) {
                warn("optimizer.eps", "AdamW uses eps 1e-8 here".into());
            }
        }
        if let Some(s) = self.scheduler {
            if let Some(kind) = s
                .r#type
                .filter(|k| !k.to_ascii_lowercase().contains("cosine"))
            {
                warn(
                    "scheduler.type",
                    format!("{kind:?}: the schedule is linear warmup then cosine decay"),
                );
            }
            if let Some(v) = s.warmup_steps {
                t.warmup_steps = v;
            }
            if let Some(v) = s.min_lr {
                t.min_lr = v;
            }
            if s.warmup_epochs.as_ref().is_some_and(|v| !is_off(v)) {
                warn(
                    "scheduler.warmup_epochs",
                    "warmup is counted in optimizer steps here; give scheduler.warmup_steps".into(),
                );
            }
        }
        if let Some(p) = self.precision {
            let p = text_of(&p);
            if !matches!(p.as_str(), "32" | "32-true" | "fp32" | "float32") {
                warn(
                    "precision",
                    format!("{p:?}: training runs in 32-bit floats here"),
                );
            }
        }
        if let Some(a) = self.accelerator {
            if !matches!(a.to_ascii_lowercase().as_str(), "cpu" | "auto") {
                warn(
                    "accelerator",
                    format!("{a:?}: training runs on the CPU here"),
                );
            }
        }
        if let Some(d) = self.devices {
            if !matches!(text_of(&d).as_str(), "1" | "auto" | "-1") {
                warn(
                    "devices",
                    format!(
                        "{}: one process trains, its batches split over the CPU cores",
                        text_of(&d)
                    ),
                );
            }
        }
        if self.freeze_base_model == Some(false) {
            warn(
                "freeze_base_model",
                "false: the base model is always frozen in LoRA fine-tuning".into(),
            );
        }
        if self.enable_ema == Some(true) {
            warn("enable_ema", "true: no EMA of the weights is kept".into());
        }
        if self.model_config.as_ref().is_some_and(|v| !is_off(v)) {
            warn(
                "model_config",
                "the network is model.preset's, or the base file's own config (model.base / pretrained_path)".into(),
            );
        }
        if let Some(l) = self.lora_config {
            if l.enabled == Some(false) {
                return Err(invalid(
                    "lora_config.enabled",
                    "false".into(),
                    "this trainer fine-tunes LoRA adapters only",
                ));
            }
            if let Some(v) = l.rank {
                cfg.lora.r = v;
            }
            if let Some(v) = l.alpha {
                cfg.lora.lora_alpha = v;
            }
            if let Some(v) = l.dropout {
                cfg.lora.lora_dropout = v;
            }
            if let Some(v) = l.target_modules {
                cfg.lora.target_modules = v;
            }
        }
        if let Some(v) = self.pretrained_path {
            cfg.model.base = Some(v);
        }
        match self.dataset.as_deref().map(|d| d.to_ascii_lowercase().replace(['-', '_'], "")) {
            None => {}
            Some(name) if name == "trees" => cfg.data.dir = None,
            Some(name) if name == "cifar10" => cfg.data.format = DataFormat::Cifar10,
            Some(name) if name == "cifar100" => cfg.data.format = DataFormat::Cifar100,
            Some(_) => warn(
                "dataset",
                format!(
                    "{:?} is not built in; training uses data.dir (a folder of images, or CIFAR-10/100 batches) or the procedural trees",
                    self.dataset.unwrap_or_default()
                ),
            ),
        }
        match self.data_config {
            Some(Value::Object(map)) => {
                for (key, value) in map {
                    match (key.as_str(), &value) {
                        ("root" | "data_dir" | "path", Value::String(dir)) => {
                            cfg.data.dir = Some(PathBuf::from(dir));
                        }
                        ("classes" | "class_filter" | "fine_labels", Value::Array(items)) => {
                            cfg.data.classes = items
                                .iter()
                                .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                                .collect::<Option<Vec<u32>>>()
                                .ok_or_else(|| {
                                    invalid(
                                        "data_config.classes",
                                        value.to_string(),
                                        "must be a list of class labels (whole numbers)",
                                    )
                                })?;
                        }
                        (_, v) if is_off(v) => {}
                        _ => warn(
                            &format!("data_config.{key}"),
                            "the data is data.dir (data_config.root) and data.classes (data_config.classes)".into(),
                        ),
                    }
                }
            }
            Some(other) if !is_off(&other) => warn(
                "data_config",
                "expected a map (root, classes); the data comes from data.dir".into(),
            ),
            _ => {}
        }
        let d = self.data;
        if let Some(size) = d.img_size {
            let model = cfg.model.preset.model_config().image_size;
            if size != model {
                warn(
                    "data.img_size",
                    format!(
                        "{size}: images are resized to the {} preset's {model}x{model}",
                        cfg.model.preset
                    ),
                );
            }
        }
        if d.num_workers.is_some() {
            warn(
                "data.num_workers",
                "images are decoded once, before training, in this process".into(),
            );
        }
        if d.pin_memory.is_some() {
            warn(
                "data.pin_memory",
                "training runs on the CPU; there is no device memory to pin".into(),
            );
        }
        if let Some(v) = d.val_split {
            cfg.data.val_fraction = v;
        }
        Ok(warnings)
    }
}
