//! A run whose loss becomes NaN or ∞ stops with a clear "diverged" error naming what to do;
//! every checkpoint saved before it is kept and valid, and resuming with a lower learning
//! rate continues the run. Uses a copy of the older-main fixture run (tiny preset, 3 epochs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::path::Path;

use format::{Metadata, RunStatus};
use support::{diffit, older_main_checkpoints_copy, text};

fn metadata(checkpoints: &Path) -> Metadata {
    let text = std::fs::read_to_string(checkpoints.join("run_001/metadata.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_diverged_run_keeps_its_checkpoints_and_resumes_with_a_lower_learning_rate() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = older_main_checkpoints_copy(dir.path());
    let c = checkpoints.to_str().unwrap();
    let before = metadata(&checkpoints);

    let resume = |lr: &str| {
        diffit(&[
            "train",
            "--run-number",
            "1",
            "--resume",
            "--epochs",
            "4",
            "--learning-rate",
            lr,
            "--checkpoints",
            c,
        ])
    };
    // An absurd learning rate blows the weights up within a few steps.
    let out = resume("1e6");
    let message = text(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(message.contains("diverged at epoch 4"), "{message}");
    assert!(message.contains("lower --learning-rate"), "{message}");
    let after = metadata(&checkpoints);
    assert_eq!(
        after.checkpoints, before.checkpoints,
        "nothing saved or lost"
    );
    assert_eq!(after.status, RunStatus::Failed);
    let verify = diffit(&["verify", "--run-number", "1", "--checkpoints", c]);
    assert!(verify.status.success(), "{}", text(&verify));

    let out = resume("1e-3");
    assert!(out.status.success(), "{}", text(&out));
    let resumed = metadata(&checkpoints);
    let epoch4 = resumed.checkpoint(4).expect("epoch 4 saved");
    assert!(epoch4.metrics["val_loss"].is_finite());
    assert_eq!(resumed.status, RunStatus::Finished);
}
