//! The API over a run written by main at 36b41c4, before the crate split
//! (`tests/fixtures/main-36b41c4`): it is listed as finished, its detail and metrics are
//! served, and its files are served byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::path::Path;

use format::api::{RunDetail, RunList, RunMetrics, RunState};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_run_written_before_the_crate_split() {
    let checkpoints =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/main-36b41c4/checkpoints");
    let dir = tempfile::tempdir().unwrap();
    let server = start(&checkpoints, &dir.path().join("no-app")).await;

    let list = blocking(move || get(server.addr, "/api/runs", &[])).await;
    assert_eq!(list.status, 200);
    let list: RunList = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(list.runs.len(), 1);
    let run = &list.runs[0];
    assert_eq!(run.status, RunState::Finished, "{run:?}");
    let info = run.info.as_ref().unwrap();
    assert_eq!(info.best.as_ref().map(|b| b.epoch), Some(3));
    assert_eq!(info.checkpoints_count, 2);

    let detail = blocking(move || get(server.addr, "/api/runs/1", &[])).await;
    assert_eq!(detail.status, 200);
    let detail: RunDetail = serde_json::from_slice(&detail.body).unwrap();
    assert_eq!(detail.metadata.checkpoints.len(), 3);
    assert!(detail.config.is_some());
    let metrics = blocking(move || get(server.addr, "/api/runs/1/metrics", &[])).await;
    let metrics: RunMetrics = serde_json::from_slice(&metrics.body).unwrap();
    assert_eq!(metrics.series.len(), 3);

    for name in ["base", "best", "last", "epoch_002"] {
        let path = format!("/api/runs/1/checkpoints/{name}");
        let response = blocking(move || get(server.addr, &path, &[])).await;
        assert_eq!(response.status, 200, "{name}");
        let file = match name {
            "base" => checkpoints.join("run_001/base_model/base_model.safetensors"),
            other => checkpoints.join(format!("run_001/lora_weights/{other}.safetensors")),
        };
        assert_eq!(response.body, std::fs::read(file).unwrap(), "{name}");
    }
}
