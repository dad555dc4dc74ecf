//! What the browser tests share: the workspace's binaries, a running `diffit-server`, headless
//! Chromium driven through chromedriver, and screenshots saved as test artefacts.
//!
//! Every child process is owned by a guard that kills it on drop, so a failing assertion never
//! leaves a server or a browser behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.
#![allow(dead_code)] // Each test file uses its own subset.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use format::{Metadata, RunLayout};
use serde_json::{json, Value};

/// Chromium and its driver as Debian installs them (scripts/browser-env.sh).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/e2e-artifacts/`, where screenshots and sampled images are kept for a human to look at.
pub fn artifacts_dir() -> PathBuf {
    let dir = workspace_root().join("target").join("e2e-artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// The static site built by `make app`; panics with the command to run when it is missing.
pub fn site_dir() -> PathBuf {
    let site = workspace_root().join("target").join("site");
    assert!(
        site.join("index.html").is_file() && site.join("pkg").is_dir(),
        "{} has no built app: run `make app` (scripts/build-app.sh) first",
        site.display()
    );
    site
}

/// Returns the workspace binaries `diffit` and `diffit-server` of the profile this test was
/// built with, building them first if needed.
///
/// The build is `cargo test --workspace --no-run` with the trainer's features of this build
/// (`trainer::FEATURES`): the very command (and so the very feature set) that built this test
/// under `cargo test --workspace [--features …]`, hence a no-op there. A narrower `cargo build
/// -p trainer -p server`, or other features, would resolve features differently, rebuild
/// candle, and replace the binaries other tests are running.
pub fn workspace_binaries() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/browser-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--no-run", "--quiet"]);
    if release {
        build.arg("--release");
    }
    if !trainer::FEATURES.is_empty() {
        build.args(["--features", &trainer::FEATURES.join(",")]);
    }
    let status = build.status().expect("run cargo");
    assert!(
        status.success(),
        "`cargo test --workspace --no-run` (building diffit and diffit-server) failed"
    );
    let binaries = (
        profile_dir.join("diffit"),
        profile_dir.join("diffit-server"),
    );
    for bin in [&binaries.0, &binaries.1] {
        assert!(bin.is_file(), "{} was not built", bin.display());
    }
    binaries
}

/// The metadata of run `run` under `checkpoints`, as the trainer wrote it.
pub fn read_metadata(checkpoints: &Path, run: u32) -> Metadata {
    let path = RunLayout::new(checkpoints, run).metadata();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening on port {port}: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port} within 30 s");
}

/// A child process group killed when the guard drops.
pub struct ProcessGuard {
    child: Child,
    name: &'static str,
}

impl ProcessGuard {
    /// Starts `command` in its own process group (so its children die with it).
    pub fn spawn(name: &'static str, mut command: Command) -> ProcessGuard {
        command.process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        ProcessGuard { child, name }
    }

    /// The process id (of the group's leader).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name))
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // The whole group: chromedriver's Chromium and its helpers too.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = self.name;
    }
}

/// A running `diffit-server` on a free port.
pub struct Server {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    _process: ProcessGuard,
}

impl Server {
    /// Serves `checkpoints` and the built site.
    pub fn start(server_bin: &Path, checkpoints: &Path) -> Server {
        Self::start_with_args(server_bin, checkpoints, &[])
    }

    /// Serves `checkpoints` and the built site with `extra` arguments (`--host 0.0.0.0`: still
    /// reached through 127.0.0.1).
    pub fn start_with_args(server_bin: &Path, checkpoints: &Path, extra: &[&str]) -> Server {
        Self::spawn(server_bin, checkpoints, &site_dir(), extra)
    }

    /// Serves `checkpoints` with no dashboard (for tests of the API alone).
    pub fn start_api_only(server_bin: &Path, checkpoints: &Path) -> Server {
        Self::spawn(server_bin, checkpoints, &checkpoints.join("no-app"), &[])
    }

    /// The server's process id, to read its memory use.
    pub fn pid(&self) -> u32 {
        self._process.pid()
    }

    fn spawn(server_bin: &Path, checkpoints: &Path, app_dir: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let log = artifacts_dir().join(format!("server-{port}.log"));
        let log_file =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let mut command = Command::new(server_bin);
        command
            .arg("--checkpoints")
            .arg(checkpoints)
            .args(["--port", &port.to_string()])
            .arg("--app-dir")
            .arg(app_dir)
            .args(extra)
            .env_remove("DIFFIT_SERVER_TOKEN")
            .stdout(Stdio::from(log_file.try_clone().expect("dup log")))
            .stderr(Stdio::from(log_file));
        let mut process = ProcessGuard::spawn("diffit-server", command);
        wait_for_port(port, "diffit-server", &mut process.child);
        Server {
            url: format!("http://127.0.0.1:{port}"),
            log,
            _process: process,
        }
    }

    /// The access token the server printed at start (it prints it just after it binds).
    pub fn printed_token(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let printed = std::fs::read_to_string(&self.log).unwrap_or_default();
            let token = printed
                .split("?token=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next());
            if let Some(token) = token {
                return token.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "diffit-server printed no token within 30 s: {printed}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether Chromium and chromedriver are installed; in CI their absence fails the test.
pub fn browser_available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "{CHROMIUM} or {CHROMEDRIVER} is missing: run scripts/browser-env.sh"
        );
        eprintln!("SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing (run scripts/browser-env.sh)");
    }
    present
}

/// Headless Chromium under chromedriver; both die with this value.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    _profile: tempfile::TempDir,
    _driver: ProcessGuard,
}

impl Browser {
    /// Starts chromedriver and a fresh Chromium profile.
    pub async fn start() -> Browser {
        let port = free_port();
        let mut command = Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut driver = ProcessGuard::spawn("chromedriver", command);
        wait_for_port(port, "chromedriver", &mut driver.child);

        let profile = tempfile::tempdir().expect("profile dir");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::native()
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("start a Chromium session through chromedriver");
        Browser {
            client,
            _profile: profile,
            _driver: driver,
        }
    }

    /// Saves a PNG screenshot of the page as `target/e2e-artifacts/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Waits up to `timeout` for an element matching `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(timeout)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                let shot = self.screenshot("timeout").await;
                panic!(
                    "no `{css}` within {timeout:?} ({e}); page in {}",
                    shot.display()
                );
            }
        }
    }

    /// Waits up to `timeout` for `script` (a JS expression) to be truthy.
    pub async fn wait_until(&self, script: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self
                .client
                .execute(&format!("return !!({script});"), vec![])
                .await
                .expect("execute");
            if value == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("timeout").await;
                panic!(
                    "`{script}` still false after {timeout:?}; page in {}",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replaces the text of `input[data-field="<field>"]` with `value`, as a user types it.
    pub async fn set_field(&self, field: &str, value: &str) {
        let input = self
            .client
            .find(Locator::Css(&format!(r#"input[data-field="{field}"]"#)))
            .await
            .expect(field);
        input.clear().await.expect("clear");
        input.send_keys(value).await.expect("type");
    }

    /// Number of elements matching `css`.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
            .len()
    }
}
