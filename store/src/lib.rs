//! The run store: `CheckpointManager`, crash-safe writes, retention, listing.
//!
//! - [`atomic`] -- temp-file + fsync + rename writes, atomic hard-link replacement, crash cleanup.
//! - [`checksum`] -- `blake3:<hex>` digests of whole files.
//! - [`tensor_file`] -- safetensors streamed to disk while hashing, and read back verified.
//! - [`checkpoint`] -- [`LoraCheckpoint`], one epoch's resumable state.
//! - [`manager`] -- [`CheckpointManager`], one run directory.
//! - [`retention`] -- [`RetentionPolicy`], the pure keep/delete decision.
//! - [`listing`] -- [`list_all_runs`].
//! - [`hooks`] -- [`SaveHooks`], code run around saves.

pub mod atomic;
pub mod checkpoint;
pub mod checksum;
pub mod error;
pub mod hooks;
pub mod listing;
pub mod manager;
pub mod retention;
pub mod tensor_file;

pub use checkpoint::LoraCheckpoint;
pub use checksum::FileDigest;
pub use error::{Result, StoreError};
pub use hooks::{NoHooks, SaveHooks};
pub use listing::{list_all_runs, run_info, RunListing};
pub use manager::{
    BaseModel, CheckpointManager, Resume, SavedBase, SavedCheckpoint, VerifyReport, Which,
    DEFAULT_EXPERIMENT,
};
pub use retention::RetentionPolicy;
pub use tensor_file::{HeaderMetadata, StoredTensor, TensorFile, TensorMap};
