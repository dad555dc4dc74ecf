//! A run's training steps and sample grids as logged during training (`logs/steps/`,
//! `logs/samples/`): the per-step loss and learning-rate charts (x by step or by epoch, the
//! overlaid runs too) and the strip of sample grids, one per epoch that drew one, all from the
//! same seed, so the strip shows the model changing, not the noise.

use leptos::prelude::*;

use format::api::{sample_path, RunSteps};
use format::logs::StepLog;

use crate::api::{fetch_samples, fetch_steps};
use crate::chart::{MetricChart, Series, PALETTE};
use crate::error::ErrorBox;
use crate::live::use_live;

/// What the x axis of a step chart counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAxis {
    /// The global optimizer step.
    Step,
    /// The epoch, fractional within an epoch.
    Epoch,
}

/// Denser series are drawn as a line without hover circles.
const MAX_STEP_CIRCLES: usize = 400;

/// A chart's points: (x, value).
pub type Points = Vec<(f64, f64)>;

/// The (x, loss) and (x, lr) points of a run's step logs. On the epoch axis a step lies between
/// its epoch's start (the previous epoch's last step) and end (its own last step).
pub fn step_points(logs: &[StepLog], axis: StepAxis) -> (Points, Points) {
    let mut loss = vec![];
    let mut lr = vec![];
    let mut previous_last = 0u64;
    for log in logs {
        let last = log.steps.last().map_or(previous_last, |s| s.step);
        let start = previous_last.min(last);
        for record in &log.steps {
            let x = match axis {
                StepAxis::Step => record.step as f64,
                StepAxis::Epoch if last > start => {
                    f64::from(log.epoch - 1)
                        + (record.step.saturating_sub(start)) as f64 / (last - start) as f64
                }
                StepAxis::Epoch => f64::from(log.epoch),
            };
            loss.push((x, record.loss));
            lr.push((x, record.lr));
        }
        previous_last = last;
    }
    (loss, lr)
}

/// The per-step charts of `runs` (the first is the run shown, the rest overlaid).
#[component]
pub fn StepCharts(
    /// The run shown first, then the overlaid ones.
    runs: Vec<u32>,
    /// Logarithmic loss axis.
    #[prop(into)]
    log_scale: Signal<bool>,
    /// Smoothing weight of the loss, in [0, 1).
    #[prop(into)]
    smoothing: Signal<f64>,
) -> impl IntoView {
    let live = use_live();
    let axis = RwSignal::new(StepAxis::Step);
    let logs = LocalResource::new(move || {
        live.changes.track();
        let runs = runs.clone();
        async move {
            let mut loaded: Vec<Result<RunSteps, String>> = vec![];
            for n in runs {
                loaded.push(fetch_steps(n).await.map_err(|e| e.to_string()));
            }
            loaded
        }
    });
    // The loss and the lr series of every run, from one pass over its logs.
    let series = move || {
        let axis = axis.get();
        let mut loss_series = vec![];
        let mut lr_series = vec![];
        for (i, steps) in logs
            .get()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().ok().map(|steps| (i, steps)))
        {
            let (loss, lr) = step_points(&steps.logs, axis);
            if loss.is_empty() {
                continue;
            }
            let series = |points| Series {
                label: format!("run {}", steps.run_number),
                color: PALETTE[i % PALETTE.len()],
                points,
                baseline: None,
            };
            loss_series.push(series(loss));
            lr_series.push(series(lr));
        }
        (loss_series, lr_series)
    };
    let errors = move || {
        logs.get()
            .unwrap_or_default()
            .into_iter()
            .filter_map(Result::err)
            .map(|e| view! { <ErrorBox message=e/> })
            .collect_view()
    };
    let x_label = move || match axis.get() {
        StepAxis::Step => "step",
        StepAxis::Epoch => "epoch",
    };
    view! {
        <section class="steps" data-steps="">
            <div class="chart-controls">
                <span class="sub">"Per step:"</span>
                {[(StepAxis::Step, "axis-step", " by step"), (StepAxis::Epoch, "axis-epoch", " by epoch")]
                    .into_iter()
                    .map(|(choice, field, label)| view! {
                        <label>
                            <input
                                type="radio"
                                name="step-axis"
                                data-field=field
                                prop:checked=move || axis.get() == choice
                                on:change=move |_| axis.set(choice)
                            />
                            {label}
                        </label>
                    })
                    .collect_view()}
            </div>
            {errors}
            {move || {
                let (loss, lr) = series();
                if loss.is_empty() {
                    return view! {
                        <p class="sub" data-no-steps="">"No per-step log yet (runs trained before it existed have none)."</p>
                    }
                    .into_any();
                }
                let x_label = x_label();
                view! {
                    <div class="charts">
                        <MetricChart metric="train_loss_step".to_string() series=loss log_scale=log_scale smoothing=smoothing x_label=x_label max_circles=MAX_STEP_CIRCLES/>
                        <MetricChart metric="lr_step".to_string() series=lr log_scale=false smoothing=0.0 x_label=x_label max_circles=MAX_STEP_CIRCLES/>
                    </div>
                }
                .into_any()
            }}
        </section>
    }
}

/// The sample grids run `run` drew during training, one per epoch, newest last.
#[component]
pub fn SampleStrip(
    /// The run.
    run: u32,
) -> impl IntoView {
    let live = use_live();
    let samples = LocalResource::new(move || {
        live.changes.track();
        fetch_samples(run)
    });
    view! {
        {move || {
            samples.get().map(|result| match result {
                Err(e) => view! { <ErrorBox message=e.to_string()/> }.into_any(),
                Ok(list) if list.epochs.is_empty() => ().into_any(),
                Ok(list) => {
                    let items = list
                        .epochs
                        .into_iter()
                        .map(|epoch| {
                            view! {
                                <figure class="sample-grid" data-sample-epoch=epoch>
                                    <img src=sample_path(run, epoch) alt=format!("samples after epoch {epoch}")/>
                                    <figcaption>{format!("epoch {epoch}")}</figcaption>
                                </figure>
                            }
                        })
                        .collect_view();
                    view! {
                        <section class="sample-strip-section">
                            <h2>"Samples during training"</h2>
                            <p class="sub">"The same seed after each epoch that drew one (training.sample_every_n_epochs)."</p>
                            <div class="sample-strip" data-sample-strip="">{items}</div>
                        </section>
                    }
                    .into_any()
                }
            })
        }}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use format::logs::StepRecord;

    fn log(epoch: u32, steps: &[u64]) -> StepLog {
        StepLog {
            epoch,
            every: 2,
            steps: steps
                .iter()
                .map(|&step| StepRecord {
                    step,
                    loss: 1.0 / step as f64,
                    lr: 1e-3,
                })
                .collect(),
        }
    }

    #[test]
    fn steps_place_by_step_or_within_their_epoch() {
        let logs = [log(1, &[2, 4, 5]), log(2, &[6, 8, 10])];
        let (loss, lr) = step_points(&logs, StepAxis::Step);
        assert_eq!(
            loss.iter().map(|p| p.0).collect::<Vec<_>>(),
            [2.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(lr.len(), 6);
        let (loss, _) = step_points(&logs, StepAxis::Epoch);
        let xs: Vec<f64> = loss.iter().map(|p| p.0).collect();
        assert_eq!(xs, [0.4, 0.8, 1.0, 1.2, 1.6, 2.0]);
        assert!(step_points(&[], StepAxis::Epoch).0.is_empty());
    }
}
