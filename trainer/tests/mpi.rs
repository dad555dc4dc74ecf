//! `mpirun -n 2 diffit train …` on this machine (real OpenMPI over loopback, `--oversubscribe`):
//! the job's run is bit for bit the run of one process with the same shard count, and faults
//! end the job in bounded time with the last committed checkpoint valid and resumable.
//!
//! - kill -9 of rank 1 after epoch 1: the launcher ends the job; resumed under `mpirun`, the run
//!   ends bit-identical to the uninterrupted one-process run and verifies.
//! - kill -9 of rank 0 (the writer) after epoch 1: the same, resumed as one process.
//! - rank 1 stopped (SIGSTOP, it no longer answers): rank 0's watchdog ends the job after
//!   `DIFFIT_COLLECTIVE_TIMEOUT` with a message that says so.
//! - another command than `train` on two ranks is refused.
#![cfg(feature = "mpi")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{committed_epoch, fixture_base, ok, text};

const EPOCHS: &str = "3";

/// The flags of every run here: the tiny fixture base, 3 epochs, 2 shards per step in all.
fn train_args(checkpoints: &Path) -> Vec<String> {
    [
        "train",
        "--preset",
        "tiny",
        "--base",
        fixture_base().to_str().unwrap(),
        "--epochs",
        EPOCHS,
        "--batch-size",
        "8",
        "--data-shards",
        "2",
        "--checkpoints",
        checkpoints.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `mpirun -n 2 diffit args…`, not started (root may run it; ranks may share the cores).
fn mpirun(args: &[String]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-n", "2"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .arg(env!("CARGO_BIN_EXE_diffit"))
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Each epoch's checkpoint checksum in the run's metadata, in epoch order.
fn checksums(checkpoints: &Path) -> Vec<(u32, Option<String>)> {
    let bytes = std::fs::read(checkpoints.join("run_001/metadata.json")).unwrap();
    let meta: format::Metadata = serde_json::from_slice(&bytes).unwrap();
    let mut all: Vec<(u32, Option<String>)> = meta
        .checkpoints
        .iter()
        .map(|c| (c.epoch, c.checksum.clone()))
        .collect();
    all.sort();
    all
}

/// The uninterrupted run of one process with 2 shards: what every job here must end as.
fn one_process_run(dir: &Path) -> Vec<(u32, Option<String>)> {
    let checkpoints = dir.join("one");
    ok(Command::new(env!("CARGO_BIN_EXE_diffit"))
        .args(train_args(&checkpoints))
        .stdin(Stdio::null())
        .output()
        .unwrap());
    let sums = checksums(&checkpoints);
    assert_eq!(sums.len(), 3, "{sums:?}");
    sums
}

/// The pid of rank `rank` of the job `mpirun` (its child whose environment names the rank).
fn rank_pid(mpirun: &Child, rank: u32) -> u32 {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let started = Instant::now();
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may hold spaces, so read after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid != Some(mpirun.id()) {
                continue;
            }
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if environ.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
                return pid;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no rank {rank}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts the job, waits for epoch 1's commit, sends `signal` to rank `rank`, and returns what
/// the job printed once it ended, asserting that it failed and ended within a minute.
fn fault_after_epoch_1(cmd: &mut Command, checkpoints: &Path, rank: u32, signal: &str) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = rank_pid(&child, rank);
    let metadata = checkpoints.join("run_001/metadata.json");
    let started = Instant::now();
    while committed_epoch(&metadata) < 1 {
        assert!(child.try_wait().unwrap().is_none(), "the job ended early");
        assert!(started.elapsed() < Duration::from_secs(300), "no epoch 1");
        std::thread::sleep(Duration::from_millis(2));
    }
    let sent = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let faulted = Instant::now();
    let limit = Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if faulted.elapsed() > limit {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .status();
            let _ = child.kill();
            panic!("the job did not end within {limit:?} of the fault");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "rank {rank} got SIG{signal}; the job ended {:.2} s later",
        faulted.elapsed().as_secs_f64()
    );
    let out: Output = child.wait_with_output().unwrap();
    let printed = text(&out);
    assert!(
        !out.status.success(),
        "the job succeeded after a fault:\n{printed}"
    );
    assert!(
        committed_epoch(&metadata) < 3,
        "the job finished before the fault"
    );
    printed
}

/// The run is valid: every file its metadata names checks out.
fn verify(checkpoints: &Path) {
    ok(Command::new(env!("CARGO_BIN_EXE_diffit"))
        .args(["verify", "--run-number", "1", "--checkpoints"])
        .arg(checkpoints)
        .output()
        .unwrap());
}

fn resume_args(checkpoints: &Path) -> Vec<String> {
    let mut args = train_args(checkpoints);
    args.extend(["--run-number".into(), "1".into(), "--resume".into()]);
    args
}

#[test]
fn kill_9_of_a_follower_ends_the_job_and_the_resumed_job_matches_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let expected = one_process_run(dir.path());

    // Uninterrupted, the job's files are the one process's, bit for bit.
    let whole = dir.path().join("whole");
    let out = mpirun(&train_args(&whole)).output().unwrap();
    let printed = ok(out);
    assert!(printed.contains("training on 2 ranks (MPI)"), "{printed}");
    assert_eq!(checksums(&whole), expected);

    let killed = dir.path().join("killed");
    fault_after_epoch_1(&mut mpirun(&train_args(&killed)), &killed, 1, "KILL");
    let resumed = ok(mpirun(&resume_args(&killed)).output().unwrap());
    assert!(resumed.contains("resumed after epoch"), "{resumed}");
    assert_eq!(checksums(&killed), expected);
    verify(&killed);
}

#[test]
fn kill_9_of_the_writer_ends_the_job_and_one_process_resumes_it_identically() {
    let dir = tempfile::tempdir().unwrap();
    let expected = one_process_run(dir.path());
    let killed = dir.path().join("killed");
    // Killed at any instant, even between epoch 1's metadata commit and its best/last links
    // (which the next writer re-points): the resume continues from the committed epoch.
    fault_after_epoch_1(&mut mpirun(&train_args(&killed)), &killed, 0, "KILL");
    // The same shard count on another number of processes continues the same run.
    ok(Command::new(env!("CARGO_BIN_EXE_diffit"))
        .args(resume_args(&killed))
        .stdin(Stdio::null())
        .output()
        .unwrap());
    assert_eq!(checksums(&killed), expected);
    verify(&killed);
}

#[test]
fn a_rank_that_stops_answering_times_the_job_out() {
    let dir = tempfile::tempdir().unwrap();
    let stuck = dir.path().join("stuck");
    let mut cmd = mpirun(&train_args(&stuck));
    cmd.env("DIFFIT_COLLECTIVE_TIMEOUT", "3");
    let printed = fault_after_epoch_1(&mut cmd, &stuck, 1, "STOP");
    assert!(
        printed.contains("no answer from the other ranks within 3 s"),
        "{printed}"
    );
    verify(&stuck);
}

#[test]
fn other_commands_refuse_to_run_on_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let out = mpirun(&[
        "runs".into(),
        "list".into(),
        "--checkpoints".into(),
        dir.path().display().to_string(),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("only `diffit train` runs on several processes"),
        "{}",
        text(&out)
    );
}
