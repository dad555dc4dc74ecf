//! `diffit import` and `diffit export --format official`: NVlabs' official DiffiT weights in
//! and out, and the files the importer refuses, each error naming the file and the tensor.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use support::{diffit, fixture_base, ok, text};

/// The official tiny model's state_dict saved by `torch.save` in float16 (written by
/// `scripts/diffit_parity_fixture.py`).
fn official_pt() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffit_official_tiny_f16.pt")
}

/// The parity fixture: the same model's state_dict in float32 plus `parity.*` inputs and
/// stages, which are no part of the model.
fn parity_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures/diffit_official_tiny.safetensors")
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn save(tensors: &HashMap<String, Tensor>, path: &Path) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

/// The official state_dict of the parity fixture, as its own safetensors file.
fn official_safetensors(dir: &Path) -> PathBuf {
    let state_dict: HashMap<String, Tensor> = load(&parity_fixture())
        .into_iter()
        .filter(|(name, _)| !name.starts_with("parity."))
        .collect();
    let path = dir.join("official.safetensors");
    save(&state_dict, &path);
    path
}

/// `diffit import FILE --out BASE`, expected to fail with exit code 1; returns what it printed.
fn refused(file: &Path, out: &Path) -> String {
    let run = diffit(&[
        "import",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let printed = text(&run);
    assert_eq!(run.status.code(), Some(1), "{printed}");
    assert!(!out.exists(), "nothing is written for a refused file");
    assert!(
        printed.contains(file.to_str().unwrap()),
        "names the file: {printed}"
    );
    printed
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    model::max_abs_difference(
        &a.to_dtype(DType::F32).unwrap(),
        &b.to_dtype(DType::F32).unwrap(),
    )
    .unwrap()
}

#[test]
fn a_pytorch_checkpoint_imports_and_exports_back_to_the_official_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    let printed = ok(diffit(&[
        "import",
        official_pt().to_str().unwrap(),
        "--out",
        base.to_str().unwrap(),
    ]));
    assert!(
        printed.contains("2 blocks of 2 heads, 3 classes + null"),
        "{printed}"
    );
    let config = trainer::train::pretrain::base_model_config(&base)
        .unwrap()
        .unwrap();
    assert_eq!(config, model::Config::published_fixture());
    // Our layout: the patch kernel as a linear map, no buffers.
    let ours = load(&base);
    assert_eq!(ours["x_embedder.proj.weight"].dims(), &[16, 12]);
    assert!(!ours.contains_key("pos_embed"));
    assert!(!ours.keys().any(|k| k.ends_with("relative_position_index")));

    // Back to the official layout: every tensor of the PyTorch file, the f16 weights as f32.
    let exported = dir.path().join("official.safetensors");
    ok(diffit(&[
        "export",
        "--format",
        "official",
        "--base",
        base.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]));
    let official: HashMap<String, Tensor> = candle_core::pickle::read_all(official_pt())
        .unwrap()
        .into_iter()
        .collect();
    let back = load(&exported);
    let mut names: Vec<&String> = back.keys().collect();
    names.sort();
    let mut expected: Vec<&String> = official.keys().collect();
    expected.sort();
    assert_eq!(names, expected);
    for (name, t) in &official {
        assert_eq!(back[name].dims(), t.dims(), "{name}");
        let diff = max_abs(&back[name], t);
        if name == "pos_embed" {
            // Ours is the f32 embedding, the file's its f16 rounding.
            assert!(diff < 1e-3, "{name}: {diff}");
        } else {
            assert_eq!(diff, 0.0, "{name}");
        }
    }
    assert_eq!(
        back["blocks.1.attn.relative_position_index"].dtype(),
        DType::I64
    );

    // The float32 file of the same model imports to the same base up to f16 rounding.
    let base32 = dir.path().join("base32.safetensors");
    ok(diffit(&[
        "import",
        official_safetensors(dir.path()).to_str().unwrap(),
        "--out",
        base32.to_str().unwrap(),
    ]));
    let ours32 = load(&base32);
    for (name, t) in &ours {
        assert!(max_abs(t, &ours32[name]) < 2e-3, "{name}");
    }
}

#[test]
fn missing_extra_and_mis_shaped_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("base.safetensors");
    let good = load(&official_safetensors(dir.path()));

    // The parity fixture holds inputs and stages besides the model.
    let printed = refused(&parity_fixture(), &out);
    assert!(
        printed.contains("not an official DiffiT state_dict"),
        "{printed}"
    );
    assert!(
        printed.contains("unexpected tensor `parity.input.t`"),
        "{printed}"
    );
    assert!(
        printed.contains("unexpected tensor `parity.stage.output`"),
        "{printed}"
    );

    let mut missing = good.clone();
    missing.remove("blocks.1.mlp.fc1.weight");
    let file = dir.path().join("missing.safetensors");
    save(&missing, &file);
    let printed = refused(&file, &out);
    assert!(
        printed.contains("missing tensor `blocks.1.mlp.fc1.weight`"),
        "{printed}"
    );

    let mut wrong = good.clone();
    wrong.insert(
        "blocks.0.attn.qkv_temb.weight".into(),
        Tensor::zeros((48, 8), DType::F32, &Device::Cpu).unwrap(),
    );
    let file = dir.path().join("wrong_shape.safetensors");
    save(&wrong, &file);
    let printed = refused(&file, &out);
    assert!(
        printed.contains(
            "tensor `blocks.0.attn.qkv_temb.weight` has shape [48, 8], expected [48, 16]"
        ),
        "{printed}"
    );

    // A tensor the sizes are read from, of the wrong rank.
    let mut unreadable = good;
    unreadable.insert(
        "x_embedder.proj.weight".into(),
        Tensor::zeros((16, 12), DType::F32, &Device::Cpu).unwrap(),
    );
    let file = dir.path().join("linear_patch.safetensors");
    save(&unreadable, &file);
    let printed = refused(&file, &out);
    assert!(
        printed.contains("tensor `x_embedder.proj.weight` has shape [16, 12]; the official model's is [hidden, channels, patch, patch]"),
        "{printed}"
    );
}

#[test]
fn files_that_are_neither_safetensors_nor_pytorch_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("base.safetensors");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };

    let printed = refused(&write("notes.txt", b"not a model at all"), &out);
    assert!(
        printed.contains("neither a safetensors file nor a PyTorch checkpoint (zip)"),
        "{printed}"
    );
    let printed = refused(&write("empty.pt", b""), &out);
    assert!(printed.contains("neither a safetensors file"), "{printed}");

    // A zip cut short: the PyTorch reader says so.
    let pt = std::fs::read(official_pt()).unwrap();
    let printed = refused(&write("torn.pt", &pt[..pt.len() / 2]), &out);
    assert!(
        printed.contains("cannot read it as a PyTorch checkpoint"),
        "{printed}"
    );

    // A bare pickle: PyTorch's format before 1.6.
    let printed = refused(&write("legacy.pth", b"\x80\x02}q\x00."), &out);
    assert!(
        printed.contains("legacy (pre-1.6) pickle format"),
        "{printed}"
    );

    // A safetensors file that is not a state_dict at all: every tensor it lacks is named.
    let mut other = HashMap::new();
    other.insert(
        "weight".to_string(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    let file = dir.path().join("other.safetensors");
    save(&other, &file);
    let printed = refused(&file, &out);
    assert!(printed.contains("missing tensor `pos_embed`"), "{printed}");
    assert!(
        printed.contains("missing tensor `final_layer.linear.weight`"),
        "{printed}"
    );

    // An entry that is not there.
    let run = diffit(&[
        "import",
        official_pt().to_str().unwrap(),
        "--key",
        "ema",
        "--out",
        out.to_str().unwrap(),
    ]);
    let printed = text(&run);
    assert_eq!(run.status.code(), Some(1), "{printed}");
    assert!(printed.contains("ema"), "{printed}");
    // --key means nothing for safetensors: a usage error.
    let run = diffit(&[
        "import",
        official_safetensors(dir.path()).to_str().unwrap(),
        "--key",
        "ema",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(!out.exists());
}

#[test]
fn only_the_published_architecture_exports_in_the_official_format() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("official.safetensors");
    let base = fixture_base();
    let run = diffit(&[
        "export",
        "--format",
        "official",
        "--base",
        base.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let printed = text(&run);
    assert_eq!(run.status.code(), Some(2), "{printed}");
    assert!(
        printed.contains("only the published architecture has an official state_dict"),
        "{printed}"
    );
    assert!(!out.exists());
    // --base is for the official format; merged and peft export a run.
    let run = diffit(&[
        "export",
        "--format",
        "merged",
        "--base",
        base.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    let run = diffit(&["export", "--format", "official", "--out", "x"]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
}
