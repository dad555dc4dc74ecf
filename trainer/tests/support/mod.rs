//! Shared by the trainer's integration tests: running the `diffit` binary and reading what it
//! printed, and writable copies of the older-main fixture run (`tests/fixtures/main-36b41c4`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // Each test uses a part.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod faulty_proxy;
pub mod s3;

/// `diffit args…`, waited for, with no stdin.
pub fn diffit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffit"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `diffit args…` on one core, waited for: training then runs as one shard on any machine (the
/// shard count is part of the recipe of a bit-identical run), so runs can be compared bit for
/// bit.
pub fn diffit_one_core(args: &[&str]) -> Output {
    one_core_command(args).output().unwrap()
}

/// The command `diffit args…` on one core (see [`diffit_one_core`]), no stdin, not started.
pub fn one_core_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"])
        .arg(env!("CARGO_BIN_EXE_diffit"))
        .args(args)
        .env_remove("CANDLE_NUM_THREADS")
        .env_remove("RAYON_NUM_THREADS")
        .stdin(Stdio::null());
    cmd
}

/// The newest epoch the `metadata.json` at `path` has committed (0 before any, or while the
/// file is absent).
pub fn committed_epoch(path: &Path) -> u32 {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<format::Metadata>(&bytes).ok())
        .and_then(|m| m.last_epoch())
        .unwrap_or(0)
}

/// Starts `diffit args…` on one core and SIGKILLs it as soon as the run whose metadata is at
/// `metadata` has committed `epoch`; returns the epoch committed when it died (a run that ends
/// before, or commits nothing in 300 s, fails the test).
pub fn kill_after_epoch(args: &[&str], metadata: &Path, epoch: u32) -> u32 {
    let mut child = one_core_command(args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while committed_epoch(metadata) < epoch {
        assert!(child.try_wait().unwrap().is_none(), "diffit exited early");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "no epoch {epoch}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    committed_epoch(metadata)
}

/// Every tensor of a safetensors file, by name (sorted), as raw bytes: two files hold the same
/// state exactly when these are equal, whatever their headers' timestamps.
pub fn tensor_bytes(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<(String, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect();
    all.sort();
    all
}

/// What a run printed, asserting that it succeeded.
pub fn ok(out: Output) -> String {
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    text
}

/// `diffit verify --run-number 1 --checkpoints DIR`, asserting every file checks out.
pub fn verify_run_1(checkpoints: &str) {
    ok(diffit(&[
        "verify",
        "--run-number",
        "1",
        "--checkpoints",
        checkpoints,
    ]));
}

/// The fixture's base model: a small committed file, so tests need no pretraining.
pub fn fixture_base() -> PathBuf {
    older_main_fixture().join("checkpoints/run_001/base_model/base_model.safetensors")
}

/// The bin dir of the venv `make test` creates at the repository root, asserting it has
/// `tool`; `None` (said loudly) when there is no venv at all.
pub fn venv_bin(tool: &str) -> Option<PathBuf> {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin");
    if !bin.join("python").exists() {
        eprintln!(
            "\n!!! SKIPPED: {} is absent (run `make test`, which creates it)\n",
            bin.display()
        );
        return None;
    }
    assert!(
        bin.join(tool).exists(),
        "{} has no {tool}: run scripts/setup-python.sh",
        bin.display()
    );
    Some(bin)
}

/// Kills `child` and every process it started (it was spawned as the leader of its own process
/// group, `process_group(0)`), and reaps it.
pub fn kill_process_group(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
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

/// The machine kind the first pins were recorded on, before kinds were told apart by their
/// caches ([`kernel_fingerprint`]): x86-64 with AVX-512, caches not recorded.
pub const FIRST_KIND: &str = "avx512f; caches not recorded";
/// An AMD EPYC (Zen 4) with 1 MiB of L2 per core, a kind `make test` runs on.
pub const EPYC_1M_L2: &str = "avx512f; L1 Data 32K 8-way 64B, L1 Instruction 32K 8-way 64B, \
                              L2 Unified 1024K 8-way 64B, L3 Unified 32768K 16-way 64B";

/// The CPU's kernels as candle's gemm picks them: AVX-512 or not, and each cache of CPU 0
/// (level, type, size, ways, line), from which gemm sizes its blocks. Both decide the order of
/// the sums in every matmul, so the last bits of trained weights: a checksum pinned on one kind
/// of machine holds on that kind only.
pub fn kernel_fingerprint() -> String {
    #[cfg(target_arch = "x86_64")]
    let simd = if std::arch::is_x86_feature_detected!("avx512f") {
        "avx512f"
    } else if std::arch::is_x86_feature_detected!("avx2") {
        "avx2"
    } else {
        "x86-64"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let simd = std::env::consts::ARCH;
    let mut caches = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache") {
        for entry in entries.flatten() {
            let dir = entry.path();
            let read = |name: &str| {
                std::fs::read_to_string(dir.join(name))
                    .map_or_else(|_| "?".into(), |v| v.trim().to_string())
            };
            if dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("index"))
            {
                caches.push(format!(
                    "L{} {} {} {}-way {}B",
                    read("level"),
                    read("type"),
                    read("size"),
                    read("ways_of_associativity"),
                    read("coherency_line_size")
                ));
            }
        }
    }
    caches.sort();
    format!("{simd}; {}", caches.join(", "))
}

/// Checks `actual` (a checksum of `what`) against `pins`, the values recorded per machine kind
/// ([`kernel_fingerprint`], value). On a kind with a pin the two must be equal; on another kind
/// the comparison says it is skipped and prints this machine's value, to pin it.
pub fn check_pinned(what: &str, actual: &str, pins: &[(&str, &str)]) {
    let here = kernel_fingerprint();
    match pins.iter().find(|(kind, _)| *kind == here) {
        Some((_, expected)) => assert_eq!(actual, *expected, "{what} on {here}"),
        None if pins.iter().any(|(_, pinned)| *pinned == actual) => {
            println!("{what}: matches a pin recorded on another machine kind ({here})");
        }
        None => println!(
            "SKIPPED the pinned checksum of {what}: none is recorded for this machine kind \
             ({here}); its value here is {actual}"
        ),
    }
}
