//! DiffiT + LoRA in candle, the run format shared by trainer, server and app, and (with the
//! `native` feature) the run store, the trainer and the `diffit` CLI.
//!
//! With default features off this crate touches no filesystem and compiles for
//! `wasm32-unknown-unknown`: the browser app uses `format`, `model`, `diffusion`, `rng` and `data`.

pub mod data;
pub mod diffusion;
pub mod format;
pub mod model;
pub mod rng;

#[cfg(feature = "native")]
pub mod cli;
#[cfg(feature = "native")]
pub mod store;
#[cfg(feature = "native")]
pub mod train;
