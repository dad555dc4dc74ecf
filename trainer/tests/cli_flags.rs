//! Flag values out of range: the error names the flag and what it takes, with clap's usage
//! exit code (2), before anything is read or trained.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use support::diffit;

/// Runs `args`, expects a usage error whose message contains every one of `expected`.
fn assert_usage_error(args: &[&str], expected: &[&str]) {
    let out = diffit(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    for text in expected {
        assert!(stderr.contains(text), "{args:?}: no {text:?} in {stderr}");
    }
}

#[test]
fn negative_zero_and_non_finite_values_name_the_flag_and_its_range() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let train =
        |flag: &'static str, value: &'static str| vec!["train", "--checkpoints", d, flag, value];
    assert_usage_error(
        &train("--epochs", "-3"),
        &["--epochs", "-3", "1..=4294967295"],
    );
    assert_usage_error(
        &train("--batch-size", "0"),
        &["--batch-size", "1..=4294967295"],
    );
    for lr in ["-1", "nan", "inf", "-inf", "0"] {
        assert_usage_error(&train("--learning-rate", lr), &["--learning-rate", "> 0"]);
    }
    assert_usage_error(
        &train("--seed", "-1"),
        &["--seed", "0..=18446744073709551615"],
    );
    assert_usage_error(&train("--run-number", "-2"), &["--run-number", "1.."]);
    // 0 keeps every epoch (as in the seed system); a negative count is still refused.
    assert_usage_error(&train("--keep-last-n", "-1"), &["--keep-last-n", "0.."]);
    assert_usage_error(
        &train("--keep-optimizer-last-n", "0"),
        &["--keep-optimizer-last-n", "1.."],
    );
    assert_usage_error(
        &train("--save-every-n-epochs", "-1"),
        &["--save-every-n-epochs", "1.."],
    );
    assert_usage_error(
        &["pretrain", "--out", "x.safetensors", "--num-images", "-5"],
        &["--num-images", "1.."],
    );
    assert_usage_error(
        &[
            "pretrain",
            "--out",
            "x.safetensors",
            "--learning-rate",
            "-1e-3",
        ],
        &["--learning-rate", "> 0"],
    );
    assert_usage_error(
        &[
            "sample",
            "--run-number",
            "1",
            "--out",
            "x.png",
            "--eta",
            "-0.5",
        ],
        &["--eta", "[0, 1]"],
    );
    assert_usage_error(
        &[
            "sample",
            "--run-number",
            "1",
            "--out",
            "x.png",
            "--steps",
            "0",
        ],
        &["--steps", "1.."],
    );
    assert_usage_error(
        &["runs", "show", "-1", "--checkpoints", d],
        &["RUN_NUMBER", "1.."],
    );
    assert_usage_error(
        &["verify", "--run-number", "0", "--checkpoints", d],
        &["--run-number"],
    );
    for device in ["tpu", "cuda:x", "cuda:-1"] {
        assert_usage_error(&train("--device", device), &["--device", device, "cuda:N"]);
    }
    // Nothing was created by the refused commands.
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 0);
}

#[test]
fn usage_errors_found_after_parsing_exit_2_and_other_failures_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // Found by the trainer, not by clap: still a usage error.
    assert_usage_error(
        &["train", "--checkpoints", d, "--data", "/nonexistent/images"],
        &["/nonexistent/images", "no such file or directory"],
    );
    let yaml = dir.path().join("typo.yaml");
    std::fs::write(&yaml, "training:\n  epoch: 3\n").unwrap();
    assert_usage_error(
        &[
            "train",
            "--checkpoints",
            d,
            "--config",
            yaml.to_str().unwrap(),
        ],
        &["typo.yaml", "epoch"],
    );
    // A GPU asked of a CPU build is refused before a base is pretrained or a run created, and
    // says how to build one with CUDA.
    if !trainer::FEATURES.contains(&"trainer/cuda") {
        assert_usage_error(
            &[
                "train",
                "--checkpoints",
                d,
                "--preset",
                "tiny",
                "--device",
                "cuda:1",
            ],
            &[
                "--device cuda:1",
                "built without CUDA",
                "scripts/build-cuda.sh",
            ],
        );
    }
    assert_eq!(
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path() != yaml)
            .count(),
        0,
        "a refused command wrote into --checkpoints"
    );
    let out = diffit(&["runs", "show", "42", "--checkpoints", d]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing run is no usage error"
    );
    let out = diffit(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
}
