//! Runs without their own base model resume: a run saved with `--save-base-model false`, or
//! whose stored base was lost or damaged, finds weights with the checksum its metadata records
//! (from `--base`, the pretrain cache, or another run of the checkpoints dir), refuses any other
//! weights naming the checksum it needs, and stores the base on resume when asked.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::path::Path;
use std::process::Output;

use format::Metadata;
use support::{diffit_one_core, fixture_base, ok, text, verify_run_1};

fn failed(out: Output) -> String {
    let text = text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    text
}

fn metadata(checkpoints: &Path, run: u32) -> Metadata {
    let path = checkpoints.join(format!("run_{run:03}/metadata.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn train_new(checkpoints: &Path, epochs: &str, extra: &[&str]) -> String {
    let base = fixture_base();
    let mut args = vec![
        "train",
        "--preset",
        "tiny",
        "--base",
        base.to_str().unwrap(),
        "--epochs",
        epochs,
        "--checkpoints",
        checkpoints.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(diffit_one_core(&args))
}

fn resume(checkpoints: &Path, run: &str, epochs: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--resume",
        "--run-number",
        run,
        "--epochs",
        epochs,
        "--checkpoints",
        checkpoints.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    diffit_one_core(&args)
}

fn epoch_file(checkpoints: &Path, run: u32, epoch: u32) -> Vec<u8> {
    std::fs::read(checkpoints.join(format!(
        "run_{run:03}/lora_weights/epoch_{epoch:03}.safetensors"
    )))
    .unwrap()
}

#[test]
fn a_run_saved_without_its_base_resumes_on_weights_with_its_checksum_only() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("checkpoints");
    train_new(&ck, "1", &["--save-base-model", "false"]);
    let meta = metadata(&ck, 1);
    assert!(meta.base_model.is_none(), "no base stored");
    let needed = meta
        .base_identity
        .expect("the base is known by its checksum");
    assert!(!ck
        .join("run_001/base_model")
        .join("base_model.safetensors")
        .exists());

    // Nothing with those weights anywhere: the error names the checksum it needs.
    let err = failed(resume(&ck, "1", "2", &[]));
    assert!(err.contains(&needed.checksum), "{err}");
    assert!(err.contains("--base"), "{err}");

    // Other weights are refused, however they are offered.
    let other = dir.path().join("other_base.safetensors");
    let mut bytes = std::fs::read(fixture_base()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // one weight's lowest mantissa bit
    std::fs::write(&other, &bytes).unwrap();
    let err = failed(resume(&ck, "1", "2", &["--base", other.to_str().unwrap()]));
    assert!(
        err.contains(&needed.checksum) && err.contains("other weights"),
        "{err}"
    );

    // The right weights from --base: the run continues exactly as one that stored its base.
    ok(resume(
        &ck,
        "1",
        "2",
        &["--base", fixture_base().to_str().unwrap()],
    ));
    let reference = dir.path().join("reference");
    train_new(&reference, "1", &[]);
    ok(resume(&reference, "1", "2", &[]));
    assert!(
        epoch_file(&ck, 1, 2) == epoch_file(&reference, 1, 2),
        "the LoRA resumed on --base differs from one resumed on the stored base"
    );
    verify_run_1(ck.to_str().unwrap());

    // Another run of the same dir that stores these weights is found by itself; asked to, the
    // resumed run then stores its base.
    train_new(&ck, "1", &[]);
    let said = ok(resume(&ck, "1", "3", &["--save-base-model", "true"]));
    assert!(said.contains("another run's base model"), "{said}");
    let meta = metadata(&ck, 1);
    let stored = meta.base_model.expect("stored on resume");
    assert_eq!(stored.checksum, needed.checksum);
    verify_run_1(ck.to_str().unwrap());
}

#[test]
fn a_run_whose_stored_base_was_damaged_resumes_on_the_pretrain_cache_and_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("checkpoints");
    train_new(&ck, "1", &[]);
    let needed = metadata(&ck, 1).base_model.unwrap().checksum;
    let own = ck.join("run_001/base_model/base_model.safetensors");
    let mut bytes = std::fs::read(&own).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&own, &bytes).unwrap();
    let err = failed(resume(&ck, "1", "2", &[]));
    assert!(
        err.contains(&needed) && err.contains("pretrain cache"),
        "{err}"
    );

    // The preset's pretrain cache holds the same weights (written with its own header).
    let cache = ck.join(".cache/base_tiny_0.safetensors");
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    std::fs::copy(fixture_base(), &cache).unwrap();
    let said = ok(resume(&ck, "1", "2", &[]));
    assert!(said.contains("the pretrain cache"), "{said}");
    // `save_base_model: true` (the run's setting) stored the base again, intact.
    verify_run_1(ck.to_str().unwrap());
    assert_eq!(metadata(&ck, 1).base_model.unwrap().checksum, needed);
}
