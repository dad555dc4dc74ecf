//! Pretraining's weights for a fixed seed, pinned by a checksum recorded before pretraining
//! moved onto `Trainer`'s epoch loop (at c38908f): the loop may change shape, never its numbers.
//!
//! Like `runs_from_older_main.rs`, the numbers hold for one shard (so `diffit` runs on one
//! core) and for the CPU kernels of the machine kind this project runs on (x86-64 with AVX-512).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};

/// [`weights_checksum`] of `diffit pretrain --preset tiny --epochs 2 --num-images 80 --seed 3`
/// on one core, as c38908f computed it.
const TINY_CHECKSUM: &str = "fe45fc07a2e6fa19565ab6effc649a2d65ef0f63dd368857238c8d3573da2c4c";

/// blake3 over every tensor, in name order: name, shape and little-endian f32 bits.
fn weights_checksum(tensors: &HashMap<String, Tensor>) -> String {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut hasher = blake3::Hasher::new();
    for name in names {
        let t = &tensors[name];
        hasher.update(name.as_bytes());
        for d in t.dims() {
            hasher.update(&(*d as u64).to_le_bytes());
        }
        let values = t
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for v in values {
            hasher.update(&v.to_le_bytes());
        }
    }
    hasher.finalize().to_hex().to_string()
}

fn pretrain_on_one_core(out: &Path) {
    let result = Command::new("taskset")
        .args(["-c", "0"])
        .arg(env!("CARGO_BIN_EXE_diffit"))
        .args(["pretrain", "--preset", "tiny", "--epochs", "2"])
        .args(["--num-images", "80", "--seed", "3", "--out"])
        .arg(out)
        .env_remove("CANDLE_NUM_THREADS")
        .env_remove("RAYON_NUM_THREADS")
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
}

#[test]
fn tiny_pretraining_gives_the_pinned_weights() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("base.safetensors");
    pretrain_on_one_core(&out);
    let tensors = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_eq!(weights_checksum(&tensors), TINY_CHECKSUM);
}
