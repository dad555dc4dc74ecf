//! Tensor naming inside our safetensors files, defined once.
//!
//! - Base model: the module tree is the naming (`blocks.0.attn.qkv.weight`).
//! - LoRA (PEFT naming): `<module>.lora_A.weight` (r × in) and `<module>.lora_B.weight` (out × r).
//! - Optimizer state in a LoRA checkpoint: `optimizer.exp_avg.<param>`, `optimizer.exp_avg_sq.<param>`.
//! - Everything else (epoch, step, metrics, scheduler, RNG, configs) is JSON text under keys
//!   of the header's `__metadata__`, listed below.

/// Suffix of a LoRA down-projection tensor.
pub const LORA_A_SUFFIX: &str = ".lora_A.weight";
/// Suffix of a LoRA up-projection tensor.
pub const LORA_B_SUFFIX: &str = ".lora_B.weight";
/// Prefix of every optimizer-state tensor.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";
/// First-moment (Adam `exp_avg`) tensor prefix.
pub const EXP_AVG_PREFIX: &str = "optimizer.exp_avg.";
/// Second-moment (Adam `exp_avg_sq`) tensor prefix.
pub const EXP_AVG_SQ_PREFIX: &str = "optimizer.exp_avg_sq.";

/// `__metadata__` keys of a LoRA checkpoint. Values are strings (JSON where structured).
pub mod meta_keys {
    /// Always `diffit-lora-checkpoint` / `diffit-base-model` / `diffit-lora-adapter`.
    pub const FORMAT: &str = "format";
    /// Run format version.
    pub const FORMAT_VERSION: &str = "format_version";
    /// 1-based epoch.
    pub const EPOCH: &str = "epoch";
    /// Optimizer steps so far.
    pub const GLOBAL_STEP: &str = "global_step";
    /// JSON object of metrics.
    pub const METRICS: &str = "metrics";
    /// JSON of the optimizer's hyper-parameters and step count.
    pub const OPTIMIZER: &str = "optimizer";
    /// JSON of the LR scheduler state.
    pub const SCHEDULER: &str = "scheduler";
    /// JSON of the RNG states (data order, noise).
    pub const RNG: &str = "rng";
    /// JSON of the LoRA config.
    pub const LORA_CONFIG: &str = "lora_config";
    /// JSON of the model config.
    pub const MODEL_CONFIG: &str = "model_config";
    /// `blake3:<hex>` of the base model these adapters were trained on.
    pub const BASE_CHECKSUM: &str = "base_checksum";
}

/// `format` value of a LoRA checkpoint.
pub const LORA_CHECKPOINT_FORMAT: &str = "diffit-lora-checkpoint";
/// `format` value of one epoch of a base-training run: the whole model's weights (by the base
/// file's names) with the optimizer, scheduler and RNG state, laid out as a LoRA checkpoint.
pub const BASE_TRAINING_CHECKPOINT_FORMAT: &str = "diffit-base-training-checkpoint";
/// `format` value of a base model file. A merged export (LoRA fused into the base) has this
/// format too, and also the `lora_config` (and `epoch`) of the adapters fused in.
pub const BASE_MODEL_FORMAT: &str = "diffit-base-model";

/// Name of the LoRA A tensor of `module` (e.g. `blocks.0.attn.qkv`).
pub fn lora_a_name(module: &str) -> String {
    format!("{module}{LORA_A_SUFFIX}")
}

/// Name of the LoRA B tensor of `module`.
pub fn lora_b_name(module: &str) -> String {
    format!("{module}{LORA_B_SUFFIX}")
}

/// True for `<module>.lora_A.weight` / `<module>.lora_B.weight`.
pub fn is_lora_tensor(name: &str) -> bool {
    !name.starts_with(OPTIMIZER_PREFIX)
        && (name.ends_with(LORA_A_SUFFIX) || name.ends_with(LORA_B_SUFFIX))
}

/// The module a LoRA tensor belongs to: `blocks.0.attn.qkv.lora_A.weight` → `blocks.0.attn.qkv`.
pub fn lora_module(name: &str) -> Option<&str> {
    if name.starts_with(OPTIMIZER_PREFIX) {
        return None;
    }
    name.strip_suffix(LORA_A_SUFFIX)
        .or_else(|| name.strip_suffix(LORA_B_SUFFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_names_round_trip() {
        let a = lora_a_name("blocks.0.attn.qkv");
        assert_eq!(a, "blocks.0.attn.qkv.lora_A.weight");
        assert!(is_lora_tensor(&a));
        assert_eq!(
            lora_module(&lora_b_name("blocks.1.mlp.fc1")),
            Some("blocks.1.mlp.fc1")
        );
        assert!(!is_lora_tensor("blocks.0.attn.qkv.weight"));
        assert!(!is_lora_tensor(&format!("{EXP_AVG_PREFIX}{a}")));
    }
}
