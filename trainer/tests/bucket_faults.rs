//! A run written into a bucket through faults, against a real S3-compatible server (moto on
//! 127.0.0.1) behind a proxy that throttles (503 SlowDown), fails (500) and cuts connections in
//! the middle of request bodies, or refuses connections outright; and a trainer killed with
//! SIGKILL at twenty instants while it writes into the bucket. Every time, the bucket names only
//! complete objects, its run verifies, and resuming ends bit for bit where an uninterrupted run
//! ends.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::faulty_proxy::{Fault, FaultyProxy};
use support::s3::S3Server;
use support::{fixture_base, ok, text, venv_bin, verify_run_1};

const EPOCHS: &str = "3";

#[test]
fn a_bucket_run_survives_faults() {
    let Some(bin) = venv_bin("moto_server") else {
        return;
    };
    let s3 = S3Server::start(&bin);
    let dir = tempfile::tempdir().unwrap();
    let reference = uninterrupted_local_run(dir.path());
    throttled_failed_and_cut_requests_are_retried(&s3, dir.path(), &reference);
    an_endpoint_restarted_mid_upload_is_waited_for(&s3, dir.path(), &reference);
    an_endpoint_that_stays_down_stops_training_clearly(&s3, dir.path(), &reference);
    sigkill_at_twenty_instants(&s3, dir.path(), &reference);
    a_large_upload_cut_midway_leaves_no_object(&s3);
}

fn train_args(checkpoints: &str, staging: &Path, resume: bool) -> Vec<String> {
    let mut args: Vec<String> = vec!["train".into()];
    if resume {
        args.extend(["--resume".into(), "--run-number".into(), "1".into()]);
    } else {
        args.extend([
            "--preset".into(),
            "tiny".into(),
            "--base".into(),
            fixture_base().to_str().unwrap().into(),
            "--keep-last-n".into(),
            "10".into(),
        ]);
    }
    args.extend([
        "--epochs".into(),
        EPOCHS.into(),
        "--checkpoints".into(),
        checkpoints.into(),
        "--staging".into(),
        staging.to_str().unwrap().into(),
    ]);
    args
}

/// `diffit` on one core against `endpoint` (the server, or the proxy in front of it).
fn diffit_via(s3: &S3Server, endpoint: &str, args: &[String]) -> Command {
    let mut cmd = s3.one_core_command(args);
    cmd.env("AWS_ENDPOINT_URL", endpoint);
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

fn last_epoch_file(checkpoints: &Path) -> Vec<u8> {
    std::fs::read(checkpoints.join(format!("run_001/lora_weights/epoch_00{EPOCHS}.safetensors")))
        .unwrap()
}

fn uninterrupted_local_run(dir: &Path) -> Vec<u8> {
    let local = dir.join("reference");
    let staging = dir.join("unused");
    let args = train_args(local.to_str().unwrap(), &staging, false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(support::diffit_one_core(&args));
    last_epoch_file(&local)
}

/// Brings the bucket's run down (straight from the server) and checks it: every file its
/// metadata names is there and matches its checksum. Returns the local copy's dir.
fn check_bucket_run(s3: &S3Server, url: &str, into: &Path) -> format::Metadata {
    let _ = std::fs::remove_dir_all(into);
    ok(s3.diffit(&["sync", url, into.to_str().unwrap()]));
    verify_run_1(into.to_str().unwrap());
    store::read_metadata(&format::RunLayout::new(into, 1)).unwrap()
}

fn throttled_failed_and_cut_requests_are_retried(s3: &S3Server, dir: &Path, reference: &[u8]) {
    let proxy = FaultyProxy::start(s3.addr());
    // Every 4th request throttled, every 7th a server error, and every 3rd upload with a body
    // (epochs, the base, metadata) cut halfway through it.
    proxy.set_plan(|n, method, body| {
        if method == "PUT" && body > 0 && n % 3 == 0 {
            Fault::CutMidBody
        } else if n % 4 == 1 {
            Fault::SlowDown
        } else if n % 7 == 2 {
            Fault::InternalError
        } else {
            Fault::Pass
        }
    });
    let url = "s3://runs/flaky";
    let out = run(diffit_via(
        s3,
        &proxy.endpoint(),
        &train_args(url, &dir.join("flaky"), false),
    ));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let faults = proxy.faults.load(Ordering::SeqCst);
    let requests = proxy.requests.load(Ordering::SeqCst);
    assert!(faults >= 10, "{faults} faults in {requests} requests");
    eprintln!("flaky endpoint: {faults} faults injected in {requests} requests");
    let copy = dir.join("flaky-copy");
    let meta = check_bucket_run(s3, url, &copy);
    assert_eq!(meta.status, format::RunStatus::Finished);
    assert!(last_epoch_file(&copy) == reference, "{said}");
}

/// The endpoint goes away in the middle of an upload (the connection cut halfway through the
/// body, every connection refused for 3 s) and comes back: the retries span the gap, training
/// goes on and the run ends as an uninterrupted one.
fn an_endpoint_restarted_mid_upload_is_waited_for(s3: &S3Server, dir: &Path, reference: &[u8]) {
    let proxy = FaultyProxy::start(s3.addr());
    let down = proxy.down.clone();
    let triggered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // After the claim and the first commits, the next upload with a body.
    proxy.set_plan(move |n, method, body| {
        if n < 20 || method != "PUT" || body == 0 || triggered.swap(true, Ordering::SeqCst) {
            return Fault::Pass;
        }
        down.store(true, Ordering::SeqCst);
        let down = down.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(3));
            down.store(false, Ordering::SeqCst);
        });
        Fault::CutMidBody
    });
    let url = "s3://runs/restarted";
    let out = run(diffit_via(
        s3,
        &proxy.endpoint(),
        &train_args(url, &dir.join("restarted"), false),
    ));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let refused = proxy.refused.load(Ordering::SeqCst);
    assert!(
        refused >= 1,
        "no request came while the endpoint was down: {said}"
    );
    eprintln!("restarted endpoint: {refused} connection(s) refused while it was down");
    let copy = dir.join("restarted-copy");
    let meta = check_bucket_run(s3, url, &copy);
    assert_eq!(meta.status, format::RunStatus::Finished);
    assert!(last_epoch_file(&copy) == reference, "{said}");
}

fn an_endpoint_that_stays_down_stops_training_clearly(s3: &S3Server, dir: &Path, reference: &[u8]) {
    let proxy = FaultyProxy::start(s3.addr());
    let url = "s3://runs/outage";
    // Up for the claim and the first commits, then down for good.
    let seen_before_outage = 25;
    let requests = proxy.requests.clone();
    let down = proxy.down.clone();
    proxy.set_plan(move |n, _, _| {
        if n >= seen_before_outage {
            down.store(true, Ordering::SeqCst);
            return Fault::InternalError;
        }
        Fault::Pass
    });
    let out = run({
        let mut cmd = diffit_via(
            s3,
            &proxy.endpoint(),
            &train_args(url, &dir.join("outage"), false),
        );
        cmd.env("DIFFIT_REMOTE_MAX_RETRIES", "2")
            .env("DIFFIT_REMOTE_RETRY_TIMEOUT_SECS", "5");
        cmd
    });
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("cannot upload the run to s3://runs/outage/run_001")
            && said.contains("resume with --resume"),
        "{said}"
    );
    assert!(requests.load(Ordering::SeqCst) >= seen_before_outage);
    // What the bucket holds is complete; resuming once it is back finishes the run exactly.
    let copy = dir.join("outage-copy");
    let meta = check_bucket_run(s3, url, &copy);
    assert_ne!(meta.status, format::RunStatus::Finished);
    ok(run(diffit_via(
        s3,
        &s3.endpoint(),
        &train_args(url, &dir.join("outage-resumed"), true),
    )));
    let meta = check_bucket_run(s3, url, &copy);
    assert_eq!(meta.status, format::RunStatus::Finished);
    assert!(last_epoch_file(&copy) == reference);
}

/// SIGKILL while training into the bucket, at spread instants (a fixed sequence, so a failure
/// reproduces); after each, the bucket's run verifies and the next process resumes it.
fn sigkill_at_twenty_instants(s3: &S3Server, dir: &Path, reference: &[u8]) {
    let url = "s3://runs/killed";
    let copy = dir.join("killed-copy");
    // The first process commits at least the run's config before it is killed.
    let mut started = false;
    let mut delays_ms: Vec<u64> = (0..20).map(|i| 150 + (i * 397) % 2600).collect();
    delays_ms.rotate_left(7);
    for (i, delay) in delays_ms.iter().enumerate() {
        let mut cmd = diffit_via(
            s3,
            &s3.endpoint(),
            &train_args(url, &dir.join(format!("killed-{}", i % 3)), started),
        );
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*delay));
        let _ = child.kill();
        let status = child.wait().unwrap();
        // The bucket's run, if it has committed anything yet, is whole.
        let has_config = s3.keys().iter().any(|k| k == "killed/run_001/config.json");
        if has_config {
            check_bucket_run(s3, url, &copy);
            started = true;
        } else if status.success() {
            panic!("a finished run must have its config in the bucket");
        } else {
            // Killed before its first commit: the bucket holds at most the claimed number's
            // metadata (status created, no config): nothing to resume. Free the number, so the
            // next process creates run 1 again.
            let _ = s3.bucket(url).delete("run_001/metadata.json");
        }
    }
    let out = run(diffit_via(
        s3,
        &s3.endpoint(),
        &train_args(url, &dir.join("killed-final"), started),
    ));
    assert!(out.status.success(), "{}", text(&out));
    let meta = check_bucket_run(s3, url, &copy);
    assert_eq!(meta.status, format::RunStatus::Finished);
    assert!(last_epoch_file(&copy) == reference);
}

/// A multipart upload (above 8 MiB) whose connection is cut in the middle leaves no object, and
/// the same upload succeeds once the network lets it.
fn a_large_upload_cut_midway_leaves_no_object(s3: &S3Server) {
    let proxy = FaultyProxy::start(s3.addr());
    proxy.set_plan(|_, method, body| {
        if method == "PUT" && body > 1 << 20 {
            Fault::CutMidBody
        } else {
            Fault::Pass
        }
    });
    std::env::set_var("DIFFIT_REMOTE_MAX_RETRIES", "1");
    std::env::set_var("DIFFIT_REMOTE_RETRY_TIMEOUT_SECS", "5");
    s3.bucket("s3://runs/large"); // The AWS environment of the test process.
    std::env::set_var("AWS_ENDPOINT_URL", proxy.endpoint());
    let via_proxy = remote::Bucket::open(&url::Url::parse("s3://runs/large").unwrap()).unwrap();
    let bytes: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
    let err = via_proxy
        .put("big.safetensors", bytes.clone().into())
        .unwrap_err();
    assert!(
        err.to_string().contains("s3://runs/large/big.safetensors"),
        "{err}"
    );
    let direct = s3.bucket("s3://runs/large");
    assert!(
        direct.size("big.safetensors").unwrap().is_none(),
        "no partial object"
    );
    proxy.set_plan(|_, _, _| Fault::Pass);
    via_proxy
        .put("big.safetensors", bytes.clone().into())
        .unwrap();
    assert_eq!(direct.get("big.safetensors").unwrap().unwrap().0, bytes);
    std::env::remove_var("DIFFIT_REMOTE_MAX_RETRIES");
    std::env::remove_var("DIFFIT_REMOTE_RETRY_TIMEOUT_SECS");
}
