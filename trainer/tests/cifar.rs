//! CIFAR-100 as the seed system fine-tunes on it: binary batches (written here, in the
//! published format), the five tree classes, flips and rotations. The seed's own YAML keys
//! (`dataset`, `data_config`, `data.augmentation`) train a run end to end; the flags do the
//! same; an augmented run resumed after its first epoch ends bit-identical to one trained
//! straight through; and augmentation really changes what is trained.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::path::Path;

use format::Metadata;

/// The seed system's fine-tuning classes: CIFAR-100's trees.
const TREES: [u8; 5] = [47, 52, 56, 59, 96];

/// `cifar-100-binary/` under `dir`: a `train.bin` of 200 records (the five tree classes and
/// three others, in turn), each a smooth picture coloured by its class, and the names file.
fn write_cifar100(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("cifar-100-binary");
    std::fs::create_dir_all(&out).unwrap();
    let labels = [47u8, 3, 52, 56, 10, 59, 96, 80];
    let mut bytes = Vec::new();
    for i in 0..200usize {
        let fine = labels[i % labels.len()];
        bytes.extend([fine / 5, fine]);
        for c in 0..3usize {
            for y in 0..32usize {
                for x in 0..32usize {
                    let v = (usize::from(fine) * (c + 1) * 7 + x * (c + 2) + y * 3 + i) % 256;
                    bytes.push(v as u8);
                }
            }
        }
    }
    std::fs::write(out.join("train.bin"), bytes).unwrap();
    let mut names: Vec<String> = (0..100).map(|i| format!("class_{i}")).collect();
    for (label, name) in TREES.iter().zip([
        "maple_tree",
        "oak_tree",
        "palm_tree",
        "pine_tree",
        "willow_tree",
    ]) {
        names[usize::from(*label)] = name.to_string();
    }
    std::fs::write(out.join("fine_label_names.txt"), names.join("\n") + "\n").unwrap();
    out
}

fn metadata(checkpoints: &Path) -> Metadata {
    serde_json::from_slice(&std::fs::read(checkpoints.join("run_001/metadata.json")).unwrap())
        .unwrap()
}

use support::tensor_bytes as tensors;

fn epoch_file(checkpoints: &Path, epoch: u32) -> std::path::PathBuf {
    checkpoints.join(format!("run_001/lora_weights/epoch_{epoch:03}.safetensors"))
}

#[test]
fn cifar100_trees_train_from_the_seeds_yaml_and_resume_bit_identical_with_augmentation() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_cifar100(dir.path());
    let base = support::fixture_base();
    let yaml = dir.path().join("seed.yaml");
    std::fs::write(
        &yaml,
        format!(
            "num_epochs: 3\nbatch_size_train: 8\npretrained_path: {}\noutput_dir: {}\n\
             dataset: cifar100\ndata_config:\n  root: {}\n  classes: [47, 52, 56, 59, 96]\n\
             data:\n  img_size: 16\n  augmentation: true\n  val_split: 0.25\n",
            base.display(),
            dir.path().join("straight").display(),
            dir.path().display(),
        ),
    )
    .unwrap();
    let config = yaml.to_str().unwrap();

    // Straight through: three epochs from the seed's YAML (the data found under
    // data_config.root).
    let text = support::ok(support::diffit_one_core(&[
        "train", "--preset", "tiny", "--config", config,
    ]));
    assert!(text.contains("run 001 finished 3 epochs"), "{text}");
    assert!(!text.contains("is accepted but has no effect"), "{text}");
    let straight = dir.path().join("straight");
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(straight.join("run_001/config.json")).unwrap())
            .unwrap();
    let d = &stored["training"]["data"];
    assert_eq!(d["format"], "cifar100");
    assert_eq!(d["classes"], serde_json::json!([47, 52, 56, 59, 96]));
    assert_eq!(d["augmentation"]["horizontal_flip"], 0.5);
    assert_eq!(d["augmentation"]["rotation"], 5.0);
    let meta = metadata(&straight);
    assert_eq!(meta.checkpoints.len(), 3);
    support::verify_run_1(straight.to_str().unwrap());

    // Killed once epoch 1 is saved, then resumed: the same bits, because an image's flip and
    // angle are a function of (seed, epoch, index), not of a saved stream.
    let resumed = dir.path().join("resumed");
    let resumed_arg = resumed.to_str().unwrap();
    let killed_at = support::kill_after_epoch(
        &[
            "train",
            "--preset",
            "tiny",
            "--config",
            config,
            "--checkpoints",
            resumed_arg,
        ],
        &resumed.join("run_001/metadata.json"),
        1,
    );
    assert!(killed_at < 3, "killed before the end");
    support::ok(support::diffit_one_core(&[
        "train",
        "--checkpoints",
        resumed_arg,
        "--run-number",
        "1",
        "--resume",
    ]));
    assert!(
        tensors(&epoch_file(&straight, 3)) == tensors(&epoch_file(&resumed, 3)),
        "a resumed augmented run ends bit-identical to a straight one"
    );

    // The same data through the flags, without augmentation: a different first epoch.
    let plain = dir.path().join("plain");
    let file = data.join("train.bin");
    support::ok(support::diffit_one_core(&[
        "train",
        "--preset",
        "tiny",
        "--base",
        base.to_str().unwrap(),
        "--data",
        file.to_str().unwrap(),
        "--classes",
        "47,52,56,59,96",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--config",
        &write_without_augmentation(dir.path()),
        "--checkpoints",
        plain.to_str().unwrap(),
    ]));
    assert!(
        tensors(&epoch_file(&plain, 1)) != tensors(&epoch_file(&straight, 1)),
        "augmentation changes what is trained"
    );

    // A class the file does not hold, and a truncated file: clear errors, nothing trained.
    let none = dir.path().join("none");
    let refused = |data: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--preset",
            "tiny",
            "--base",
            base.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--checkpoints",
            none.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = support::diffit(&args);
        assert!(!out.status.success());
        support::text(&out)
    };
    let text = refused(&file, &["--classes", "5"]);
    assert!(
        text.contains("train.bin") && text.contains("no image of the classes [5]"),
        "{text}"
    );
    let bytes = std::fs::read(&file).unwrap();
    let torn = dir.path().join("torn.bin");
    std::fs::write(&torn, &bytes[..bytes.len() / 2 + 1]).unwrap();
    let text = refused(&torn, &["--data-format", "cifar100"]);
    assert!(
        text.contains("torn.bin") && text.contains("not a whole number"),
        "{text}"
    );
    assert!(
        std::fs::read_dir(dir.path().join("none"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "no run is left by a refused data source"
    );
}

/// The seed YAML's other settings (val split, image size) without its data section's
/// augmentation, for the flag-driven run.
fn write_without_augmentation(dir: &Path) -> String {
    let path = dir.join("plain.yaml");
    std::fs::write(&path, "data:\n  val_split: 0.25\n").unwrap();
    path.to_str().unwrap().to_string()
}
