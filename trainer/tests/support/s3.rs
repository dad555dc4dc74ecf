//! A real S3-compatible server for a test (moto, from the venv `make test` creates), and the
//! AWS environment that points `diffit` and the test process at it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::kill_process_group;

/// One raw HTTP/1.0 request to the server; the reply's status line and body.
fn http(addr: &str, request: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
}

/// A moto S3 server for one test, with bucket `runs`; stopped when dropped.
pub struct S3Server {
    child: Child,
    addr: String,
}

impl S3Server {
    /// Starts `moto_server` from the venv's `bin` on a free loopback port and creates `runs`.
    pub fn start(bin: &Path) -> S3Server {
        Self::launch(Command::new(bin.join("moto_server")).args(["-H", "127.0.0.1", "-p"]))
    }

    /// Starts moto answering one request at a time (support/moto_serial.py), where a
    /// conditional create is atomic as S3's is; threaded moto checks and writes in two steps.
    pub fn start_serial(bin: &Path) -> S3Server {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/moto_serial.py");
        Self::launch(
            Command::new(bin.join("python"))
                .arg(script)
                .arg("127.0.0.1"),
        )
    }

    /// Runs `command PORT` with a free loopback port, and waits until it serves S3.
    fn launch(command: &mut Command) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = command
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let server = S3Server {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let put = format!(
                "PUT /runs HTTP/1.0\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
                server.addr
            );
            let created = |reply: String| reply.split_whitespace().nth(1) == Some("200");
            if http(&server.addr, &put).is_some_and(created) {
                break;
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every key in the bucket, as a plain S3 listing shows it.
    pub fn keys(&self) -> Vec<String> {
        let get = format!(
            "GET /runs?list-type=2 HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.addr
        );
        let reply = http(&self.addr, &get).unwrap();
        let mut keys: Vec<String> = reply
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }

    /// Points `cmd` at this server with the AWS environment (and nothing from the caller's).
    pub fn env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    }

    /// `diffit args…` against this server, waited for.
    pub fn diffit(&self, args: &[&str]) -> Output {
        self.env(&mut Command::new(env!("CARGO_BIN_EXE_diffit")))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The command `diffit args…` on one core (see [`super::diffit_one_core`]) against this
    /// server, not started.
    pub fn one_core_command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = super::one_core_command(args);
        self.env(&mut cmd);
        cmd
    }

    /// `diffit args…` against this server on one core, waited for.
    pub fn diffit_one_core(&self, args: &[&str]) -> Output {
        self.one_core_command(args).output().unwrap()
    }

    /// The test process's own handle on `url` in this server (the AWS environment is set
    /// process-wide, so one test binary uses one server).
    pub fn bucket(&self, url: &str) -> remote::Bucket {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ENDPOINT_URL", self.endpoint());
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent");
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
        remote::Bucket::open(&url::Url::parse(url).unwrap()).unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        kill_process_group(&mut self.child);
    }
}
