//! The run view: metric charts (other runs overlaid on request), the checkpoint list with the
//! best one marked, and the run's configuration.

use format::Metadata;
use leptos::prelude::*;

use format::api::RunDetail;

use crate::api::{fetch_run, fetch_runs, ApiError};
use crate::chart::{MetricChart, Series, PALETTE};
use crate::display;
use crate::error::ErrorBox;
use crate::live::use_live;
use crate::route::{navigate, Route};
use crate::steps::{SampleStrip, StepCharts};

/// Metrics charted first, in this order; any others follow alphabetically.
const PREFERRED_METRICS: [&str; 2] = ["val_loss", "train_loss"];

/// Names of the metrics logged in any of `runs`, preferred ones first.
pub fn metric_names<'a>(runs: impl IntoIterator<Item = &'a Metadata>) -> Vec<String> {
    let mut names: Vec<String> = runs
        .into_iter()
        .flat_map(|m| {
            m.metric_series()
                .into_iter()
                .flat_map(|e| e.metrics.into_keys())
        })
        .collect();
    names.sort();
    names.dedup();
    let rank = |n: &str| {
        PREFERRED_METRICS
            .iter()
            .position(|p| *p == n)
            .unwrap_or(PREFERRED_METRICS.len())
    };
    names.sort_by_key(|n| rank(n));
    names
}

/// One run's series of `metric`, coloured by its position among the shown runs.
pub fn series_of(meta: &Metadata, metric: &str, position: usize) -> Series {
    Series {
        label: format!("run {}", meta.run_number),
        color: PALETTE[position % PALETTE.len()],
        points: meta
            .metric_series()
            .iter()
            .filter_map(|e| e.metrics.get(metric).map(|v| (f64::from(e.epoch), *v)))
            .collect(),
        baseline: meta.base_metrics.get(metric).copied(),
    }
}

/// One run, with `with` overlaid on its charts.
#[component]
pub fn RunView(
    /// The run shown.
    run: u32,
    /// Runs whose metrics are overlaid on its charts.
    with: Vec<u32>,
) -> impl IntoView {
    let live = use_live();
    let detail = LocalResource::new(move || {
        live.changes.track();
        fetch_run(run)
    });
    let overlay_numbers = with.clone();
    let overlays = LocalResource::new(move || {
        live.changes.track();
        let numbers = overlay_numbers.clone();
        async move {
            let mut loaded = Vec::new();
            for n in numbers {
                loaded.push(fetch_run(n).await);
            }
            loaded
        }
    });

    view! {
        <section class="view run-view">
            <header class="view-header">
                <h1>{format!("Run {run}")}</h1>
                <a class="button secondary" href=Route::Runs.to_hash()>"All runs"</a>
                <a class="button" data-action="open-sample" href=Route::Sample { run, checkpoint: None }.to_hash()>
                    "Sample in the browser"
                </a>
            </header>
            <Transition fallback=|| view! { <p class="loading">"Loading the run…"</p> }>
                {move || {
                    let with = with.clone();
                    detail.get().map(|result| match result {
                        Err(e) => view! { <ErrorBox message=e.to_string()/> }.into_any(),
                        Ok(detail) => {
                            let others = overlays.get().unwrap_or_default();
                            view! { <RunBody detail=detail overlays=others with=with/> }.into_any()
                        }
                    })
                }}
            </Transition>
        </section>
    }
}

#[component]
fn RunBody(
    detail: RunDetail,
    overlays: Vec<Result<RunDetail, ApiError>>,
    with: Vec<u32>,
) -> impl IntoView {
    let meta = detail.metadata.clone();
    let run = meta.run_number;
    let status = match detail.seed {
        Some(_) => detail.status.as_str().to_string(),
        None => status_name(&meta),
    };
    let log_scale = RwSignal::new(false);
    let smoothing = RwSignal::new(0.0f64);
    let with_steps = with.clone();

    let overlay_errors: Vec<String> = overlays
        .iter()
        .filter_map(|o| o.as_ref().err().map(|e| e.to_string()))
        .collect();
    let mut shown: Vec<Metadata> = vec![meta.clone()];
    shown.extend(
        overlays
            .into_iter()
            .filter_map(Result::ok)
            .map(|d| d.metadata),
    );
    let metrics = metric_names(&shown);

    let charts = metrics
        .into_iter()
        .map(|metric| {
            let series: Vec<Series> = shown.iter().enumerate().map(|(i, m)| series_of(m, &metric, i)).collect();
            view! { <MetricChart metric=metric series=series log_scale=log_scale smoothing=smoothing/> }
        })
        .collect_view();
    let legend = shown
        .iter()
        .enumerate()
        .map(|(i, m)| {
            view! {
                <span class="legend-item">
                    <span class="swatch" style=format!("background:{}", PALETTE[i % PALETTE.len()])></span>
                    {format!("run {} · {}", m.run_number, m.experiment_name)}
                </span>
            }
        })
        .collect_view();

    view! {
        <div class="run-summary">
            <span class=format!("status status-{status}")>{status.clone()}</span>
            <span>{format!("{} · created {}", meta.experiment_name, display::time(&meta.created_at))}</span>
            {meta.updated_at.as_deref().map(|t| view! { <span class="sub">{format!("updated {}", display::time(t))}</span> })}
        </div>
        {detail.seed.as_ref().map(|seed| view! { <p class="seed-note" data-field="seed-note">{format!("Seed run: {}.", seed.note)}</p> })}
        {meta.base_lineage.as_ref().map(|l| view! {
            <p class="lineage" data-field="base-lineage">
                {format!("Base: base-training run {}, {} (epoch {}), {}", l.run_number, l.checkpoint, l.epoch, l.checksum)}
            </p>
        })}
        {overlay_errors.into_iter().map(|e| view! { <ErrorBox message=e/> }).collect_view()}
        <div class="chart-controls">
            <label>
                <input
                    type="checkbox"
                    data-field="log-scale"
                    prop:checked=move || log_scale.get()
                    on:change=move |ev| log_scale.set(event_target_checked(&ev))
                />
                " Log scale"
            </label>
            <label>
                "Smoothing "
                <input
                    type="range"
                    data-field="smoothing"
                    min="0"
                    max="0.95"
                    step="0.05"
                    prop:value=move || smoothing.get().to_string()
                    on:input=move |ev| smoothing.set(event_target_value(&ev).parse().unwrap_or(0.0))
                />
                <span class="sub">{move || format!(" {:.2}", smoothing.get())}</span>
            </label>
            <OverlayPicker run=run with=with/>
            <span class="legend">{legend}</span>
        </div>
        <div class="charts">{charts}</div>
        <StepCharts runs=std::iter::once(run).chain(with_steps).collect() log_scale=log_scale smoothing=smoothing/>
        <SampleStrip run=run/>
        <div class="columns">
            <CheckpointList meta=meta.clone() sampleable=detail.seed.is_none()/>
            <ConfigPanel config=detail.config.clone() meta=meta/>
        </div>
    }
}

fn status_name(meta: &Metadata) -> String {
    serde_json::to_value(meta.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Checkboxes for the other runs to overlay on the charts.
#[component]
fn OverlayPicker(run: u32, with: Vec<u32>) -> impl IntoView {
    let runs = LocalResource::new(fetch_runs);
    view! {
        <details class="overlay-picker">
            <summary>{format!("Overlay runs ({})", with.len())}</summary>
            <div class="overlay-list">
                {move || {
                    let with = with.clone();
                    runs.get().map(|result| match result {
                        Err(e) => view! { <span class="error-text">{e.to_string()}</span> }.into_any(),
                        Ok(list) => list
                            .into_iter()
                            .filter(|r| r.run_number != run && r.error.is_none())
                            .map(|r| {
                                let n = r.run_number;
                                let on = with.contains(&n);
                                let current = with.clone();
                                let toggle = move |_| {
                                    let mut next: Vec<u32> = current.iter().copied().filter(|&x| x != n).collect();
                                    if !on {
                                        next.push(n);
                                        next.sort_unstable();
                                    }
                                    navigate(&Route::Run { run, with: next });
                                };
                                view! {
                                    <label>
                                        <input type="checkbox" data-overlay=n prop:checked=on on:change=toggle/>
                                        {format!(" run {n} · {}", r.info.map(|i| i.experiment_name).unwrap_or_default())}
                                    </label>
                                }
                            })
                            .collect_view()
                            .into_any(),
                    })
                }}
            </div>
        </details>
    }
}

/// The run's checkpoints, best marked, removed ones greyed; `sampleable`: false for a seed
/// run, whose files cannot be loaded.
#[component]
fn CheckpointList(meta: Metadata, sampleable: bool) -> impl IntoView {
    let run = meta.run_number;
    let best = meta.best_checkpoint.as_ref().map(|b| b.epoch);
    let rows = meta
        .checkpoints
        .iter()
        .rev()
        .map(|c| {
            let is_best = best == Some(c.epoch);
            let epoch_name = format!("epoch_{:03}", c.epoch);
            let sample_link = (sampleable && c.is_live()).then(|| {
                let href = Route::Sample { run, checkpoint: Some(epoch_name.clone()) }.to_hash();
                view! { <a href=href>"sample"</a> }
            });
            view! {
                <tr data-checkpoint=epoch_name.clone() class:best=is_best class:removed=c.removed>
                    <td class="num">{c.epoch}</td>
                    <td class="num">{display::metric(c.metrics.get("val_loss").copied())}</td>
                    <td class="num">{display::metric(c.metrics.get("train_loss").copied())}</td>
                    <td>{display::time(&c.saved_at)}</td>
                    <td class="num">{c.size.map(display::bytes).unwrap_or_default()}</td>
                    <td>
                        {is_best.then(|| view! { <span class="badge best-badge" data-best="">"★ best"</span> })}
                        {c.removed.then(|| view! { <span class="badge">"removed"</span> })}
                        {c.damaged.clone().map(|reason| view! { <span class="badge damaged" title=reason>"damaged"</span> })}
                    </td>
                    <td>{sample_link}</td>
                </tr>
            }
        })
        .collect_view();
    let base_loss = meta.base_metrics.get("val_loss").copied();
    view! {
        <div class="panel">
            <h2>"Checkpoints"</h2>
            <p class="sub">
                {format!("Base model val_loss {}", display::metric(base_loss))}
                {meta.base_model.as_ref().map(|b| format!(" · base {}", display::bytes(b.size)))}
            </p>
            <table class="checkpoints">
                <thead>
                    <tr>
                        <th>"Epoch"</th>
                        <th>"val_loss"</th>
                        <th>"train_loss"</th>
                        <th>"Saved"</th>
                        <th>"Size"</th>
                        <th></th>
                        <th></th>
                    </tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        </div>
    }
}

/// The run's configuration as formatted JSON.
#[component]
fn ConfigPanel(config: Option<serde_json::Value>, meta: Metadata) -> impl IntoView {
    // Runs written before `config.json` existed still carry their configs in the metadata.
    let shown = config.unwrap_or_else(|| {
        serde_json::json!({ "training_config": meta.training_config, "lora_config": meta.lora_config })
    });
    let text =
        serde_json::to_string_pretty(&shown).unwrap_or_else(|e| format!("unprintable config: {e}"));
    view! {
        <div class="panel">
            <h2>"Configuration"</h2>
            <pre class="config" data-config="">{text}</pre>
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_ordered_and_series_follow_history() {
        let mut meta = Metadata::new(1, "e", "t");
        for (epoch, v) in [(1, 0.5), (2, 0.4)] {
            let metrics = [
                ("val_loss".to_string(), v),
                ("lr".to_string(), 1e-3),
                ("train_loss".to_string(), v),
            ];
            meta.metric_history.push(format::metadata::EpochMetrics {
                epoch,
                metrics: metrics.into_iter().collect(),
            });
        }
        meta.base_metrics.insert("val_loss".into(), 0.9);
        assert_eq!(metric_names([&meta]), ["val_loss", "train_loss", "lr"]);
        let s = series_of(&meta, "val_loss", 1);
        assert_eq!(s.points, vec![(1.0, 0.5), (2.0, 0.4)]);
        assert_eq!(s.baseline, Some(0.9));
        assert_eq!(s.color, PALETTE[1]);
    }
}
