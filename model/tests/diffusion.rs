//! DDPM loss and the DDIM sampler: determinism for a seed, step-wise progress, output range.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use model::diffusion::{
    ddim_sample, ddpm_eval_loss, ddpm_loss, to_rgb8, BetaSchedule, DdimSampler, NoiseSchedule,
};
use model::rng::Rng;
use model::{init_base_tensors, Config, DiffiT};

const DEV: Device = Device::Cpu;

fn model(seed: u64) -> DiffiT {
    let cfg = Config::tiny();
    let mut rng = Rng::new(seed);
    let mut base = init_base_tensors(&cfg, &mut rng, &DEV).unwrap();
    let w = base["final_layer.linear.weight"].clone();
    base.insert(
        "final_layer.linear.weight".into(),
        (rng.normal_tensor(w.shape(), &DEV).unwrap() * 0.1).unwrap(),
    );
    DiffiT::new(&cfg, VarBuilder::from_tensors(base, DType::F32, &DEV), None).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn ddim_is_deterministic_for_a_seed() {
    let m = model(1);
    let s = NoiseSchedule::default();
    let a = ddim_sample(&m, &s, 2, 42, 8, 0.0, &DEV).unwrap();
    let b = ddim_sample(&m, &s, 2, 42, 8, 0.0, &DEV).unwrap();
    let c = ddim_sample(&m, &s, 2, 43, 8, 0.0, &DEV).unwrap();
    assert_eq!(a.dims(), &[2, 3, 16, 16]);
    assert_eq!(to_vec(&a), to_vec(&b));
    assert_ne!(to_vec(&a), to_vec(&c));
    assert!(to_vec(&a).iter().all(|v| (-1.0..=1.0).contains(v)));
}

#[test]
fn sampler_runs_step_by_step() {
    let m = model(2);
    let s = NoiseSchedule::new(BetaSchedule::Linear, 1000);
    let mut sampler = DdimSampler::new(&s, 5, 3, m.config(), 7, &DEV).unwrap();
    assert_eq!(sampler.progress(), (0, 5));
    let mut steps = 0;
    while sampler.step(&m).unwrap() {
        steps += 1;
        assert_eq!(sampler.current_x0().unwrap().dims(), &[3, 3, 16, 16]);
    }
    assert_eq!(steps + 1, 5);
    assert_eq!(sampler.progress(), (5, 5));
    assert!(!sampler.step(&m).unwrap());
    let stepped = sampler.finish().unwrap();
    let direct = ddim_sample(&m, &s, 3, 7, 5, 0.0, &DEV).unwrap();
    assert_eq!(to_vec(&stepped), to_vec(&direct));
    let rgb = to_rgb8(&stepped).unwrap();
    assert_eq!(rgb.len(), 3);
    assert_eq!(rgb[0].len(), 16 * 16 * 3);
}

#[test]
fn ddpm_loss_is_a_reproducible_scalar() {
    let m = model(3);
    let s = NoiseSchedule::default();
    let x0 = Rng::new(4)
        .normal_tensor((4, 3, 16, 16), &DEV)
        .unwrap()
        .clamp(-1f32, 1f32)
        .unwrap();
    let loss = |seed| {
        ddpm_loss(&m, &x0, &s, &mut Rng::new(seed))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (a, b, c) = (loss(9), loss(9), loss(10));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.is_finite() && a > 0.0);
    // Without adapters there is no dropout, so the eval loss draws and computes the same.
    let e = ddpm_eval_loss(&m, &x0, &s, &mut Rng::new(9))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(a, e);
}

#[test]
fn eta_adds_seeded_noise_per_step() {
    let m = model(2);
    let s = NoiseSchedule::default();
    let deterministic = ddim_sample(&m, &s, 2, 42, 8, 0.0, &DEV).unwrap();
    let a = ddim_sample(&m, &s, 2, 42, 8, 1.0, &DEV).unwrap();
    let b = ddim_sample(&m, &s, 2, 42, 8, 1.0, &DEV).unwrap();
    let half = ddim_sample(&m, &s, 2, 42, 8, 0.5, &DEV).unwrap();
    assert_eq!(to_vec(&a), to_vec(&b), "same seed and η, same images");
    assert_ne!(to_vec(&a), to_vec(&deterministic));
    assert_ne!(to_vec(&a), to_vec(&half));
    // Out-of-range η is clamped, so η = 2 is η = 1 and η = -1 is deterministic DDIM.
    assert_eq!(
        to_vec(&ddim_sample(&m, &s, 2, 42, 8, 2.0, &DEV).unwrap()),
        to_vec(&a)
    );
    assert_eq!(
        to_vec(&ddim_sample(&m, &s, 2, 42, 8, -1.0, &DEV).unwrap()),
        to_vec(&deterministic)
    );
    // A single step lands on ᾱ = 1, where no noise is left to add.
    assert_eq!(
        to_vec(&ddim_sample(&m, &s, 2, 42, 1, 1.0, &DEV).unwrap()),
        to_vec(&ddim_sample(&m, &s, 2, 42, 1, 0.0, &DEV).unwrap())
    );
}
