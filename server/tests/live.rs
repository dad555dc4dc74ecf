//! Live behaviour while a writer works: SSE announces a new epoch; readers racing a writer
//! that atomically replaces files always get one complete version.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use format::{CheckpointName, RunStatus};
use support::*;

/// Reads SSE lines until an event named `name` arrives; returns its data.
fn wait_for_event(reader: &mut impl BufRead, name: &str) -> String {
    let mut current = String::new();
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).unwrap();
        assert!(read > 0, "event stream ended before {name}");
        let line = line.trim_end();
        if let Some(event) = line
            .strip_prefix("event: ")
            .or_else(|| line.strip_prefix("event:"))
        {
            current = event.trim().to_string();
        } else if let Some(data) = line.strip_prefix("data:") {
            if current == name {
                return data.trim().to_string();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_announce_a_new_epoch_and_a_new_run() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let layout = write_run(&base, 1, 1, RunStatus::Running);
    let server = start(&base, &base).await;
    let addr = server.addr;

    let seen = blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .write_all(
                format!(
                    "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader);
        assert_eq!(status, 200);
        assert!(headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")));
        wait_for_event(&mut reader, "ready");

        // The trainer lands epoch 2.
        let mut meta = read_meta(&layout);
        add_epoch(&layout, &mut meta, 2);
        write_meta(&layout, &meta);
        let checkpoint = wait_for_event(&mut reader, "checkpoint_added");

        // A second run appears.
        write_run(&base, 2, 1, RunStatus::Running);
        let added = wait_for_event(&mut reader, "run_added");
        (checkpoint, added)
    })
    .await;
    let checkpoint: serde_json::Value = serde_json::from_str(&seen.0).unwrap();
    assert_eq!(checkpoint["run_number"], 1);
    assert_eq!(checkpoint["epoch"], 2);
    assert_eq!(checkpoint["checkpoints_count"], 2);
    let added: serde_json::Value = serde_json::from_str(&seen.1).unwrap();
    assert_eq!(added["run_number"], 2);

    // After the event, the list already shows it.
    let list = blocking(move || get(addr, "/api/runs", &[])).await.json();
    assert_eq!(list["runs"][0]["last_epoch"], 2);
    assert_eq!(list["runs"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_partial_file_while_a_writer_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let layout = write_run(dir.path(), 1, 1, RunStatus::Running);
    let server = start(dir.path(), dir.path()).await;
    let addr = server.addr;
    // Two versions with different contents: a torn read shows as neither. The file starts as
    // the first (its metadata's key order differs between serialisations, so `write_run`'s own
    // copy would not compare equal).
    let versions = Arc::new([lora_checkpoint_bytes(1, 1.0), lora_checkpoint_bytes(2, 7.0)]);
    let last = layout.checkpoint(CheckpointName::Last);
    write_atomic(&last, &versions[0]);
    let stop = Arc::new(AtomicBool::new(false));

    // Readers and the writer are plain threads; the server keeps the runtime to itself.
    let writes = blocking(move || {
        let writer = {
            let (versions, stop, last) = (versions.clone(), stop.clone(), last.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    write_atomic(&last, &versions[i % 2]);
                    i += 1;
                }
                i
            })
        };
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let versions = versions.clone();
                std::thread::spawn(move || {
                    for _ in 0..150 {
                        let whole = get(addr, "/api/runs/1/checkpoints/last", &[]);
                        assert_eq!(whole.status, 200);
                        assert!(
                            whole.body == versions[0] || whole.body == versions[1],
                            "partial or mixed body of {} bytes",
                            whole.body.len()
                        );
                        let etag = whole.header("etag").unwrap().trim_matches('"').to_string();
                        assert_eq!(
                            etag,
                            checksum(&whole.body),
                            "ETag must describe the bytes sent"
                        );
                        let view = get(addr, "/api/runs/1/checkpoints/last?weights_only=true", &[]);
                        assert_eq!(view.status, 200);
                        safetensors::SafeTensors::deserialize(&view.body)
                            .expect("a complete weights-only view");
                    }
                })
            })
            .collect();
        for reader in readers {
            reader.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    })
    .await;
    assert!(writes > 1, "the writer replaced the file {writes} times");
}
