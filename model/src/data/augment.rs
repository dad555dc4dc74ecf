//! Training-time augmentation: a random horizontal flip and a small random rotation, the seed
//! system's CIFAR augmentation (flip with probability 0.5, rotation within ±5°).
//!
//! What an image gets is a pure function of `(seed, epoch, index)`: a counter-based draw, not
//! a stream. A resumed run therefore augments every later epoch exactly as an uninterrupted one
//! would, whatever state the other generators are in, and however a batch is split over
//! shards. Rotation uses `libm`'s `sin`/`cos`, so a seed gives the same pixels on every target.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::rng::{mix_seed, Rng};

/// How each training image is varied before it enters a batch (validation images never are).
///
/// Read from `true` (the seed system's: [`Augmentation::SEED`]), `false` or `null` (none), or
/// a map of `horizontal_flip` (a probability, or `true` for 0.5; also `hflip`, `random_flip`,
/// `flip`) and `rotation` (degrees; also `rotation_degrees`, `random_rotation`, `degrees`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Augmentation {
    /// Probability in `[0, 1]` that an image is mirrored left to right.
    pub horizontal_flip: f64,
    /// Largest rotation, in degrees (`[0, 180]`): each image turns by an angle drawn uniformly
    /// from `[-rotation, rotation]` about its centre, sampled bilinearly; pixels the turned
    /// picture does not cover repeat its nearest edge.
    pub rotation: f64,
}

impl Augmentation {
    /// No augmentation: images are used as they are.
    pub const NONE: Augmentation = Augmentation {
        horizontal_flip: 0.0,
        rotation: 0.0,
    };

    /// The seed system's augmentation: flip with probability 0.5, rotation within ±5°.
    pub const SEED: Augmentation = Augmentation {
        horizontal_flip: 0.5,
        rotation: 5.0,
    };

    /// True when it changes nothing (stored configs then leave it out).
    pub fn is_off(&self) -> bool {
        self.horizontal_flip <= 0.0 && self.rotation <= 0.0
    }

    /// Why the settings are out of range, naming the field; `None` when they are valid.
    pub fn problem(&self) -> Option<(&'static str, f64, &'static str)> {
        if !(0.0..=1.0).contains(&self.horizontal_flip) {
            return Some((
                "horizontal_flip",
                self.horizontal_flip,
                "must be a probability in [0, 1]",
            ));
        }
        if !(0.0..=180.0).contains(&self.rotation) {
            return Some(("rotation", self.rotation, "must be in [0, 180] degrees"));
        }
        None
    }

    /// The flip and angle (radians) image `index` gets in `epoch` of a run seeded `seed`.
    pub fn draw(&self, seed: u64, epoch: u32, index: usize) -> (bool, f64) {
        let mut rng = Rng::new(mix_seed(mix_seed(seed, u64::from(epoch)), index as u64));
        // Both numbers are always drawn, so each setting's draw is independent of the other.
        let flip = rng.uniform_f64() < self.horizontal_flip;
        let angle = rng.range(-self.rotation, self.rotation).to_radians();
        (flip, angle)
    }

    /// `image` (CHW, `channels × size × size`) as image `index` of `epoch` is trained on.
    pub fn apply(
        &self,
        image: &[f32],
        channels: usize,
        size: usize,
        seed: u64,
        epoch: u32,
        index: usize,
    ) -> Vec<f32> {
        if self.is_off() {
            return image.to_vec();
        }
        let (flip, angle) = self.draw(seed, epoch, index);
        let mut out = if angle == 0.0 {
            image.to_vec()
        } else {
            rotate(image, channels, size, angle)
        };
        if flip {
            for row in out.chunks_exact_mut(size.max(1)) {
                row.reverse();
            }
        }
        out
    }
}

impl<'de> Deserialize<'de> for Augmentation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let number = |key: &str, value: &Value, flag: f64| match value {
            Value::Bool(on) => Ok(if *on { flag } else { 0.0 }),
            Value::Null => Ok(0.0),
            Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| D::Error::custom(format!("{key}: not a number"))),
            other => Err(D::Error::custom(format!(
                "{key}: expected a number, found {other}"
            ))),
        };
        match Value::deserialize(deserializer)? {
            Value::Null | Value::Bool(false) => Ok(Self::NONE),
            Value::Bool(true) => Ok(Self::SEED),
            Value::Object(map) => {
                let mut out = Self::NONE;
                for (key, value) in &map {
                    match key.as_str() {
                        "horizontal_flip" | "hflip" | "random_flip" | "flip" => {
                            out.horizontal_flip = number(key, value, Self::SEED.horizontal_flip)?;
                        }
                        "rotation" | "rotation_degrees" | "random_rotation" | "degrees" => {
                            out.rotation = number(key, value, Self::SEED.rotation)?;
                        }
                        other => {
                            return Err(D::Error::custom(format!(
                                "unknown augmentation {other:?}: expected horizontal_flip \
                                 (a probability) or rotation (degrees)"
                            )))
                        }
                    }
                }
                Ok(out)
            }
            other => Err(D::Error::custom(format!(
                "expected true, false or a map of horizontal_flip and rotation, found {other}"
            ))),
        }
    }
}

impl Default for Augmentation {
    fn default() -> Self {
        Self::NONE
    }
}

/// `image` turned by `angle` radians (counter-clockwise on screen) about its centre: each
/// output pixel samples the input bilinearly at its position turned back, edges clamped.
fn rotate(image: &[f32], channels: usize, size: usize, angle: f64) -> Vec<f32> {
    let n = size * size;
    let mut out = vec![0f32; image.len()];
    if size == 0 {
        return out;
    }
    let (sin, cos) = (libm::sin(angle), libm::cos(angle));
    let centre = (size as f64 - 1.0) / 2.0;
    let last = (size - 1) as f64;
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f64 - centre, y as f64 - centre);
            // Screen y points down, so a counter-clockwise turn back is this matrix.
            let sx = (cos * dx - sin * dy + centre).clamp(0.0, last);
            let sy = (sin * dx + cos * dy + centre).clamp(0.0, last);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(size - 1), (y0 + 1).min(size - 1));
            let (fx, fy) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
            for c in 0..channels {
                let plane = &image[c * n..(c + 1) * n];
                let at = |xx: usize, yy: usize| plane[yy * size + xx];
                let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
                let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
                out[c * n + y * size + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(size: usize) -> Vec<f32> {
        (0..3 * size * size)
            .map(|i| (i % (size * size)) as f32 / (size * size) as f32 * 2.0 - 1.0)
            .collect()
    }

    #[test]
    fn off_leaves_images_as_they_are() {
        let img = ramp(8);
        assert_eq!(Augmentation::NONE.apply(&img, 3, 8, 1, 1, 0), img);
        assert!(Augmentation::NONE.is_off() && !Augmentation::SEED.is_off());
    }

    #[test]
    fn a_flip_mirrors_every_row_and_twice_is_the_identity() {
        let flip = Augmentation {
            horizontal_flip: 1.0,
            rotation: 0.0,
        };
        let img = ramp(4);
        let once = flip.apply(&img, 3, 4, 9, 2, 5);
        assert_eq!(once[0..4], [img[3], img[2], img[1], img[0]]);
        assert_eq!(flip.apply(&once, 3, 4, 9, 2, 5), img);
    }

    #[test]
    fn a_quarter_turn_moves_corners_and_keeps_values_in_range() {
        let size = 5;
        let mut img = vec![-1f32; 3 * size * size];
        img[size - 1] = 1.0; // top-right corner of channel 0
        let turned = rotate(&img, 3, size, std::f64::consts::FRAC_PI_2);
        // Counter-clockwise: the top-right corner goes to the top-left.
        assert!((turned[0] - 1.0).abs() < 1e-5, "{:?}", &turned[..size]);
        assert!(turned.iter().all(|v| (-1.0..=1.0).contains(v)));
        let small = rotate(&ramp(8), 3, 8, 5f64.to_radians());
        assert!(small.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_ne!(small, ramp(8));
    }

    #[test]
    fn draws_depend_only_on_seed_epoch_and_index() {
        let a = Augmentation::SEED;
        assert_eq!(a.draw(3, 4, 5), a.draw(3, 4, 5));
        let draws: Vec<(bool, f64)> = (0..2000).map(|i| a.draw(3, 4, i)).collect();
        let flips = draws.iter().filter(|d| d.0).count();
        assert!((850..1150).contains(&flips), "{flips} flips of 2000");
        let limit = 5f64.to_radians();
        assert!(draws.iter().all(|d| d.1.abs() <= limit));
        assert!(
            draws.iter().any(|d| d.1 > limit * 0.9) && draws.iter().any(|d| d.1 < -limit * 0.9)
        );
        assert_ne!(a.draw(3, 5, 5), a.draw(3, 4, 5));
        assert_ne!(a.draw(4, 4, 5), a.draw(3, 4, 5));
    }

    #[test]
    fn reads_a_flag_or_a_map_in_either_systems_names() {
        let read = |text: &str| serde_json::from_str::<Augmentation>(text);
        assert_eq!(read("true").unwrap(), Augmentation::SEED);
        assert_eq!(read("false").unwrap(), Augmentation::NONE);
        assert_eq!(read("null").unwrap(), Augmentation::NONE);
        let map = read(r#"{"hflip": true, "rotation_degrees": 10}"#).unwrap();
        assert_eq!((map.horizontal_flip, map.rotation), (0.5, 10.0));
        let back = serde_json::to_string(&map).unwrap();
        assert_eq!(read(&back).unwrap(), map);
        let err = read(r#"{"crop": 4}"#).unwrap_err().to_string();
        assert!(
            err.contains("\"crop\"") && err.contains("horizontal_flip"),
            "{err}"
        );
        assert!(read("3").is_err() && read(r#"{"rotation": "lots"}"#).is_err());
    }

    #[test]
    fn out_of_range_settings_name_the_field() {
        let bad = Augmentation {
            horizontal_flip: 1.5,
            rotation: 0.0,
        };
        assert_eq!(bad.problem().map(|p| p.0), Some("horizontal_flip"));
        let bad = Augmentation {
            horizontal_flip: 0.5,
            rotation: -1.0,
        };
        assert_eq!(bad.problem().map(|p| p.0), Some("rotation"));
        assert_eq!(Augmentation::SEED.problem(), None);
    }
}
