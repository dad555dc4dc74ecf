//! A metric chart in inline SVG: one line per run, one `circle[data-point]` per logged epoch
//! with its value on hover, optional log scale and exponential smoothing. The geometry is plain
//! functions ([`plot`]) so it is tested without a browser.

use leptos::prelude::*;

/// Colours given to runs in order: the shown run first, then the overlays.
pub const PALETTE: [&str; 8] = [
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f",
];

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 34.0;

/// One run's values of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label (`run 3`).
    pub label: String,
    /// Line colour.
    pub color: &'static str,
    /// (x, value) in x order: x is the epoch, or the step (or the fractional epoch) of a
    /// per-step chart.
    pub points: Vec<(f64, f64)>,
    /// A horizontal reference line (the base model's value), if known.
    pub baseline: Option<f64>,
}

/// A point placed on the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedPoint {
    /// Its x value (epoch or step).
    pub at: f64,
    /// Raw (unsmoothed) value.
    pub value: f64,
    /// SVG x.
    pub x: f64,
    /// SVG y.
    pub y: f64,
}

/// A series placed on the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedSeries {
    /// Legend label.
    pub label: String,
    /// Line colour.
    pub color: &'static str,
    /// The raw values as a path.
    pub raw_path: String,
    /// The smoothed values as a path (empty when smoothing is off).
    pub smooth_path: String,
    /// The raw points (only those drawable: positive values on a log scale).
    pub points: Vec<PlacedPoint>,
    /// SVG y of the baseline, if it is drawable.
    pub baseline_y: Option<f64>,
}

/// A labelled tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// SVG coordinate along its axis.
    pub at: f64,
    /// Label text.
    pub label: String,
}

/// Everything the chart draws.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    /// Series in drawing order.
    pub series: Vec<PlacedSeries>,
    /// Epoch ticks.
    pub x_ticks: Vec<Tick>,
    /// Value ticks.
    pub y_ticks: Vec<Tick>,
}

/// TensorBoard's debiased exponential moving average; `weight` in [0, 1), 0 is no smoothing.
pub fn smooth(values: &[f64], weight: f64) -> Vec<f64> {
    let weight = weight.clamp(0.0, 0.999);
    let mut last = 0.0;
    let mut kept = 0;
    values
        .iter()
        .map(|&v| {
            if !v.is_finite() {
                return v;
            }
            last = last * weight + (1.0 - weight) * v;
            kept += 1;
            last / (1.0 - weight.powi(kept))
        })
        .collect()
}

/// "Nice" ticks (1, 2, 5 × 10^k steps) covering `[lo, hi]`, about `count` of them.
pub fn nice_ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo || count == 0 {
        return vec![lo];
    }
    let rough = (hi - lo) / count as f64;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Short label for an axis value.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_string()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Places `series` on the chart area.
pub fn plot(series: &[Series], log_scale: bool, smoothing: f64) -> Plot {
    let drawable = |v: f64| v.is_finite() && (!log_scale || v > 0.0);
    let to_axis = |v: f64| if log_scale { v.log10() } else { v };

    let xs = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(|x| x.is_finite());
    let (mut e_lo, mut e_hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), e| {
        (lo.min(e), hi.max(e))
    });
    if e_lo > e_hi {
        (e_lo, e_hi) = (1.0, 1.0);
    }
    let (e_lo, e_hi) = if e_lo == e_hi {
        (e_lo - 1.0, e_hi + 1.0)
    } else {
        (e_lo, e_hi)
    };

    let values = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1).chain(s.baseline))
        .filter(|v| drawable(*v))
        .map(to_axis);
    let (mut v_lo, mut v_hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if v_lo > v_hi {
        (v_lo, v_hi) = (0.0, 1.0);
    }
    let pad = if v_hi > v_lo {
        (v_hi - v_lo) * 0.06
    } else {
        v_lo.abs().max(1.0) * 0.1
    };
    let (v_lo, v_hi) = (v_lo - pad, v_hi + pad);

    let x = |e: f64| LEFT + (e - e_lo) / (e_hi - e_lo) * (WIDTH - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - (to_axis(v) - v_lo) / (v_hi - v_lo)) * (HEIGHT - TOP - BOTTOM);
    let path = |pts: &mut dyn Iterator<Item = (f64, f64)>| {
        let mut d = String::new();
        for (i, (px, py)) in pts.enumerate() {
            d.push_str(&format!(
                "{}{px:.1},{py:.1}",
                if i == 0 { "M" } else { " L" }
            ));
        }
        d
    };

    let placed = series
        .iter()
        .map(|s| {
            let kept: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && drawable(p.1))
                .collect();
            let points: Vec<PlacedPoint> = kept
                .iter()
                .map(|&(at, value)| PlacedPoint {
                    at,
                    value,
                    x: x(at),
                    y: y(value),
                })
                .collect();
            let raw_path = path(&mut points.iter().map(|p| (p.x, p.y)));
            let smooth_path = if smoothing > 0.0 {
                let raw: Vec<f64> = kept.iter().map(|p| p.1).collect();
                let smoothed = smooth(&raw, smoothing);
                path(
                    &mut kept
                        .iter()
                        .zip(smoothed)
                        .filter(|(_, v)| drawable(*v))
                        .map(|(p, v)| (x(p.0), y(v))),
                )
            } else {
                String::new()
            };
            PlacedSeries {
                label: s.label.clone(),
                color: s.color,
                raw_path,
                smooth_path,
                points,
                baseline_y: s.baseline.filter(|v| drawable(*v)).map(y),
            }
        })
        .collect();

    let x_ticks = nice_ticks(e_lo.max(1.0), e_hi, 6)
        .into_iter()
        .filter(|e| e.fract() == 0.0)
        .map(|e| Tick {
            at: x(e),
            label: format!("{e:.0}"),
        })
        .collect();
    let y_ticks = if log_scale {
        let ticks: Vec<f64> = nice_ticks(v_lo, v_hi, 5);
        let decades: Vec<f64> = (v_lo.ceil() as i32..=v_hi.floor() as i32)
            .map(f64::from)
            .collect();
        // Whole decades when the range spans some, else evenly spaced exponents.
        let exponents = if decades.len() >= 2 { decades } else { ticks };
        exponents
            .into_iter()
            .map(|e| 10f64.powf(e))
            .map(|v| Tick {
                at: y(v),
                label: format_value(v),
            })
            .collect()
    } else {
        let ticks = nice_ticks(v_lo, v_hi, 5);
        // As many decimals as the tick step needs, so labels read 0.40, 0.45 rather than 0.4000.
        let step = ticks.windows(2).map(|w| w[1] - w[0]).next().unwrap_or(1.0);
        let decimals = (-step.log10().floor()).clamp(0.0, 8.0) as usize;
        let label = |v: f64| {
            if (1e-3..1e4).contains(&step) {
                format!("{v:.decimals$}")
            } else {
                format_value(v)
            }
        };
        ticks
            .into_iter()
            .map(|v| Tick {
                at: y(v),
                label: label(v),
            })
            .collect()
    };
    Plot {
        series: placed,
        x_ticks,
        y_ticks,
    }
}

/// An x value as the hover text shows it: whole epochs and steps as integers, a fractional
/// epoch to two places.
pub fn format_x(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A chart of one metric over epochs, for one or more runs.
#[component]
pub fn MetricChart(
    /// Metric name (`val_loss`); also the `data-chart` attribute.
    metric: String,
    /// The runs' series of this metric.
    #[prop(into)]
    series: Signal<Vec<Series>>,
    /// Logarithmic value axis.
    #[prop(into)]
    log_scale: Signal<bool>,
    /// Smoothing weight in [0, 1).
    #[prop(into)]
    smoothing: Signal<f64>,
    /// What x is (`epoch`, `step`): the axis label and the hover text.
    #[prop(default = "epoch")]
    x_label: &'static str,
    /// Most points drawn as hoverable circles; a denser series is drawn as its line only.
    #[prop(default = usize::MAX)]
    max_circles: usize,
) -> impl IntoView {
    let hovered = RwSignal::new(None::<String>);
    let layout = Memo::new(move |_| plot(&series.get(), log_scale.get(), smoothing.get()));
    let title = metric.clone();
    view! {
        <figure class="chart">
            <figcaption>
                <span class="chart-title">{title}</span>
                <span class="chart-readout">{move || hovered.get().unwrap_or_default()}</span>
            </figcaption>
            <svg
                data-chart=metric
                viewBox=format!("0 0 {WIDTH} {HEIGHT}")
                preserveAspectRatio="xMidYMid meet"
                role="img"
            >
                <g class="grid">
                    {move || {
                        layout
                            .get()
                            .y_ticks
                            .into_iter()
                            .map(|t| {
                                view! {
                                    <line x1=LEFT x2=WIDTH - RIGHT y1=t.at y2=t.at></line>
                                    <text class="tick y" x=LEFT - 6.0 y=t.at + 4.0>{t.label}</text>
                                }
                            })
                            .collect_view()
                    }}
                    {move || {
                        layout
                            .get()
                            .x_ticks
                            .into_iter()
                            .map(|t| {
                                view! {
                                    <line class="x" x1=t.at x2=t.at y1=HEIGHT - BOTTOM y2=HEIGHT - BOTTOM + 4.0></line>
                                    <text class="tick x" x=t.at y=HEIGHT - BOTTOM + 16.0>{t.label}</text>
                                }
                            })
                            .collect_view()
                    }}
                    <text class="axis-label" x=(LEFT + WIDTH - RIGHT) / 2.0 y=HEIGHT - 2.0>{x_label}</text>
                    <line class="axis" x1=LEFT x2=LEFT y1=TOP y2=HEIGHT - BOTTOM></line>
                    <line class="axis" x1=LEFT x2=WIDTH - RIGHT y1=HEIGHT - BOTTOM y2=HEIGHT - BOTTOM></line>
                </g>
                {move || {
                    let smoothing_on = smoothing.get() > 0.0;
                    layout
                        .get()
                        .series
                        .into_iter()
                        .map(|s| {
                            let color = s.color;
                            let label = s.label.clone();
                            view! {
                                <g class="series" data-series=s.label.clone()>
                                    {s.baseline_y.map(|by| view! {
                                        <line class="baseline" x1=LEFT x2=WIDTH - RIGHT y1=by y2=by stroke=color>
                                            <title>{format!("{label}: base model")}</title>
                                        </line>
                                    })}
                                    <path
                                        class="raw"
                                        class:faded=smoothing_on
                                        d=s.raw_path
                                        stroke=color
                                        fill="none"
                                    ></path>
                                    {smoothing_on.then(|| view! {
                                        <path class="smooth" d=s.smooth_path.clone() stroke=color fill="none"></path>
                                    })}
                                    {(s.points.len() <= max_circles).then(|| s
                                        .points
                                        .into_iter()
                                        .map(|p| {
                                            let text = format!("{}, {x_label} {}: {}", s.label, format_x(p.at), format_value(p.value));
                                            let on_enter = text.clone();
                                            view! {
                                                <circle
                                                    data-point=""
                                                    data-x=p.at
                                                    data-value=p.value
                                                    cx=p.x
                                                    cy=p.y
                                                    r="3.5"
                                                    fill=color
                                                    on:mouseenter=move |_| hovered.set(Some(on_enter.clone()))
                                                    on:mouseleave=move |_| hovered.set(None)
                                                >
                                                    <title>{text}</title>
                                                </circle>
                                            }
                                        })
                                        .collect_view())}
                                </g>
                            }
                        })
                        .collect_view()
                }}
            </svg>
        </figure>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(u32, f64)]) -> Series {
        Series {
            label: "run 1".into(),
            color: PALETTE[0],
            points: points.iter().map(|&(e, v)| (f64::from(e), v)).collect(),
            baseline: Some(1.0),
        }
    }

    #[test]
    fn one_circle_per_logged_epoch_inside_the_area() {
        let p = plot(
            &[series(&[(1, 0.9), (2, 0.5), (3, 0.4), (4, 0.45)])],
            false,
            0.0,
        );
        let pts = &p.series[0].points;
        assert_eq!(pts.len(), 4);
        assert!(pts.iter().all(
            |q| (LEFT..=WIDTH - RIGHT).contains(&q.x) && (TOP..=HEIGHT - BOTTOM).contains(&q.y)
        ));
        assert!(pts[0].y < pts[2].y, "a larger value is drawn higher");
        assert!(p.series[0].baseline_y.is_some());
        assert!(p.series[0].smooth_path.is_empty());
        assert!(!p.y_ticks.is_empty() && !p.x_ticks.is_empty());
    }

    #[test]
    fn log_scale_drops_non_positive_values() {
        let p = plot(&[series(&[(1, 0.0), (2, 0.01), (3, 1.0)])], true, 0.5);
        assert_eq!(p.series[0].points.len(), 2);
        assert!(!p.series[0].smooth_path.is_empty());
    }

    #[test]
    fn single_points_and_empty_series_still_plot() {
        let p = plot(&[series(&[(1, 0.3)])], false, 0.0);
        assert!(p.series[0].points[0].x.is_finite() && p.series[0].points[0].y.is_finite());
        assert!(plot(&[], true, 0.9).series.is_empty());
    }

    #[test]
    fn smoothing_is_debiased() {
        assert_eq!(smooth(&[2.0, 2.0, 2.0], 0.9), vec![2.0, 2.0, 2.0]);
        assert_eq!(smooth(&[1.0, 3.0], 0.0), vec![1.0, 3.0]);
        let s = smooth(&[0.0, 10.0], 0.5);
        assert!(s[1] > 0.0 && s[1] < 10.0);
    }

    #[test]
    fn ticks_are_round() {
        let t = nice_ticks(0.0, 1.0, 5);
        assert_eq!(t.len(), 6);
        assert!(t
            .iter()
            .zip([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
            .all(|(a, b)| (a - b).abs() < 1e-12));
        assert_eq!(nice_ticks(1.0, 10.0, 5), vec![2.0, 4.0, 6.0, 8.0, 10.0]);
    }
}
