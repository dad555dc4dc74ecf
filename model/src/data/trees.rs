//! Procedural tree pictures, the fine-tuning set: one main tree (broadleaf, conifer, birch,
//! palm, poplar, willow or bare) with varied season, colours, size and position, sometimes
//! smaller trees behind it, over a sky and ground.

use super::canvas::{hsv, mix, shade, Canvas, Rgb};
use super::scenery::{draw_clouds, draw_hills, draw_sky, draw_sun, SkyKind};
use crate::rng::{mix_seed, Rng};

/// Time of year: drives leaf, ground and sky colours.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Season {
    Spring,
    Summer,
    Autumn,
    Winter,
}

/// Tree shape families; the main tree's is an image's class label (its index here, named by
/// [`TREE_SPECIES`]).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Species {
    Broadleaf,
    Conifer,
    Birch,
    Palm,
    Poplar,
    Willow,
    Bare,
}

/// Supersampling factor for a given output size (finer for small images, where edges matter).
pub(crate) fn supersampling(size: usize) -> usize {
    if size <= 64 {
        4
    } else {
        2
    }
}

/// The class names of the tree set, in label order: the species of each image's main tree.
pub const TREE_SPECIES: [&str; 7] = [
    "broadleaf",
    "conifer",
    "birch",
    "palm",
    "poplar",
    "willow",
    "bare",
];

impl Species {
    /// This species' class label (its index in [`TREE_SPECIES`]).
    fn label(self) -> u32 {
        match self {
            Species::Broadleaf => 0,
            Species::Conifer => 1,
            Species::Birch => 2,
            Species::Palm => 3,
            Species::Poplar => 4,
            Species::Willow => 5,
            Species::Bare => 6,
        }
    }
}

/// Image `index` of the tree set `seed`: CHW RGB in `[-1, 1]`, anti-aliased.
pub fn tree_image(seed: u64, index: u64, size: usize) -> Vec<f32> {
    labeled_tree_image(seed, index, size).0
}

/// [`tree_image`] with its class label: the species of the main tree (an index into
/// [`TREE_SPECIES`]).
pub fn labeled_tree_image(seed: u64, index: u64, size: usize) -> (Vec<f32>, u32) {
    let mut rng = Rng::new(mix_seed(seed ^ 0x7EE5, index));
    let mut c = Canvas::new(size, supersampling(size));
    let season = match rng.below(4) {
        0 => Season::Spring,
        1 => Season::Summer,
        2 => Season::Autumn,
        _ => Season::Winter,
    };
    let sky = match (season, rng.below(10)) {
        (Season::Winter, 0..=4) => SkyKind::Overcast,
        (_, 0..=5) => SkyKind::Day,
        (_, 6..=7) => SkyKind::Sunset,
        (_, 8) => SkyKind::Overcast,
        _ => SkyKind::Dusk,
    };
    let horizon = rng.range(0.62, 0.86);
    draw_sky(&mut c, &mut rng, sky, horizon);
    if sky != SkyKind::Overcast && rng.chance(0.4) {
        draw_sun(&mut c, &mut rng, sky, horizon);
    }
    if rng.chance(0.5) {
        draw_clouds(&mut c, &mut rng, sky, horizon);
    }
    if rng.chance(0.55) {
        let far = mix(ground_colour(&mut rng, season), [0.55, 0.65, 0.8], 0.45);
        let crest = horizon - rng.range(0.04, 0.14);
        draw_hills(&mut c, &mut rng, crest, far);
    }
    let ground = ground_colour(&mut rng, season);
    let (amp, freq, phase) = (
        rng.range(0.0, 0.025),
        rng.range(2.0, 6.0),
        rng.range(0.0, 6.3),
    );
    let ground_y = move |x: f64| horizon + amp * libm::sin(freq * x + phase);
    c.fill_below(ground_y, |_, y| {
        shade(
            ground,
            1.0 - 0.35 * ((y - horizon) / (1.0 - horizon).max(0.05)),
        )
    });

    let species = pick_species(&mut rng, season);
    // Smaller trees behind the main one give depth; they stand a little higher on the ground.
    let extra = if rng.chance(0.35) {
        1 + rng.below(2)
    } else {
        0
    };
    for _ in 0..extra {
        let x = if rng.chance(0.5) {
            rng.range(0.05, 0.3)
        } else {
            rng.range(0.7, 0.95)
        };
        let base = ground_y(x) + rng.range(0.0, 0.03);
        let h = rng.range(0.2, 0.35);
        let sp = if rng.chance(0.5) {
            species
        } else {
            pick_species(&mut rng, season)
        };
        draw_tree(&mut c, &mut rng, sp, season, x, base, h, 0.85);
    }
    let x = rng.range(0.3, 0.7);
    let base = ground_y(x) + rng.range(0.02, 0.1);
    let height = (base - rng.range(0.06, 0.22)).max(0.35);
    c.ellipse(
        x + 0.03,
        base,
        height * 0.35,
        height * 0.04,
        0.0,
        shade(ground, 0.6),
        0.5,
    );
    draw_tree(&mut c, &mut rng, species, season, x, base, height, 1.0);
    if season == Season::Autumn && species != Species::Conifer {
        for _ in 0..rng.below(12) {
            let lx = x + rng.range(-0.3, 0.3);
            let ly = base + rng.range(-0.01, 0.08);
            c.disc(lx, ly, 0.008, hsv(rng.range(10.0, 45.0), 0.8, 0.8), 0.9);
        }
    }
    (c.to_chw(), species.label())
}

fn pick_species(rng: &mut Rng, season: Season) -> Species {
    let s = match rng.below(12) {
        0..=3 => Species::Broadleaf,
        4..=5 => Species::Conifer,
        6 => Species::Birch,
        7 => Species::Palm,
        8 => Species::Poplar,
        9 => Species::Willow,
        10 => Species::Bare,
        _ => Species::Conifer,
    };
    // Deciduous trees lose their leaves in winter (palms stay evergreen, conifers too).
    match (season, s) {
        (Season::Winter, Species::Broadleaf | Species::Birch | Species::Willow)
            if rng.chance(0.7) =>
        {
            Species::Bare
        }
        (Season::Winter, Species::Palm) => Species::Conifer,
        _ => s,
    }
}

fn ground_colour(rng: &mut Rng, season: Season) -> Rgb {
    match season {
        Season::Spring => hsv(
            rng.range(80.0, 110.0),
            rng.range(0.5, 0.75),
            rng.range(0.55, 0.75),
        ),
        Season::Summer => hsv(
            rng.range(65.0, 105.0),
            rng.range(0.5, 0.75),
            rng.range(0.45, 0.65),
        ),
        Season::Autumn => hsv(
            rng.range(35.0, 65.0),
            rng.range(0.45, 0.7),
            rng.range(0.4, 0.6),
        ),
        Season::Winter => hsv(
            rng.range(200.0, 220.0),
            rng.range(0.02, 0.1),
            rng.range(0.85, 0.97),
        ),
    }
}

fn leaf_colour(rng: &mut Rng, season: Season) -> Rgb {
    match season {
        Season::Spring => hsv(
            rng.range(75.0, 115.0),
            rng.range(0.55, 0.8),
            rng.range(0.55, 0.8),
        ),
        Season::Summer => hsv(
            rng.range(90.0, 140.0),
            rng.range(0.5, 0.8),
            rng.range(0.3, 0.55),
        ),
        Season::Autumn => hsv(
            rng.range(5.0, 50.0),
            rng.range(0.7, 0.95),
            rng.range(0.6, 0.9),
        ),
        Season::Winter => hsv(
            rng.range(100.0, 150.0),
            rng.range(0.4, 0.7),
            rng.range(0.25, 0.4),
        ),
    }
}

fn bark_colour(rng: &mut Rng) -> Rgb {
    hsv(
        rng.range(18.0, 35.0),
        rng.range(0.35, 0.6),
        rng.range(0.2, 0.4),
    )
}

/// Draws one tree standing at `(x, base)`, `height` tall; `fade` < 1 pales it (distance).
#[allow(clippy::too_many_arguments)]
fn draw_tree(
    c: &mut Canvas,
    rng: &mut Rng,
    species: Species,
    season: Season,
    x: f64,
    base: f64,
    height: f64,
    fade: f64,
) {
    let haze = |col: Rgb| mix(col, [0.7, 0.78, 0.85], 1.0 - fade);
    match species {
        Species::Broadleaf => {
            let blossom = season == Season::Spring && rng.chance(0.35);
            let leaves = if blossom {
                hsv(rng.range(320.0, 350.0), rng.range(0.2, 0.45), 0.95)
            } else {
                leaf_colour(rng, season)
            };
            let bark = haze(bark_colour(rng));
            let width = rng.range(0.8, 1.3);
            leafy(
                c, rng, x, base, height, bark, leaves, season, width, 0.045, haze,
            );
        }
        Species::Birch => {
            let leaves = if season == Season::Autumn {
                hsv(rng.range(40.0, 55.0), 0.85, 0.9)
            } else {
                hsv(rng.range(70.0, 100.0), 0.6, 0.7)
            };
            let bark = haze([0.9, 0.9, 0.86]);
            let width = rng.range(0.55, 0.8);
            leafy(
                c, rng, x, base, height, bark, leaves, season, width, 0.028, haze,
            );
            // Dark marks on the white trunk, after the canopy so they stay visible below it.
            for k in 0..4 {
                let y = base - height * (0.08 + 0.08 * k as f64 + rng.range(0.0, 0.04));
                c.ellipse(
                    x,
                    y,
                    height * 0.02,
                    height * 0.007,
                    0.0,
                    haze([0.15, 0.15, 0.15]),
                    0.9,
                );
            }
        }
        Species::Conifer => conifer(c, rng, x, base, height, season, haze),
        Species::Palm => palm(c, rng, x, base, height, haze),
        Species::Poplar => poplar(c, rng, x, base, height, season, haze),
        Species::Willow => willow(c, rng, x, base, height, season, haze),
        Species::Bare => {
            let bark = haze(shade(bark_colour(rng), 0.9));
            let trunk_w = height * rng.range(0.03, 0.045);
            let top = base - height * rng.range(0.3, 0.42);
            c.capsule(x, base, x, top, trunk_w, trunk_w * 0.75, bark, 1.0);
            let mut tips = Vec::new();
            let spread = rng.range(0.3, 0.6);
            branches(
                c,
                rng,
                x,
                top,
                0.0,
                height * 0.3,
                trunk_w * 0.7,
                4,
                spread,
                bark,
                &mut tips,
            );
            if season == Season::Winter {
                for (tx, ty, _) in tips.iter().step_by(3) {
                    c.disc(*tx, *ty, height * 0.012, [0.95, 0.95, 0.98], 0.8);
                }
            }
        }
    }
}

/// Recursively draws limbs; records the tips `(x, y, length)` for canopies.
#[allow(clippy::too_many_arguments)]
fn branches(
    c: &mut Canvas,
    rng: &mut Rng,
    x: f64,
    y: f64,
    angle: f64,
    len: f64,
    width: f64,
    depth: u32,
    spread: f64,
    colour: Rgb,
    tips: &mut Vec<(f64, f64, f64)>,
) {
    let (ex, ey) = (x + len * libm::sin(angle), y - len * libm::cos(angle));
    c.capsule(x, y, ex, ey, width, width * 0.7, colour, 1.0);
    if depth == 0 {
        tips.push((ex, ey, len));
        return;
    }
    let n = 2 + rng.below(2) as usize;
    for k in 0..n {
        let offset = if n == 1 {
            0.0
        } else {
            (k as f64 / (n - 1) as f64 - 0.5) * 2.0 * spread
        };
        let a = angle + offset + rng.range(-0.2, 0.2);
        // Limbs lean back towards vertical so crowns stay compact.
        let a = a * 0.9;
        let l = len * rng.range(0.62, 0.8);
        branches(
            c,
            rng,
            ex,
            ey,
            a,
            l,
            width * 0.68,
            depth - 1,
            spread,
            colour,
            tips,
        );
    }
}

/// Trunk, limbs and a crown of overlapping leaf clusters with shadow and highlight.
#[allow(clippy::too_many_arguments)]
fn leafy(
    c: &mut Canvas,
    rng: &mut Rng,
    x: f64,
    base: f64,
    height: f64,
    bark: Rgb,
    leaves: Rgb,
    season: Season,
    crown_width: f64,
    trunk_frac: f64,
    haze: impl Fn(Rgb) -> Rgb,
) {
    let trunk_w = height * trunk_frac * rng.range(0.8, 1.2);
    let trunk_top = base - height * rng.range(0.3, 0.45);
    let lean = rng.range(-0.04, 0.04);
    c.capsule(
        x,
        base,
        x + lean,
        trunk_top,
        trunk_w,
        trunk_w * 0.7,
        bark,
        1.0,
    );
    let mut tips = Vec::new();
    let spread = rng.range(0.45, 0.8);
    branches(
        c,
        rng,
        x + lean,
        trunk_top,
        0.0,
        height * 0.22,
        trunk_w * 0.7,
        2,
        spread,
        bark,
        &mut tips,
    );
    let cy = base - height * rng.range(0.62, 0.7);
    let rx = height * 0.34 * crown_width;
    let ry = height * rng.range(0.28, 0.36);
    let blob = height * rng.range(0.09, 0.14);
    let n = 18 + rng.below(14) as usize;
    let mut centres = Vec::with_capacity(n);
    for k in 0..n {
        let (px, py) = if k < tips.len() && rng.chance(0.6) {
            (tips[k].0, tips[k].1)
        } else {
            // Uniform over the crown ellipse.
            let r = libm::sqrt(rng.uniform_f64());
            let a = rng.range(0.0, 2.0 * core::f64::consts::PI);
            (x + lean + rx * r * libm::cos(a), cy + ry * r * libm::sin(a))
        };
        centres.push((px, py, blob * rng.range(0.7, 1.3)));
    }
    let leaves = haze(leaves);
    for &(px, py, r) in &centres {
        c.disc(px + r * 0.15, py + r * 0.25, r, shade(leaves, 0.62), 1.0);
    }
    for &(px, py, r) in &centres {
        let tint = shade(leaves, rng.range(0.85, 1.1));
        c.disc(px, py, r * 0.9, tint, 1.0);
    }
    for &(px, py, r) in centres.iter().step_by(2) {
        c.disc(
            px - r * 0.25,
            py - r * 0.3,
            r * 0.45,
            shade(leaves, 1.22),
            0.7,
        );
    }
    if season == Season::Winter {
        for &(px, py, r) in centres.iter().step_by(3) {
            c.ellipse(
                px,
                py - r * 0.7,
                r * 0.6,
                r * 0.25,
                0.0,
                [0.95, 0.96, 1.0],
                0.85,
            );
        }
    }
}

/// A cone of stacked, slightly drooping tiers.
fn conifer(
    c: &mut Canvas,
    rng: &mut Rng,
    x: f64,
    base: f64,
    height: f64,
    season: Season,
    haze: impl Fn(Rgb) -> Rgb,
) {
    let bark = haze(bark_colour(rng));
    let green = haze(hsv(
        rng.range(110.0, 160.0),
        rng.range(0.45, 0.75),
        rng.range(0.22, 0.42),
    ));
    let trunk_w = height * 0.03;
    c.capsule(
        x,
        base,
        x,
        base - height * 0.5,
        trunk_w,
        trunk_w * 0.6,
        bark,
        1.0,
    );
    let tiers = 3 + rng.below(4) as usize;
    let half = height * rng.range(0.2, 0.3);
    let bottom = base - height * rng.range(0.1, 0.2);
    let top = base - height;
    let step = (bottom - top) / (tiers as f64 + 0.6);
    for k in 0..tiers {
        let f = k as f64 / tiers as f64;
        let yb = bottom - step * k as f64;
        let yt = yb - step * 2.0;
        let w = half * (1.0 - f * 0.75);
        let droop = step * 0.25;
        let tier = [
            (x - w, yb + droop),
            (x, yt.max(top)),
            (x + w, yb + droop),
            (x, yb - step * 0.15),
        ];
        c.polygon(&tier, shade(green, 0.75 + 0.1 * f), 1.0);
        let lit = [
            (x - w * 0.92, yb + droop * 0.6),
            (x, yt.max(top)),
            (x - w * 0.1, yb - step * 0.2),
        ];
        c.polygon(&lit, shade(green, 1.0 + 0.15 * f), 1.0);
        if season == Season::Winter {
            let snow = [
                (x - w * 0.7, yb - step * 0.3),
                (x, yt.max(top) + step * 0.2),
                (x + w * 0.5, yb - step * 0.35),
            ];
            c.polygon(&snow, [0.94, 0.95, 0.99], 0.8);
        }
    }
}

/// A curved trunk with ring marks and a star of drooping fronds.
fn palm(c: &mut Canvas, rng: &mut Rng, x: f64, base: f64, height: f64, haze: impl Fn(Rgb) -> Rgb) {
    let bark = haze(hsv(rng.range(25.0, 40.0), 0.45, rng.range(0.4, 0.55)));
    let lean = rng.range(-0.3, 0.3) * height;
    let segs = 10;
    let trunk_w = height * 0.03;
    let point = |t: f64| (x + lean * t * t, base - height * 0.78 * t);
    for s in 0..segs {
        let (t0, t1) = (s as f64 / segs as f64, (s + 1) as f64 / segs as f64);
        let (a, b) = (point(t0), point(t1));
        let w = trunk_w * (1.0 - 0.4 * t0);
        c.capsule(
            a.0,
            a.1,
            b.0,
            b.1,
            w,
            w * 0.95,
            shade(bark, if s % 2 == 0 { 1.0 } else { 0.82 }),
            1.0,
        );
    }
    let (tx, ty) = point(1.0);
    let green = haze(hsv(
        rng.range(85.0, 130.0),
        rng.range(0.5, 0.75),
        rng.range(0.35, 0.55),
    ));
    let fronds = 7 + rng.below(4) as usize;
    for k in 0..fronds {
        let a = k as f64 / fronds as f64 * 2.0 * core::f64::consts::PI + rng.range(-0.2, 0.2);
        let len = height * rng.range(0.3, 0.42);
        let (dx, dy) = (libm::cos(a), libm::sin(a) * 0.45 - 0.35);
        let pts = 8;
        let mut prev = (tx, ty);
        for p in 1..=pts {
            let s = p as f64 / pts as f64;
            let cur = (tx + dx * len * s, ty + dy * len * s + len * 0.8 * s * s);
            let w = height * 0.03 * (1.0 - s * 0.8);
            c.capsule(
                prev.0,
                prev.1,
                cur.0,
                cur.1,
                w,
                w * 0.8,
                shade(green, 0.8 + 0.3 * (k % 2) as f64),
                1.0,
            );
            prev = cur;
        }
    }
    for _ in 0..3 {
        c.disc(
            tx + rng.range(-0.015, 0.015),
            ty + rng.range(0.0, 0.02),
            height * 0.025,
            haze([0.35, 0.25, 0.12]),
            1.0,
        );
    }
}

/// A tall, narrow column of foliage (Lombardy poplar / cypress).
fn poplar(
    c: &mut Canvas,
    rng: &mut Rng,
    x: f64,
    base: f64,
    height: f64,
    season: Season,
    haze: impl Fn(Rgb) -> Rgb,
) {
    let bark = haze(bark_colour(rng));
    let trunk_w = height * 0.03;
    c.capsule(
        x,
        base,
        x,
        base - height * 0.3,
        trunk_w,
        trunk_w * 0.8,
        bark,
        1.0,
    );
    let leaves = haze(if season == Season::Winter {
        hsv(130.0, 0.5, 0.3)
    } else {
        leaf_colour(rng, season)
    });
    let (cy, ry, rx) = (
        base - height * 0.55,
        height * 0.45,
        height * rng.range(0.09, 0.14),
    );
    c.ellipse(x + rx * 0.15, cy, rx, ry, 0.0, shade(leaves, 0.7), 1.0);
    for _ in 0..14 {
        let t = rng.range(-0.85, 0.85);
        let w = rx * libm::sqrt(1.0 - t * t) * 0.8;
        c.ellipse(
            x + rng.range(-w, w) * 0.5,
            cy + t * ry,
            w * 0.7 + rx * 0.1,
            ry * 0.18,
            0.0,
            shade(leaves, rng.range(0.9, 1.2)),
            0.9,
        );
    }
}

/// A dome crown with long hanging strands.
fn willow(
    c: &mut Canvas,
    rng: &mut Rng,
    x: f64,
    base: f64,
    height: f64,
    season: Season,
    haze: impl Fn(Rgb) -> Rgb,
) {
    let bark = haze(bark_colour(rng));
    let trunk_w = height * 0.045;
    let top = base - height * 0.55;
    c.capsule(x, base, x, top, trunk_w, trunk_w * 0.7, bark, 1.0);
    let leaves = haze(leaf_colour(rng, season));
    let (cy, rx, ry) = (base - height * 0.7, height * 0.38, height * 0.28);
    c.ellipse(x, cy, rx, ry, 0.0, shade(leaves, 0.75), 1.0);
    let strands = 16 + rng.below(8) as usize;
    for k in 0..strands {
        let f = k as f64 / (strands - 1) as f64 * 2.0 - 1.0;
        let sx = x + f * rx * 0.95;
        let sy = cy - ry * 0.3 * libm::sqrt(1.0 - f * f);
        let end = base - height * rng.range(0.02, 0.25);
        c.capsule(
            sx,
            sy,
            sx + f * height * 0.03,
            end,
            height * 0.018,
            height * 0.008,
            shade(leaves, rng.range(0.85, 1.2)),
            1.0,
        );
    }
    c.ellipse(
        x - rx * 0.2,
        cy - ry * 0.3,
        rx * 0.6,
        ry * 0.4,
        0.0,
        shade(leaves, 1.15),
        0.6,
    );
}
