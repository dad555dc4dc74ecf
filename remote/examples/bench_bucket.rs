//! Runs in a bucket, measured against the same runs on a disk (`make bench`, with an
//! S3-compatible server on loopback; the AWS environment points at it):
//!
//! 1. listing: `remote::list_runs` over RUNS runs in the bucket (with its run index, and with
//!    the index removed, reading every run's metadata) vs `store::list_all_runs` over the same
//!    runs on disk (BENCH_ROUNDS alternating rounds, default 5: medians and per-round pairs);
//! 2. bytes: the checkpoints dir given (3 runs × 10 epochs written by `bench_disk`) synced into
//!    the bucket, the bucket's object bytes vs the disk's allocated bytes.
//!
//! Prints `BENCH {json}` lines; asserts nothing.
//!
//! `cargo run --release -p remote --example bench_bucket -- s3://runs/bench [CHECKPOINTS] [RUNS]`
#![allow(clippy::unwrap_used, clippy::expect_used)] // Benchmarks fail loudly.

use std::path::Path;
use std::time::Instant;

use format::layout::{run_dir_name, METADATA_FILE};
use format::Metadata;
use remote::{Bucket, Location};

/// Times one call of `f`, which must return `expect` runs.
fn time_ms(f: impl FnOnce() -> usize, expect: usize) -> f64 {
    let t = Instant::now();
    assert_eq!(f(), expect);
    t.elapsed().as_secs_f64() * 1e3
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = url::Url::parse(args.get(1).map_or("s3://runs/bench/", String::as_str)).unwrap();
    let runs: u32 = args.get(3).map_or(1000, |n| n.parse().unwrap());
    let listing = url.join("listing/").unwrap();
    let bucket = Bucket::open(&listing).unwrap();
    let disk = tempfile::tempdir().unwrap();

    // RUNS runs with a few epochs' metadata each, on disk, synced into the bucket (which keeps
    // the run index as every writer does).
    for n in 1..=runs {
        let mut meta = Metadata::new(n, "bench", "2026-12-01T12:00:00");
        meta.status = format::RunStatus::Finished;
        meta.training_config = serde_json::json!({"learning_rate": 1e-3, "epochs": 10});
        let dir = disk.path().join(run_dir_name(n));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(METADATA_FILE),
            serde_json::to_vec_pretty(&meta).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join(format::layout::CONFIG_FILE), b"{}").unwrap();
    }
    let report = remote::sync(
        &Location::Local(disk.path().to_path_buf()),
        &Location::Objects(listing.clone()),
        None,
    )
    .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let expect = runs as usize;
    // BENCH_ROUNDS (default 5) alternating rounds: the bucket, then the disk.
    let rounds: usize = std::env::var("BENCH_ROUNDS").map_or(5, |n| n.parse().unwrap());
    let pairs: Vec<[f64; 2]> = (0..rounds)
        .map(|_| {
            [
                time_ms(|| remote::list_runs(&bucket).unwrap().len(), expect),
                time_ms(|| store::list_all_runs(disk.path()).unwrap().len(), expect),
            ]
        })
        .collect();
    let bucket_ms = median(pairs.iter().map(|p| p[0]).collect());
    let local_ms = median(pairs.iter().map(|p| p[1]).collect());
    // Without the index, every run's metadata is read (64 at a time).
    bucket.delete(remote::index::INDEX_OBJECT).unwrap();
    let unindexed_ms = median(
        (0..rounds)
            .map(|_| time_ms(|| remote::list_runs(&bucket).unwrap().len(), expect))
            .collect(),
    );
    println!(
        "BENCH {}",
        serde_json::json!({"kind": "bucket_listing", "runs": runs,
                           "bucket_ms": bucket_ms, "unindexed_ms": unindexed_ms,
                           "local_ms": local_ms, "rounds_ms": pairs})
    );

    if let Some(checkpoints) = args.get(2).filter(|p| !p.is_empty()) {
        let dir = Path::new(checkpoints);
        // bench_disk writes through the store alone, without the trainer's config.json.
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let config = entry.path().join(format::layout::CONFIG_FILE);
            if entry.path().join(METADATA_FILE).exists() && !config.exists() {
                std::fs::write(config, b"{}").unwrap();
            }
        }
        let stored = url.join("stored/").unwrap();
        let report = remote::sync(
            &Location::Local(dir.to_path_buf()),
            &Location::Objects(stored.clone()),
            None,
        )
        .unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let bucket_bytes: u64 = Bucket::open(&stored)
            .unwrap()
            .list("")
            .unwrap()
            .iter()
            .map(|(_, size)| size)
            .sum();
        println!(
            "BENCH {}",
            serde_json::json!({"kind": "bucket_bytes", "runs": report.runs.len(),
                               "bucket_bytes": bucket_bytes,
                               "disk_bytes": store::disk_usage(dir).unwrap()})
        );
    }
}
