//! What the store's writes report back: [`SavedCheckpoint`] (also what save hooks are shown)
//! and [`SavedBase`].

use std::path::PathBuf;

use format::CheckpointRecord;

use super::checksum::FileDigest;

/// What [`CheckpointManager::save_lora_weights`](crate::CheckpointManager::save_lora_weights) wrote.
#[derive(Debug, Clone)]
pub struct SavedCheckpoint {
    /// The epoch saved.
    pub epoch: u32,
    /// The epoch file.
    pub path: PathBuf,
    /// Its metadata entry.
    pub record: CheckpointRecord,
    /// It became the best checkpoint.
    pub is_best: bool,
    /// It is the newest epoch (`last` points at it).
    pub is_last: bool,
}

/// What [`CheckpointManager::save_base_model`](crate::CheckpointManager::save_base_model) did.
#[derive(Debug, Clone)]
pub struct SavedBase {
    /// The run's base model file.
    pub path: PathBuf,
    /// Its checksum and size.
    pub digest: FileDigest,
    /// The other run's identical base model it was hard-linked from, if any.
    pub linked_from: Option<PathBuf>,
}
