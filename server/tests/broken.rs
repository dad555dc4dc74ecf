//! Broken runs: malformed or missing metadata, a truncated or garbled checkpoint. Each gives a
//! clear JSON error; the list still lists every run; the server keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

mod support;

use format::{CheckpointName, RunStatus};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_runs_give_clear_errors_and_never_break_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    write_run(base, 1, 2, RunStatus::Finished);
    // 2: metadata is not JSON.
    let bad_json = write_run(base, 2, 1, RunStatus::Finished);
    std::fs::write(bad_json.metadata(), "{\"run_number\": 2, \"experi").unwrap();
    // 3: metadata is JSON but not run metadata.
    let wrong_shape = write_run(base, 3, 1, RunStatus::Finished);
    std::fs::write(wrong_shape.metadata(), "[1, 2, 3]").unwrap();
    // 4: metadata claims another run.
    let mismatched = write_run(base, 4, 1, RunStatus::Finished);
    let mut meta = read_meta(&mismatched);
    meta.run_number = 40;
    write_meta(&mismatched, &meta);
    // 5: fine metadata, but a truncated checkpoint, a garbled one and an empty one.
    let damaged = write_run(base, 5, 3, RunStatus::Finished);
    let full = std::fs::read(damaged.checkpoint(CheckpointName::Epoch(1))).unwrap();
    std::fs::write(
        damaged.checkpoint(CheckpointName::Epoch(1)),
        &full[..full.len() - 100],
    )
    .unwrap();
    std::fs::write(
        damaged.checkpoint(CheckpointName::Epoch(2)),
        b"\xff\xff\xff\xff\xff\xff\xff\xffnot a header",
    )
    .unwrap();
    std::fs::write(damaged.checkpoint(CheckpointName::Epoch(3)), b"").unwrap();
    std::fs::write(
        damaged.checkpoint(CheckpointName::Last),
        [40u8, 0, 0, 0, 0, 0, 0, 0, b'{'],
    )
    .unwrap();
    // 6: a config.json that is not JSON.
    let bad_config = write_run(base, 6, 1, RunStatus::Finished);
    std::fs::write(bad_config.config(), "epochs: 3").unwrap();

    let server = start(base, base).await;
    let addr = server.addr;

    let list = blocking(move || get(addr, "/api/runs", &[])).await;
    assert_eq!(list.status, 200);
    let runs = list.json()["runs"].as_array().unwrap().clone();
    let status: Vec<(u64, &str)> = runs
        .iter()
        .map(|r| {
            (
                r["run_number"].as_u64().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        status,
        vec![
            (1, "finished"),
            (2, "broken"),
            (3, "broken"),
            (4, "broken"),
            (5, "finished"),
            (6, "finished")
        ]
    );
    assert!(
        runs[1]["error"]
            .as_str()
            .unwrap()
            .contains("cannot parse run_002/metadata.json"),
        "{}",
        runs[1]
    );
    assert!(
        runs[3]["error"]
            .as_str()
            .unwrap()
            .contains("run_number is 40"),
        "{}",
        runs[3]
    );

    let cases = [
        (
            "/api/runs/2",
            500,
            "metadata.json is not valid run metadata",
        ),
        (
            "/api/runs/2/metrics",
            500,
            "metadata.json is not valid run metadata",
        ),
        ("/api/runs/3", 500, "not valid run metadata"),
        ("/api/runs/6", 500, "config.json is not valid JSON"),
        ("/api/runs/5/checkpoints/epoch_001", 500, "truncated"),
        (
            "/api/runs/5/checkpoints/epoch_001?weights_only=true",
            500,
            "truncated",
        ),
        (
            "/api/runs/5/checkpoints/epoch_002",
            500,
            "not a valid safetensors file",
        ),
        ("/api/runs/5/checkpoints/epoch_003", 500, "truncated"),
        ("/api/runs/5/checkpoints/last", 500, "truncated"),
    ];
    for (target, status, message) in cases {
        let response = blocking(move || get(addr, target, &[])).await;
        assert_eq!(response.status, status, "{target}");
        let error = response.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(message), "{target}: {error}");
        assert!(
            !error.contains(base.to_str().unwrap()),
            "{target}: error leaks the absolute path: {error}"
        );
    }
    // Still serving.
    let ok = blocking(move || get(addr, "/api/runs/1/checkpoints/epoch_002", &[])).await;
    assert_eq!(ok.status, 200);
}
