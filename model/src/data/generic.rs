//! The generic, tree-free pretraining set: geometric shapes, patterns, soft colour fields,
//! and landscapes (mountains, seas, fields, towns) with no trees in them.

use super::canvas::{hsv, mix, shade, Canvas, Rgb};
use super::scenery::{draw_clouds, draw_hills, draw_sky, draw_sun, SkyKind};
use super::trees::supersampling;
use crate::rng::{mix_seed, Rng};

use core::f64::consts::PI;

/// Image `index` of the generic set `seed`: CHW RGB in `[-1, 1]`, anti-aliased, never a tree.
pub fn generic_image(seed: u64, index: u64, size: usize) -> Vec<f32> {
    let mut rng = Rng::new(mix_seed(seed ^ 0x6E4E_41C0, index));
    let mut c = Canvas::new(size, supersampling(size));
    match rng.below(6) {
        0 => shapes(&mut c, &mut rng),
        1 => pattern(&mut c, &mut rng),
        2 => colour_field(&mut c, &mut rng),
        3 => mountains(&mut c, &mut rng),
        4 => seaside(&mut c, &mut rng),
        _ => town(&mut c, &mut rng),
    }
    c.to_chw()
}

fn random_colour(rng: &mut Rng) -> Rgb {
    hsv(
        rng.range(0.0, 360.0),
        rng.range(0.3, 0.95),
        rng.range(0.3, 1.0),
    )
}

fn random_sky(rng: &mut Rng) -> SkyKind {
    match rng.below(6) {
        0..=2 => SkyKind::Day,
        3 => SkyKind::Sunset,
        4 => SkyKind::Overcast,
        _ => SkyKind::Dusk,
    }
}

/// A linear gradient background in a random direction.
fn gradient(c: &mut Canvas, rng: &mut Rng) {
    let (a, b) = (random_colour(rng), random_colour(rng));
    let angle = rng.range(0.0, 2.0 * PI);
    let (dx, dy) = (libm::cos(angle), libm::sin(angle));
    c.fill(|x, y| {
        mix(
            a,
            b,
            ((x - 0.5) * dx + (y - 0.5) * dy + 0.5).clamp(0.0, 1.0),
        )
    });
}

/// Discs, rotated rectangles, triangles and stars on a gradient.
fn shapes(c: &mut Canvas, rng: &mut Rng) {
    gradient(c, rng);
    for _ in 0..2 + rng.below(5) {
        let (x, y) = (rng.range(0.1, 0.9), rng.range(0.1, 0.9));
        let r = rng.range(0.08, 0.28);
        let col = random_colour(rng);
        let rot = rng.range(0.0, PI);
        match rng.below(5) {
            0 => c.disc(x, y, r, col, 1.0),
            1 => c.ellipse(x, y, r, r * rng.range(0.3, 0.8), rot, col, 1.0),
            2 => {
                let w = r * rng.range(0.4, 1.0);
                let pts: Vec<(f64, f64)> = [(-r, -w), (r, -w), (r, w), (-r, w)]
                    .iter()
                    .map(|&(u, v)| {
                        (
                            x + u * libm::cos(rot) - v * libm::sin(rot),
                            y + u * libm::sin(rot) + v * libm::cos(rot),
                        )
                    })
                    .collect();
                c.polygon(&pts, col, 1.0);
            }
            3 => {
                let pts: Vec<(f64, f64)> = (0..3)
                    .map(|k| {
                        (
                            x + r * libm::cos(rot + k as f64 * 2.0 * PI / 3.0),
                            y + r * libm::sin(rot + k as f64 * 2.0 * PI / 3.0),
                        )
                    })
                    .collect();
                c.polygon(&pts, col, 1.0);
            }
            _ => {
                let spikes = 4 + rng.below(4) as usize;
                let pts: Vec<(f64, f64)> = (0..2 * spikes)
                    .map(|k| {
                        let rr = if k % 2 == 0 { r } else { r * 0.45 };
                        let a = rot + k as f64 * PI / spikes as f64;
                        (x + rr * libm::cos(a), y + rr * libm::sin(a))
                    })
                    .collect();
                c.polygon(&pts, col, 1.0);
            }
        }
    }
}

/// Stripes, checkerboards or concentric rings.
fn pattern(c: &mut Canvas, rng: &mut Rng) {
    let (a, b) = (random_colour(rng), random_colour(rng));
    let freq = rng.range(2.0, 7.0);
    let angle = rng.range(0.0, PI);
    let (dx, dy) = (libm::cos(angle), libm::sin(angle));
    let (cx, cy) = (rng.range(0.2, 0.8), rng.range(0.2, 0.8));
    match rng.below(3) {
        0 => c.fill(|x, y| {
            if libm::sin((x * dx + y * dy) * freq * 2.0 * PI) > 0.0 {
                a
            } else {
                b
            }
        }),
        1 => c.fill(|x, y| {
            let (u, v) = (x * dx + y * dy, -x * dy + y * dx);
            let cell = libm::floor(u * freq) as i64 + libm::floor(v * freq) as i64;
            if cell.rem_euclid(2) == 0 {
                a
            } else {
                b
            }
        }),
        _ => c.fill(|x, y| {
            let d = libm::sqrt((x - cx) * (x - cx) + (y - cy) * (y - cy));
            if libm::sin(d * freq * 2.0 * PI) > 0.0 {
                a
            } else {
                b
            }
        }),
    }
}

/// Overlapping translucent blobs on a gradient.
fn colour_field(c: &mut Canvas, rng: &mut Rng) {
    gradient(c, rng);
    for _ in 0..3 + rng.below(5) {
        let col = random_colour(rng);
        let (x, y, r) = (
            rng.range(0.0, 1.0),
            rng.range(0.0, 1.0),
            rng.range(0.15, 0.45),
        );
        for k in 0..4 {
            c.disc(x, y, r * (1.0 - 0.2 * k as f64), col, 0.25);
        }
    }
}

/// A jagged ridge polygon from `y_base` down to the bottom edge.
fn ridge(rng: &mut Rng, y_base: f64, rough: f64) -> Vec<(f64, f64)> {
    let mut pts = vec![(0.0, 1.01)];
    let mut y = y_base + rng.range(-rough, rough);
    let n = 14;
    for k in 0..=n {
        let x = k as f64 / n as f64;
        y = (y + rng.range(-rough, rough)).clamp(y_base - 0.3, y_base + 0.15);
        pts.push((x, y));
    }
    pts.push((1.0, 1.01));
    pts
}

/// Layered mountain ranges, optional snow line, over a valley floor.
fn mountains(c: &mut Canvas, rng: &mut Rng) {
    let sky = random_sky(rng);
    let horizon = rng.range(0.55, 0.8);
    draw_sky(c, rng, sky, horizon);
    if sky != SkyKind::Overcast && rng.chance(0.5) {
        draw_sun(c, rng, sky, horizon);
    }
    let rock = hsv(
        rng.range(200.0, 260.0),
        rng.range(0.1, 0.35),
        rng.range(0.35, 0.6),
    );
    let layers = 1 + rng.below(3) as usize;
    for k in 0..layers {
        let y = horizon - 0.25 + 0.1 * k as f64;
        let pts = ridge(rng, y, 0.06);
        let col = shade(rock, 1.2 - 0.2 * k as f64);
        c.polygon(&pts, col, 1.0);
        if k == 0 && rng.chance(0.6) {
            let peak = pts
                .iter()
                .skip(1)
                .fold((0.0, 2.0), |m, &p| if p.1 < m.1 { p } else { m });
            c.polygon(
                &[
                    (peak.0 - 0.08, peak.1 + 0.07),
                    peak,
                    (peak.0 + 0.08, peak.1 + 0.07),
                ],
                [0.95, 0.96, 0.98],
                0.9,
            );
        }
    }
    if rng.chance(0.5) {
        draw_clouds(c, rng, sky, horizon);
    }
    let field = hsv(
        rng.range(40.0, 110.0),
        rng.range(0.3, 0.6),
        rng.range(0.35, 0.65),
    );
    let stripes = rng.chance(0.5);
    c.fill_below(
        |_| horizon,
        |_, y| {
            if stripes && libm::sin(y * 90.0) > 0.3 {
                shade(field, 0.85)
            } else {
                field
            }
        },
    );
}

/// Sky, sea with a horizon, a beach and sometimes a boat.
fn seaside(c: &mut Canvas, rng: &mut Rng) {
    let sky = random_sky(rng);
    let horizon = rng.range(0.4, 0.65);
    draw_sky(c, rng, sky, horizon);
    if sky != SkyKind::Overcast && rng.chance(0.6) {
        draw_sun(c, rng, sky, horizon);
    }
    if rng.chance(0.6) {
        draw_clouds(c, rng, sky, horizon);
    }
    if rng.chance(0.3) {
        let hills = hsv(rng.range(200.0, 230.0), 0.2, 0.55);
        draw_hills(c, rng, horizon - 0.03, hills);
    }
    let sea = hsv(
        rng.range(185.0, 225.0),
        rng.range(0.4, 0.8),
        rng.range(0.4, 0.75),
    );
    c.fill_below(|_| horizon, |_, y| shade(sea, 0.8 + 0.4 * (y - horizon)));
    let beach = rng.range(0.75, 0.92);
    let sand = hsv(
        rng.range(35.0, 50.0),
        rng.range(0.25, 0.5),
        rng.range(0.75, 0.95),
    );
    let (a, f) = (rng.range(0.0, 0.04), rng.range(2.0, 6.0));
    c.fill_below(|x| beach + a * libm::sin(f * x), |_, _| sand);
    if rng.chance(0.4) {
        let (x, y) = (rng.range(0.2, 0.8), rng.range(horizon + 0.05, beach - 0.05));
        c.polygon(
            &[
                (x - 0.06, y),
                (x + 0.06, y),
                (x + 0.04, y + 0.025),
                (x - 0.04, y + 0.025),
            ],
            [0.3, 0.2, 0.15],
            1.0,
        );
        c.polygon(
            &[(x, y - 0.1), (x, y - 0.005), (x + 0.05, y - 0.005)],
            [0.95, 0.95, 0.92],
            1.0,
        );
    }
}

/// A row of buildings with lit windows.
fn town(c: &mut Canvas, rng: &mut Rng) {
    let sky = random_sky(rng);
    let horizon = rng.range(0.7, 0.88);
    draw_sky(c, rng, sky, horizon);
    if sky != SkyKind::Overcast && rng.chance(0.4) {
        draw_sun(c, rng, sky, horizon);
    }
    let mut x = rng.range(-0.05, 0.05);
    let night = matches!(sky, SkyKind::Dusk);
    while x < 1.0 {
        let w = rng.range(0.08, 0.2);
        let h = rng.range(0.15, 0.55);
        let wall = hsv(
            rng.range(0.0, 60.0),
            rng.range(0.05, 0.4),
            rng.range(0.3, 0.8),
        );
        let top = horizon - h;
        c.polygon(
            &[
                (x, horizon + 0.01),
                (x, top),
                (x + w, top),
                (x + w, horizon + 0.01),
            ],
            wall,
            1.0,
        );
        if rng.chance(0.4) {
            let roof = hsv(rng.range(0.0, 25.0), 0.6, 0.45);
            c.polygon(
                &[
                    (x - 0.01, top),
                    (x + w / 2.0, top - w * 0.5),
                    (x + w + 0.01, top),
                ],
                roof,
                1.0,
            );
        }
        let win = if night {
            [0.95, 0.85, 0.45]
        } else {
            shade(wall, 0.55)
        };
        let mut wy = top + 0.03;
        while wy < horizon - 0.04 {
            let mut wx = x + 0.02;
            while wx < x + w - 0.03 {
                c.polygon(
                    &[
                        (wx, wy),
                        (wx + 0.02, wy),
                        (wx + 0.02, wy + 0.025),
                        (wx, wy + 0.025),
                    ],
                    win,
                    0.9,
                );
                wx += 0.04;
            }
            wy += 0.06;
        }
        x += w + rng.range(0.0, 0.03);
    }
    let street = hsv(0.0, 0.0, rng.range(0.25, 0.45));
    c.fill_below(|_| horizon, |_, _| street);
}
