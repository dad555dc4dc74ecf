//! DiffiT + LoRA: time dependence, fresh adapters, fusing, gradients and bad adapters.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap, SGD};
use format::tensors::{lora_a_name, lora_b_name};
use model::diffusion::{ddpm_loss, NoiseSchedule};
use model::rng::Rng;
use model::{
    base_tensor_shapes, fuse_lora_weights, init_base_tensors, init_lora_tensors, lora_target_paths,
    parameter_count, unfuse_lora_weights, validate_lora, Config, DiffiT, LoraConfig, ModelError,
};

const DEV: Device = Device::Cpu;

/// Random base weights with a non-zero output layer, so outputs are not trivially zero.
fn random_base(cfg: &Config, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = Rng::new(seed);
    let mut base = init_base_tensors(cfg, &mut rng, &DEV).unwrap();
    // Zero-initialised layers (the head, adaLN's modulation) get weights as after training.
    let mut zeroed: Vec<String> = base
        .keys()
        .filter(|k| k.contains("adaLN_modulation.weight"))
        .cloned()
        .collect();
    zeroed.sort();
    zeroed.push("final_layer.linear.weight".into());
    for name in zeroed {
        let w = base[&name].clone();
        base.insert(
            name,
            (rng.normal_tensor(w.shape(), &DEV).unwrap() * 0.1).unwrap(),
        );
    }
    base
}

/// Adapters with a non-zero B, i.e. as after some training.
fn trained_lora(cfg: &Config, lora: &LoraConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = Rng::new(seed);
    let mut map = init_lora_tensors(cfg, lora, &mut rng, &DEV).unwrap();
    for path in lora_target_paths(cfg, lora) {
        let b = &map[&lora_b_name(&path)];
        let nb = (rng.normal_tensor(b.shape(), &DEV).unwrap() * 0.05).unwrap();
        map.insert(lora_b_name(&path), nb);
    }
    map
}

fn plain_model(cfg: &Config, base: &HashMap<String, Tensor>) -> DiffiT {
    DiffiT::new(
        cfg,
        VarBuilder::from_tensors(base.clone(), DType::F32, &DEV),
        None,
    )
    .unwrap()
}

fn lora_model(
    cfg: &Config,
    base: &HashMap<String, Tensor>,
    lora: &LoraConfig,
    ad: &HashMap<String, Tensor>,
) -> DiffiT {
    DiffiT::new(
        cfg,
        VarBuilder::from_tensors(base.clone(), DType::F32, &DEV),
        Some((lora, VarBuilder::from_tensors(ad.clone(), DType::F32, &DEV))),
    )
    .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    model::max_abs_difference(a, b).unwrap()
}

fn inputs(cfg: &Config, b: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let s = cfg.image_size;
    let x = rng.normal_tensor((b, cfg.in_channels, s, s), &DEV).unwrap();
    let t = Tensor::from_vec(
        (0..b).map(|i| (i * 300 + 7) as f32).collect::<Vec<_>>(),
        b,
        &DEV,
    )
    .unwrap();
    (x, t)
}

#[test]
fn output_has_input_shape_and_depends_on_t() {
    let cfg = Config::tiny();
    let model = plain_model(&cfg, &random_base(&cfg, 1));
    let (x, _) = inputs(&cfg, 2, 2);
    let t_early = Tensor::new(&[10f32, 10.], &DEV).unwrap();
    let t_late = Tensor::new(&[900f32, 900.], &DEV).unwrap();
    let a = model.forward(&x, &t_early).unwrap();
    let b = model.forward(&x, &t_late).unwrap();
    assert_eq!(a.dims(), x.dims());
    assert!(max_abs_diff(&a, &b) > 1e-4);
}

#[test]
fn tmsa_output_depends_on_the_time_token() {
    let cfg = Config::tiny();
    let model = plain_model(&cfg, &random_base(&cfg, 3));
    let attn = model.block(0).unwrap().attention();
    let tokens = Rng::new(4)
        .normal_tensor((1, cfg.num_tokens(), cfg.hidden_size), &DEV)
        .unwrap();
    let temb = |t: f32| {
        model
            .time_embedding(&Tensor::new(&[t], &DEV).unwrap(), None)
            .unwrap()
    };
    let a = attn.forward(&tokens, &temb(5.0), None).unwrap();
    let b = attn.forward(&tokens, &temb(700.0), None).unwrap();
    assert_eq!(a.dims(), tokens.dims());
    assert!(max_abs_diff(&a, &b) > 1e-4, "TMSA ignores t");
    // Same t → same output.
    assert_eq!(
        max_abs_diff(&a, &attn.forward(&tokens, &temb(5.0), None).unwrap()),
        0.0
    );
}

#[test]
fn a_fresh_model_predicts_zero_noise() {
    // The final layer is zero-initialised, as in DiffiT.
    let cfg = Config::tiny();
    let base = init_base_tensors(&cfg, &mut Rng::new(0), &DEV).unwrap();
    let (x, t) = inputs(&cfg, 2, 0);
    let out = plain_model(&cfg, &base).forward(&x, &t).unwrap();
    assert_eq!(
        out.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

#[test]
fn init_is_reproducible_and_counts_add_up() {
    let cfg = Config::small();
    let a = init_base_tensors(&cfg, &mut Rng::new(5), &DEV).unwrap();
    let b = init_base_tensors(&cfg, &mut Rng::new(5), &DEV).unwrap();
    for (name, shape) in base_tensor_shapes(&cfg) {
        assert_eq!(a[&name].dims(), shape.as_slice(), "{name}");
        assert_eq!(max_abs_diff(&a[&name], &b[&name]), 0.0, "{name}");
    }
    let total: usize = a.values().map(|t| t.elem_count()).sum();
    assert_eq!(total, parameter_count(&cfg));
}

#[test]
fn a_fresh_lora_leaves_outputs_unchanged() {
    let cfg = Config::tiny();
    let lora = LoraConfig::default();
    let base = random_base(&cfg, 5);
    let adapters = init_lora_tensors(&cfg, &lora, &mut Rng::new(6), &DEV).unwrap();
    let (x, t) = inputs(&cfg, 3, 7);
    let plain = plain_model(&cfg, &base).forward(&x, &t).unwrap();
    let with = lora_model(&cfg, &base, &lora, &adapters);
    assert!(with.has_lora());
    assert_eq!(max_abs_diff(&plain, &with.forward(&x, &t).unwrap()), 0.0);
}

#[test]
fn fused_equals_unfused_and_unfuse_restores_the_base() {
    let cfg = Config::tiny();
    let lora = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        ..LoraConfig::default()
    };
    let base = random_base(&cfg, 8);
    let adapters = trained_lora(&cfg, &lora, 9);
    validate_lora(&cfg, &base, &adapters, &lora).unwrap();
    let (x, t) = inputs(&cfg, 2, 10);
    let unfused = lora_model(&cfg, &base, &lora, &adapters)
        .forward(&x, &t)
        .unwrap();
    let plain = plain_model(&cfg, &base).forward(&x, &t).unwrap();
    assert!(
        max_abs_diff(&unfused, &plain) > 1e-3,
        "adapters should change the output"
    );
    let fused_weights = fuse_lora_weights(&base, &adapters, &lora).unwrap();
    assert_eq!(
        fused_weights.len(),
        base.len(),
        "fused weights hold no LoRA tensors"
    );
    let fused = plain_model(&cfg, &fused_weights).forward(&x, &t).unwrap();
    assert!(
        max_abs_diff(&fused, &unfused) < 1e-5,
        "{}",
        max_abs_diff(&fused, &unfused)
    );
    let restored = unfuse_lora_weights(&fused_weights, &adapters, &lora).unwrap();
    for (name, w) in &base {
        assert!(max_abs_diff(w, &restored[name]) < 1e-6, "{name}");
    }
}

#[test]
fn only_lora_tensors_get_gradients() {
    let cfg = Config::tiny();
    let lora = LoraConfig {
        lora_dropout: 0.1,
        ..LoraConfig::default()
    };
    let base = random_base(&cfg, 11);
    let vm = VarMap::new();
    {
        let mut data = vm.data().lock().unwrap();
        for (k, v) in trained_lora(&cfg, &lora, 12) {
            data.insert(k, Var::from_tensor(&v).unwrap());
        }
    }
    let model = DiffiT::new(
        &cfg,
        VarBuilder::from_tensors(base.clone(), DType::F32, &DEV),
        Some((&lora, VarBuilder::from_varmap(&vm, DType::F32, &DEV))),
    )
    .unwrap();
    let x0 = inputs(&cfg, 4, 13).0.clamp(-1f32, 1f32).unwrap();
    let loss = ddpm_loss(&model, &x0, &NoiseSchedule::default(), &mut Rng::new(14)).unwrap();
    let grads = loss.backward().unwrap();
    for (name, t) in &base {
        assert!(grads.get(t).is_none(), "base tensor {name} got a gradient");
    }
    let vars = vm.data().lock().unwrap().clone();
    for (name, v) in &vars {
        assert!(
            grads.get(v.as_tensor()).is_some(),
            "LoRA tensor {name} got no gradient"
        );
    }
    let before: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    let base_before: HashMap<String, Tensor> = base
        .iter()
        .map(|(k, v)| (k.clone(), v.copy().unwrap()))
        .collect();
    let mut sgd = SGD::new(vm.all_vars(), 0.1).unwrap();
    sgd.step(&grads).unwrap();
    for (name, v) in &vars {
        if name.ends_with("lora_B.weight") {
            assert!(
                max_abs_diff(v.as_tensor(), &before[name]) > 0.0,
                "{name} did not move"
            );
        }
    }
    for (name, t) in &base {
        assert_eq!(
            max_abs_diff(t, &base_before[name]),
            0.0,
            "base tensor {name} changed"
        );
    }
}

#[test]
fn lora_dropout_uses_our_rng_reproducibly() {
    let cfg = Config::tiny();
    let lora = LoraConfig {
        lora_dropout: 0.5,
        ..LoraConfig::default()
    };
    let model = lora_model(
        &cfg,
        &random_base(&cfg, 15),
        &lora,
        &trained_lora(&cfg, &lora, 16),
    );
    let (x, t) = inputs(&cfg, 2, 17);
    let a = model.forward_train(&x, &t, &mut Rng::new(1)).unwrap();
    let b = model.forward_train(&x, &t, &mut Rng::new(1)).unwrap();
    let c = model.forward_train(&x, &t, &mut Rng::new(2)).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert!(max_abs_diff(&a, &c) > 0.0);
    let loss = |seed| {
        ddpm_loss(
            &model,
            &x.clamp(-1f32, 1f32).unwrap(),
            &NoiseSchedule::default(),
            &mut Rng::new(seed),
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
    };
    assert_eq!(loss(3), loss(3));
}

#[test]
fn bad_loras_error_naming_the_tensor() {
    let cfg = Config::tiny();
    let lora = LoraConfig::default();
    let base = random_base(&cfg, 18);
    let good = trained_lora(&cfg, &lora, 19);
    let qkv_a = lora_a_name("blocks.0.attn.qkv");

    let mut wrong_shape = good.clone();
    wrong_shape.insert(
        qkv_a.clone(),
        Tensor::zeros((lora.r + 1, cfg.hidden_size), DType::F32, &DEV).unwrap(),
    );
    let err = validate_lora(&cfg, &base, &wrong_shape, &lora).unwrap_err();
    assert!(
        matches!(&err, ModelError::ShapeMismatch { name, .. } if *name == qkv_a),
        "{err}"
    );
    assert!(err.to_string().contains(&qkv_a));
    let err = fuse_lora_weights(&base, &wrong_shape, &lora).unwrap_err();
    assert!(err.to_string().contains(&qkv_a), "{err}");
    let built = DiffiT::new(
        &cfg,
        VarBuilder::from_tensors(base.clone(), DType::F32, &DEV),
        Some((
            &lora,
            VarBuilder::from_tensors(wrong_shape, DType::F32, &DEV),
        )),
    );
    assert!(built.unwrap_err().to_string().contains(&qkv_a));

    let mut unknown = good.clone();
    let stray = lora_a_name("blocks.9.attn.qkv");
    unknown.insert(stray.clone(), good[&qkv_a].clone());
    let err = validate_lora(&cfg, &base, &unknown, &lora).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnexpectedTensor { name, .. } if *name == stray),
        "{err}"
    );
    let err = fuse_lora_weights(&base, &unknown, &lora).unwrap_err();
    assert!(err.to_string().contains("blocks.9.attn.qkv"), "{err}");

    let mut not_lora = good.clone();
    not_lora.insert(
        "blocks.0.attn.qkv.weight".into(),
        base["blocks.0.attn.qkv.weight"].clone(),
    );
    let err = validate_lora(&cfg, &base, &not_lora, &lora).unwrap_err();
    assert!(
        err.to_string().contains("blocks.0.attn.qkv.weight"),
        "{err}"
    );

    let mut missing = good.clone();
    let fc1_b = lora_b_name("blocks.1.mlp.fc1");
    missing.remove(&fc1_b);
    let err = validate_lora(&cfg, &base, &missing, &lora).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingTensor { name } if *name == fc1_b),
        "{err}"
    );
    let err = fuse_lora_weights(&base, &missing, &lora).unwrap_err();
    assert!(err.to_string().contains(&fc1_b), "{err}");

    // A base of another configuration does not fit either.
    let other = random_base(&Config::small(), 20);
    let err = validate_lora(&cfg, &other, &good, &lora).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ShapeMismatch { .. } | ModelError::MissingTensor { .. }
        ),
        "{err}"
    );

    // Optimizer state next to the adapters (a whole checkpoint) is accepted.
    let mut with_opt = good.clone();
    with_opt.insert(format!("optimizer.exp_avg.{qkv_a}"), good[&qkv_a].clone());
    validate_lora(&cfg, &base, &with_opt, &lora).unwrap();
    fuse_lora_weights(&base, &with_opt, &lora).unwrap();
}

#[test]
fn wrong_input_shapes_are_errors_not_panics() {
    let cfg = Config::tiny();
    let model = plain_model(&cfg, &random_base(&cfg, 21));
    let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &DEV).unwrap();
    assert!(model
        .forward(&x, &Tensor::zeros(1, DType::F32, &DEV).unwrap())
        .is_err());
    let (x, _) = inputs(&cfg, 2, 0);
    assert!(model
        .forward(&x, &Tensor::zeros(3, DType::F32, &DEV).unwrap())
        .is_err());
}
