//! The run format, defined once: directory layout, checkpoint names, the `metadata.json` schema,
//! the tensor naming inside safetensors files, and the HTTP API's bodies ([`api`]). The trainer
//! writes runs, the server reads and serves them, and the browser app reads the API, all through
//! these same types. Nothing here touches the filesystem. [`seed`] tells runs the seed system
//! (PyTorch Lightning) wrote from ours, so that readers show them read-only.

pub mod annotations;
pub mod api;
pub mod layout;
pub mod logs;
pub mod metadata;
pub mod query;
pub mod seed;
pub mod tensors;

pub use layout::{CheckpointName, RunLayout};
pub use metadata::{
    BaseIdentity, BestCheckpoint, CheckpointRecord, FileRecord, Metadata, MlflowLink, Mode,
    RunStatus,
};
pub use seed::{SeedRun, SeedRunKind};
