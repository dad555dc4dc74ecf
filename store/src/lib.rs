//! The run store: one run directory per training run (`run_NNN/`), written crash-safely,
//! checksummed, locked, numbered, pruned by retention and listed. It stores tensors as plain
//! `f32` values ([`StoredTensor`]) and needs no tensor library.
//!
//! - [`manager`] -- [`CheckpointManager`]: one run, opened as its writer or read-only; the
//!   metadata commit and crash repair. Its work is split by responsibility:
//!   [`numbering`] (creating runs), [`base`] (the frozen base model), [`save`] (epochs and
//!   retention), [`load`] (loading and resuming), [`verify`], [`summary`].
//! - [`best`] -- [`BestPolicy`] and [`retention`] -- [`RetentionPolicy`]: the pure decisions.
//! - [`lock`] -- the writer lock.
//! - [`atomic`] -- temp-file + fsync + rename writes, atomic hard-link replacement, crash cleanup.
//! - [`checksum`] -- `blake3:<hex>` digests of whole files.
//! - [`tensor_file`] -- safetensors streamed to disk while hashing, and read back verified.
//! - [`checkpoint`] -- [`LoraCheckpoint`], one epoch's resumable state.
//! - [`listing`] -- [`list_all_runs`], the rows of the run list.
//! - [`hooks`] -- [`SaveHooks`], code run around saves; [`saved`] -- what saves report.

pub mod annotations;
pub mod atomic;
pub mod base;
pub mod best;
pub mod checkpoint;
pub mod checksum;
pub mod error;
pub mod hooks;
pub mod listing;
pub mod load;
pub mod lock;
pub mod manager;
pub mod numbering;
pub mod retention;
pub mod save;
pub mod saved;
pub mod summary;
pub mod tensor_file;
pub mod usage;
pub mod verify;

pub use base::BaseModel;
pub use best::BestPolicy;
pub use checkpoint::LoraCheckpoint;
pub use checksum::FileDigest;
pub use error::{Result, StoreError};
pub use hooks::{NoHooks, SaveHooks};
pub use listing::{
    list_all_runs, list_base_training_runs, run_info, run_info_from_json, RunListing,
};
pub use load::{Resume, Which};
pub use lock::writer_active;
pub use manager::{now, read_metadata, refuse_seed_run, CheckpointManager, DEFAULT_EXPERIMENT};
pub use retention::{RetentionPlan, RetentionPolicy};
pub use saved::{SavedBase, SavedCheckpoint};
pub use tensor_file::{
    read_header, HeaderError, HeaderMetadata, StoredTensor, TensorFile, TensorFileHeader, TensorMap,
};
pub use usage::disk_usage;
pub use verify::VerifyReport;
