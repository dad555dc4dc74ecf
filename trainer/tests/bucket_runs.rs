//! Runs whose home is a bucket (`--checkpoints s3://…`) and runs mirrored to one (`--mirror`),
//! against a real S3-compatible server (moto, on 127.0.0.1): the bucket holds the run's tree as
//! on disk and names only complete objects, a run resumes on a machine with an empty disk and
//! ends bit-identical to the same run resumed on one local disk, 16 concurrent trainers get
//! distinct run numbers, a second writer of a run fails before writing anything, and a mirror that cannot
//! be reached never fails training.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::path::Path;
use std::process::Output;

use support::s3::S3Server;
use support::{fixture_base, ok, text, venv_bin, verify_run_1};

/// One server for every part (the test process's AWS environment is process-wide).
#[test]
fn runs_in_a_real_s3_server() {
    let Some(bin) = venv_bin("moto_server") else {
        return;
    };
    let s3 = S3Server::start(&bin);
    let dir = tempfile::tempdir().unwrap();
    let reference = same_run_on_a_local_disk(dir.path());
    a_run_written_into_a_bucket_resumes_on_an_empty_machine(&s3, dir.path(), &reference);
    a_mirrored_run_resumes_from_the_mirror(&s3, dir.path(), &reference);
    concurrent_creators_get_distinct_numbers(&bin, dir.path());
    a_second_writer_fails_before_writing(&s3, dir.path());
    two_trainers_resuming_one_run_leave_it_to_one(&s3, dir.path());
    an_unreachable_mirror_never_fails_training(&s3, dir.path());
}

const EPOCHS: &str = "3";

/// `diffit train` on the fixture base, tiny preset, keeping every epoch.
fn train_args<'a>(checkpoints: &'a str, epochs: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let base = Box::leak(
        fixture_base()
            .to_str()
            .unwrap()
            .to_string()
            .into_boxed_str(),
    );
    let mut args = vec![
        "train",
        "--preset",
        "tiny",
        "--base",
        base,
        "--epochs",
        epochs,
        "--keep-last-n",
        "10",
        "--checkpoints",
        checkpoints,
    ];
    args.extend_from_slice(extra);
    args
}

fn resume_args<'a>(checkpoints: &'a str, epochs: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--resume",
        "--run-number",
        "1",
        "--epochs",
        epochs,
        "--checkpoints",
        checkpoints,
    ];
    args.extend_from_slice(extra);
    args
}

fn epoch_file(checkpoints: &Path, run: u32, epoch: u32) -> Vec<u8> {
    std::fs::read(checkpoints.join(format!(
        "run_{run:03}/lora_weights/epoch_{epoch:03}.safetensors"
    )))
    .unwrap()
}

/// The last epoch's LoRA file of the same run trained for 2 epochs and resumed to 3 on one
/// local disk (the schedule spans the epochs asked for, so the steps must be the same).
fn same_run_on_a_local_disk(dir: &Path) -> Vec<u8> {
    let local = dir.join("reference");
    let l = local.to_str().unwrap();
    ok(support::diffit_one_core(&train_args(l, "2", &[])));
    ok(support::diffit_one_core(&resume_args(l, EPOCHS, &[])));
    epoch_file(&local, 1, 3)
}

fn metadata_in(s3: &S3Server, url: &str, run: u32) -> format::Metadata {
    let (bytes, _) = s3
        .bucket(url)
        .get(&format!("run_{run:03}/metadata.json"))
        .unwrap()
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The bucket's run list as the run index gives it equals the list read from every run's
/// metadata (the index removed for that, then put back); returns how many runs the index has
/// settled.
fn assert_index_agrees(s3: &S3Server, url: &str) -> usize {
    let bucket = s3.bucket(url);
    let index = remote::index::read_index(&bucket)
        .unwrap()
        .unwrap_or_default();
    let with_index = remote::list_runs(&bucket).unwrap();
    let saved = bucket.get(remote::index::INDEX_OBJECT).unwrap();
    bucket.delete(remote::index::INDEX_OBJECT).unwrap();
    let from_metadata = remote::list_runs(&bucket).unwrap();
    if let Some((bytes, _)) = saved {
        bucket.put(remote::index::INDEX_OBJECT, bytes).unwrap();
    }
    let rows = |listing: &[store::RunListing]| -> Vec<(u32, Option<format::api::RunInfo>)> {
        listing
            .iter()
            .map(|row| (row.run_number, row.info.as_ref().ok().cloned()))
            .collect()
    };
    assert_eq!(
        rows(&with_index),
        rows(&from_metadata),
        "the run index disagrees with the metadata in {url}"
    );
    with_index
        .iter()
        .filter(|row| index.settled(row.run_number).is_some())
        .count()
}

/// Every object `meta` names exists in the bucket under `prefix` (the commit point's promise).
fn assert_names_only_complete_objects(s3: &S3Server, prefix: &str, meta: &format::Metadata) {
    let keys = s3.keys();
    let has = |rel: &str| keys.iter().any(|k| k == &format!("{prefix}/{rel}"));
    for c in meta.live_checkpoints() {
        assert!(has(&c.path), "{} named but absent: {keys:?}", c.path);
    }
    if let Some(base) = &meta.base_model {
        assert!(has(&base.path), "{} named but absent: {keys:?}", base.path);
    }
}

fn a_run_written_into_a_bucket_resumes_on_an_empty_machine(
    s3: &S3Server,
    dir: &Path,
    reference: &[u8],
) {
    let url = "s3://runs/home";
    let staging = dir.join("machine-a");
    let said = ok(s3.diffit_one_core(&train_args(
        url,
        "2",
        &["--staging", staging.to_str().unwrap()],
    )));
    assert!(
        said.contains("writing every commit of run 001 to s3://runs/home"),
        "{said}"
    );
    // The bucket shows the seed's layout, as on disk.
    let keys = s3.keys();
    for rel in [
        "config.json",
        "metadata.json",
        "base_model/base_model.safetensors",
        "lora_weights/epoch_001.safetensors",
        "lora_weights/epoch_002.safetensors",
        "lora_weights/best.safetensors",
        "lora_weights/last.safetensors",
    ] {
        let key = format!("home/run_001/{rel}");
        assert!(keys.contains(&key), "{key} not in {keys:?}");
    }
    assert!(keys
        .iter()
        .any(|k| k.starts_with("home/run_001/logs/events.out.tfevents")));
    let meta = metadata_in(s3, url, 1);
    assert_eq!(meta.status, format::RunStatus::Finished);
    assert_eq!(meta.last_epoch(), Some(2));
    assert_names_only_complete_objects(s3, "home", &meta);
    // The config names the bucket, not the staging directory.
    let (config, _) = s3.bucket(url).get("run_001/config.json").unwrap().unwrap();
    let config = String::from_utf8(config.to_vec()).unwrap();
    assert!(config.contains("s3://runs/home"), "{config}");
    assert!(!config.contains("machine-a"), "{config}");

    // Another machine, nothing on its disk: the run comes from the bucket and goes on.
    let other = dir.join("machine-b");
    let said = ok(s3.diffit_one_core(&resume_args(
        url,
        EPOCHS,
        &["--staging", other.to_str().unwrap()],
    )));
    assert!(
        said.contains("brought run 001 from s3://runs/home"),
        "{said}"
    );
    // What the bucket holds is what `aws s3 sync` would bring down: a run the local store
    // opens and verifies, whose last epoch is bit-identical to the same run's on one disk.
    let copy = dir.join("synced");
    ok(s3.diffit(&["sync", url, copy.to_str().unwrap()]));
    verify_run_1(copy.to_str().unwrap());
    assert!(
        epoch_file(&copy, 1, 3) == reference,
        "epoch 3 resumed from the bucket differs from epoch 3 resumed on one disk"
    );
    let meta = metadata_in(s3, url, 1);
    assert_eq!(meta.last_epoch(), Some(3));
    assert_names_only_complete_objects(s3, "home", &meta);

    // The next run in the bucket is run 2, from any machine.
    let said = ok(s3.diffit(&train_args(
        url,
        "1",
        &["--staging", staging.to_str().unwrap()],
    )));
    assert!(said.contains("run 002"), "{said}");
    let listed = s3.bucket(url).list_dirs().unwrap();
    assert_eq!(listed, vec!["run_001".to_string(), "run_002".to_string()]);
    // Both finished: the run index lists them without reading their metadata.
    assert_eq!(assert_index_agrees(s3, url), 2);
    // The bucket's runs list as a disk's do; commands that need the files say how to bring
    // them down.
    let table = ok(s3.diffit(&["runs", "list", "--checkpoints", url]));
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("1 ") || l.starts_with("2 "))
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    let out = s3.diffit(&["runs", "show", "1", "--checkpoints", url]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("diffit sync s3://runs/home DIR"),
        "{}",
        text(&out)
    );
}

fn a_mirrored_run_resumes_from_the_mirror(s3: &S3Server, dir: &Path, reference: &[u8]) {
    let url = "s3://runs/mirror";
    let local = dir.join("mirrored");
    let said = ok(s3.diffit_one_core(&train_args(
        local.to_str().unwrap(),
        "2",
        &["--mirror", url],
    )));
    assert!(
        said.contains("mirroring every commit of run 001 to s3://runs/mirror"),
        "{said}"
    );
    assert!(said.contains("the longest a save waited"), "{said}");
    let meta = metadata_in(s3, url, 1);
    assert_eq!(
        meta.status,
        format::RunStatus::Finished,
        "the last state is flushed"
    );
    assert_eq!(meta.last_epoch(), Some(2));
    assert_names_only_complete_objects(s3, "mirror", &meta);
    assert!(
        s3.bucket(url)
            .get("run_001/lora_weights/epoch_002.safetensors")
            .unwrap()
            .unwrap()
            .0
            == epoch_file(&local, 1, 2)
    );

    // A fresh machine with an empty checkpoints dir resumes from the mirror.
    let fresh = dir.join("fresh-mirrored");
    let said = ok(s3.diffit_one_core(&resume_args(
        fresh.to_str().unwrap(),
        EPOCHS,
        &["--mirror", url],
    )));
    assert!(
        said.contains("brought run 001 from s3://runs/mirror"),
        "{said}"
    );
    verify_run_1(fresh.to_str().unwrap());
    assert!(epoch_file(&fresh, 1, 3) == reference);
    assert_eq!(metadata_in(s3, url, 1).last_epoch(), Some(3));
}

/// Sixteen trainers claim run numbers in one bucket at once (as processes on different machines
/// would: only the bucket is shared).
/// 16 `diffit train` processes creating runs in one bucket at once get 16 distinct numbers,
/// and each finishes its run. Against moto serving one request at a time, where a conditional
/// create is atomic as S3's is (see support/moto_serial.py: threaded moto's is not).
fn concurrent_creators_get_distinct_numbers(bin: &Path, dir: &Path) {
    let serial = S3Server::start_serial(bin);
    // A few images, so 16 trainers on two cores spend their time claiming and committing.
    let data = dir.join("crowd-data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..6u32 {
        image::RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 16) as u8, (i * 40) as u8])
        })
        .save(data.join(format!("{i}.png")))
        .unwrap();
    }
    let url = "s3://runs/crowd";
    let outputs: Vec<Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (serial, data) = (&serial, &data);
                let staging = dir.join(format!("crowd-{i}"));
                scope.spawn(move || {
                    let mut cmd = serial.one_core_command(&train_args(
                        url,
                        "1",
                        &[
                            "--data",
                            data.to_str().unwrap(),
                            "--staging",
                            staging.to_str().unwrap(),
                        ],
                    ));
                    cmd.output().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in outputs {
        ok(out);
    }
    let expected: Vec<String> = (1..=16).map(|n| format!("run_{n:03}")).collect();
    assert_eq!(serial.bucket(url).list_dirs().unwrap(), expected);
    // Sixteen writers updated the run index at once (conditional writes, retried): none lost.
    assert_eq!(assert_index_agrees(&serial, url), 16);
    for n in 1..=16 {
        let meta = metadata_in(&serial, url, n);
        assert_eq!(meta.status, format::RunStatus::Finished, "run {n}");
        assert_eq!(meta.live_checkpoints().count(), 1, "run {n}");
    }
}

/// Two machines resumed the same run; the one that commits second fails before writing.
fn a_second_writer_fails_before_writing(s3: &S3Server, dir: &Path) {
    let url = "s3://runs/home";
    let open = || s3.bucket(url);
    let (a, b) = (dir.join("writer-a"), dir.join("writer-b"));
    let (mut first, _) = remote::RunReplica::pull(open(), &a, 1).unwrap();
    let (mut second, _) = remote::RunReplica::pull(open(), &b, 1).unwrap();
    // Each changes its local copy of the run through the store, then pushes.
    for (local, status) in [
        (&a, format::RunStatus::Running),
        (&b, format::RunStatus::Interrupted),
    ] {
        let mut run = store::CheckpointManager::open(local, 1).unwrap();
        run.set_status(status).unwrap();
    }
    first.push().unwrap();
    let theirs = s3
        .bucket(url)
        .get("run_001/metadata.json")
        .unwrap()
        .unwrap()
        .0;
    let err = second.push().unwrap_err();
    assert!(
        matches!(err, remote::RemoteError::Superseded { .. }),
        "{err}"
    );
    let said = err.to_string();
    assert!(
        said.contains("s3://runs/home/run_001/metadata.json") && said.contains("another writer"),
        "{said}"
    );
    let now = s3
        .bucket(url)
        .get("run_001/metadata.json")
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(now, theirs, "nothing of the first writer's is overwritten");
}

/// Two `diffit train --resume` of one bucket run at once, from two machines: whichever commits
/// second stops with an error naming the run and the other writer, the other finishes the run,
/// and the bucket's copy verifies with every epoch.
fn two_trainers_resuming_one_run_leave_it_to_one(s3: &S3Server, dir: &Path) {
    let url = "s3://runs/race";
    ok(s3.diffit_one_core(&train_args(
        url,
        "1",
        &["--staging", dir.join("race-first").to_str().unwrap()],
    )));
    let outputs: Vec<Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = ["race-a", "race-b"]
            .map(|machine| {
                let staging = dir.join(machine);
                scope.spawn(move || {
                    s3.diffit_one_core(&resume_args(
                        url,
                        "3",
                        &["--staging", staging.to_str().unwrap()],
                    ))
                })
            })
            .into_iter()
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (won, lost): (Vec<&Output>, Vec<&Output>) =
        outputs.iter().partition(|out| out.status.success());
    assert_eq!(
        (won.len(), lost.len()),
        (1, 1),
        "{}\n---\n{}",
        text(&outputs[0]),
        text(&outputs[1])
    );
    let said = text(lost[0]);
    assert!(
        said.contains("s3://runs/race/run_001/metadata.json")
            && said.contains("another writer")
            && said.contains("stopped training"),
        "{said}"
    );
    let copy = dir.join("race-copy");
    ok(s3.diffit(&["sync", url, copy.to_str().unwrap()]));
    verify_run_1(copy.to_str().unwrap());
    let meta = store::read_metadata(&format::RunLayout::new(&copy, 1)).unwrap();
    assert_eq!(meta.status, format::RunStatus::Finished);
    let epochs: Vec<u32> = meta.live_checkpoints().map(|c| c.epoch).collect();
    assert_eq!(epochs, [1, 2, 3]);
    // The run was settled after its first training, then resumed twice at once: the index
    // still agrees with what was committed last.
    assert_index_agrees(s3, url);
}

/// A mirror whose endpoint does not answer: training finishes, the local run is complete, and
/// the warning says the mirror is behind.
fn an_unreachable_mirror_never_fails_training(s3: &S3Server, dir: &Path) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let local = dir.join("unmirrored");
    let out = s3
        .env(&mut std::process::Command::new(env!(
            "CARGO_BIN_EXE_diffit"
        )))
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("DIFFIT_REMOTE_MAX_RETRIES", "1")
        .env("DIFFIT_REMOTE_RETRY_TIMEOUT_SECS", "2")
        .args(train_args(
            local.to_str().unwrap(),
            "2",
            &["--mirror", "s3://runs/nowhere"],
        ))
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("s3://runs/nowhere") && said.contains("behind"),
        "{said}"
    );
    verify_run_1(local.to_str().unwrap());
}
