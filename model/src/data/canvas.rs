//! A tiny supersampling rasteriser for the procedural images: shapes are painted in unit
//! coordinates (x right, y down, both in `[0, 1]`) on a grid `ss` times finer than the
//! output, then box-filtered down, which anti-aliases every edge. Pure `f64` arithmetic and
//! `libm` keep the pixels identical on every platform.

/// An RGB colour with components in `[0, 1]`.
pub(crate) type Rgb = [f64; 3];

/// Linear mix of two colours (`t = 0` → `a`).
pub(crate) fn mix(a: Rgb, b: Rgb, t: f64) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// Scales a colour's brightness, clamped to `[0, 1]`.
pub(crate) fn shade(c: Rgb, k: f64) -> Rgb {
    [
        (c[0] * k).clamp(0.0, 1.0),
        (c[1] * k).clamp(0.0, 1.0),
        (c[2] * k).clamp(0.0, 1.0),
    ]
}

/// Hue in degrees, saturation and value in `[0, 1]` → RGB.
pub(crate) fn hsv(h: f64, s: f64, v: f64) -> Rgb {
    let h = h.rem_euclid(360.0) / 60.0;
    let i = libm::floor(h);
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as u32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// A supersampled RGB canvas.
pub(crate) struct Canvas {
    size: usize,
    ss: usize,
    side: usize,
    px: Vec<Rgb>,
}

impl Canvas {
    /// A black canvas rendering to `size × size` pixels with `ss × ss` samples each.
    pub fn new(size: usize, ss: usize) -> Self {
        let side = size * ss;
        Self {
            size,
            ss,
            side,
            px: vec![[0.0; 3]; side * side],
        }
    }

    /// Sample-space bounding box of a unit-space box, clipped to the canvas.
    fn bounds(&self, x0: f64, y0: f64, x1: f64, y1: f64) -> Option<(usize, usize, usize, usize)> {
        let s = self.side as f64;
        let lo = |v: f64| libm::floor(v * s - 0.5).max(0.0) as usize;
        let hi = |v: f64| (libm::ceil(v * s + 0.5).min(s)).max(0.0) as usize;
        let (ax, ay, bx, by) = (lo(x0), lo(y0), hi(x1), hi(y1));
        (ax < bx && ay < by).then_some((ax, ay, bx, by))
    }

    /// Paints every sample inside `inside(x, y)` within the box, blended with `alpha`.
    fn paint(
        &mut self,
        bbox: (f64, f64, f64, f64),
        color: Rgb,
        alpha: f64,
        inside: impl Fn(f64, f64) -> bool,
    ) {
        let Some((ax, ay, bx, by)) = self.bounds(bbox.0, bbox.1, bbox.2, bbox.3) else {
            return;
        };
        let inv = 1.0 / self.side as f64;
        for j in ay..by {
            let y = (j as f64 + 0.5) * inv;
            for i in ax..bx {
                let x = (i as f64 + 0.5) * inv;
                if inside(x, y) {
                    let p = &mut self.px[j * self.side + i];
                    *p = mix(*p, color, alpha);
                }
            }
        }
    }

    /// Sets every sample from a function of its position (backgrounds, gradients).
    pub fn fill(&mut self, f: impl Fn(f64, f64) -> Rgb) {
        let inv = 1.0 / self.side as f64;
        for j in 0..self.side {
            for i in 0..self.side {
                self.px[j * self.side + i] = f((i as f64 + 0.5) * inv, (j as f64 + 0.5) * inv);
            }
        }
    }

    /// Blends a function-defined colour over the samples below `y_of(x)` (terrain).
    pub fn fill_below(&mut self, y_of: impl Fn(f64) -> f64, color: impl Fn(f64, f64) -> Rgb) {
        let inv = 1.0 / self.side as f64;
        for i in 0..self.side {
            let x = (i as f64 + 0.5) * inv;
            let top = y_of(x);
            for j in 0..self.side {
                let y = (j as f64 + 0.5) * inv;
                if y >= top {
                    self.px[j * self.side + i] = color(x, y);
                }
            }
        }
    }

    /// A rotated ellipse (`angle` in radians).
    #[allow(clippy::too_many_arguments)]
    pub fn ellipse(
        &mut self,
        cx: f64,
        cy: f64,
        rx: f64,
        ry: f64,
        angle: f64,
        color: Rgb,
        alpha: f64,
    ) {
        let (s, c) = (libm::sin(angle), libm::cos(angle));
        let r = rx.max(ry);
        self.paint((cx - r, cy - r, cx + r, cy + r), color, alpha, |x, y| {
            let (dx, dy) = (x - cx, y - cy);
            let (u, v) = ((dx * c + dy * s) / rx, (-dx * s + dy * c) / ry);
            u * u + v * v <= 1.0
        });
    }

    /// A disc.
    pub fn disc(&mut self, cx: f64, cy: f64, r: f64, color: Rgb, alpha: f64) {
        self.paint((cx - r, cy - r, cx + r, cy + r), color, alpha, |x, y| {
            (x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r
        });
    }

    /// A segment from `a` to `b` whose half-width tapers from `ra` to `rb`, with round ends.
    #[allow(clippy::too_many_arguments)]
    pub fn capsule(
        &mut self,
        ax: f64,
        ay: f64,
        bx: f64,
        by: f64,
        ra: f64,
        rb: f64,
        color: Rgb,
        alpha: f64,
    ) {
        let r = ra.max(rb);
        let bbox = (
            ax.min(bx) - r,
            ay.min(by) - r,
            ax.max(bx) + r,
            ay.max(by) + r,
        );
        let (dx, dy) = (bx - ax, by - ay);
        let len2 = (dx * dx + dy * dy).max(1e-12);
        self.paint(bbox, color, alpha, |x, y| {
            let h = (((x - ax) * dx + (y - ay) * dy) / len2).clamp(0.0, 1.0);
            let (px, py) = (x - ax - dx * h, y - ay - dy * h);
            let rad = ra + (rb - ra) * h;
            px * px + py * py <= rad * rad
        });
    }

    /// A polygon (even-odd rule), e.g. mountains, conifer tiers, triangles.
    pub fn polygon(&mut self, pts: &[(f64, f64)], color: Rgb, alpha: f64) {
        if pts.len() < 3 {
            return;
        }
        let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        for &(x, y) in pts {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        self.paint((x0, y0, x1, y1), color, alpha, |x, y| {
            let mut inside = false;
            let mut j = pts.len() - 1;
            for i in 0..pts.len() {
                let (xi, yi) = pts[i];
                let (xj, yj) = pts[j];
                if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                    inside = !inside;
                }
                j = i;
            }
            inside
        });
    }

    /// Box-filters down to `size × size` and returns CHW values in `[-1, 1]`.
    pub fn to_chw(&self) -> Vec<f32> {
        let (n, ss) = (self.size, self.ss);
        let mut out = vec![0f32; 3 * n * n];
        let norm = 1.0 / (ss * ss) as f64;
        for y in 0..n {
            for x in 0..n {
                let mut acc = [0.0; 3];
                for j in 0..ss {
                    for i in 0..ss {
                        let p = self.px[(y * ss + j) * self.side + x * ss + i];
                        for c in 0..3 {
                            acc[c] += p[c];
                        }
                    }
                }
                for (c, v) in acc.iter().enumerate() {
                    out[c * n * n + y * n + x] = ((v * norm).clamp(0.0, 1.0) * 2.0 - 1.0) as f32;
                }
            }
        }
        out
    }
}
