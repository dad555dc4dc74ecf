//! `SaveHooks`: code run around every LoRA save, the seed's "subclass and wrap
//! `save_lora_weights`" example as a trait.

use format::RunLayout;

use super::checkpoint::LoraCheckpoint;
use super::saved::SavedCheckpoint;

/// Called by [`CheckpointManager::save_lora_weights`](super::CheckpointManager::save_lora_weights)
/// before the file is written and after metadata points at it. Both default to doing nothing.
pub trait SaveHooks: Send {
    /// Runs before anything is written.
    fn before_save(&mut self, _run: &RunLayout, _checkpoint: &LoraCheckpoint) {}
    /// Runs once the checkpoint, the metadata and the best/last links are in place.
    fn after_save(&mut self, _run: &RunLayout, _saved: &SavedCheckpoint) {}
}

/// Hooks that do nothing, the default.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl SaveHooks for NoHooks {}
