//! `diffit-server --checkpoints s3://…` against a real S3-compatible server (moto, from the test
//! venv, on 127.0.0.1): runs the trainer wrote into the bucket are listed with their status,
//! their files are served byte for byte (with Range and the LoRA-only view), and a run that
//! appears in the bucket later shows up without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;
// The server tests' raw HTTP client.
#[path = "../server/tests/support/mod.rs"]
mod http;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, workspace_binaries, ProcessGuard, Server};

/// The venv `make test` makes, with moto's server; `None` (said loudly) without it.
fn moto_server() -> Option<PathBuf> {
    let bin = support::workspace_root().join(".venv/bin/moto_server");
    if !bin.exists() {
        eprintln!(
            "\n!!! SKIPPED: {} is absent (run `make test`)\n",
            bin.display()
        );
        return None;
    }
    Some(bin)
}

fn fixture_base() -> PathBuf {
    support::workspace_root()
        .join("tests/fixtures/main-36b41c4/checkpoints/run_001/base_model/base_model.safetensors")
}

fn train_into(diffit: &Path, url: &str, staging: &Path, epochs: &str) {
    let out = Command::new(diffit)
        .args(["train", "--preset", "tiny", "--base"])
        .arg(fixture_base())
        .args(["--epochs", epochs, "--checkpoints", url, "--staging"])
        .arg(staging)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn addr(server: &Server) -> SocketAddr {
    server.url.trim_start_matches("http://").parse().unwrap()
}

#[test]
fn serves_the_runs_of_a_bucket() {
    let Some(moto) = moto_server() else {
        return;
    };
    let port = free_port();
    let mut command = Command::new(moto);
    command
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _moto = ProcessGuard::spawn("moto_server", command);
    let endpoint = format!("http://127.0.0.1:{port}");
    // The AWS environment of every process this test starts.
    for (key, value) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ] {
        std::env::set_var(key, value);
    }
    std::env::remove_var("AWS_PROFILE");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Command::new("curl")
        .args(["-sf", "-X", "PUT", &format!("{endpoint}/runs")])
        .stdout(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }

    let (diffit, server_bin) = workspace_binaries();
    let dir = tempfile::tempdir().unwrap();
    let url = "s3://runs/served";
    train_into(&diffit, url, &dir.path().join("staging"), "2");

    let cache = dir.path().join("cache");
    let server = Server::start_with_args(
        &server_bin,
        Path::new(url),
        &["--cache", cache.to_str().unwrap(), "--bucket-poll", "0.3"],
    );
    let at = addr(&server);
    let list = http::get(at, "/api/runs", &[]);
    assert_eq!(list.status, 200);
    let runs = list.json()["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "finished");

    // The bucket's bytes, whole and by range, and the LoRA-only view.
    let bucket = remote::Bucket::open(&url::Url::parse(url).unwrap()).unwrap();
    let (best, _) = bucket
        .get("run_001/lora_weights/best.safetensors")
        .unwrap()
        .unwrap();
    let whole = http::get(at, "/api/runs/1/checkpoints/best", &[]);
    assert_eq!(whole.status, 200);
    assert!(
        whole.body == best.to_vec(),
        "best differs from the bucket's"
    );
    let part = http::get(
        at,
        "/api/runs/1/checkpoints/best",
        &[("Range", "bytes=8-99")],
    );
    assert_eq!(part.status, 206);
    assert!(part.body == best[8..100].to_vec());
    let lora = http::get(at, "/api/runs/1/checkpoints/best?weights_only=true", &[]);
    assert_eq!(lora.status, 200);
    let view = safetensors::SafeTensors::deserialize(&lora.body).unwrap();
    assert!(view
        .names()
        .iter()
        .all(|n| format::tensors::is_lora_tensor(n)));

    // A run written into the bucket now appears without a restart.
    train_into(&diffit, url, &dir.path().join("staging-2"), "1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = http::get(at, "/api/runs", &[]).json()["runs"]
            .as_array()
            .unwrap()
            .len();
        if runs == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run 2 did not appear: {}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
