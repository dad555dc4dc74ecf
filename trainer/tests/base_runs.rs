//! Base-model training as managed runs (`diffit pretrain` → `base_training/run_NNN/`): every
//! epoch saved with its optimizer state, keep-last-N retention with `best` kept, a run killed
//! mid-way resumes to the same bits, `--list-runs` shows the best loss, and a LoRA run takes its
//! base from a base run's checkpoint, verified, recording the lineage.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::path::Path;

use format::Metadata;

fn base_meta(checkpoints: &Path, run: u32) -> Metadata {
    let path = checkpoints.join(format!("base_training/run_{run:03}/metadata.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Every tensor of an epoch file of a base run, by name, as raw bytes.
fn tensors(checkpoints: &Path, run: u32, epoch: u32) -> Vec<(String, Vec<u8>)> {
    let path = checkpoints.join(format!(
        "base_training/run_{run:03}/lora_weights/epoch_{epoch:03}.safetensors"
    ));
    support::tensor_bytes(&path)
}

const PRETRAIN: [&str; 10] = [
    "pretrain",
    "--preset",
    "tiny",
    "--epochs",
    "4",
    "--num-images",
    "256",
    "--keep-last-n",
    "2",
    "--seed",
];

#[test]
fn base_runs_save_every_epoch_resume_exactly_and_feed_lora_runs() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("checkpoints");
    let ck_arg = ck.to_str().unwrap();
    let mut args: Vec<&str> = PRETRAIN.to_vec();
    args.extend(["5", "--checkpoints", ck_arg]);

    // Straight through.
    let text = support::ok(support::diffit_one_core(&args));
    assert!(text.contains("base run 001 finished 4 epochs"), "{text}");
    let meta = base_meta(&ck, 1);
    assert_eq!(meta.checkpoints.len(), 4);
    let best = meta.best_checkpoint.as_ref().unwrap().epoch;
    for c in &meta.checkpoints {
        assert!(c.checksum.is_some() && c.metrics.contains_key("train_loss"));
        // keep-last-2, and the best.
        assert_eq!(
            c.is_live(),
            c.epoch >= 3 || c.epoch == best,
            "epoch {}",
            c.epoch
        );
        assert!(c.is_resumable() || !c.is_live());
    }
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ck.join("base_training/run_001/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["kind"], "base_training");
    assert_eq!(config["training"]["seed"], 5);

    // Killed once epoch 1 is saved, then resumed: the same bits at epoch 4.
    let killed_at =
        support::kill_after_epoch(&args, &ck.join("base_training/run_002/metadata.json"), 1);
    assert!(killed_at < 4, "killed before the end");
    let text = support::ok(support::diffit_one_core(&[
        "pretrain",
        "--checkpoints",
        ck_arg,
        "--run-number",
        "2",
        "--resume",
    ]));
    assert!(text.contains("resuming after epoch"), "{text}");
    assert!(
        tensors(&ck, 1, 4) == tensors(&ck, 2, 4),
        "a resumed base run ends bit-identical to a straight one"
    );

    // The inspector tells a base-training epoch from a LoRA one, and checks it against the run.
    let best_file = ck.join("base_training/run_001/lora_weights/best.safetensors");
    let text = support::ok(support::diffit(&["inspect", best_file.to_str().unwrap()]));
    assert!(text.contains("base-training epoch checkpoint"), "{text}");
    assert!(text.contains("matches the run's metadata"), "{text}");

    // The table: both runs, their best loss, aligned.
    let table = support::ok(support::diffit(&[
        "pretrain",
        "--list-runs",
        "--checkpoints",
        ck_arg,
    ]));
    let header = table.lines().nth(1).unwrap();
    let at = header.find("Best Loss").expect("a Best Loss column");
    let best_loss = format!(
        "{:.5}",
        meta.best_checkpoint.as_ref().unwrap().metrics["train_loss"]
    );
    let rows: Vec<&str> = table.lines().skip(3).collect();
    assert_eq!(rows.len(), 2, "{table}");
    for row in rows {
        assert_eq!(
            row.get(at..at + best_loss.len()),
            Some(best_loss.as_str()),
            "{table}"
        );
    }

    // A LoRA run on base run 1's best checkpoint records where its base came from.
    let out = support::ok(support::diffit_one_core(&[
        "train",
        "--preset",
        "tiny",
        "--base-run",
        "1",
        "--base-checkpoint",
        "best",
        "--epochs",
        "1",
        "--checkpoints",
        ck_arg,
    ]));
    assert!(
        out.contains(&format!("base: base run 1, best (epoch {best}")),
        "{out}"
    );
    let lora: Metadata =
        serde_json::from_slice(&std::fs::read(ck.join("run_001/metadata.json")).unwrap()).unwrap();
    let lineage = lora.base_lineage.expect("the lineage is recorded");
    assert_eq!((lineage.run_number, lineage.epoch), (1, best));
    let record = meta.checkpoints.iter().find(|c| c.epoch == best).unwrap();
    assert_eq!(Some(&lineage.checksum), record.checksum.as_ref());
    support::verify_run_1(ck_arg);

    // Asking for what is not there, or a damaged checkpoint: clear errors, no run created.
    for (extra, expected) in [
        (["--base-run", "9", "--base-checkpoint", "best"], "run 9"),
        (["--base-run", "1", "--base-checkpoint", "1"], "epoch 1"),
    ] {
        let out = support::diffit(
            &[
                &["train", "--preset", "tiny", "--checkpoints", ck_arg][..],
                &extra[..],
            ]
            .concat(),
        );
        assert!(!out.status.success());
        assert!(
            support::text(&out).contains(expected),
            "{}",
            support::text(&out)
        );
    }
    let last = ck.join("base_training/run_001/lora_weights/epoch_004.safetensors");
    let mut bytes = std::fs::read(&last).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&last, bytes).unwrap();
    let out = support::diffit(&[
        "train",
        "--preset",
        "tiny",
        "--checkpoints",
        ck_arg,
        "--base-run",
        "1",
        "--base-checkpoint",
        "4",
    ]);
    assert!(!out.status.success());
    assert!(
        support::text(&out).contains("checksum"),
        "{}",
        support::text(&out)
    );
    assert!(
        !ck.join("run_002").exists(),
        "no run is created on a refused base"
    );
}
