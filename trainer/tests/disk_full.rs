//! A run whose disk fills up mid-training, on a real (small) tmpfs: the error names the file and
//! the cause once, every committed file stays valid, the run reads as interrupted once its
//! writer is gone, and after space is freed `--resume` ends bit for bit where an uninterrupted
//! run ends.
//!
//! Mounting needs root (the test command runs as root). Where mounting is not permitted the
//! test fails and says so, unless `DIFFIT_SKIP_TMPFS_TESTS=1` asks to skip it, which it then
//! reports loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{diffit_one_core, fixture_base, ok, text, verify_run_1};

/// A tmpfs mounted for the test's life, unmounted (lazily, so a failing test cannot leave it
/// busy) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it), or says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(text(&out));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Frees space the way a user would: by growing the filesystem.
    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "remount: {}", text(&out));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

const EPOCHS: &str = "4";

fn train(checkpoints: &Path) -> Output {
    diffit_one_core(&[
        "train",
        "--preset",
        "tiny",
        "--base",
        fixture_base().to_str().unwrap(),
        "--epochs",
        EPOCHS,
        "--keep-last-n",
        EPOCHS,
        "--checkpoints",
        checkpoints.to_str().unwrap(),
    ])
}

#[test]
fn a_full_disk_stops_the_run_cleanly_and_resume_finishes_it_bit_for_bit() {
    // The base (~200 kB), config, metadata and two epochs (~160 kB each) fit; the third does not.
    let disk = match Tmpfs::mount("640k") {
        Ok(disk) => disk,
        Err(why) if std::env::var_os("DIFFIT_SKIP_TMPFS_TESTS").is_some() => {
            eprintln!(
                "\n!!! SKIPPED the disk-full test: cannot mount a tmpfs ({why}); \
                 DIFFIT_SKIP_TMPFS_TESTS is set\n"
            );
            return;
        }
        Err(why) => panic!(
            "the disk-full test needs to mount a tmpfs (run as root), and mounting failed: {why}\n\
             set DIFFIT_SKIP_TMPFS_TESTS=1 to skip it knowingly"
        ),
    };
    let checkpoints = disk.path().join("checkpoints");
    let c = checkpoints.to_str().unwrap();

    let full = train(&checkpoints);
    let message = text(&full);
    assert_eq!(full.status.code(), Some(1), "{message}");
    let error_line = message
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{message}"));
    assert_eq!(
        error_line.matches("No space left on device").count(),
        1,
        "the cause once: {error_line}"
    );
    assert!(
        error_line.contains(&format!("{c}/run_001/")) && !error_line.contains(".tmp-"),
        "the error names the run's file, not a temporary one: {error_line}"
    );

    // What was committed before the disk filled is complete and verifies.
    verify_run_1(c);
    let metadata: format::Metadata =
        serde_json::from_slice(&std::fs::read(checkpoints.join("run_001/metadata.json")).unwrap())
            .unwrap();
    let saved = metadata.live_checkpoints().count();
    assert!(
        (1..4).contains(&saved),
        "the disk must fill mid-run; {saved} epochs were saved"
    );

    // Nobody writes the run any more: it reads as interrupted, not running.
    let table = ok(diffit_one_core(&[
        "train",
        "--list-runs",
        "--checkpoints",
        c,
    ]));
    let row = table.lines().find(|l| l.starts_with("1 ")).unwrap();
    assert!(row.ends_with("(interrupted)"), "{table}");
    let shown = ok(diffit_one_core(&["runs", "show", "1", "--checkpoints", c]));
    assert!(
        shown.contains("Status:       interrupted"),
        "runs show: {shown}"
    );
    // When the status write itself still fitted, the run says what stopped it.
    if let Some(reason) = shown.lines().find(|l| l.contains("Stopped by:")) {
        assert!(reason.contains("No space left on device"), "{reason}");
    }

    // Space freed: resume finishes the run, exactly as if the disk had never filled.
    disk.resize("8m");
    ok(diffit_one_core(&[
        "train",
        "--resume",
        "--run-number",
        "1",
        "--checkpoints",
        c,
    ]));
    verify_run_1(c);
    let reference = tempfile::tempdir().unwrap();
    ok(train(reference.path()));
    let last = format!("run_001/lora_weights/epoch_00{EPOCHS}.safetensors");
    assert!(
        std::fs::read(checkpoints.join(&last)).unwrap()
            == std::fs::read(reference.path().join(&last)).unwrap(),
        "the resumed run's final LoRA differs from an uninterrupted run's"
    );
    let table = ok(diffit_one_core(&[
        "train",
        "--list-runs",
        "--checkpoints",
        c,
    ]));
    let row = table.lines().find(|l| l.starts_with("1 ")).unwrap();
    assert!(row.trim_end().ends_with(" 4"), "finished: {table}");
}
