//! MLflow tracking against a real `mlflow server` (from the test venv, on 127.0.0.1 with a
//! temporary SQLite store), read back through MLflow's own Python client: params, every metric
//! history, tags and status; a resume continues the same MLflow run; a tracking server that
//! dies mid-run neither stops nor damages training, and the warning says what was not logged.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use format::Metadata;
use serde_json::Value;
use support::{fixture_base, kill_process_group, ok, text, venv_bin, verify_run_1};

/// A tracking server for one test, stopped (with its workers) when dropped.
struct MlflowServer {
    child: Child,
    uri: String,
    _dir: tempfile::TempDir,
}

impl MlflowServer {
    fn start(bin: &Path) -> MlflowServer {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(bin.join("mlflow"))
            .args(["server", "--host", "127.0.0.1", "--workers", "1"])
            .args(["--port", &port.to_string()])
            .arg("--backend-store-uri")
            .arg(format!(
                "sqlite:///{}",
                dir.path().join("mlflow.db").display()
            ))
            .arg("--default-artifact-root")
            .arg(dir.path().join("artifacts"))
            // No background job runner (a dozen worker processes): tracking needs none.
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let server = MlflowServer {
            child,
            uri: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        while !server.healthy() {
            assert!(
                Instant::now() < deadline,
                "mlflow server did not start; its log:\n{}",
                std::fs::read_to_string(server._dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        server
    }

    fn healthy(&self) -> bool {
        let Some(addr) = self.uri.strip_prefix("http://") else {
            return false;
        };
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        use std::io::{Read, Write};
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200")
    }

    /// Kills the server and every worker it started.
    fn stop(&mut self) {
        kill_process_group(&mut self.child);
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What MLflow's own client reads back about every run of `experiment`.
fn read_back(bin: &Path, uri: &str, experiment: &str) -> Value {
    let script = r#"
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1])
exp = client.get_experiment_by_name(sys.argv[2])
out = []
for run in client.search_runs([exp.experiment_id]):
    metrics = {}
    for key in run.data.metrics:
        history = client.get_metric_history(run.info.run_id, key)
        metrics[key] = sorted([m.step, m.value] for m in history)
    out.append({"run_id": run.info.run_id, "name": run.info.run_name,
                "status": run.info.status, "params": run.data.params,
                "tags": run.data.tags, "metrics": metrics})
print(json.dumps(out))
"#;
    let out = Command::new(bin.join("python"))
        .args(["-c", script, uri, experiment])
        .output()
        .unwrap();
    assert!(out.status.success(), "MlflowClient: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn diffit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffit"))
        .args(args)
        .env_remove("MLFLOW_TRACKING_URI")
        .output()
        .unwrap()
}

/// Runs `diffit args…`, reading what it prints on stderr line by line; once a line starts with
/// `prefix`, `act` runs with the process id. Returns all it printed and how it ended.
fn diffit_until(args: &[&str], prefix: &str, act: impl FnOnce(u32)) -> (String, ExitStatus) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_diffit"))
        .args(args)
        .env_remove("MLFLOW_TRACKING_URI")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    let mut act = Some(act);
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if line.starts_with(prefix) {
            if let Some(act) = act.take() {
                act(child.id());
            }
        }
        said.push_str(&line);
        line.clear();
    }
    let status = child.wait().unwrap();
    assert!(act.is_none(), "no line {prefix:?} in:\n{said}");
    (said, status)
}

fn metadata(checkpoints: &Path) -> Metadata {
    serde_json::from_slice(&std::fs::read(checkpoints.join("run_001/metadata.json")).unwrap())
        .unwrap()
}

#[test]
fn a_run_and_its_resume_are_one_mlflow_run_with_every_param_metric_and_tag() {
    let Some(bin) = venv_bin("mlflow") else {
        return;
    };
    let server = MlflowServer::start(&bin);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("checkpoints");
    let c = ck.to_str().unwrap();
    let b = fixture_base();
    // Ctrl-C during epoch 2: our run is interrupted, the MLflow run KILLED.
    let (said, status) = diffit_until(
        &[
            "train",
            "--preset",
            "tiny",
            "--base",
            b.to_str().unwrap(),
            "--epochs",
            "2",
            "--checkpoints",
            c,
            "--mlflow-uri",
            &server.uri,
        ],
        "epoch 1/2",
        |pid| {
            let _ = Command::new("kill")
                .args(["-s", "INT", &pid.to_string()])
                .status();
        },
    );
    assert_eq!(status.code(), Some(130), "{said}");
    let first_link = metadata(&ck).mlflow.expect("the MLflow run is recorded");
    let runs = read_back(&bin, &server.uri, "diffit_lora_trees");
    assert_eq!(runs[0]["status"], "KILLED", "{runs}");
    assert_eq!(runs[0]["tags"]["diffit.status"], "interrupted");

    let resumed = ok(diffit(&[
        "train",
        "--resume",
        "--run-number",
        "1",
        "--epochs",
        "3",
        "--checkpoints",
        c,
        "--mlflow-uri",
        &server.uri,
    ]));
    // "resumed after epoch 1 (step N)": the steps per epoch, for the step metrics below.
    let steps_per_epoch: u64 = resumed
        .split("resumed after epoch 1 (step ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line in:\n{resumed}"));
    let total_steps = steps_per_epoch * 3;

    let meta = metadata(&ck);
    assert_eq!(
        meta.mlflow.as_ref(),
        Some(&first_link),
        "resume keeps the MLflow run"
    );
    let runs = read_back(&bin, &server.uri, "diffit_lora_trees");
    let runs = runs.as_array().unwrap();
    assert_eq!(
        runs.len(),
        1,
        "one MLflow run for the run and its resume: {runs:?}"
    );
    let run = &runs[0];
    assert_eq!(run["run_id"], first_link.run_id.as_str());
    assert_eq!(run["name"], "run_001");
    assert_eq!(run["status"], "FINISHED");

    // Params: the configs, flattened (as first logged); a setting changed on resume is a tag.
    let params = &run["params"];
    assert_eq!(params["training.epochs"], "2");
    assert_eq!(params["training.batch_size"], "16");
    assert_eq!(params["lora.r"], meta.lora_config["r"].to_string());
    assert!(params["model.depth"].is_string(), "{params}");
    let tags = &run["tags"];
    assert_eq!(tags["resumed_with.training.epochs"], "3");

    // Metrics: every epoch's at step = epoch, equal to what metadata records.
    let metrics = &run["metrics"];
    for key in ["val_loss", "train_loss", "lr"] {
        let history: Vec<(u32, f64)> = meta
            .metric_history
            .iter()
            .map(|h| (h.epoch, h.metrics[key]))
            .collect();
        let logged: Vec<(u32, f64)> = metrics[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap()))
            .collect();
        assert_eq!(logged, history, "{key}");
    }
    assert_eq!(
        metrics["base_val_loss"][0][1].as_f64(),
        meta.base_metrics.get("val_loss").copied()
    );
    // Per-step metrics every log_every_n_steps (10) steps, over both fits.
    // (The steps of the epoch Ctrl-C cut short were logged, then trained again on resume.)
    let steps = |key: &str| {
        let mut steps: Vec<u64> = metrics[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_u64().unwrap())
            .collect();
        steps.dedup();
        steps
    };
    let expected: Vec<u64> = (1..=total_steps / 10).map(|k| k * 10).collect();
    assert_eq!(steps("train_loss_step"), expected);
    assert_eq!(steps("lr_step"), expected);

    // Tags: who we are, and the best checkpoint at the end.
    assert_eq!(tags["diffit.run_number"], "1");
    assert_eq!(tags["diffit.status"], "finished");
    let best = meta.best_checkpoint.as_ref().unwrap();
    assert_eq!(tags["best.epoch"], best.epoch.to_string());
    let record = meta.checkpoint(best.epoch).unwrap();
    assert_eq!(tags["best.checksum"], record.checksum.as_deref().unwrap());
    assert!(
        tags["best.path"]
            .as_str()
            .unwrap()
            .ends_with("run_001/lora_weights/best.safetensors"),
        "{tags}"
    );
    assert_eq!(tags["best.val_loss"], best.metrics["val_loss"].to_string());

    // A run that fails (an absurd learning rate diverges) ends FAILED.
    let out = diffit(&[
        "train",
        "--preset",
        "tiny",
        "--base",
        b.to_str().unwrap(),
        "--epochs",
        "1",
        "--learning-rate",
        "1e12",
        "--checkpoints",
        c,
        "--mlflow-uri",
        &server.uri,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let runs = read_back(&bin, &server.uri, "diffit_lora_trees");
    let failed = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "run_002")
        .unwrap_or_else(|| panic!("no run_002 in {runs}"));
    assert_eq!(failed["status"], "FAILED");
    assert_eq!(failed["tags"]["diffit.status"], "failed");
}

#[test]
fn a_tracking_server_that_dies_mid_run_neither_stops_nor_damages_training() {
    let Some(bin) = venv_bin("mlflow") else {
        return;
    };
    let mut server = MlflowServer::start(&bin);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("checkpoints");
    let b = fixture_base();
    let (said, status) = diffit_until(
        &[
            "train",
            "--preset",
            "tiny",
            "--base",
            b.to_str().unwrap(),
            "--epochs",
            "4",
            "--checkpoints",
            ck.to_str().unwrap(),
            "--mlflow-uri",
            &server.uri.clone(),
        ],
        "epoch 1/4",
        |_| server.stop(),
    );
    assert!(status.success(), "training must go on:\n{said}");
    assert!(said.contains("epoch 4/4"), "{said}");
    let warning = said
        .lines()
        .find(|l| l.contains("not logged:"))
        .unwrap_or_else(|| panic!("no report of what was not logged:\n{said}"));
    assert!(
        warning.contains("metric values") && warning.contains("the run's final status"),
        "{warning}"
    );
    let meta = metadata(&ck);
    assert_eq!(meta.status, format::RunStatus::Finished);
    assert_eq!(meta.live_checkpoints().count(), 4);
    assert!(
        meta.mlflow.is_some(),
        "the MLflow run created before the server died"
    );
    verify_run_1(ck.to_str().unwrap());
}
