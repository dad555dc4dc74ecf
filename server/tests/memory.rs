//! Streaming a large checkpoint keeps memory flat: the server runs in this process and its
//! resident set (VmRSS from /proc/self/status) grows far less than the file it sends.
//! Alone in its own test binary so no other test's allocations blur the reading.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use format::{CheckpointName, RunStatus};
use support::*;

const FILE_BYTES: u64 = 256 * 1024 * 1024;

fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A safetensors file of one `FILE_BYTES`-sized U8 tensor whose data is a sparse hole.
fn write_large_checkpoint(path: &std::path::Path) {
    let mut header = serde_json::to_vec(&serde_json::json!({
        "__metadata__": {"format": "diffit-lora-checkpoint", "epoch": "1"},
        "blocks.0.attn.qkv.lora_A.weight": {"dtype": "U8", "shape": [FILE_BYTES], "data_offsets": [0, FILE_BYTES]},
    }))
    .unwrap();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&(header.len() as u64).to_le_bytes())
        .unwrap();
    file.write_all(&header).unwrap();
    file.set_len(8 + header.len() as u64 + FILE_BYTES).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_a_large_file_keeps_memory_flat() {
    let Some(before_start) = vm_rss_kib() else {
        println!("NOTICE: no /proc/self/status here; skipping the memory check");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = write_run(dir.path(), 1, 1, RunStatus::Finished);
    let path = layout.checkpoint(CheckpointName::Epoch(2));
    write_large_checkpoint(&path);
    // Record epoch 2 without a checksum: the server hashes it (also in constant memory).
    let mut meta = read_meta(&layout);
    meta.checkpoints.push(format::CheckpointRecord {
        epoch: 2,
        path: CheckpointName::Epoch(2).relative_path(1),
        metrics: [("val_loss".to_string(), 0.4)].into(),
        saved_at: "2025-01-15T12:00:00".into(),
        checksum: None,
        size: None,
        global_step: None,
        removed: false,
        damaged: None,
        weights_only: false,
        extra: Default::default(),
    });
    write_meta(&layout, &meta);
    let server = start(dir.path(), dir.path()).await;
    let addr = server.addr;

    // Warm up allocator pools and thread stacks with a small download first.
    let warm = blocking(move || get(addr, "/api/runs/1/checkpoints/epoch_001", &[])).await;
    assert_eq!(warm.status, 200);
    let before = vm_rss_kib().unwrap();

    let (received, peak) = blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        stream.write_all(format!("GET /api/runs/1/checkpoints/epoch_002 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut received = 0u64;
        let mut peak = 0u64;
        let mut reads = 0u64;
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            received += n as u64;
            reads += 1;
            if reads.is_multiple_of(256) {
                peak = peak.max(vm_rss_kib().unwrap());
            }
        }
        (received, peak.max(vm_rss_kib().unwrap()))
    })
    .await;
    assert!(received > FILE_BYTES, "received {received} bytes");
    let growth_kib = peak.saturating_sub(before);
    println!(
        "streamed {} MiB: VmRSS at start {before_start} KiB, before {before} KiB, peak {peak} KiB, growth {growth_kib} KiB",
        FILE_BYTES >> 20
    );
    // Holding the file in memory would add 262144 KiB; allow a generous 32 MiB for buffers.
    assert!(
        growth_kib < 32 * 1024,
        "VmRSS grew by {growth_kib} KiB while streaming a {} MiB file",
        FILE_BYTES >> 20
    );
}
