//! TensorBoard itself (Python's `tensorboard` package) reads our event files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

use trainer::train::EventWriter;

/// The venv `make test` creates at the repository root.
fn python() -> Option<PathBuf> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if py.exists() {
        Some(py)
    } else {
        println!(
            "SKIPPED: {} is absent (run `make test` or create the venv)",
            py.display()
        );
        None
    }
}

const READER: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0})
acc.Reload()
tags = acc.Tags()
out = {"scalars": {}, "images": {}}
for tag in tags["scalars"]:
    out["scalars"][tag] = [[e.step, e.value] for e in acc.Scalars(tag)]
for tag in tags["images"]:
    out["images"][tag] = [[e.step, e.width, e.height, len(e.encoded_image_string)] for e in acc.Images(tag)]
print(json.dumps(out))
"#;

#[test]
fn tensorboard_reads_scalars_and_images() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let mut w = EventWriter::create(&logs).unwrap();
    for epoch in 1..=3i64 {
        w.add_scalar("train_loss", 1.0 / epoch as f64, epoch)
            .unwrap();
        w.add_scalar("val_loss", 2.0 / epoch as f64, epoch).unwrap();
        w.add_scalar("lr", 1e-3, epoch).unwrap();
        w.sync().unwrap();
    }
    let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
    w.add_image_rgb8("samples", &rgb, 4, 3, 3).unwrap();
    w.sync().unwrap();

    let out = Command::new(&py)
        .arg("-c")
        .arg(READER)
        .arg(&logs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let val = parsed["scalars"]["val_loss"].as_array().unwrap();
    assert_eq!(val.len(), 3);
    assert_eq!(val[1][0], 2);
    assert!((val[1][1].as_f64().unwrap() - 1.0).abs() < 1e-6);
    assert_eq!(parsed["scalars"]["train_loss"].as_array().unwrap().len(), 3);
    assert_eq!(parsed["scalars"]["lr"].as_array().unwrap().len(), 3);
    let img = &parsed["images"]["samples"][0];
    assert_eq!(
        (img[0].as_i64(), img[1].as_i64(), img[2].as_i64()),
        (Some(3), Some(4), Some(3))
    );
}
