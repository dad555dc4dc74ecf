//! Pretraining's weights for a fixed seed, pinned by checksums recorded before pretraining moved
//! onto the epoch loop it shares with fine-tuning: the loop may change shape, never its numbers.
//!
//! Like `runs_from_older_main.rs`, the numbers hold for a given shard count (so `diffit` is
//! pinned to one or two cores) and for the CPU kernels of the machine kind they were recorded on
//! (`support::kernel_fingerprint`: SIMD level and cache sizes); other kinds skip the comparison.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use support::{EPYC_1M_L2, FIRST_KIND};

/// [`weights_checksum`] of `diffit pretrain --preset tiny --epochs 2 --num-images 80 --seed 3`
/// on one core (one shard), per machine kind; the first computed before the epoch loops were
/// unified.
const TINY_CHECKSUM: &[(&str, &str)] = &[
    (
        FIRST_KIND,
        "fe45fc07a2e6fa19565ab6effc649a2d65ef0f63dd368857238c8d3573da2c4c",
    ),
    (
        EPYC_1M_L2,
        "fa642838c890eceee6acd0bef1a589ee12d71d8fb5974bc0749767e004baa3cf",
    ),
];
/// The same on two cores (two shards per batch).
const TINY_CHECKSUM_TWO_SHARDS: &[(&str, &str)] = &[
    (
        FIRST_KIND,
        "e462be7a0fa746f8d2c2b9a7e6519928187cfcecc9d4ea828de5ee222c0cc7c4",
    ),
    (
        EPYC_1M_L2,
        "306240d811bb72e96c1f90b8450f4785172f72463fcb8c323d4a8a5befd8e3cb",
    ),
];

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

/// Pretrains into `out` with `diffit` pinned to `cores` (`taskset -c` syntax).
fn pretrain_on(cores: &str, out: &Path) {
    let result = Command::new("taskset")
        .args(["-c", cores])
        .arg(env!("CARGO_BIN_EXE_diffit"))
        .args(["pretrain", "--preset", "tiny", "--epochs", "2"])
        .args(["--num-images", "80", "--seed", "3", "--out"])
        .arg(out)
        .arg("--checkpoints")
        .arg(out.with_extension("runs"))
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
    let mut cases = vec![("0", TINY_CHECKSUM)];
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        cases.push(("0,1", TINY_CHECKSUM_TWO_SHARDS));
    }
    for (cores, expected) in cases {
        let out = dir.path().join(format!("base_{cores}.safetensors"));
        pretrain_on(cores, &out);
        let tensors = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        support::check_pinned(
            &format!("tiny pretraining on cores {cores}"),
            &weights_checksum(&tensors),
            expected,
        );
    }
}
