//! The runs view: every run in a sortable table, refreshed by live updates; a row opens the run,
//! checked rows open together with their charts overlaid.

use std::cmp::Ordering;

use leptos::prelude::*;

use format::api::{RunList, RunSummary};

use crate::api::fetch_run_list;
use crate::display;
use crate::error::ErrorBox;
use crate::live::use_live;
use crate::route::{navigate, Route};

/// A column the table can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Run number.
    Run,
    /// Experiment name.
    Experiment,
    /// Creation time.
    Created,
    /// Number of checkpoints.
    Checkpoints,
    /// Best validation loss.
    BestValLoss,
    /// Base model's validation loss.
    BaseValLoss,
    /// Run status.
    Status,
}

const COLUMNS: [(SortKey, &str, &str); 7] = [
    (SortKey::Run, "run", "Run"),
    (SortKey::Experiment, "experiment", "Experiment"),
    (SortKey::Created, "created", "Created"),
    (SortKey::Checkpoints, "checkpoints", "Checkpoints"),
    (SortKey::BestValLoss, "best_val_loss", "Best val_loss"),
    (SortKey::BaseValLoss, "base_val_loss", "Base val_loss"),
    (SortKey::Status, "status", "Status"),
];

/// Orders two runs by `key`; missing values sort last whatever the direction.
pub fn compare(a: &RunSummary, b: &RunSummary, key: SortKey, ascending: bool) -> Ordering {
    fn opt<T: PartialOrd>(a: Option<T>, b: Option<T>, ascending: bool) -> Ordering {
        match (a, b) {
            (Some(a), Some(b)) => {
                let o = a.partial_cmp(&b).unwrap_or(Ordering::Equal);
                if ascending {
                    o
                } else {
                    o.reverse()
                }
            }
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
    let (ia, ib) = (a.info.as_ref(), b.info.as_ref());
    let primary = match key {
        SortKey::Run => opt(Some(a.run_number), Some(b.run_number), ascending),
        SortKey::Experiment => opt(
            ia.map(|i| &i.experiment_name),
            ib.map(|i| &i.experiment_name),
            ascending,
        ),
        SortKey::Created => opt(
            ia.map(|i| &i.created_at),
            ib.map(|i| &i.created_at),
            ascending,
        ),
        SortKey::Checkpoints => opt(
            ia.map(|i| i.checkpoints_count),
            ib.map(|i| i.checkpoints_count),
            ascending,
        ),
        SortKey::BestValLoss => opt(
            a.best_value_of("val_loss"),
            b.best_value_of("val_loss"),
            ascending,
        ),
        SortKey::BaseValLoss => opt(
            ia.and_then(|i| i.base_val_loss),
            ib.and_then(|i| i.base_val_loss),
            ascending,
        ),
        SortKey::Status => opt(Some(a.status.as_str()), Some(b.status.as_str()), ascending),
    };
    primary.then(a.run_number.cmp(&b.run_number))
}

/// The runs table.
#[component]
pub fn RunsView() -> impl IntoView {
    let live = use_live();
    let runs = LocalResource::new(move || {
        live.changes.track();
        fetch_run_list()
    });
    // The latest answer, kept while a refetch is in flight. Only a change of *kind* (loading,
    // error, empty, table) rebuilds the view; a changed list updates the table's keyed rows, so
    // rows stay in place (and stay clickable) while live updates arrive.
    let latest =
        Memo::new(
            move |previous: Option<&Option<Result<RunList, String>>>| match runs.get() {
                Some(result) => Some(result.map_err(|e| e.to_string())),
                None => previous.cloned().flatten(),
            },
        );
    let kind = Memo::new(move |_| {
        latest.with(|l| match l {
            None => ListState::Loading,
            Some(Err(e)) => ListState::Error(e.clone()),
            Some(Ok(list)) if list.runs.is_empty() => ListState::Empty,
            Some(Ok(_)) => ListState::Table,
        })
    });
    let list = Signal::derive(move || {
        latest.with(|l| match l {
            Some(Ok(list)) => list.runs.clone(),
            _ => Vec::new(),
        })
    });
    let base_runs = Memo::new(move |_| {
        latest.with(|l| match l {
            Some(Ok(list)) => list.base_training.clone(),
            _ => Vec::new(),
        })
    });
    let sort = RwSignal::new((SortKey::Run, false));
    let selected = RwSignal::new(Vec::<u32>::new());

    let open_selected = move |_| {
        let mut picked = selected.get();
        picked.sort_unstable();
        if let Some((&first, rest)) = picked.split_first() {
            navigate(&Route::Run {
                run: first,
                with: rest.to_vec(),
            });
        }
    };

    view! {
        <section class="view runs-view">
            <header class="view-header">
                <h1>"Runs"</h1>
                <button
                    class="secondary"
                    data-action="compare"
                    disabled=move || selected.with(|s| s.len() < 2)
                    on:click=open_selected
                >
                    {move || format!("Compare selected ({})", selected.with(Vec::len))}
                </button>
            </header>
            {move || match kind.get() {
                ListState::Loading => view! { <p class="loading">"Loading runs…"</p> }.into_any(),
                ListState::Error(e) => view! { <ErrorBox message=e/> }.into_any(),
                ListState::Empty => view! {
                    <p class="empty" data-empty="">
                        "No runs yet. Train one with "
                        <code>"diffit train --preset tiny"</code>
                        " and it appears here."
                    </p>
                }
                .into_any(),
                ListState::Table => view! { <RunsTable runs=list sort=sort selected=selected/> }.into_any(),
            }}
            {move || {
                let rows = base_runs.get();
                (!rows.is_empty()).then(|| view! { <BaseRunsTable runs=rows/> })
            }}
        </section>
    }
}

/// What the runs view shows.
#[derive(Debug, Clone, PartialEq)]
enum ListState {
    Loading,
    Error(String),
    Empty,
    Table,
}

#[component]
fn RunsTable(
    runs: Signal<Vec<RunSummary>>,
    sort: RwSignal<(SortKey, bool)>,
    selected: RwSignal<Vec<u32>>,
) -> impl IntoView {
    let rows = move || {
        let (key, ascending) = sort.get();
        let mut sorted = runs.get();
        sorted.sort_by(|a, b| compare(a, b, key, ascending));
        sorted
    };
    let header = COLUMNS
        .iter()
        .map(|&(key, attr, label)| {
            let arrow = move || match sort.get() {
                (k, true) if k == key => " ▲",
                (k, false) if k == key => " ▼",
                _ => "",
            };
            let on_click = move |_| {
                sort.update(|(k, ascending)| {
                    if *k == key {
                        *ascending = !*ascending;
                    } else {
                        *k = key;
                        *ascending = true;
                    }
                })
            };
            view! {
                <th data-sort=attr class:sorted=move || sort.get().0 == key on:click=on_click>
                    {label}
                    {arrow}
                </th>
            }
        })
        .collect_view();
    view! {
        <table class="runs">
            <thead>
                <tr>
                    <th class="select"></th>
                    {header}
                </tr>
            </thead>
            <tbody>
                // Keyed by the whole summary: a row is rebuilt only when what it shows changed.
                <For each=rows key=|run| format!("{run:?}") let:run>
                    <RunRow run=run selected=selected/>
                </For>
            </tbody>
        </table>
    }
}

/// The base-training runs (`diffit pretrain`, and the seed system's), marked as such: what a
/// LoRA run's `--base-run` picks from.
#[component]
fn BaseRunsTable(runs: Vec<RunSummary>) -> impl IntoView {
    let rows = runs
        .into_iter()
        .map(|run| {
            let n = run.run_number;
            let Some(info) = run.info.clone() else {
                let error = run.error.clone().unwrap_or_default();
                return view! {
                    <tr class="broken" data-base-run=n>
                        <td class="num">{n}</td>
                        <td colspan="5" class="error-text">{format!("unreadable: {error}")}</td>
                    </tr>
                }
                .into_any();
            };
            let status = run.status.as_str();
            let best = info.best.as_ref().map(|b| {
                view! {
                    {display::metric(b.value)}
                    <span class="sub">{format!(" {} (epoch {})", b.monitor, b.epoch)}</span>
                }
            });
            view! {
                <tr data-base-run=n>
                    <td class="num">{n}</td>
                    <td>{info.experiment_name.clone()}</td>
                    <td>{display::time(&info.created_at)}</td>
                    <td class="num">{info.last_epoch.map(|e| e.to_string()).unwrap_or_default()}</td>
                    <td class="num">{best}</td>
                    <td>
                        <span class=format!("status status-{status}") title=info.seed.as_ref().map(|s| s.note.clone())>{status}</span>
                    </td>
                </tr>
            }
            .into_any()
        })
        .collect_view();
    view! {
        <h2 class="base-runs-title">"Base-training runs"</h2>
        <p class="sub">"Whole base models trained with " <code>"diffit pretrain"</code> "; fine-tune on one with " <code>"diffit train --base-run N --base-checkpoint best"</code> "."</p>
        <table class="runs base-runs">
            <thead>
                <tr>
                    <th>"Run"</th>
                    <th>"Experiment"</th>
                    <th>"Created"</th>
                    <th>"Epochs"</th>
                    <th>"Best loss"</th>
                    <th>"Status"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

#[component]
fn RunRow(run: RunSummary, selected: RwSignal<Vec<u32>>) -> impl IntoView {
    let n = run.run_number;
    let open = move |_| {
        navigate(&Route::Run {
            run: n,
            with: Vec::new(),
        })
    };
    let toggle = move |ev: leptos::ev::Event| {
        let on = event_target_checked(&ev);
        selected.update(|s| {
            s.retain(|&r| r != n);
            if on {
                s.push(n);
            }
        });
    };
    let checkbox = view! {
        <td class="select" on:click=|ev| ev.stop_propagation()>
            <input
                type="checkbox"
                aria-label=format!("select run {n}")
                prop:checked=move || selected.with(|s| s.contains(&n))
                on:change=toggle
            />
        </td>
    };
    if let Some(error) = run.error.clone() {
        return view! {
            <tr class="broken" data-run=n on:click=open>
                {checkbox}
                <td class="num">{n}</td>
                <td colspan="6" class="error-text">{format!("unreadable: {error}")}</td>
            </tr>
        }
        .into_any();
    }
    let status = run.status.as_str();
    let info = run.info.as_ref();
    view! {
        <tr data-run=n on:click=open>
            {checkbox}
            <td class="num">{n}</td>
            <td>{info.map(|i| i.experiment_name.clone()).unwrap_or_default()}</td>
            <td>{info.map(|i| display::time(&i.created_at)).unwrap_or_default()}</td>
            <td class="num">{info.map(|i| i.checkpoints_count.to_string()).unwrap_or_default()}</td>
            <td class="num">
                {display::metric(run.best_value_of("val_loss"))}
                {info.and_then(|i| i.best.as_ref()).map(|b| view! { <span class="sub">{format!(" (epoch {})", b.epoch)}</span> })}
            </td>
            <td class="num">{display::metric(info.and_then(|i| i.base_val_loss))}</td>
            <td>
                <span class=format!("status status-{status}") title=info.and_then(|i| i.seed.as_ref()).map(|s| s.note.clone())>{status}</span>
            </td>
        </tr>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: u32, best: Option<f64>) -> RunSummary {
        let best = best
            .map(|v| format!(r#"{{"epoch":1,"monitor":"val_loss","value":{v}}}"#))
            .unwrap_or_else(|| "null".into());
        serde_json::from_str(&format!(
            r#"{{"run_number":{n},"status":"finished","experiment_name":"e",
                "created_at":"2025-01-01T00:00:00","updated_at":null,
                "recorded_status":"finished","checkpoints_count":1,"last_epoch":1,
                "best":{best},"base_val_loss":null,"writer_active":false}}"#
        ))
        .unwrap()
    }

    #[test]
    fn sorts_with_missing_values_last() {
        let mut runs = [run(1, Some(0.5)), run(2, None), run(3, Some(0.2))];
        runs.sort_by(|a, b| compare(a, b, SortKey::BestValLoss, true));
        assert_eq!(
            runs.iter().map(|r| r.run_number).collect::<Vec<_>>(),
            [3, 1, 2]
        );
        runs.sort_by(|a, b| compare(a, b, SortKey::BestValLoss, false));
        assert_eq!(
            runs.iter().map(|r| r.run_number).collect::<Vec<_>>(),
            [1, 3, 2]
        );
        runs.sort_by(|a, b| compare(a, b, SortKey::Run, false));
        assert_eq!(
            runs.iter().map(|r| r.run_number).collect::<Vec<_>>(),
            [3, 2, 1]
        );
    }
}
