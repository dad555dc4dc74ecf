//! The run format, defined once: directory layout, checkpoint names, the `metadata.json` schema
//! and the tensor naming inside safetensors files. The trainer writes it; the server and the
//! browser app read it through these same types. Nothing here touches the filesystem.

pub mod layout;
pub mod metadata;
pub mod tensors;

pub use layout::{CheckpointName, RunLayout};
pub use metadata::{BestCheckpoint, CheckpointRecord, FileRecord, Metadata, Mode, RunStatus};
