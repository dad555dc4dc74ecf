//! Shared by the trainer's integration tests: running the `diffit` binary and reading what it
//! printed, and writable copies of the older-main fixture run (`tests/fixtures/main-36b41c4`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // Each test uses a part.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `diffit args…`, waited for, with no stdin.
pub fn diffit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffit"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// What a run printed, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The run written by main at 36b41c4, before the crate split.
pub fn older_main_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/main-36b41c4")
}

/// A writable copy of the fixture's checkpoints dir under `into` (tests must not touch the
/// repository); returns its path.
pub fn older_main_checkpoints_copy(into: &Path) -> PathBuf {
    let status = Command::new("cp")
        .arg("-a")
        .arg(older_main_fixture().join("checkpoints"))
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success());
    into.join("checkpoints")
}
