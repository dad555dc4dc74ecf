//! `diffit sync` against a real S3-compatible server (moto, from the test venv, on 127.0.0.1):
//! a bucket holds the run's tree as on disk, a second sync copies nothing, a sync back gives a
//! run that verifies byte for byte, a grown run uploads only what changed, a damaged file is
//! never uploaded, and a second writer of a run's metadata fails instead of clobbering it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use support::s3::S3Server;
use support::{ok, older_main_checkpoints_copy, text, venv_bin};

/// `(files copied, unchanged)` from sync's summary line.
fn counts(said: &str) -> (usize, usize) {
    let line = said.lines().find(|l| l.starts_with("synced ")).unwrap();
    let copied = line.split(": ").nth(1).unwrap().split(' ').next().unwrap();
    let unchanged = line.rsplit(", ").next().unwrap().split(' ').next().unwrap();
    (copied.parse().unwrap(), unchanged.parse().unwrap())
}

fn object(b: &remote::Bucket, rel: &str) -> Vec<u8> {
    b.get(rel).unwrap().unwrap().0.to_vec()
}

/// One server for both halves (the test process's AWS environment is process-wide).
#[test]
fn sync_through_a_real_s3_server() {
    let Some(bin) = venv_bin("moto_server") else {
        return;
    };
    let s3 = S3Server::start(&bin);
    runs_go_to_a_bucket_and_back_copying_only_what_differs(&s3);
    a_damaged_file_is_never_uploaded_and_a_second_writer_cannot_clobber_metadata(&s3);
}

fn runs_go_to_a_bucket_and_back_copying_only_what_differs(s3: &S3Server) {
    let b = s3.bucket("s3://runs/team/checkpoints");
    let dir = tempfile::tempdir().unwrap();
    let local = older_main_checkpoints_copy(dir.path());
    let l = local.to_str().unwrap();
    let bucket = "s3://runs/team/checkpoints";

    let said = ok(s3.diffit(&["sync", l, bucket]));
    assert_eq!(counts(&said).1, 0, "{said}");
    // The bucket shows the seed's layout, as on disk.
    let keys = s3.keys();
    for key in [
        "team/checkpoints/run_001/config.json",
        "team/checkpoints/run_001/metadata.json",
        "team/checkpoints/run_001/base_model/base_model.safetensors",
        "team/checkpoints/run_001/lora_weights/epoch_002.safetensors",
        "team/checkpoints/run_001/lora_weights/epoch_003.safetensors",
        "team/checkpoints/run_001/lora_weights/best.safetensors",
        "team/checkpoints/run_001/lora_weights/last.safetensors",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
    }
    assert!(
        keys.iter()
            .any(|k| k.contains("/run_001/logs/events.out.tfevents")),
        "{keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.ends_with(".lock")),
        "no lock files: {keys:?}"
    );
    assert!(
        object(&b, "run_001/lora_weights/best.safetensors")
            == std::fs::read(local.join("run_001/lora_weights/best.safetensors")).unwrap(),
        "best in the bucket is the best epoch's bytes"
    );

    // Nothing differs: nothing is copied.
    let again = ok(s3.diffit(&["sync", l, bucket]));
    assert_eq!(counts(&again).0, 0, "{again}");

    // Back to an empty dir on "another machine": the run verifies and lists, byte for byte.
    let fresh = dir.path().join("fresh");
    let f = fresh.to_str().unwrap();
    ok(s3.diffit(&["sync", bucket, f]));
    ok(s3.diffit(&["verify", "--run-number", "1", "--checkpoints", f]));
    for rel in [
        "run_001/metadata.json",
        "run_001/lora_weights/epoch_003.safetensors",
        "run_001/base_model/base_model.safetensors",
    ] {
        assert!(
            std::fs::read(fresh.join(rel)).unwrap() == std::fs::read(local.join(rel)).unwrap(),
            "{rel} differs after the round trip"
        );
    }
    let table = ok(s3.diffit(&["train", "--list-runs", "--checkpoints", f]));
    assert!(table.contains("diffit_lora_trees"), "{table}");

    // The run grows by an epoch there: only the new and changed files go up.
    ok(s3.diffit(&[
        "train",
        "--resume",
        "--run-number",
        "1",
        "--epochs",
        "4",
        "--checkpoints",
        f,
    ]));
    let grown = ok(s3.diffit(&["sync", f, bucket]));
    let (copied, unchanged) = counts(&grown);
    assert!(unchanged >= 3, "base and epochs 2-3 stay: {grown}");
    assert!(
        (4..=8).contains(&copied),
        "epoch 4, best/last, config, logs, metadata: {grown}"
    );
    assert!(s3
        .keys()
        .iter()
        .any(|k| k == "team/checkpoints/run_001/lora_weights/epoch_004.safetensors"));
    let meta: format::Metadata =
        serde_json::from_slice(&object(&b, "run_001/metadata.json")).unwrap();
    assert_eq!(meta.last_epoch(), Some(4));
}

fn a_damaged_file_is_never_uploaded_and_a_second_writer_cannot_clobber_metadata(s3: &S3Server) {
    let dir = tempfile::tempdir().unwrap();
    let local = older_main_checkpoints_copy(dir.path());
    let l = local.to_str().unwrap();
    let target = "s3://runs/ck";
    let epoch = local.join("run_001/lora_weights/epoch_003.safetensors");
    let mut bytes = std::fs::read(&epoch).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&epoch, &bytes).unwrap();

    let out = s3.diffit(&["sync", l, target]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("epoch_003.safetensors") && said.contains("checksum"),
        "{said}"
    );
    let keys: Vec<String> = s3
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("ck/"))
        .collect();
    assert!(
        !keys.iter().any(|k| k.ends_with("run_001/metadata.json")),
        "metadata must not name a file that was not copied: {keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.ends_with("epoch_003.safetensors")),
        "{keys:?}"
    );

    // A writer that read metadata.json, then lost the race to another, fails clearly.
    let b = s3.bucket("s3://runs/race");
    b.put_if("run_001/metadata.json", "v1".into(), None)
        .unwrap();
    let (_, read) = b.get("run_001/metadata.json").unwrap().unwrap();
    assert!(
        matches!(
            b.put_if("run_001/metadata.json", "again".into(), None),
            Err(remote::RemoteError::Conflict { .. })
        ),
        "create-if-absent over an existing object"
    );
    b.put_if("run_001/metadata.json", "v2 (theirs)".into(), Some(&read))
        .unwrap();
    let err = b
        .put_if("run_001/metadata.json", "v2 (ours)".into(), Some(&read))
        .unwrap_err();
    assert!(matches!(err, remote::RemoteError::Conflict { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("s3://runs/race/run_001/metadata.json"),
        "{err}"
    );
    let (now, _) = b.get("run_001/metadata.json").unwrap().unwrap();
    assert_eq!(&now[..], b"v2 (theirs)", "nothing of theirs is lost");
}
