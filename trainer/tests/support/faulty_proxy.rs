//! A TCP proxy on loopback between `diffit` and an S3 server that misbehaves on purpose: it
//! answers chosen requests with 503 SlowDown or 500, cuts connections in the middle of a
//! request body, or refuses everything, as a flaky network and an overloaded endpoint would.
//!
//! Each client connection carries one request: the proxy reads it whole, forwards it on a fresh
//! upstream connection with `Connection: close`, and copies the answer back (closing the client
//! connection after it, so clients open a new one per request).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward it.
    Pass,
    /// `503 Slow Down`, as S3 throttles.
    SlowDown,
    /// `500 Internal Error`.
    InternalError,
    /// Forward half of its body, then close both connections.
    CutMidBody,
}

/// Decides the fault for the `n`th request (from 0) with this method and body size.
pub type Plan = dyn Fn(usize, &str, usize) -> Fault + Send + Sync;

/// A running proxy; stops accepting when dropped.
pub struct FaultyProxy {
    addr: String,
    stop: Arc<AtomicBool>,
    /// Requests seen, and faults injected.
    pub requests: Arc<AtomicUsize>,
    pub faults: Arc<AtomicUsize>,
    /// Refuse every connection (an endpoint that is down).
    pub down: Arc<AtomicBool>,
    /// Connections refused while down.
    pub refused: Arc<AtomicUsize>,
    plan: Arc<Mutex<Box<Plan>>>,
}

fn read_request(client: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>, Vec<u8>)> {
    let mut head = Vec::new();
    let mut content_length = 0usize;
    let mut method = String::new();
    loop {
        let mut line = String::new();
        if client.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if method.is_empty() {
            method = line.split(' ').next().unwrap_or("").to_string();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().ok()?;
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = vec![0; content_length];
    client.read_exact(&mut body).ok()?;
    Some((method, head, body))
}

fn error_reply(status: &str, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl FaultyProxy {
    /// A proxy to `upstream` (`127.0.0.1:PORT`) that forwards everything until a plan is set.
    pub fn start(upstream: &str) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let proxy = FaultyProxy {
            addr,
            stop: Arc::new(AtomicBool::new(false)),
            requests: Arc::new(AtomicUsize::new(0)),
            faults: Arc::new(AtomicUsize::new(0)),
            down: Arc::new(AtomicBool::new(false)),
            refused: Arc::new(AtomicUsize::new(0)),
            plan: Arc::new(Mutex::new(Box::new(|_, _, _| Fault::Pass))),
        };
        let (stop, requests, faults, down, refused, plan) = (
            proxy.stop.clone(),
            proxy.requests.clone(),
            proxy.faults.clone(),
            proxy.down.clone(),
            proxy.refused.clone(),
            proxy.plan.clone(),
        );
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                if down.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let (requests, faults, plan, upstream) = (
                    requests.clone(),
                    faults.clone(),
                    plan.clone(),
                    upstream.clone(),
                );
                std::thread::spawn(move || {
                    let _ = client.set_nonblocking(false);
                    let mut reader = BufReader::new(client);
                    let Some((method, head, body)) = read_request(&mut reader) else {
                        return;
                    };
                    let n = requests.fetch_add(1, Ordering::SeqCst);
                    let fault = (plan.lock().unwrap())(n, &method, body.len());
                    if fault != Fault::Pass {
                        faults.fetch_add(1, Ordering::SeqCst);
                    }
                    let mut client = reader.into_inner();
                    match fault {
                        Fault::SlowDown => {
                            let _ = client.write_all(&error_reply("503 Slow Down", "SlowDown"));
                        }
                        Fault::InternalError => {
                            let _ = client.write_all(&error_reply(
                                "500 Internal Server Error",
                                "InternalError",
                            ));
                        }
                        Fault::CutMidBody => {
                            if let Ok(mut up) = TcpStream::connect(&upstream) {
                                let _ = up.write_all(&head);
                                let _ = up.write_all(&body[..body.len() / 2]);
                            }
                            // Both connections close here, the request half sent.
                        }
                        Fault::Pass => {
                            let Ok(mut up) = TcpStream::connect(&upstream) else {
                                return;
                            };
                            let _ = up.set_read_timeout(Some(Duration::from_secs(60)));
                            if up.write_all(&head).is_err() || up.write_all(&body).is_err() {
                                return;
                            }
                            let mut answer = Vec::new();
                            let _ = up.read_to_end(&mut answer);
                            let _ = client.write_all(&answer);
                        }
                    }
                });
            }
        });
        proxy
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the fault plan; request numbers count on from where they are.
    pub fn set_plan(&self, plan: impl Fn(usize, &str, usize) -> Fault + Send + Sync + 'static) {
        *self.plan.lock().unwrap() = Box::new(plan);
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
