//! Training and the `diffit` CLI: pretraining a base DiffiT and fine-tuning LoRA adapters on
//! it ([`train`]), writing every run through the run store (the `store` crate), and the
//! subcommands that inspect, sample and export runs ([`cli`]).
//!
//! The model itself lives in the `model` crate (shared with the browser app) and the run format
//! in the `format` crate (shared with the server and the app).

pub mod cli;
pub mod data;
pub mod tensors;
pub mod train;

/// The cargo features this crate was built with, as `--features` spells them from the
/// workspace root (the end-to-end tests rebuild the binaries with the same set).
pub const FEATURES: &[&str] = &[
    #[cfg(feature = "mpi")]
    "trainer/mpi",
    #[cfg(feature = "cuda")]
    "trainer/cuda",
    #[cfg(feature = "nccl")]
    "trainer/nccl",
];
