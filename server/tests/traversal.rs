//! Path traversal corpus, sent as raw request lines so no client normalises them: every attempt
//! gets a 4xx and never the content of a file outside the checkpoints dir (or the app dir);
//! symlinks pointing out of the checkpoints dir are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

mod support;

use format::{CheckpointName, RunStatus};
use support::*;

const SECRET: &str = "TOP-SECRET-5c1f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_attempts_get_4xx_and_no_secret() {
    let outer = tempfile::tempdir().unwrap();
    let checkpoints = outer.path().join("checkpoints");
    let site = outer.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "<!doctype html>app").unwrap();
    std::fs::write(outer.path().join("secret.txt"), SECRET).unwrap();
    std::fs::write(outer.path().join("secret.safetensors"), SECRET).unwrap();
    write_run(&checkpoints, 1, 1, RunStatus::Finished);
    let server = start(&checkpoints, &site).await;
    let addr = server.addr;

    let corpus = [
        "/../secret.txt",
        "/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "/..\\secret.txt",
        "/%252e%252e/secret.txt",
        "/%252e%252e%252fsecret.txt",
        "/%c0%ae%c0%ae/secret.txt",
        "/./../secret.txt",
        "//../secret.txt",
        "/site/../secret.txt",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api/../secret.txt",
        "/api/runs/../../secret.txt",
        "/api/runs/1/checkpoints/../../../secret.txt",
        "/api/runs/1/checkpoints/..%2f..%2f..%2fsecret.safetensors",
        "/api/runs/1/checkpoints/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret",
        "/api/runs/1/checkpoints/..%5c..%5c..%5csecret",
        "/api/runs/1/checkpoints/..\\..\\..\\secret",
        "/api/runs/1/checkpoints/%252e%252e%252fsecret",
        "/api/runs/1/checkpoints/epoch_001%2f..%2f..%2fmetadata.json",
        "/api/runs/1/checkpoints/epoch_001%00",
        "/api/runs/1/checkpoints/epoch_001.safetensors",
        "/api/runs/1/checkpoints/%65poch_001/..",
        "/api/runs/..%2f..%2fsecret/checkpoints/last",
        "/api/runs/1%2f..%2f../checkpoints/last",
        "/api/runs/-1/checkpoints/last",
        "/api/runs/01/checkpoints/last",
        "/api/runs/1.0/checkpoints/last",
        "/api/runs/4294967296/checkpoints/last",
        "/api/runs/%31%2f%2e%2e/metrics",
        "/api/runs/1/checkpoints/last/",
        "/api/runs/1/checkpoints/last/..",
        "/api/runs/1/metrics/../../../../secret.txt",
    ];
    for target in corpus {
        let response = blocking(move || get(addr, target, &[])).await;
        assert!(
            (400..500).contains(&response.status),
            "{target}: status {}",
            response.status
        );
        let body = String::from_utf8_lossy(&response.body);
        assert!(!body.contains(SECRET), "{target}: leaked {body}");
    }
    // Request lines that are not origin-form paths at all.
    for line in [
        "GET ../secret.txt HTTP/1.1",
        "GET %2e%2e/secret.txt HTTP/1.1",
        "GET \\..\\secret.txt HTTP/1.1",
    ] {
        let request = format!("{line}\r\nHost: x\r\nConnection: close\r\n\r\n");
        let response = blocking(move || raw(addr, request.as_bytes())).await;
        assert!(
            (400..500).contains(&response.status),
            "{line}: status {}",
            response.status
        );
        assert!(
            !String::from_utf8_lossy(&response.body).contains(SECRET),
            "{line}"
        );
    }
    // The legitimate file is still served.
    let ok = blocking(move || get(addr, "/api/runs/1/checkpoints/epoch_001", &[])).await;
    assert_eq!(ok.status, 200);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_out_of_the_checkpoints_dir_are_refused() {
    let outer = tempfile::tempdir().unwrap();
    let checkpoints = outer.path().join("checkpoints");
    let elsewhere = outer.path().join("elsewhere");
    // A complete run outside, and a secret file shaped like a checkpoint.
    let outside = write_run(&elsewhere, 5, 1, RunStatus::Finished);
    let inside = write_run(&checkpoints, 1, 1, RunStatus::Finished);
    std::fs::write(outer.path().join("secret.txt"), SECRET).unwrap();
    // run_005 inside is a symlink to the run outside.
    std::os::unix::fs::symlink(outside.root(), checkpoints.join("run_005")).unwrap();
    // run_001's best is a symlink to the secret.
    let best = inside.checkpoint(CheckpointName::Best);
    std::fs::remove_file(&best).unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.txt"), &best).unwrap();
    // run_001's config is a symlink out too.
    std::fs::remove_file(inside.config()).unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.txt"), inside.config()).unwrap();
    // A symlink inside the dir pointing inside is fine.
    let last = inside.checkpoint(CheckpointName::Last);
    std::fs::remove_file(&last).unwrap();
    std::os::unix::fs::symlink(inside.checkpoint(CheckpointName::Epoch(1)), &last).unwrap();

    let server = start(&checkpoints, outer.path()).await;
    let addr = server.addr;
    for target in [
        "/api/runs/1/checkpoints/best",
        "/api/runs/1/checkpoints/best?weights_only=true",
        "/api/runs/5/checkpoints/epoch_001",
        "/api/runs/5",
        "/api/runs/5/metrics",
        "/api/runs/1",
    ] {
        let response = blocking(move || get(addr, target, &[])).await;
        assert_eq!(
            response.status,
            403,
            "{target}: {}",
            String::from_utf8_lossy(&response.body)
        );
        assert!(
            !String::from_utf8_lossy(&response.body).contains(SECRET),
            "{target}"
        );
        assert!(
            response.json()["error"]
                .as_str()
                .unwrap()
                .contains("outside the checkpoints dir"),
            "{target}"
        );
    }
    let ok = blocking(move || get(addr, "/api/runs/1/checkpoints/last", &[])).await;
    assert_eq!(ok.status, 200);
    let list = blocking(move || get(addr, "/api/runs", &[])).await.json();
    let run5 = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_number"] == 5)
        .unwrap()
        .clone();
    assert_eq!(run5["status"], "broken", "{run5}");
}
