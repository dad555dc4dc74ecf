//! Parity with NVlabs' official DiffiT: the published architecture, imported from a PyTorch
//! state_dict, computes what PyTorch computed, stage by stage.
//!
//! The fixture (`fixtures/diffit_official_tiny.safetensors`, written by
//! `scripts/diffit_parity_fixture.py` from the official `diffit/diffit.py` with PyTorch 1.13 on
//! the CPU) holds a tiny official model with random weights, its inputs (t = 999, 0, 437) and
//! every stage of its forward pass: time features, time token, condition (time + label
//! token), patch tokens + positions, each block, the output. Values are of order 1 to 5.
//!
//! Tolerance: every stage of an image at timestep t must match to
//! [`tolerance`]`(t) = max(1e-5, t·2⁻²⁴ + 2⁻²³)` (absolute): 1e-5 up to t ≈ 167,
//! 2.6e-5 at t = 437 and **6.0e-5 at t = 999**. Why t enters: the time features are
//! `cos(t·f)`, `sin(t·f)`. The published frequencies are computed as PyTorch computes them,
//! the argument of `exp` in `f32` step by step, bit for bit PyTorch's, and `exp` correctly
//! rounded; PyTorch's vectorised CPU `exp` (SLEEF's, accurate to 1 ulp) is not, and 15 of the
//! 128 frequencies come out one ulp apart. A frequency f ≤ 1 one ulp (≤ 2⁻²⁴) off moves `t·f`,
//! and so a feature, by up to t·2⁻²⁴ (6.0e-5 at t = 999), plus the sine's own rounding (2⁻²³);
//! every later stage is computed from those features and carries that difference on (here
//! scaled by about 0.7). No `exp` matches every PyTorch build (another vector unit, a GPU,
//! rounds otherwise), so that is the bound to hold at large t. Measured (max |ours − PyTorch|):
//! at t = 0, where the features agree exactly, every stage is within 1.2e-6 (`f32` matmuls,
//! LayerNorms and softmaxes summed in another order); at t = 437 within 1.5e-5 (features) and
//! 8.2e-6 (blocks); at t = 999 within 2.8e-5 (features) and 1.9e-5 (blocks). A wrong module,
//! order or layout is off by 0.1 or more.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use model::official::import_state_dict;
use model::{max_abs_difference, Config, DiffiT, LoraConfig};

/// Largest absolute difference allowed between a stage of an image at timestep `t` and
/// PyTorch's: 1e-5, or a frequency one ulp (≤ 2⁻²⁴) off times `t` plus the sine's rounding
/// where that is more (see the module comment); 6.0e-5 at t = 999.
fn tolerance(t: f32) -> f32 {
    1e-5f32.max(t * 2f32.powi(-24) + 2f32.powi(-23))
}

const FIXTURE: &[u8] = include_bytes!("fixtures/diffit_official_tiny.safetensors");

const PARITY_PREFIX: &str = "parity.";

/// `(the official state_dict, the inputs and stages)`.
fn fixture() -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let all = candle_core::safetensors::load_buffer(FIXTURE, &Device::Cpu).unwrap();
    let (parity, state_dict): (HashMap<_, _>, HashMap<_, _>) = all
        .into_iter()
        .partition(|(name, _)| name.starts_with(PARITY_PREFIX));
    let parity = parity
        .into_iter()
        .map(|(k, v)| (k[PARITY_PREFIX.len()..].to_string(), v))
        .collect();
    (state_dict, parity)
}

fn model(cfg: &Config, tensors: HashMap<String, Tensor>) -> DiffiT {
    DiffiT::new(
        cfg,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        None,
    )
    .unwrap()
}

#[test]
fn every_stage_matches_the_official_pytorch_model() {
    let (state_dict, parity) = fixture();
    let imported = import_state_dict(state_dict).unwrap();
    assert_eq!(imported.config, Config::published_fixture());
    let net = model(&imported.config, imported.tensors);
    let labels = &parity["input.y"];
    let trace = net
        .trace(&parity["input.x"], &parity["input.t"], Some(labels))
        .unwrap();
    let mut stages = vec![
        ("time_features", trace.time_features.clone()),
        ("time_token", trace.time_token.clone()),
        ("condition", trace.condition.clone()),
        ("tokens", trace.tokens.clone()),
    ];
    for (i, block) in trace.blocks.iter().enumerate() {
        stages.push((["block.0", "block.1"][i], block.clone()));
    }
    stages.push(("output", trace.output.clone()));
    assert_eq!(stages.len(), 7, "two blocks");
    let t: Vec<f32> = parity["input.t"].to_vec1().unwrap();
    for (name, ours) in &stages {
        let theirs = &parity[&format!("stage.{name}")];
        assert_eq!(ours.dims(), theirs.dims(), "{name}");
        let per_image: Vec<f32> = (0..t.len())
            .map(|i| max_abs_difference(&ours.get(i).unwrap(), &theirs.get(i).unwrap()).unwrap())
            .collect();
        eprintln!("{name}: max |ours − PyTorch| at t = {t:?}: {per_image:?}");
        for (diff, &t) in per_image.iter().zip(&t) {
            let bound = tolerance(t);
            assert!(
                *diff <= bound,
                "{name} at t = {t} differs by {diff:e} > {bound:e}"
            );
        }
    }
    // The forward pass is the traced one.
    let out = net
        .forward_labeled(&parity["input.x"], &parity["input.t"], Some(labels), None)
        .unwrap();
    assert_eq!(max_abs_difference(&out, &trace.output).unwrap(), 0.0);
}

#[test]
fn the_null_class_is_the_unlabelled_forward_and_labels_matter() {
    let (state_dict, parity) = fixture();
    let imported = import_state_dict(state_dict).unwrap();
    let net = model(&imported.config, imported.tensors);
    let (x, t) = (&parity["input.x"], &parity["input.t"]);
    let null = Tensor::new(&[3u32, 3, 3], &Device::Cpu).unwrap();
    let unlabelled = net.forward(x, t).unwrap();
    let with_null = net.forward_labeled(x, t, Some(&null), None).unwrap();
    assert_eq!(max_abs_difference(&unlabelled, &with_null).unwrap(), 0.0);
    let class0 = Tensor::new(&[0u32, 0, 0], &Device::Cpu).unwrap();
    let labelled = net.forward_labeled(x, t, Some(&class0), None).unwrap();
    assert!(max_abs_difference(&unlabelled, &labelled).unwrap() > 1e-3);
    let out_of_range = Tensor::new(&[0u32, 4, 1], &Device::Cpu).unwrap();
    let err = net
        .forward_labeled(x, t, Some(&out_of_range), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 4 is out of range"), "{err}");
}

#[test]
fn lora_on_the_published_model_starts_as_the_base_and_fuses_to_its_forward() {
    use model::rng::Rng;
    let (state_dict, parity) = fixture();
    let imported = import_state_dict(state_dict).unwrap();
    let cfg = imported.config;
    let lora = LoraConfig {
        r: 2,
        ..LoraConfig::default()
    };
    // The default targets name the attention and MLP linears; adaLN_modulation matches
    // nothing here.
    let targets = model::lora_target_paths(&cfg, &lora);
    assert_eq!(targets.len(), 4 * cfg.depth, "{targets:?}");
    let mut adapters =
        model::init_lora_tensors(&cfg, &lora, &mut Rng::new(1), &Device::Cpu).unwrap();
    let (x, t) = (&parity["input.x"], &parity["input.t"]);
    let with_lora = |adapters: &HashMap<String, Tensor>| {
        DiffiT::new(
            &cfg,
            VarBuilder::from_tensors(imported.tensors.clone(), DType::F32, &Device::Cpu),
            Some((
                &lora,
                VarBuilder::from_tensors(adapters.clone(), DType::F32, &Device::Cpu),
            )),
        )
        .unwrap()
    };
    let base = model(&cfg, imported.tensors.clone()).forward(x, t).unwrap();
    let fresh = with_lora(&adapters).forward(x, t).unwrap();
    assert_eq!(max_abs_difference(&base, &fresh).unwrap(), 0.0);
    // Trained adapters: the fused base computes what base + adapters do.
    let mut rng = Rng::new(2);
    for path in &targets {
        let name = format::tensors::lora_b_name(path);
        let b = &adapters[&name];
        let trained = (rng.normal_tensor(b.shape(), &Device::Cpu).unwrap() * 0.05).unwrap();
        adapters.insert(name, trained);
    }
    let adapted = with_lora(&adapters).forward(x, t).unwrap();
    assert!(max_abs_difference(&base, &adapted).unwrap() > 1e-4);
    let fused = model::fuse_lora_weights(&imported.tensors, &adapters, &lora).unwrap();
    let merged = model(&cfg, fused).forward(x, t).unwrap();
    assert!(max_abs_difference(&adapted, &merged).unwrap() < 1e-5);
}
