//! Class labels and guidance end to end: the published presets train on the tree species
//! (label dropout, an adapter on the label table), the labels round-trip through checkpoints
//! and a resume ends bit for bit where an uninterrupted run does, `diffit sample --class
//! --cfg-scale` samples by class; a folder's subfolders are its classes; `--base` takes a
//! published model (one `diffit import` made) with its own sizes; the 32×32 preset trains at
//! tiny width.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use model::data::{Dataset, TREE_SPECIES};
use model::diffusion::{ddpm_eval_loss, NoiseSchedule};
use model::rng::Rng;
use model::{Config, DiffiT, LABEL_EMBEDDER};
use support::{diffit, diffit_one_core, ok, text};
use trainer::train::config::Preset;
use trainer::train::pretrain::{pretrain, save_base, PretrainConfig};

/// A briefly pretrained base of `cfg` (two steps: enough for a non-zero head, so that
/// fine-tuning has gradients), saved under `dir`.
fn base_of(dir: &Path, preset: Preset, cfg: Config) -> PathBuf {
    let pre = PretrainConfig {
        model: cfg.clone(),
        epochs: 1,
        num_images: 32,
        batch_size: 16,
        ..PretrainConfig::for_preset(preset)
    };
    let tensors = pretrain(&pre, false, &Arc::new(AtomicBool::new(false))).unwrap();
    let path = dir.join("base.safetensors");
    save_base(&path, &tensors, &cfg).unwrap();
    path
}

/// A small fine-tuning config: 40 tree images, batches of 8.
fn quick_yaml(dir: &Path, preset: &str) -> PathBuf {
    let path = dir.join("quick.yaml");
    let text = format!(
        "model:\n  preset: {preset}\ndata:\n  num_images: 40\ntraining:\n  batch_size: 8\n  warmup_steps: 1\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn train(config: &Path, base: &Path, epochs: &str, checkpoints: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--config",
        config.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "--epochs",
        epochs,
        "--checkpoints",
        checkpoints.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(diffit_one_core(&args))
}

/// `diffit train` (on one core, as [`train`]) killed with SIGKILL as soon as run 1 has
/// committed an epoch.
fn killed_after_epoch_1(config: &Path, base: &Path, epochs: &str, checkpoints: &Path) {
    let mut child = std::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(env!("CARGO_BIN_EXE_diffit"))
        .args(["train", "--config"])
        .arg(config)
        .arg("--base")
        .arg(base)
        .args(["--epochs", epochs, "--checkpoints"])
        .arg(checkpoints)
        .env_remove("CANDLE_NUM_THREADS")
        .env_remove("RAYON_NUM_THREADS")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metadata = checkpoints.join("run_001/metadata.json");
    let started = std::time::Instant::now();
    loop {
        let saved = std::fs::read(&metadata)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<format::Metadata>(&bytes).ok())
            .is_some_and(|meta| !meta.checkpoints.is_empty());
        if saved {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        assert!(started.elapsed().as_secs() < 120, "no epoch saved");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn load(path: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

#[test]
fn a_published_preset_learns_the_tree_species_resumes_bit_for_bit_and_samples_by_class() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = base_of(d, Preset::PublishedTiny, Config::published_tiny());
    let yaml = quick_yaml(d, "published-tiny");
    let straight = d.join("straight");
    let printed = train(&yaml, &base, "2", &straight, &[]);
    assert!(
        printed.contains("classes: broadleaf, conifer") && printed.contains("label dropout 0.1"),
        "{printed}"
    );

    // The run records its classes, the label dropout and the adapter on the label table, and
    // its checkpoints hold that adapter.
    let run = straight.join("run_001");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["classes"], serde_json::json!(TREE_SPECIES));
    assert_eq!(config["training"]["label_dropout"], 0.1);
    assert_eq!(config["model"]["num_classes"], 7);
    let targets = config["lora"]["target_modules"].as_array().unwrap();
    assert!(
        targets.contains(&serde_json::json!(LABEL_EMBEDDER)),
        "{targets:?}"
    );
    let last = "lora_weights/epoch_002.safetensors";
    let weights = load(&run.join(last));
    let label_b = &weights[&format::tensors::lora_b_name(LABEL_EMBEDDER)];
    assert_eq!(
        label_b.dims(),
        &[8, 8],
        "7 species + the null class, rank 8"
    );
    let trained: f32 = label_b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(trained > 0.0, "the label adapter trained");

    // The same run killed once its first epoch is saved, then resumed: the same bits as the
    // uninterrupted run (the label dropout draws come from the checkpointed noise RNG).
    let resumed = d.join("resumed");
    killed_after_epoch_1(&yaml, &base, "2", &resumed);
    ok(diffit_one_core(&[
        "train",
        "--resume",
        "--run-number",
        "1",
        "--epochs",
        "2",
        "--checkpoints",
        resumed.to_str().unwrap(),
    ]));
    assert!(
        std::fs::read(resumed.join("run_001").join(last)).unwrap()
            == std::fs::read(run.join(last)).unwrap(),
        "the resumed labelled run's final LoRA differs from the uninterrupted run's"
    );

    // Sampling by class name and number, guided; unguided; refused classes name the choices.
    let sample = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--run-number",
            "1",
            "--checkpoints",
            straight.to_str().unwrap(),
            "--n",
            "4",
            "--steps",
            "4",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        diffit(&args)
    };
    let guided = d.join("guided.png");
    let printed = ok(sample(
        &guided,
        &["--class", "conifer,3", "--cfg-scale", "4"],
    ));
    assert!(printed.contains("class conifer,3, guidance 4"), "{printed}");
    let plain = d.join("plain.png");
    ok(sample(&plain, &[]));
    assert_ne!(
        std::fs::read(&guided).unwrap(),
        std::fs::read(&plain).unwrap()
    );
    let refused = sample(&d.join("x.png"), &["--class", "oak"]);
    let said = text(&refused);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(said.contains("oak") && said.contains("conifer"), "{said}");
}

#[test]
fn an_unconditional_published_model_fine_tunes_on_labelled_trees_without_labels() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The published architecture with only the null class (`num_classes: 0`).
    let cfg = Config {
        num_classes: Some(0),
        ..Config::published_tiny()
    };
    let base = base_of(d, Preset::PublishedTiny, cfg);
    let yaml = quick_yaml(d, "published-tiny");
    let checkpoints = d.join("ck");
    let printed = train(&yaml, &base, "1", &checkpoints, &[]);
    assert!(!printed.contains("label dropout"), "{printed}");
    let run = checkpoints.join("run_001");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["num_classes"], 0);
    let targets = config["lora"]["target_modules"].as_array().unwrap();
    assert!(
        !targets.contains(&serde_json::json!(LABEL_EMBEDDER)),
        "no adapter on a one-row label table: {targets:?}"
    );
    let weights = load(&run.join("lora_weights/epoch_001.safetensors"));
    assert!(!weights.contains_key(&format::tensors::lora_b_name(LABEL_EMBEDDER)));
    let refused = diffit(&[
        "sample",
        "--run-number",
        "1",
        "--checkpoints",
        checkpoints.to_str().unwrap(),
        "--class",
        "0",
        "--out",
        d.join("x.png").to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
}

#[test]
fn a_hybrid_base_with_a_label_table_fine_tunes_on_the_species() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = Config {
        num_classes: Some(TREE_SPECIES.len()),
        ..Config::tiny()
    };
    let base = base_of(d, Preset::Tiny, cfg);
    let checkpoints = d.join("ck");
    let printed = train(&quick_yaml(d, "tiny"), &base, "1", &checkpoints, &[]);
    assert!(printed.contains("classes: broadleaf, conifer"), "{printed}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoints.join("run_001/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model"]["num_classes"], 7);
    assert_eq!(config["model"]["adaln"], true);
    // A hybrid base whose network is not the preset's is still refused.
    let other = Config {
        depth: 1,
        num_classes: Some(TREE_SPECIES.len()),
        ..Config::tiny()
    };
    std::fs::create_dir_all(d.join("other")).unwrap();
    let wrong = base_of(&d.join("other"), Preset::Tiny, other);
    let mut args = vec!["train", "--preset", "tiny", "--epochs", "1", "--base"];
    args.push(wrong.to_str().unwrap());
    args.extend(["--checkpoints", checkpoints.to_str().unwrap()]);
    let refused = diffit(&args);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("does not match"),
        "{}",
        text(&refused)
    );
}

/// Writes a `size`×`size` PNG of one colour.
fn png(path: &Path, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb(rgb));
    img.save(path).unwrap();
}

#[test]
fn class_subfolders_label_a_folder_and_an_imported_published_base_trains_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("pets");
    for (i, class) in ["cats", "dogs"].iter().enumerate() {
        for k in 0..3u8 {
            png(
                &data.join(class).join(format!("{k}.png")),
                [40 * k, 100 * i as u8, 7],
            );
        }
    }
    std::fs::create_dir_all(data.join(".thumbnails")).unwrap();
    let set = trainer::data::load_folder(&data, 8).unwrap();
    assert_eq!(set.classes(), ["cats", "dogs"]);
    assert_eq!(set.labels().unwrap(), [0, 0, 0, 1, 1, 1]);
    // A folder with images of its own is unlabelled, its subfolders left alone (as before).
    png(&d.join("flat/a.png"), [1, 2, 3]);
    png(&d.join("flat/sub/b.png"), [1, 2, 3]);
    let flat = trainer::data::load_folder(&d.join("flat"), 8).unwrap();
    assert_eq!((flat.len(), flat.labels()), (1, None));

    // The official tiny model (8×8, 3 classes, learned variance), imported, trains as it is
    // on the two classes, whatever the preset.
    let official =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffit_official_tiny_f16.pt");
    let base = d.join("imported.safetensors");
    ok(diffit(&[
        "import",
        official.to_str().unwrap(),
        "--out",
        base.to_str().unwrap(),
    ]));
    let yaml = quick_yaml(d, "small");
    let ck = d.join("checkpoints");
    let printed = train(&yaml, &base, "1", &ck, &["--data", data.to_str().unwrap()]);
    assert!(
        printed.contains("published DiffiT of its own sizes (8 px")
            && printed.contains("classes: cats, dogs"),
        "{printed}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("run_001/config.json")).unwrap()).unwrap();
    assert_eq!(
        config["model"],
        serde_json::to_value(Config::published_fixture()).unwrap()
    );
    ok(diffit(&[
        "sample",
        "--run-number",
        "1",
        "--checkpoints",
        ck.to_str().unwrap(),
        "--n",
        "2",
        "--steps",
        "2",
        "--class",
        "dogs",
        "--out",
        d.join("dogs.png").to_str().unwrap(),
    ]));
    // The seven tree species do not fit its three classes: said before anything trains.
    let refused = diffit_one_core(&[
        "train",
        "--config",
        yaml.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "--epochs",
        "1",
        "--checkpoints",
        d.join("other").to_str().unwrap(),
    ]);
    let said = text(&refused);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(
        said.contains("7 classes") && said.contains("has 3"),
        "{said}"
    );
}

/// The preset's 32×32 network at tiny width (one block of 16).
fn narrow_32() -> Config {
    Config {
        hidden_size: 16,
        depth: 1,
        num_heads: 2,
        ..Config::published_32()
    }
}

#[test]
fn the_32_pixel_preset_trains_at_tiny_width() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = narrow_32();
    let schedule = NoiseSchedule::default();
    let x0 = Dataset::generic(16, 32, 5)
        .batch(&(0..16).collect::<Vec<_>>(), &Device::Cpu)
        .unwrap();
    let loss = |tensors: std::collections::HashMap<String, Tensor>| {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let net = DiffiT::new(&cfg, vb, None).unwrap();
        ddpm_eval_loss(&net, &x0, &schedule, &mut Rng::new(3))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let fresh = model::init_base_tensors(&cfg, &mut Rng::new(1), &Device::Cpu).unwrap();
    let before = loss(fresh);
    let pre = PretrainConfig {
        model: cfg.clone(),
        epochs: 8,
        num_images: 32,
        batch_size: 8,
        learning_rate: 3e-3,
        ..PretrainConfig::for_preset(Preset::Published32)
    };
    let tensors = pretrain(&pre, false, &Arc::new(AtomicBool::new(false))).unwrap();
    let after = loss(tensors.clone());
    assert!(
        after < 0.9 * before,
        "pretraining at 32×32: loss {before} → {after}"
    );

    // Fine-tuned through the CLI on 32×32 trees with their species, and sampled at 32×32.
    let base = d.join("base32.safetensors");
    save_base(&base, &tensors, &cfg).unwrap();
    let yaml = d.join("q.yaml");
    std::fs::write(
        &yaml,
        "model:\n  preset: published-32\ndata:\n  num_images: 16\ntraining:\n  batch_size: 8\n",
    )
    .unwrap();
    let ck = d.join("checkpoints");
    train(&yaml, &base, "1", &ck, &[]);
    let out = d.join("s.png");
    ok(diffit(&[
        "sample",
        "--run-number",
        "1",
        "--checkpoints",
        ck.to_str().unwrap(),
        "--n",
        "1",
        "--steps",
        "2",
        "--class",
        "palm",
        "--out",
        out.to_str().unwrap(),
    ]));
    // One 32×32 image scaled ×4 inside a 2-pixel gap.
    let png = image::open(&out).unwrap();
    assert_eq!((png.width(), png.height()), (128 + 4, 128 + 4));
}
