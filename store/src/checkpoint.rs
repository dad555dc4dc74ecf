//! `LoraCheckpoint`: one epoch's resumable training state, stored as one safetensors file.
//!
//! LoRA tensors keep their module paths (`<module>.lora_A.weight`), optimizer moments are tensors
//! named `optimizer.exp_avg.<param>` / `optimizer.exp_avg_sq.<param>`, and everything else is
//! JSON text under the header's `__metadata__` keys from [`meta_keys`].

use std::path::Path;

use serde_json::Value;

use format::metadata::{metric_values, Metrics, FORMAT_VERSION};
use format::tensors::{
    meta_keys, BASE_TRAINING_CHECKPOINT_FORMAT, EXP_AVG_PREFIX, EXP_AVG_SQ_PREFIX,
    LORA_CHECKPOINT_FORMAT, OPTIMIZER_PREFIX,
};

use super::error::{Result, StoreError};
use super::tensor_file::{HeaderMetadata, StoredTensor, TensorFile, TensorMap};

/// Everything needed to resume training after an epoch, or to apply the adapters.
#[derive(Debug, Clone)]
pub struct LoraCheckpoint {
    /// Adapter tensors by module path (`blocks.0.attn.qkv.lora_A.weight`), F32.
    pub lora: TensorMap,
    /// Optimizer-state tensors by full name (`optimizer.exp_avg.<param>`), F32.
    pub optimizer_tensors: TensorMap,
    /// 1-based epoch this state ends.
    pub epoch: u32,
    /// Optimizer steps taken so far.
    pub global_step: u64,
    /// Metrics at the end of the epoch (`val_loss`, `train_loss`, ...).
    pub metrics: Metrics,
    /// Optimizer hyper-parameters and step count.
    pub optimizer: Value,
    /// LR scheduler state.
    pub scheduler: Value,
    /// RNG states (data order, noise).
    pub rng: Value,
    /// LoRA configuration.
    pub lora_config: Value,
    /// Model configuration.
    pub model_config: Value,
    /// `blake3:<hex>` of the base model the adapters were trained on.
    pub base_checksum: Option<String>,
    /// True for an epoch of a base-training run: `lora` then holds the whole model's weights
    /// (header format [`BASE_TRAINING_CHECKPOINT_FORMAT`]).
    pub whole_model: bool,
}

impl LoraCheckpoint {
    /// An empty checkpoint for `epoch` after `global_step` steps; fill in the public fields.
    pub fn new(epoch: u32, global_step: u64) -> Self {
        Self {
            lora: TensorMap::new(),
            optimizer_tensors: TensorMap::new(),
            epoch,
            global_step,
            metrics: Metrics::new(),
            optimizer: Value::Null,
            scheduler: Value::Null,
            rng: Value::Null,
            lora_config: Value::Null,
            model_config: Value::Null,
            base_checksum: None,
            whole_model: false,
        }
    }

    /// Adam's first moment of parameter `param`, if saved.
    pub fn exp_avg(&self, param: &str) -> Option<&StoredTensor> {
        self.optimizer_tensors
            .get(&format!("{EXP_AVG_PREFIX}{param}"))
    }

    /// Adam's second moment of parameter `param`, if saved.
    pub fn exp_avg_sq(&self, param: &str) -> Option<&StoredTensor> {
        self.optimizer_tensors
            .get(&format!("{EXP_AVG_SQ_PREFIX}{param}"))
    }

    /// Stores Adam's moments of parameter `param` under the canonical names.
    pub fn insert_moments(&mut self, param: &str, exp_avg: StoredTensor, exp_avg_sq: StoredTensor) {
        self.optimizer_tensors
            .insert(format!("{EXP_AVG_PREFIX}{param}"), exp_avg);
        self.optimizer_tensors
            .insert(format!("{EXP_AVG_SQ_PREFIX}{param}"), exp_avg_sq);
    }

    /// Every tensor to write, checking that the two maps keep to their name spaces.
    pub(crate) fn all_tensors(&self, path: &Path) -> Result<Vec<(&str, &StoredTensor)>> {
        let bad = |reason: String| StoreError::BadTensorFile {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(name) = self.lora.keys().find(|n| n.starts_with(OPTIMIZER_PREFIX)) {
            return Err(bad(format!(
                "LoRA tensor {name:?} must not start with {OPTIMIZER_PREFIX:?}"
            )));
        }
        if let Some(name) = self
            .optimizer_tensors
            .keys()
            .find(|n| !n.starts_with(OPTIMIZER_PREFIX))
        {
            return Err(bad(format!(
                "optimizer tensor {name:?} must start with {OPTIMIZER_PREFIX:?}"
            )));
        }
        Ok(self
            .lora
            .iter()
            .chain(&self.optimizer_tensors)
            .map(|(k, v)| (k.as_str(), v))
            .collect())
    }

    /// The header's `__metadata__` map.
    pub(crate) fn header(&self) -> HeaderMetadata {
        let json = |v: &Value| v.to_string();
        let mut meta = HeaderMetadata::new();
        let format = if self.whole_model {
            BASE_TRAINING_CHECKPOINT_FORMAT
        } else {
            LORA_CHECKPOINT_FORMAT
        };
        meta.insert(meta_keys::FORMAT.into(), format.into());
        meta.insert(meta_keys::FORMAT_VERSION.into(), FORMAT_VERSION.to_string());
        meta.insert(meta_keys::EPOCH.into(), self.epoch.to_string());
        meta.insert(meta_keys::GLOBAL_STEP.into(), self.global_step.to_string());
        meta.insert(
            meta_keys::METRICS.into(),
            metric_values::serialize(&self.metrics, serde_json::value::Serializer)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| "{}".into()),
        );
        meta.insert(meta_keys::OPTIMIZER.into(), json(&self.optimizer));
        meta.insert(meta_keys::SCHEDULER.into(), json(&self.scheduler));
        meta.insert(meta_keys::RNG.into(), json(&self.rng));
        meta.insert(meta_keys::LORA_CONFIG.into(), json(&self.lora_config));
        meta.insert(meta_keys::MODEL_CONFIG.into(), json(&self.model_config));
        if let Some(base) = &self.base_checksum {
            meta.insert(meta_keys::BASE_CHECKSUM.into(), base.clone());
        }
        meta
    }

    /// Rebuilds a checkpoint from a file read from `path`.
    pub(crate) fn from_tensor_file(path: &Path, file: TensorFile) -> Result<Self> {
        let bad = |reason: String| StoreError::BadTensorFile {
            path: path.to_path_buf(),
            reason,
        };
        let meta = &file.metadata;
        let text = |key: &str| {
            meta.get(key)
                .ok_or_else(|| bad(format!("header metadata lacks {key:?}")))
        };
        let json = |key: &str| -> Result<Value> {
            match meta.get(key) {
                None => Ok(Value::Null),
                Some(s) => serde_json::from_str(s)
                    .map_err(|e| bad(format!("header metadata {key:?} is not JSON: {e}"))),
            }
        };
        let format = text(meta_keys::FORMAT)?;
        let whole_model = match format.as_str() {
            LORA_CHECKPOINT_FORMAT => false,
            BASE_TRAINING_CHECKPOINT_FORMAT => true,
            _ => {
                return Err(bad(format!(
                    "format is {format:?}, expected {LORA_CHECKPOINT_FORMAT:?} (or \
                     {BASE_TRAINING_CHECKPOINT_FORMAT:?})"
                )))
            }
        };
        let epoch = text(meta_keys::EPOCH)?
            .parse()
            .map_err(|e| bad(format!("epoch: {e}")))?;
        let global_step = text(meta_keys::GLOBAL_STEP)?
            .parse()
            .map_err(|e| bad(format!("global_step: {e}")))?;
        let metrics: Metrics = match json(meta_keys::METRICS)? {
            Value::Null => Metrics::new(),
            v => metric_values::deserialize(v).map_err(|e| bad(format!("metrics: {e}")))?,
        };
        let (optimizer_tensors, lora): (TensorMap, TensorMap) = file
            .tensors
            .into_iter()
            .partition(|(name, _)| name.starts_with(OPTIMIZER_PREFIX));
        Ok(Self {
            lora,
            optimizer_tensors,
            epoch,
            global_step,
            metrics,
            optimizer: json(meta_keys::OPTIMIZER)?,
            scheduler: json(meta_keys::SCHEDULER)?,
            rng: json(meta_keys::RNG)?,
            lora_config: json(meta_keys::LORA_CONFIG)?,
            model_config: json(meta_keys::MODEL_CONFIG)?,
            base_checksum: meta.get(meta_keys::BASE_CHECKSUM).cloned(),
            whole_model,
        })
    }
}
