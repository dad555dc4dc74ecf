//! Skies, sun, clouds and hills shared by the tree and generic sets, so the two differ in
//! their subject (trees or not) rather than in their backgrounds.

use super::canvas::{hsv, mix, Canvas, Rgb};
use crate::rng::Rng;

/// Kinds of sky.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SkyKind {
    Day,
    Sunset,
    Overcast,
    Dusk,
}

/// Fills the whole canvas with a vertical sky gradient reaching its lightest at `horizon`.
pub(crate) fn draw_sky(c: &mut Canvas, rng: &mut Rng, kind: SkyKind, horizon: f64) {
    let (top, low): (Rgb, Rgb) = match kind {
        SkyKind::Day => (
            hsv(
                rng.range(200.0, 225.0),
                rng.range(0.45, 0.75),
                rng.range(0.7, 0.95),
            ),
            hsv(
                rng.range(190.0, 210.0),
                rng.range(0.1, 0.3),
                rng.range(0.9, 1.0),
            ),
        ),
        SkyKind::Sunset => (
            hsv(
                rng.range(230.0, 280.0),
                rng.range(0.35, 0.6),
                rng.range(0.35, 0.6),
            ),
            hsv(
                rng.range(15.0, 45.0),
                rng.range(0.5, 0.8),
                rng.range(0.9, 1.0),
            ),
        ),
        SkyKind::Overcast => {
            let v = rng.range(0.55, 0.8);
            ([v * 0.95, v * 0.97, v], [v + 0.12, v + 0.12, v + 0.13])
        }
        SkyKind::Dusk => (
            hsv(
                rng.range(215.0, 240.0),
                rng.range(0.5, 0.8),
                rng.range(0.2, 0.35),
            ),
            hsv(
                rng.range(200.0, 260.0),
                rng.range(0.25, 0.45),
                rng.range(0.45, 0.65),
            ),
        ),
    };
    c.fill(|_, y| mix(top, low, (y / horizon.max(0.05)).clamp(0.0, 1.0)));
}

/// A sun (or a moon at dusk) with a soft glow, above the horizon.
pub(crate) fn draw_sun(c: &mut Canvas, rng: &mut Rng, kind: SkyKind, horizon: f64) {
    let (x, y) = (
        rng.range(0.1, 0.9),
        rng.range(0.08, (horizon - 0.12).max(0.1)),
    );
    let r = rng.range(0.04, 0.08);
    let col = match kind {
        SkyKind::Sunset => hsv(rng.range(20.0, 45.0), 0.7, 1.0),
        SkyKind::Dusk => [0.92, 0.92, 0.85],
        _ => hsv(rng.range(45.0, 58.0), 0.35, 1.0),
    };
    c.disc(x, y, r * 2.0, col, 0.15);
    c.disc(x, y, r * 1.4, col, 0.25);
    c.disc(x, y, r, col, 1.0);
}

/// One to three puffy clouds.
pub(crate) fn draw_clouds(c: &mut Canvas, rng: &mut Rng, kind: SkyKind, horizon: f64) {
    let col: Rgb = match kind {
        SkyKind::Sunset => hsv(rng.range(0.0, 30.0), 0.3, 0.95),
        SkyKind::Dusk => [0.45, 0.47, 0.55],
        SkyKind::Overcast => [0.85, 0.86, 0.88],
        SkyKind::Day => [0.97, 0.97, 0.98],
    };
    for _ in 0..1 + rng.below(3) {
        let (cx, cy) = (
            rng.range(0.0, 1.0),
            rng.range(0.06, (horizon * 0.6).max(0.08)),
        );
        let w = rng.range(0.1, 0.22);
        for _ in 0..4 + rng.below(4) {
            let (dx, dy) = (rng.range(-w, w), rng.range(-0.02, 0.02));
            let r = rng.range(0.03, 0.06);
            c.ellipse(cx + dx, cy + dy, r * 1.6, r, 0.0, col, 0.85);
        }
    }
}

/// A smooth range of distant hills whose crest sits around `crest`.
pub(crate) fn draw_hills(c: &mut Canvas, rng: &mut Rng, crest: f64, colour: Rgb) {
    let waves: Vec<(f64, f64, f64)> = (0..3)
        .map(|k| {
            (
                rng.range(0.01, 0.05) / (k + 1) as f64,
                rng.range(3.0, 9.0) * (k + 1) as f64,
                rng.range(0.0, 6.3),
            )
        })
        .collect();
    c.fill_below(
        |x| {
            crest
                + waves
                    .iter()
                    .map(|(a, f, p)| a * libm::sin(f * x + p))
                    .sum::<f64>()
        },
        |_, _| colour,
    );
}
