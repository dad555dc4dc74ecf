//! Shared by the server's integration tests: fixture runs written with the run format types and
//! the `safetensors` crate, the real server started on port 0, and a raw HTTP/1.1 client over
//! TCP (so request paths reach the server exactly as written, never normalised by a client).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use format::tensors::{self, meta_keys};
use format::{CheckpointName, CheckpointRecord, FileRecord, Metadata, RunLayout, RunStatus};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use server::{AppState, ServerConfig};

/// LoRA-targeted modules of the fixture model.
pub const MODULES: [&str; 2] = ["blocks.0.attn.qkv", "blocks.0.mlp.fc1"];

/// A tensor file's bytes: LoRA A/B per module plus optimizer moments, values depending on `seed`.
pub fn lora_checkpoint_bytes(epoch: u32, seed: f32) -> Vec<u8> {
    let mut named: Vec<(String, Vec<usize>, Vec<f32>)> = vec![];
    for (i, module) in MODULES.iter().enumerate() {
        let a = tensors::lora_a_name(module);
        let b = tensors::lora_b_name(module);
        let fill = |n: usize, k: f32| {
            (0..n)
                .map(|j| seed + k + j as f32 * 0.5)
                .collect::<Vec<f32>>()
        };
        named.push((a.clone(), vec![4, 8], fill(32, i as f32)));
        named.push((b.clone(), vec![8, 4], fill(32, 10.0 + i as f32)));
        for name in [a, b] {
            named.push((
                format!("{}{name}", tensors::EXP_AVG_PREFIX),
                vec![32],
                fill(32, 100.0),
            ));
            named.push((
                format!("{}{name}", tensors::EXP_AVG_SQ_PREFIX),
                vec![32],
                fill(32, 200.0),
            ));
        }
    }
    let meta = HashMap::from([
        (
            meta_keys::FORMAT.to_string(),
            tensors::LORA_CHECKPOINT_FORMAT.to_string(),
        ),
        (meta_keys::EPOCH.to_string(), epoch.to_string()),
        (
            meta_keys::METRICS.to_string(),
            format!("{{\"val_loss\": {}}}", 1.0 / epoch as f32),
        ),
    ]);
    serialize(named, meta)
}

/// A base model file: plain module weights.
pub fn base_model_bytes() -> Vec<u8> {
    let named = MODULES
        .iter()
        .map(|m| {
            (
                format!("{m}.weight"),
                vec![8, 8],
                (0..64).map(|j| j as f32).collect(),
            )
        })
        .collect();
    let meta = HashMap::from([(
        meta_keys::FORMAT.to_string(),
        tensors::BASE_MODEL_FORMAT.to_string(),
    )]);
    serialize(named, meta)
}

fn serialize(named: Vec<(String, Vec<usize>, Vec<f32>)>, meta: HashMap<String, String>) -> Vec<u8> {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = named
        .into_iter()
        .map(|(name, shape, values)| {
            (
                name,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// `blake3:<hex>`, as the trainer records it.
pub fn checksum(bytes: &[u8]) -> String {
    format!("blake3:{}", blake3_hex(bytes))
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Writes `bytes` to `path` the way the run store does: temp file, then rename over.
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_file_name(format!(
        "{}{}{}",
        path.file_name().unwrap().to_str().unwrap(),
        format::layout::TEMP_MARKER,
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A complete run with `epochs` saved epochs, metadata recording checksums, best = epoch 1.
pub fn write_run(base: &Path, n: u32, epochs: u32, status: RunStatus) -> RunLayout {
    let layout = RunLayout::new(base, n);
    let mut meta = Metadata::new(n, "diffit_lora_trees", "2025-01-15T10:30:00");
    meta.status = status;
    meta.monitor = Some("val_loss".into());
    meta.training_config = serde_json::json!({"epochs": epochs, "batch_size": 4});
    meta.lora_config = serde_json::json!({"r": 4, "lora_alpha": 8});
    meta.base_metrics.insert("val_loss".into(), 2.5);
    let base_bytes = base_model_bytes();
    write_atomic(&layout.checkpoint(CheckpointName::Base), &base_bytes);
    meta.base_model = Some(FileRecord {
        path: CheckpointName::Base.relative_path(n),
        checksum: checksum(&base_bytes),
        size: base_bytes.len() as u64,
        extra: Default::default(),
    });
    std::fs::create_dir_all(layout.lora_dir()).unwrap();
    std::fs::create_dir_all(layout.logs_dir()).unwrap();
    for epoch in 1..=epochs {
        add_epoch(&layout, &mut meta, epoch);
    }
    write_meta(&layout, &meta);
    write_atomic(
        &layout.config(),
        serde_json::to_vec_pretty(
            &serde_json::json!({"training": {"epochs": epochs}, "lora": {"r": 4}}),
        )
        .unwrap()
        .as_slice(),
    );
    layout
}

/// Saves epoch `epoch` (file, last, best if first) into `meta` without writing metadata.
pub fn add_epoch(layout: &RunLayout, meta: &mut Metadata, epoch: u32) {
    let n = layout.run_number();
    let bytes = lora_checkpoint_bytes(epoch, epoch as f32);
    write_atomic(&layout.checkpoint(CheckpointName::Epoch(epoch)), &bytes);
    write_atomic(&layout.checkpoint(CheckpointName::Last), &bytes);
    let val_loss = 1.0 / epoch as f64;
    let metrics = [
        ("val_loss".to_string(), val_loss),
        ("train_loss".to_string(), val_loss * 0.9),
    ]
    .into();
    if epoch == 1 {
        write_atomic(&layout.checkpoint(CheckpointName::Best), &bytes);
        meta.best_checkpoint = Some(format::BestCheckpoint {
            epoch,
            path: CheckpointName::Best.relative_path(n),
            metrics: [("val_loss".to_string(), val_loss)].into(),
            extra: Default::default(),
        });
    }
    meta.checkpoints.push(CheckpointRecord {
        epoch,
        path: CheckpointName::Epoch(epoch).relative_path(n),
        metrics,
        saved_at: "2025-01-15T11:00:00".into(),
        checksum: Some(checksum(&bytes)),
        size: Some(bytes.len() as u64),
        global_step: Some(epoch as u64 * 10),
        removed: false,
        damaged: None,
        weights_only: false,
        extra: Default::default(),
    });
}

/// Writes `metadata.json` atomically.
pub fn write_meta(layout: &RunLayout, meta: &Metadata) {
    write_atomic(
        &layout.metadata(),
        &serde_json::to_vec_pretty(meta).unwrap(),
    );
}

/// Reads a run's metadata back.
pub fn read_meta(layout: &RunLayout) -> Metadata {
    serde_json::from_slice(&std::fs::read(layout.metadata()).unwrap()).unwrap()
}

/// The server running in this process.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state.
    pub state: AppState,
}

/// Starts the real router on 127.0.0.1:0 with a short poll interval.
pub async fn start(checkpoints: &Path, app_dir: &Path) -> TestServer {
    start_with(ServerConfig::new(checkpoints, app_dir)).await
}

/// Starts the real router on 127.0.0.1:0 with `config`, its poll interval shortened.
pub async fn start_with(mut config: ServerConfig) -> TestServer {
    config.poll_interval = Duration::from_millis(50);
    let state = AppState::start(config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = state.clone();
    tokio::spawn(async move { server::serve(listener, serving, std::future::pending()).await });
    TestServer { addr, state }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends `GET target` (exactly as given) with extra header lines, reads the whole response.
pub fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    raw(addr, request.as_bytes())
}

/// Sends raw request bytes, reads the whole response (blocking; call from `spawn_blocking`
/// or plain threads inside async tests).
pub fn raw(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = vec![];
    if chunked {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).unwrap();
            let size =
                usize::from_str_radix(size_line.trim().split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Reads a status line and headers.
pub fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"))
        .parse()
        .unwrap();
    let mut headers = vec![];
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    (status, headers)
}

/// Runs a blocking closure from an async test.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// `<repo>/.venv/bin/python` when it exists.
pub fn python() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let python = repo.join(".venv/bin/python");
    python.is_file().then_some(python)
}
