//! Damaged files: a flipped byte or a truncated file is reported naming the file, resume falls
//! back to the newest valid epoch, `diffit verify` exits non-zero, and the CLI's table and
//! summary behave, including on broken runs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::fs;
use std::path::Path;

mod support;

use format::Mode;
use serde_json::json;
use store::{CheckpointManager, LoraCheckpoint, StoreError, StoredTensor, TensorMap, Which};
use support::{diffit, text};

fn checkpoint(epoch: u32, val_loss: f64) -> LoraCheckpoint {
    let mut c = LoraCheckpoint::new(epoch, u64::from(epoch));
    let t = StoredTensor::new(vec![8, 8], vec![epoch as f32; 64]).unwrap();
    c.lora.insert("m.lora_A.weight".into(), t.clone());
    c.lora.insert("m.lora_B.weight".into(), t.clone());
    c.insert_moments("m.lora_A.weight", t.clone(), t);
    c.metrics.insert("val_loss".into(), val_loss);
    c
}

fn run_with_three_epochs(dir: &Path) -> CheckpointManager {
    let mut run = CheckpointManager::create(dir, "e").unwrap();
    let mut base = TensorMap::new();
    base.insert(
        "w".into(),
        StoredTensor::new(vec![16, 16], vec![1.0; 256]).unwrap(),
    );
    run.save_base_model(&base, &json!({})).unwrap();
    for (epoch, loss) in [(1, 0.5), (2, 0.3), (3, 0.4)] {
        run.save_lora_weights(&checkpoint(epoch, loss), "val_loss", Mode::Min)
            .unwrap();
    }
    run
}

fn flip_byte(path: &Path, at_end: usize) {
    let mut bytes = fs::read(path).unwrap();
    let i = bytes.len() - 1 - at_end;
    bytes[i] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[test]
fn flipped_byte_is_named_resume_falls_back_and_verify_fails() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_with_three_epochs(dir.path());
    let epoch3 = dir
        .path()
        .join("run_001/lora_weights/epoch_003.safetensors");
    // `last` is a hard link to this file, so it is damaged too.
    flip_byte(&epoch3, 10);

    let err = run.load_lora_weights(Which::Epoch(3)).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert!(
        err.to_string().contains("epoch_003.safetensors") && err.to_string().contains("checksum"),
        "{err}"
    );
    let resume = run.load_for_resume().unwrap().unwrap();
    assert_eq!(
        resume.checkpoint.epoch, 2,
        "falls back past the damaged epoch"
    );
    assert_eq!(resume.skipped.len(), 1);
    assert!(resume.skipped[0]
        .to_string()
        .contains("epoch_003.safetensors"));
    assert_eq!(run.load_lora_weights(Which::Best).unwrap().epoch, 2);

    let report = run.verify();
    assert!(!report.is_ok());
    let damaged: Vec<String> = report
        .damaged
        .iter()
        .map(|e| e.path().display().to_string())
        .collect();
    assert!(
        damaged.iter().any(|p| p.ends_with("epoch_003.safetensors")),
        "{damaged:?}"
    );

    let checkpoints = dir.path().to_str().unwrap();
    let out = diffit(&["verify", "--run-number", "1", "--checkpoints", checkpoints]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("DAMAGED") && text(&out).contains("epoch_003.safetensors"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("epoch_001.safetensors"),
        "healthy files are listed too"
    );
}

#[test]
fn truncated_file_is_named_and_a_healthy_run_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_with_three_epochs(dir.path());
    let checkpoints = dir.path().to_str().unwrap();
    let out = diffit(&["verify", "--run-number", "1", "--checkpoints", checkpoints]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("all 6 files verified"),
        "{}",
        text(&out)
    );

    let epoch2 = dir
        .path()
        .join("run_001/lora_weights/epoch_002.safetensors");
    let bytes = fs::read(&epoch2).unwrap();
    fs::write(&epoch2, &bytes[..bytes.len() / 3]).unwrap();
    let err = run.load_lora_weights(Which::Epoch(2)).unwrap_err();
    assert!(
        err.to_string().contains("epoch_002.safetensors") && err.to_string().contains("truncated"),
        "{err}"
    );
    assert_eq!(run.load_for_resume().unwrap().unwrap().checkpoint.epoch, 3);

    let base = dir.path().join("run_001/base_model/base_model.safetensors");
    flip_byte(&base, 0);
    let err = run.load_base_model().unwrap_err();
    assert!(err.to_string().contains("base_model.safetensors"), "{err}");
    fs::remove_file(&base).unwrap();
    let err = run.load_base_model().unwrap_err();
    assert!(
        matches!(err, StoreError::MissingCheckpoint { .. })
            && err.to_string().contains("base_model"),
        "{err}"
    );

    let out = diffit(&["verify", "--run-number", "1", "--checkpoints", checkpoints]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("epoch_002.safetensors")
            && t.contains("base_model.safetensors")
            && t.contains("missing"),
        "{t}"
    );
}

#[test]
fn every_epoch_damaged_is_an_error_listing_each_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_with_three_epochs(dir.path());
    for epoch in 1..=3 {
        flip_byte(
            &dir.path()
                .join(format!("run_001/lora_weights/epoch_{epoch:03}.safetensors")),
            0,
        );
    }
    let err = run.load_for_resume().unwrap_err();
    assert!(matches!(err, StoreError::NoValidCheckpoint { .. }), "{err}");
    for epoch in 1..=3 {
        assert!(
            err.to_string()
                .contains(&format!("epoch_{epoch:03}.safetensors")),
            "{err}"
        );
    }
}

#[test]
fn writer_reopen_repairs_links_and_drops_uncommitted_files() {
    let dir = tempfile::tempdir().unwrap();
    drop(run_with_three_epochs(dir.path()));
    let lora = dir.path().join("run_001/lora_weights");
    // As if killed: a half-written temp file, an epoch written but never committed to metadata,
    // and `last` still pointing at an older epoch.
    fs::write(lora.join("epoch_004.safetensors.tmp-1-0"), b"partial").unwrap();
    fs::copy(
        lora.join("epoch_003.safetensors"),
        lora.join("epoch_004.safetensors"),
    )
    .unwrap();
    fs::remove_file(lora.join("last.safetensors")).unwrap();
    fs::copy(
        lora.join("epoch_001.safetensors"),
        lora.join("last.safetensors"),
    )
    .unwrap();
    let run = CheckpointManager::open(dir.path(), 1).unwrap();
    assert!(!lora.join("epoch_004.safetensors.tmp-1-0").exists());
    assert!(!lora.join("epoch_004.safetensors").exists());
    assert_eq!(
        fs::read(lora.join("last.safetensors")).unwrap(),
        fs::read(lora.join("epoch_003.safetensors")).unwrap()
    );
    assert!(run.verify().is_ok(), "{:?}", run.verify().damaged);
}

#[test]
fn list_runs_prints_the_seed_table_and_broken_runs() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().to_str().unwrap();
    let out = diffit(&["train", "--list-runs", "--checkpoints", checkpoints]);
    assert!(out.status.success(), "{}", text(&out));

    drop(run_with_three_epochs(dir.path()));
    drop(CheckpointManager::create(dir.path(), "second_experiment").unwrap());
    drop(CheckpointManager::create(dir.path(), "e").unwrap());
    fs::write(dir.path().join("run_002/metadata.json"), b"[]").unwrap();
    let out = diffit(&["train", "--list-runs", "--checkpoints", checkpoints]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let equals = "=".repeat(80);
    assert_eq!(lines[0], "Available Training Runs:");
    assert_eq!(lines[1], equals);
    assert_eq!(
        lines[2],
        "Run #    Experiment                Created               Checkpoints"
    );
    assert_eq!(lines[3], "-".repeat(80));
    assert!(
        lines[4].starts_with("1        e                         "),
        "{:?}",
        lines[4]
    );
    // Nobody finished run 1 nor writes it now: the state follows the seed's columns.
    assert!(lines[4].ends_with("  3  (interrupted)"), "{:?}", lines[4]);
    let created = &lines[4][35..54];
    assert!(
        created.starts_with("20") && created.as_bytes()[10] == b' ',
        "created column: {created:?}"
    );
    assert!(
        lines[5].starts_with("2        BROKEN") && lines[5].contains("run_002/metadata.json"),
        "{:?}",
        lines[5]
    );
    assert!(lines[6].starts_with("3        e "), "{:?}", lines[6]);
    assert!(lines[6].ends_with("  0  (interrupted)"), "{:?}", lines[6]);
    assert_eq!(lines[7], equals);
    assert_eq!(lines.len(), 8);
    let same = diffit(&["runs", "list", "--checkpoints", checkpoints]);
    assert_eq!(String::from_utf8(same.stdout).unwrap(), stdout);
}

#[test]
fn runs_show_prints_the_summary_and_bad_numbers_fail() {
    let dir = tempfile::tempdir().unwrap();
    drop(run_with_three_epochs(dir.path()));
    let checkpoints = dir.path().to_str().unwrap();
    let out = diffit(&["runs", "show", "1", "--checkpoints", checkpoints]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("Run 1") && t.contains("Best:         epoch 2"),
        "{t}"
    );

    let out = diffit(&["runs", "show", "42", "--checkpoints", checkpoints]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("run_042"), "{}", text(&out));
    let out = diffit(&["verify", "--run-number", "42", "--checkpoints", checkpoints]);
    assert_eq!(out.status.code(), Some(1));
    fs::write(dir.path().join("run_001/metadata.json"), b"{").unwrap();
    let out = diffit(&["runs", "show", "1", "--checkpoints", checkpoints]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("run_001/metadata.json"),
        "{}",
        text(&out)
    );
    let out = diffit(&["train", "--checkpoints", checkpoints, "--mode", "sideways"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("sideways"), "{}", text(&out));
}

#[test]
fn runs_tag_and_note_annotate_a_run_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    drop(run_with_three_epochs(dir.path()));
    let checkpoints = dir.path().to_str().unwrap();
    let metadata = dir.path().join("run_001/metadata.json");
    let metadata_before = fs::read(&metadata).unwrap();

    let out = diffit(&[
        "runs",
        "tag",
        "1",
        "sweep",
        "lr-1e-3",
        "--checkpoints",
        checkpoints,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), "run 1: tags lr-1e-3 sweep");
    let out = diffit(&[
        "runs",
        "tag",
        "1",
        "best",
        "--remove",
        "sweep",
        "--checkpoints",
        checkpoints,
    ]);
    assert_eq!(text(&out).trim(), "run 1: tags best lr-1e-3");
    let out = diffit(&[
        "runs",
        "note",
        "1",
        "warm restart, seed 3",
        "--checkpoints",
        checkpoints,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = diffit(&["runs", "note", "1", "--checkpoints", checkpoints]);
    assert_eq!(text(&out).trim(), "warm restart, seed 3");
    let show = text(&diffit(&[
        "runs",
        "show",
        "1",
        "--checkpoints",
        checkpoints,
    ]));
    assert!(show.contains("Tags:         best lr-1e-3"), "{show}");
    assert!(
        show.contains("Note:         warm restart, seed 3"),
        "{show}"
    );
    // Annotations live beside metadata.json, which is left as the writer wrote it.
    assert_eq!(fs::read(&metadata).unwrap(), metadata_before);

    // A bad tag is a usage error naming it; nothing changes.
    let annotations = dir.path().join("run_001/annotations.json");
    let before = fs::read(&annotations).unwrap();
    let out = diffit(&[
        "runs",
        "tag",
        "1",
        "two words",
        "--checkpoints",
        checkpoints,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("\"two words\""), "{}", text(&out));
    assert_eq!(fs::read(&annotations).unwrap(), before);
    let out = diffit(&["runs", "tag", "7", "x", "--checkpoints", checkpoints]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("run 7 not found"), "{}", text(&out));
    // A damaged file is named, and not overwritten.
    fs::write(&annotations, b"{\"tags\": 3}").unwrap();
    let out = diffit(&["runs", "tag", "1", "y", "--checkpoints", checkpoints]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("annotations.json"), "{}", text(&out));
    assert_eq!(fs::read(&annotations).unwrap(), b"{\"tags\": 3}");
    let out = diffit(&["runs", "note", "1", "--clear", "--checkpoints", checkpoints]);
    assert_eq!(out.status.code(), Some(1));

    fs::remove_file(&annotations).unwrap();
    let out = diffit(&["runs", "note", "1", "--clear", "--checkpoints", checkpoints]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), "run 1 has no note");
}
