//! Many processes at once, and writers killed with SIGKILL at random instants.
//!
//! The child processes are this test binary itself, re-run on one ignored test with an
//! environment variable saying what to do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use format::{Mode, RunStatus};
use serde_json::json;
use store::{list_all_runs, CheckpointManager, LoraCheckpoint, StoredTensor, TensorMap};

const ROLE: &str = "DIFFIT_STORE_TEST_ROLE";
const DIR: &str = "DIFFIT_STORE_TEST_DIR";

/// Re-runs this binary as a child on `child_process`, with `role`.
fn spawn_child(role: &str, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(ROLE, role)
        .env(DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn checkpoint(epoch: u32) -> LoraCheckpoint {
    let mut c = LoraCheckpoint::new(epoch, u64::from(epoch) * 7);
    // ~1.5 MB per file, so a kill often lands inside a write.
    for module in 0..6 {
        let t =
            StoredTensor::new(vec![64, 256], vec![epoch as f32 + module as f32; 64 * 256]).unwrap();
        c.lora
            .insert(format!("blocks.{module}.lora_A.weight"), t.clone());
        c.insert_moments(&format!("blocks.{module}.lora_A.weight"), t.clone(), t);
    }
    c.metrics.insert(
        "val_loss".into(),
        1.0 / f64::from(epoch) + f64::from(epoch % 3) * 0.1,
    );
    c.rng = json!({"epoch": epoch});
    c
}

/// What a child does, chosen by the parent through the environment.
#[test]
#[ignore = "run only as a child process of the tests below"]
fn child_process() {
    let (Ok(role), Ok(dir)) = (std::env::var(ROLE), std::env::var(DIR)) else {
        return;
    };
    let dir = PathBuf::from(dir);
    match role.as_str() {
        "create" => {
            for _ in 0..4 {
                let run = CheckpointManager::create(&dir, "concurrent").unwrap();
                println!("RUN {}", run.run_number());
            }
        }
        "train-forever" => {
            let mut run = CheckpointManager::open_or_create(&dir, "crash", Some(1)).unwrap();
            run.set_status(RunStatus::Running).unwrap();
            if !run.has_base_model() {
                let mut base = TensorMap::new();
                base.insert(
                    "w".into(),
                    StoredTensor::new(vec![256, 256], vec![1.0; 256 * 256]).unwrap(),
                );
                run.save_base_model(&base, &json!({"d": 1})).unwrap();
            }
            let mut epoch = run
                .load_for_resume()
                .unwrap()
                .map_or(0, |r| r.checkpoint.epoch);
            loop {
                epoch += 1;
                run.save_lora_weights(&checkpoint(epoch), "val_loss", Mode::Min)
                    .unwrap();
                run.cleanup_old_checkpoints(3, true).unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn concurrent_creators_get_distinct_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<Child> = (0..12).map(|_| spawn_child("create", dir.path())).collect();
    let mut numbers = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        numbers.extend(
            stdout
                .lines()
                .filter_map(|l| l.strip_prefix("RUN "))
                .map(|n| n.parse::<u32>().unwrap()),
        );
    }
    assert_eq!(numbers.len(), 48);
    numbers.sort_unstable();
    let expected: Vec<u32> = (1..=48).collect();
    assert_eq!(numbers, expected, "distinct and without gaps");
    let runs = list_all_runs(dir.path()).unwrap();
    assert_eq!(runs.len(), 48);
    assert!(runs.iter().all(|r| r
        .info
        .as_ref()
        .is_ok_and(|i| i.experiment_name == "concurrent" && !i.writer_active)));
}

/// A tiny xorshift: the kill instants only need to vary, not to be good random numbers.
struct Jitter(u64);

impl Jitter {
    fn next_millis(&mut self, max: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % max
    }
}

#[cfg(unix)]
#[test]
fn sigkill_at_random_instants_leaves_a_run_that_opens_verifies_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut jitter = Jitter(seed | 1);
    println!("kill schedule seed {seed}");
    let mut last_epoch = 0;
    let kills = 30;
    for round in 0..kills {
        let mut child = spawn_child("train-forever", dir.path());
        let wait = Duration::from_millis(jitter.next_millis(120));
        let start = Instant::now();
        while start.elapsed() < wait {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "writer exited by itself ({status}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();

        if !dir.path().join("run_001").exists() {
            continue; // killed before the run was created: nothing to check yet
        }
        // The dead writer's lock is gone: a new writer opens at once, cleaning up after it.
        let run =
            CheckpointManager::open(dir.path(), 1).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let report = run.verify();
        assert!(report.is_ok(), "round {round}: {:?}", report.damaged);
        match run
            .load_for_resume()
            .unwrap_or_else(|e| panic!("round {round}: {e}"))
        {
            Some(resume) => {
                assert!(
                    resume.skipped.is_empty(),
                    "round {round}: {:?}",
                    resume.skipped
                );
                assert!(
                    resume.checkpoint.epoch >= last_epoch,
                    "round {round}: went back in time"
                );
                last_epoch = resume.checkpoint.epoch;
                assert_eq!(resume.checkpoint.rng, json!({"epoch": last_epoch}));
            }
            None => assert_eq!(last_epoch, 0),
        }
        let leftovers: Vec<_> = std::fs::read_dir(run.layout().lora_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
    }
    println!("{kills} kills, resumed up to epoch {last_epoch}");
    assert!(
        last_epoch > 0,
        "no epoch was ever saved: the writer is too slow for the kill schedule"
    );
    let runs = list_all_runs(dir.path()).unwrap();
    assert_eq!(runs.len(), 1, "staging leftovers are never listed as runs");
}
