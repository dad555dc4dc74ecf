//! A run written by main at 36b41c4, before the crate split (`tests/fixtures/main-36b41c4`):
//! today's `diffit` lists and verifies it, samples it pixel for pixel as that version did, and
//! resumes it bit for bit to the epoch that version wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::path::Path;

use format::Metadata;
use support::{
    diffit_one_core, ok, older_main_checkpoints_copy, older_main_fixture, verify_run_1, EPYC_1M_L2,
    FIRST_KIND,
};

/// The checksum of epoch 4 as 36b41c4 wrote it when resuming the fixture run, per machine kind
/// (`support::kernel_fingerprint`); the second is today's `diffit` on that kind.
const EPOCH_4_CHECKSUM: &[(&str, &str)] = &[
    (
        FIRST_KIND,
        "blake3:5cd1485885cfe3ad5651eb81ad26c9ecc52496c641c256a277937b8c66b98718",
    ),
    (
        EPYC_1M_L2,
        "blake3:221a913f03d38e09fdcef9b896608bc166269c167861d04dd3ac8d1a378b32f6",
    ),
];

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_rgb8().into_raw()
}

#[test]
fn lists_verifies_and_samples_like_the_version_that_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = older_main_checkpoints_copy(dir.path());
    let c = checkpoints.to_str().unwrap();
    let table = ok(diffit_one_core(&[
        "train",
        "--list-runs",
        "--checkpoints",
        c,
    ]));
    assert!(table.contains("diffit_lora_trees"), "{table}");
    verify_run_1(c);
    for checkpoint in ["best", "base"] {
        let out = dir.path().join(format!("{checkpoint}.png"));
        ok(diffit_one_core(&[
            "sample",
            "--run-number",
            "1",
            "--checkpoint",
            checkpoint,
            "--seed",
            "3",
            "--steps",
            "8",
            "--n",
            "4",
            "--out",
            out.to_str().unwrap(),
            "--checkpoints",
            c,
        ]));
        let expected =
            older_main_fixture().join(format!("sample_{checkpoint}_seed3_steps8_n4.png"));
        assert!(
            pixels(&out) == pixels(&expected),
            "{checkpoint}: today's samples differ from 36b41c4's"
        );
    }
}

#[test]
fn resumes_bit_for_bit_as_the_version_that_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = older_main_checkpoints_copy(dir.path());
    let c = checkpoints.to_str().unwrap();
    ok(diffit_one_core(&[
        "train",
        "--run-number",
        "1",
        "--resume",
        "--epochs",
        "4",
        "--checkpoints",
        c,
    ]));
    let text = std::fs::read_to_string(checkpoints.join("run_001/metadata.json")).unwrap();
    let meta: Metadata = serde_json::from_str(&text).unwrap();
    let epoch4 = meta.checkpoint(4).expect("epoch 4 recorded");
    support::check_pinned(
        "the resumed epoch 4",
        epoch4.checksum.as_deref().unwrap_or("none"),
        EPOCH_4_CHECKSUM,
    );
    // Epochs 2 and 3 were written by 36b41c4 and are untouched.
    verify_run_1(c);
}
