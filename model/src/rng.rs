//! Our own seeded RNG, so native and wasm draw the same numbers.
//!
//! xoshiro256** seeded through SplitMix64. Floating-point transcendental functions come from
//! the pure-Rust `libm` crate rather than the platform's maths library, so a seed gives
//! bit-identical normals on every target.

use candle_core::{Device, Result, Shape, Tensor};
use serde::{Deserialize, Serialize};

/// Seeded, platform-independent pseudo-random number generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

/// The full state of an [`Rng`], for checkpoints (JSON-serialisable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The four xoshiro256** state words.
    pub s: [u64; 4],
}

/// One SplitMix64 step: used to expand a seed and to derive sub-seeds.
pub fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes two numbers into one well-spread seed (e.g. a dataset seed and an image index).
pub fn mix_seed(a: u64, b: u64) -> u64 {
    let mut x = a ^ b.wrapping_mul(0xD1B5_4A32_D192_ED03);
    splitmix64(&mut x)
}

impl Rng {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Self { s }
    }

    /// The current state, to save in a checkpoint.
    pub fn state(&self) -> RngState {
        RngState { s: self.s }
    }

    /// Resumes a generator from a saved state. An all-zero state (never produced by
    /// [`Rng::new`]) would be stuck at zero, so it is replaced by the seed-0 state.
    pub fn from_state(state: RngState) -> Self {
        if state.s == [0; 4] {
            return Self::new(0);
        }
        Self { s: state.s }
    }

    /// A new independent generator derived from this one (advances `self` once).
    pub fn fork(&mut self) -> Self {
        Self::new(self.next_u64())
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, 1)` as `f32`.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform_f64()
    }

    /// Uniform integer in `[0, n)` (Lemire's multiply-shift; `n == 0` gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform_f64() < p
    }

    /// A standard normal pair by Box–Muller (both values are used by [`Rng::normal_vec`]).
    fn normal_pair(&mut self) -> (f64, f64) {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let theta = 2.0 * core::f64::consts::PI * u2;
        (r * libm::cos(theta), r * libm::sin(theta))
    }

    /// One standard normal sample.
    pub fn normal(&mut self) -> f32 {
        self.normal_pair().0 as f32
    }

    /// `n` standard normal samples.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (a, b) = self.normal_pair();
            out.push(a as f32);
            out.push(b as f32);
        }
        out.truncate(n);
        out
    }

    /// A tensor of standard normal samples, filled in row-major order.
    pub fn normal_tensor<S: Into<Shape>>(&mut self, shape: S, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let data = self.normal_vec(shape.elem_count());
        Tensor::from_vec(data, shape, device)
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn known_first_values_pin_the_algorithm() {
        // Any change to seeding or the generator would silently change every run's data
        // order and noise; pin the first output for seed 0.
        let mut r = Rng::new(0);
        let first = r.next_u64();
        let mut again = Rng::new(0);
        assert_eq!(first, again.next_u64());
        assert_eq!(first, 0x99EC_5F36_CB75_F2B4);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut r = Rng::new(7);
        for _ in 0..13 {
            r.next_u64();
        }
        let json = serde_json::to_string(&r.state()).unwrap();
        let mut restored = Rng::from_state(serde_json::from_str(&json).unwrap());
        for _ in 0..50 {
            assert_eq!(r.next_u64(), restored.next_u64());
        }
        assert_eq!(r.normal_vec(5), restored.normal_vec(5));
    }

    #[test]
    fn uniform_and_normal_have_sane_moments() {
        let mut r = Rng::new(3);
        let n = 20_000;
        let u: Vec<f32> = (0..n).map(|_| r.uniform()).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean_u = u.iter().sum::<f32>() / n as f32;
        assert!((mean_u - 0.5).abs() < 0.02, "{mean_u}");
        let z = r.normal_vec(n);
        let mean = z.iter().sum::<f32>() / n as f32;
        let var = z.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n as f32;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }

    #[test]
    fn shuffle_is_a_permutation_and_reproducible() {
        let mut v: Vec<usize> = (0..50).collect();
        Rng::new(9).shuffle(&mut v);
        let mut w: Vec<usize> = (0..50).collect();
        Rng::new(9).shuffle(&mut w);
        assert_eq!(v, w);
        assert_ne!(v, (0..50).collect::<Vec<_>>());
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn normal_tensor_has_the_shape() {
        let t = Rng::new(1).normal_tensor((2, 3, 4), &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 4]);
    }
}
