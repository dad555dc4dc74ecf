//! Soak: the real `diffit` trains 20 epochs (keep_last_n 2, so epoch files come and go, and
//! `best`/`last` are replaced) while 17 clients read the real `diffit-server` the whole time:
//! the run list, the run, its metrics, checkpoint files whole and in ranges, the weights-only
//! view and the event stream. No request fails except a 404 for an epoch file retention has
//! removed; no body is torn (every whole file is a version metadata recorded for that path,
//! every range a slice of the whole file with its ETag); the server's resident memory stays
//! under `RSS_BOUND_KIB`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use format::tensors::is_lora_tensor;
use format::{CheckpointName, Metadata, RunLayout};
use support::{ProcessGuard, Server};

const EPOCHS: u32 = 20;
/// The server's resident set must stay under this (it streams files and caches only headers
/// and checksums; a debug build idles at about 10 MiB).
const RSS_BOUND_KIB: u64 = 64 * 1024;
/// Pause between one client's requests: steady load that leaves the trainer a core.
const PAUSE: Duration = Duration::from_millis(25);

/// What one client saw; merged at the end.
#[derive(Default)]
struct Seen {
    requests: BTreeMap<&'static str, u64>,
    bytes: u64,
    errors: Vec<String>,
    /// Epoch files answered 404 (allowed only once retention removed them).
    missing_epochs: Vec<u32>,
    /// (checkpoint name, ETag, body checksum) of every whole file.
    whole: Vec<(CheckpointName, String, String)>,
    /// (ETag, first byte, body) of every range.
    ranges: Vec<(String, u64, Vec<u8>)>,
    /// ETags of weights-only views, whose bodies parsed as LoRA-only safetensors.
    views: Vec<String>,
    /// Epochs announced by `checkpoint_added`.
    announced: Vec<u32>,
}

impl Seen {
    fn count(&mut self, route: &'static str, response: &Response) {
        *self.requests.entry(route).or_default() += 1;
        self.bytes += response.body.len() as u64;
    }

    fn error(&mut self, what: String) {
        if self.errors.len() < 20 {
            self.errors.push(what);
        }
    }
}

/// What the clients share while the run is written.
struct Shared {
    addr: SocketAddr,
    done: AtomicBool,
    /// Newest epoch any client has seen in the run's metadata (0: none yet).
    newest_epoch: AtomicU32,
    /// Full bodies by ETag, to check ranges against.
    bodies: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One `GET` on a fresh connection, read to the end (`Connection: close`).
fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader)?;
    let mut body = vec![];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim(), 16)
                .map_err(|e| io::Error::other(format!("chunk size {size_line:?}: {e}")))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    if length.is_some_and(|length| length != body.len()) {
        return Err(io::Error::other(format!(
            "{target}: {} body bytes, Content-Length {length:?}",
            body.len()
        )));
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_head(reader: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = vec![];
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((status, headers));
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
}

/// `"blake3:…"` → `blake3:…`.
fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

/// The run list, sometimes revalidated with its ETag.
fn list_client(shared: &Shared, seen: &mut Seen) {
    let mut etag = String::new();
    while !shared.done.load(Ordering::Relaxed) {
        let revalidate =
            !etag.is_empty() && seen.requests.get("runs").copied().unwrap_or(0) % 2 == 1;
        let headers: &[(&str, &str)] = if revalidate {
            &[("If-None-Match", etag.as_str())]
        } else {
            &[]
        };
        match get(shared.addr, "/api/runs", headers) {
            Ok(r) if r.status == 200 || (revalidate && r.status == 304) => {
                seen.count("runs", &r);
                if r.status == 200 {
                    if let Err(e) = serde_json::from_slice::<format::api::RunList>(&r.body) {
                        seen.error(format!("/api/runs: not a run list: {e}"));
                    }
                }
                etag = r.header("etag").unwrap_or_default().to_string();
            }
            Ok(r) => seen.error(format!("/api/runs: {}", r.status)),
            Err(e) => seen.error(format!("/api/runs: {e}")),
        }
        std::thread::sleep(PAUSE);
    }
}

/// The run and its metrics; publishes the newest recorded epoch for the file clients.
fn detail_client(shared: &Shared, seen: &mut Seen) {
    let mut turn = 0u64;
    while !shared.done.load(Ordering::Relaxed) {
        turn += 1;
        let (route, target) = if turn.is_multiple_of(2) {
            ("run", "/api/runs/1")
        } else {
            ("metrics", "/api/runs/1/metrics")
        };
        match get(shared.addr, target, &[]) {
            Ok(r) if r.status == 200 => {
                seen.count(route, &r);
                match serde_json::from_slice::<serde_json::Value>(&r.body) {
                    Ok(body) if route == "run" => {
                        let newest = body["metadata"]["checkpoints"]
                            .as_array()
                            .and_then(|c| c.last())
                            .and_then(|c| c["epoch"].as_u64())
                            .unwrap_or(0);
                        shared
                            .newest_epoch
                            .fetch_max(newest as u32, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => seen.error(format!("{target}: not JSON: {e}")),
                }
            }
            // The trainer has not created the run yet.
            Ok(r) if r.status == 404 && shared.newest_epoch.load(Ordering::Relaxed) == 0 => {
                seen.count(route, &r)
            }
            Ok(r) => seen.error(format!("{target}: {}", r.status)),
            Err(e) => seen.error(format!("{target}: {e}")),
        }
        std::thread::sleep(PAUSE);
    }
}

/// The checkpoint a file client asks for on its `turn`: best, last, the base, the newest
/// epoch and one a few epochs older (retention removes those, so some answer 404).
fn pick(turn: u64, newest: u32) -> CheckpointName {
    match turn % 5 {
        0 => CheckpointName::Best,
        1 => CheckpointName::Last,
        2 => CheckpointName::Base,
        3 => CheckpointName::Epoch(newest),
        _ => CheckpointName::Epoch(newest.saturating_sub(2).max(1)),
    }
}

/// Fetches a whole checkpoint (or its weights-only view) and records what came back.
/// Returns the response when it was a whole file.
fn fetch_whole(
    shared: &Shared,
    seen: &mut Seen,
    name: CheckpointName,
    weights_only: bool,
) -> Option<(String, Arc<Vec<u8>>)> {
    let suffix = if weights_only {
        "?weights_only=true"
    } else {
        ""
    };
    let target = format!("/api/runs/1/checkpoints/{name}{suffix}");
    let route = if weights_only {
        "weights_only"
    } else {
        "checkpoint"
    };
    let response = match get(shared.addr, &target, &[]) {
        Ok(r) => r,
        Err(e) => {
            seen.error(format!("{target}: {e}"));
            return None;
        }
    };
    seen.count(route, &response);
    match (response.status, name) {
        (200, _) => {}
        (404, CheckpointName::Epoch(epoch)) => {
            seen.missing_epochs.push(epoch);
            return None;
        }
        (status, _) => {
            seen.error(format!("{target}: {status}"));
            return None;
        }
    }
    let etag = unquote(response.header("etag").unwrap_or_default());
    if weights_only {
        match safetensors::SafeTensors::deserialize(&response.body) {
            Ok(view)
                if !view.names().is_empty() && view.names().iter().all(|n| is_lora_tensor(n)) =>
            {
                seen.views.push(etag);
            }
            Ok(_) => seen.error(format!("{target}: not only LoRA tensors")),
            Err(e) => seen.error(format!("{target}: not safetensors: {e}")),
        }
        return None;
    }
    let checksum = store::checksum::digest_bytes(&response.body).checksum;
    seen.whole.push((name, etag.clone(), checksum));
    let body = Arc::new(response.body);
    shared
        .bodies
        .lock()
        .unwrap()
        .entry(etag.clone())
        .or_insert_with(|| body.clone());
    Some((etag, body))
}

/// Whole files and the weights-only view.
fn file_client(shared: &Shared, seen: &mut Seen, offset: u64) {
    let mut turn = offset;
    while !shared.done.load(Ordering::Relaxed) {
        let newest = shared.newest_epoch.load(Ordering::Relaxed);
        if newest == 0 {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        turn += 1;
        let weights_only = turn.is_multiple_of(7);
        let name = if weights_only {
            CheckpointName::Best
        } else {
            pick(turn, newest)
        };
        fetch_whole(shared, seen, name, weights_only);
        std::thread::sleep(PAUSE);
    }
}

/// A whole file, then a range of it under `If-Range` (as a resuming download does).
fn range_client(shared: &Shared, seen: &mut Seen, offset: u64) {
    let mut turn = offset;
    while !shared.done.load(Ordering::Relaxed) {
        let newest = shared.newest_epoch.load(Ordering::Relaxed);
        if newest == 0 {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        turn += 1;
        let name = pick(turn, newest);
        let Some((etag, body)) = fetch_whole(shared, seen, name, false) else {
            continue;
        };
        let len = body.len() as u64;
        let start = (turn * 7919) % len;
        let end = (start + 4096 + turn % 5000).min(len - 1);
        let target = format!("/api/runs/1/checkpoints/{name}");
        let range = format!("bytes={start}-{end}");
        let if_range = format!("\"{etag}\"");
        match get(
            shared.addr,
            &target,
            &[("Range", &range), ("If-Range", &if_range)],
        ) {
            Ok(r) if r.status == 206 => {
                seen.count("checkpoint_range", &r);
                let expected = format!("bytes {start}-{end}/{len}");
                if r.header("content-range") != Some(expected.as_str()) {
                    seen.error(format!("{target} {range}: {:?}", r.header("content-range")));
                }
                let served = unquote(r.header("etag").unwrap_or_default());
                seen.ranges.push((served, start, r.body));
            }
            // Replaced in between (`best`, `last`): If-Range sends the new version whole.
            Ok(r) if r.status == 200 => {
                seen.count("checkpoint_range", &r);
                let etag = unquote(r.header("etag").unwrap_or_default());
                let checksum = store::checksum::digest_bytes(&r.body).checksum;
                seen.whole.push((name, etag, checksum));
            }
            Ok(r) if r.status == 404 && matches!(name, CheckpointName::Epoch(_)) => {
                seen.count("checkpoint_range", &r);
                if let CheckpointName::Epoch(epoch) = name {
                    seen.missing_epochs.push(epoch);
                }
            }
            Ok(r) => seen.error(format!("{target} {range}: {}", r.status)),
            Err(e) => seen.error(format!("{target} {range}: {e}")),
        }
        std::thread::sleep(PAUSE);
    }
}

/// One event stream held for the whole run; records the epochs `checkpoint_added` announces.
/// After the trainer is done it keeps reading until the last epoch is announced (or 10 s).
fn event_client(shared: &Shared, seen: &mut Seen) {
    let result = (|| -> io::Result<()> {
        let mut stream = TcpStream::connect(shared.addr)?;
        stream.set_read_timeout(Some(Duration::from_millis(250)))?;
        stream.write_all(
            format!(
                "GET /api/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
                shared.addr
            )
            .as_bytes(),
        )?;
        let mut reader = BufReader::new(stream.try_clone()?);
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let (status, _) = read_head(&mut reader)?;
        stream.set_read_timeout(Some(Duration::from_millis(250)))?;
        *seen.requests.entry("events").or_default() += 1;
        if status != 200 {
            return Err(io::Error::other(format!("status {status}")));
        }
        let mut event = String::new();
        let mut line = String::new();
        let mut finished_at: Option<Instant> = None;
        loop {
            if shared.done.load(Ordering::Relaxed) {
                let since = *finished_at.get_or_insert_with(Instant::now);
                if seen.announced.contains(&EPOCHS) || since.elapsed() > Duration::from_secs(10) {
                    return Ok(());
                }
            }
            match reader.read_line(&mut line) {
                Ok(0) => return Err(io::Error::other("the stream ended")),
                Ok(n) => {
                    seen.bytes += n as u64;
                    let text = line.trim_end();
                    if let Some(name) = text.strip_prefix("event:") {
                        event = name.trim().to_string();
                    } else if let Some(data) = text.strip_prefix("data:") {
                        if event == "checkpoint_added" {
                            let data: serde_json::Value = serde_json::from_str(data.trim())
                                .map_err(|e| io::Error::other(format!("data {data:?}: {e}")))?;
                            if let Some(epoch) = data["epoch"].as_u64() {
                                seen.announced.push(epoch as u32);
                            }
                        }
                    }
                    line.clear();
                }
                // A partial line stays in `line` and is completed by the next read.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    })();
    match result {
        Err(e) => seen.error(format!("/api/events: {e}")),
        Ok(()) if !seen.announced.contains(&EPOCHS) => seen.error(format!(
            "/api/events announced epochs {:?}, never the last ({EPOCHS})",
            seen.announced
        )),
        Ok(()) => {}
    }
}

/// Event streams opened and dropped again and again (each subscribes and unsubscribes).
fn event_churn_client(shared: &Shared, seen: &mut Seen) {
    while !shared.done.load(Ordering::Relaxed) {
        let result = (|| -> io::Result<()> {
            let mut stream = TcpStream::connect(shared.addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.write_all(
                format!("GET /api/events HTTP/1.1\r\nHost: {}\r\n\r\n", shared.addr).as_bytes(),
            )?;
            let mut reader = BufReader::new(stream);
            let (status, _) = read_head(&mut reader)?;
            if status != 200 {
                return Err(io::Error::other(format!("status {status}")));
            }
            let mut line = String::new();
            while !line.starts_with("event: ready") && !line.starts_with("event:ready") {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    return Err(io::Error::other("the stream ended before `ready`"));
                }
            }
            Ok(())
        })();
        *seen.requests.entry("events").or_default() += 1;
        if let Err(e) = result {
            seen.error(format!("/api/events (churn): {e}"));
        }
        std::thread::sleep(PAUSE * 4);
    }
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn read_metadata(checkpoints: &Path) -> Metadata {
    let path = RunLayout::new(checkpoints, 1).metadata();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

#[test]
fn readers_never_see_a_torn_file_while_a_run_is_written() {
    let (diffit, server_bin) = support::workspace_binaries();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    std::fs::create_dir_all(&checkpoints).unwrap();
    // The older-main fixture's tiny base: no pretraining, the trainer goes straight to epochs.
    let base = support::workspace_root()
        .join("tests/fixtures/main-36b41c4/checkpoints/run_001/base_model/base_model.safetensors");
    let config = dir.path().join("soak.yaml");
    std::fs::write(&config, "data:\n  num_images: 384\n").unwrap();

    let server = Server::start_api_only(&server_bin, &checkpoints);
    let addr: SocketAddr = server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("server address");
    let pid = server.pid();
    let idle_rss = vm_rss_kib(pid).expect("server VmRSS");
    let shared = Arc::new(Shared {
        addr,
        done: AtomicBool::new(false),
        newest_epoch: AtomicU32::new(0),
        bodies: Mutex::new(HashMap::new()),
    });

    let mut trainer_command = Command::new(&diffit);
    trainer_command
        .args(["train", "--preset", "tiny", "--epochs", &EPOCHS.to_string()])
        .args(["--keep-last-n", "2", "--base"])
        .arg(&base)
        .arg("--config")
        .arg(&config)
        .arg("--checkpoints")
        .arg(&checkpoints);
    let trainer_log = dir.path().join("trainer.log");
    let log_file = std::fs::File::create(&trainer_log).unwrap();
    trainer_command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone().unwrap()))
        .stderr(Stdio::from(log_file));
    let mut trainer = ProcessGuard::spawn("diffit train", trainer_command);

    type Client = fn(&Shared, &mut Seen, u64);
    let mut clients: Vec<(Client, u64)> = vec![];
    clients.extend((0..3).map(|i| ((|s, seen, _| list_client(s, seen)) as Client, i)));
    clients.extend((0..3).map(|i| ((|s, seen, _| detail_client(s, seen)) as Client, i)));
    clients.extend((0..5).map(|i| (file_client as Client, i)));
    clients.extend((0..3).map(|i| (range_client as Client, i)));
    clients.extend((0..2).map(|i| ((|s, seen, _| event_client(s, seen)) as Client, i)));
    clients.push(((|s, seen, _| event_churn_client(s, seen)) as Client, 0));
    let client_count = clients.len();
    let handles: Vec<_> = clients
        .into_iter()
        .map(|(client, offset)| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                client(&shared, &mut seen, offset);
                seen
            })
        })
        .collect();

    let max_rss = Arc::new(AtomicU64::new(idle_rss));
    let sampler = {
        let (shared, max_rss) = (shared.clone(), max_rss.clone());
        std::thread::spawn(move || {
            while !shared.done.load(Ordering::Relaxed) {
                if let Some(rss) = vm_rss_kib(pid) {
                    max_rss.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let trained = trainer.wait();
    let training_time = started.elapsed();
    shared.done.store(true, Ordering::Relaxed);
    assert!(
        trained.success(),
        "diffit train failed ({trained}): {}",
        std::fs::read_to_string(&trainer_log).unwrap_or_default()
    );
    let mut all = Seen::default();
    for handle in handles {
        let seen = handle.join().expect("a client panicked");
        for (route, n) in seen.requests {
            *all.requests.entry(route).or_default() += n;
        }
        all.bytes += seen.bytes;
        all.errors.extend(seen.errors);
        all.missing_epochs.extend(seen.missing_epochs);
        all.whole.extend(seen.whole);
        all.ranges.extend(seen.ranges);
        all.views.extend(seen.views);
        all.announced.extend(seen.announced);
    }
    sampler.join().unwrap();
    let max_rss = max_rss.load(Ordering::Relaxed);

    println!(
        "soak: {client_count} clients over {:.1} s of training, {} requests by route {:?}, \
         {} bytes, {} 404s for removed epochs, {} whole files and {} ranges checked, \
         {} checkpoint_added events, \
         server VmRSS {idle_rss} KiB idle, {max_rss} KiB max (bound {RSS_BOUND_KIB} KiB)",
        training_time.as_secs_f64(),
        all.requests.values().sum::<u64>(),
        all.requests,
        all.bytes,
        all.missing_epochs.len(),
        all.whole.len(),
        all.ranges.len(),
        all.announced.len(),
    );

    assert!(all.errors.is_empty(), "failed requests: {:#?}", all.errors);

    // Every version served is one metadata recorded for that path; epoch records stay (marked
    // removed) after retention deletes their files.
    let meta = read_metadata(&checkpoints);
    assert_eq!(meta.checkpoints.len(), EPOCHS as usize);
    let by_epoch: HashMap<u32, (String, bool)> = meta
        .checkpoints
        .iter()
        .map(|c| {
            (
                c.epoch,
                (c.checksum.clone().expect("checksum recorded"), c.removed),
            )
        })
        .collect();
    let any_epoch: HashSet<&String> = by_epoch.values().map(|(checksum, _)| checksum).collect();
    let base_checksum = meta
        .base_model
        .as_ref()
        .expect("base recorded")
        .checksum
        .clone();
    for (name, etag, checksum) in &all.whole {
        assert_eq!(etag, checksum, "{name}: the ETag names the body served");
        let recorded = match name {
            CheckpointName::Epoch(epoch) => by_epoch[epoch].0 == *checksum,
            CheckpointName::Best | CheckpointName::Last => any_epoch.contains(checksum),
            CheckpointName::Base => *checksum == base_checksum,
        };
        assert!(
            recorded,
            "{name}: body {checksum} is no version metadata recorded"
        );
    }
    for view in &all.views {
        let whole = view.strip_suffix("+lora").expect("a weights-only ETag");
        assert!(any_epoch.contains(&whole.to_string()), "view of {whole}");
    }
    let bodies = shared.bodies.lock().unwrap();
    for (etag, start, bytes) in &all.ranges {
        let whole = bodies
            .get(etag)
            .expect("a range of a version fetched whole");
        let start = *start as usize;
        assert!(
            whole.get(start..start + bytes.len()) == Some(&bytes[..]),
            "range at {start} of {etag} differs from the whole file"
        );
    }
    for epoch in &all.missing_epochs {
        assert!(
            by_epoch[epoch].1,
            "epoch {epoch} answered 404 but was never removed"
        );
    }
    assert!(
        !all.missing_epochs.is_empty()
            && by_epoch.values().filter(|(_, removed)| *removed).count() > 0,
        "retention removed files while they were read"
    );
    assert!(
        all.whole.len() > 100 && all.ranges.len() > 20,
        "too little load to mean anything"
    );
    assert!(
        max_rss < RSS_BOUND_KIB,
        "server VmRSS reached {max_rss} KiB (bound {RSS_BOUND_KIB} KiB)"
    );
    drop(server);
    println!("soak: {:.1} s in all", started.elapsed().as_secs_f64());
}
