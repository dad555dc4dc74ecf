//! Writes grid PNGs of the procedural data sets so they can be inspected by eye.
//!
//! `cargo run --release -p trainer --example data_grid -- OUT_DIR [SIZE] [SEED]`
//! writes `trees.png` and `generic.png` (8 × 8 images each, upscaled 4× without smoothing).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use std::path::PathBuf;

use anyhow::{Context, Result};
use model::data::{generic_image, tree_image};

const GRID: usize = 8;
const ZOOM: usize = 4;

/// A procedural image generator: `(seed, index, size)` → CHW values.
type Generator = fn(u64, u64, usize) -> Vec<f32>;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "data_grid".into()));
    let size: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()
        .context("SIZE must be a number")?
        .unwrap_or(32);
    let seed: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()
        .context("SEED must be a number")?
        .unwrap_or(0);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let sets: [(&str, Generator); 2] = [("trees", tree_image), ("generic", generic_image)];
    for (name, make) in sets {
        let start = std::time::Instant::now();
        let images: Vec<Vec<f32>> = (0..(GRID * GRID) as u64)
            .map(|i| make(seed, i, size))
            .collect();
        let per_image_ms = start.elapsed().as_secs_f64() * 1e3 / images.len() as f64;
        let path = out.join(format!("{name}.png"));
        write_grid(&images, size, &path)?;
        println!(
            "{}: {} images of {size}×{size}, {per_image_ms:.2} ms each",
            path.display(),
            images.len()
        );
    }
    Ok(())
}

/// Tiles CHW images in `[-1, 1]` into one RGB PNG with a 1-pixel (zoomed) gap.
fn write_grid(images: &[Vec<f32>], size: usize, path: &std::path::Path) -> Result<()> {
    let cell = size * ZOOM + ZOOM;
    let side = (GRID * cell) as u32;
    let mut canvas = image::RgbImage::from_pixel(side, side, image::Rgb([255, 255, 255]));
    let n = size * size;
    for (k, img) in images.iter().enumerate() {
        let (gx, gy) = (k % GRID * cell, k / GRID * cell);
        for y in 0..size * ZOOM {
            for x in 0..size * ZOOM {
                let i = (y / ZOOM) * size + x / ZOOM;
                let px = [0, 1, 2]
                    .map(|c| ((img[c * n + i].clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8);
                canvas.put_pixel((gx + x) as u32, (gy + y) as u32, image::Rgb(px));
            }
        }
    }
    canvas
        .save(path)
        .with_context(|| format!("writing {}", path.display()))
}
