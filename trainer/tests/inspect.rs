//! `diffit inspect FILE` on every kind of file a run and its exports hold: the kind, the
//! header metadata, which training state a checkpoint carries, tensor counts, the checksum
//! against the run's metadata, `--json`, and clear errors for files that are not safetensors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{diffit, ok, text};

fn inspect_json(path: &Path) -> Value {
    let out = ok(diffit(&["inspect", "--json", path.to_str().unwrap()]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn inspects_base_epochs_exports_and_refuses_what_is_not_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let checkpoints = d.join("checkpoints");
    let yaml = d.join("quick.yaml");
    std::fs::write(
        &yaml,
        "data:\n  num_images: 16\ntraining:\n  batch_size: 8\n  checkpoint:\n    keep_optimizer_last_n: 1\n",
    )
    .unwrap();
    let base = support::fixture_base();
    ok(diffit(&[
        "train",
        "--preset",
        "tiny",
        "--config",
        yaml.to_str().unwrap(),
        "--base-model",
        base.to_str().unwrap(),
        "--checkpoints",
        checkpoints.to_str().unwrap(),
        "--epochs",
        "2",
    ]));
    let run = checkpoints.join("run_001");

    // The newest epoch: a whole, resumable checkpoint, the file metadata recorded.
    let newest = inspect_json(&run.join("lora_weights/epoch_002.safetensors"));
    assert_eq!(newest["kind"], "lora_checkpoint");
    assert_eq!(newest["epoch"], 2);
    assert!(newest["global_step"].as_u64().unwrap() > 0);
    assert_eq!(newest["state"]["optimizer"], true);
    assert_eq!(newest["state"]["scheduler"], true);
    assert_eq!(newest["state"]["rng"], true);
    assert!(newest["metrics"]["val_loss"].is_number());
    assert_eq!(newest["lora_config"]["r"], 8);
    assert!(newest["model_config"]["hidden_size"].is_number());
    assert_eq!(newest["run"]["matches"], true);
    assert_eq!(newest["run"]["recorded_as"], "epoch 2");
    let lora = newest["lora_parameter_count"].as_u64().unwrap();
    assert_eq!(
        newest["optimizer_parameter_count"].as_u64().unwrap(),
        2 * lora
    );
    assert_eq!(newest["parameter_count"].as_u64().unwrap(), 3 * lora);
    assert_eq!(
        newest["tensors"].as_array().unwrap().len(),
        20,
        "the first 20 by default"
    );
    // An older epoch kept its weights only (keep_optimizer_last_n: 1).
    let older = inspect_json(&run.join("lora_weights/epoch_001.safetensors"));
    assert_eq!(older["state"]["optimizer"], false);
    assert_eq!(older["run"]["matches"], true);
    assert_eq!(older["optimizer_parameter_count"], 0);
    let last = inspect_json(&run.join("lora_weights/last.safetensors"));
    assert_eq!(last["run"]["recorded_as"], "last (epoch 2)");
    assert_eq!(last["run"]["matches"], true);

    // The text form, all tensors listed.
    let out = ok(diffit(&[
        "inspect",
        "--all",
        run.join("lora_weights/epoch_001.safetensors")
            .to_str()
            .unwrap(),
    ]));
    for want in [
        "kind:        LoRA epoch checkpoint (diffit-lora-checkpoint",
        "epoch:       1",
        "matches the run's metadata",
        "optimizer no, scheduler yes, RNG yes (weights only: cannot be resumed from)",
        "blocks.0.attn.qkv.lora_A.weight",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
    assert!(!out.contains("more (--all"), "{out}");

    let base_info = inspect_json(&run.join("base_model/base_model.safetensors"));
    assert_eq!(base_info["kind"], "base_model");
    assert_eq!(base_info["run"]["recorded_as"], "base model");
    assert_eq!(base_info["run"]["matches"], true);
    assert!(base_info["state"].is_null() && base_info["lora_config"].is_null());

    // Exports: a merged file names what was fused in; a PEFT folder is found by its tensors.
    let merged = d.join("merged.safetensors");
    let peft = d.join("peft");
    for (format, out) in [("merged", &merged), ("peft", &peft)] {
        ok(diffit(&[
            "export",
            "--run-number",
            "1",
            "--format",
            format,
            "--out",
            out.to_str().unwrap(),
            "--checkpoints",
            checkpoints.to_str().unwrap(),
        ]));
    }
    let m = inspect_json(&merged);
    assert_eq!(m["kind"], "merged_export");
    assert!(m["run"].is_null(), "not inside a run");
    assert_eq!(m["lora_parameter_count"], 0, "fused, no adapters left");
    let p = inspect_json(&peft);
    assert_eq!(p["kind"], "peft_adapter");
    assert_eq!(p["lora_config"]["peft_type"], "LORA");
    assert_eq!(p["lora_parameter_count"], p["parameter_count"]);

    // A changed byte: the checksum no longer matches what the run recorded.
    let victim = run.join("lora_weights/epoch_001.safetensors");
    let mut bytes = std::fs::read(&victim).unwrap();
    let last_byte = bytes.len() - 1;
    bytes[last_byte] ^= 0x10;
    std::fs::write(&victim, &bytes).unwrap();
    let out = ok(diffit(&["inspect", victim.to_str().unwrap()]));
    assert!(
        out.contains("DIFFERS from the run's metadata (blake3:"),
        "{out}"
    );

    // Not safetensors, or cut short: a clear error naming the file.
    let junk = d.join("notes.safetensors");
    std::fs::write(&junk, b"these are my notes, not tensors").unwrap();
    let cut = d.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    for (file, why) in [
        (&junk, "not a safetensors file"),
        (&cut, "truncated safetensors file"),
    ] {
        let out = diffit(&["inspect", file.to_str().unwrap()]);
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(1), "{msg}");
        assert!(
            msg.contains(why) && msg.contains(file.to_str().unwrap()),
            "{msg}"
        );
    }
    let out = diffit(&["inspect", d.join("absent.safetensors").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("absent.safetensors"), "{}", text(&out));
}
