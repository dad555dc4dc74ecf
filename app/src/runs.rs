//! The runs view: one page of the runs at a time, searched, sorted and paged by the server
//! (`/api/runs?q=…`, [`format::query`]), with a column for each config value that differs
//! between the runs; refreshed by live updates. A row opens the run; checked rows
//! open together with their charts overlaid.

use std::time::Duration;

use leptos::prelude::*;
use serde_json::Value;

use format::api::{RunList, RunPage, RunQuery, RunSummary, SortOrder, DEFAULT_PAGE};

use crate::api::fetch_run_page;
use crate::display;
use crate::error::ErrorBox;
use crate::live::use_live;
use crate::route::{navigate, Route};

/// The fixed columns: the sort key the server knows each by, and its title.
const COLUMNS: [(&str, &str); 7] = [
    ("run", "Run"),
    ("experiment", "Experiment"),
    ("created", "Created"),
    ("checkpoints", "Checkpoints"),
    ("best_val_loss", "Best val_loss"),
    ("base_val_loss", "Base val_loss"),
    ("status", "Status"),
];

/// Most config columns shown; the rest of the differing values are in the row's tooltip.
const MAX_PARAM_COLUMNS: usize = 8;

/// How long typing pauses before the search is sent.
const SEARCH_PAUSE: Duration = Duration::from_millis(250);

/// A config value as a cell shows it.
pub fn param_cell(value: Option<&Value>) -> String {
    match value {
        None => "—".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) => format!("{v:e}"),
            _ => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// A column title for a config key: its last part (the full path is the tooltip).
fn param_title(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// The runs table.
#[component]
pub fn RunsView() -> impl IntoView {
    let live = use_live();
    let search = RwSignal::new(String::new());
    let draft = RwSignal::new(String::new());
    let sort = RwSignal::new(("run".to_string(), false));
    let offset = RwSignal::new(0usize);
    let runs = LocalResource::new(move || {
        live.changes.track();
        let (key, ascending) = sort.get();
        let query = RunQuery {
            q: Some(search.get()).filter(|q| !q.trim().is_empty()),
            sort: Some(key),
            order: Some(if ascending {
                SortOrder::Asc
            } else {
                SortOrder::Desc
            }),
            offset: Some(offset.get()),
            limit: Some(DEFAULT_PAGE),
        };
        async move { fetch_run_page(&query).await }
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
    let page = Memo::new(move |_| {
        latest.with(|l| match l {
            Some(Ok(list)) => list.page.clone(),
            _ => None,
        })
    });
    let kind = Memo::new(move |_| {
        latest.with(|l| match l {
            None => ListState::Loading,
            Some(Err(e)) => ListState::Error(e.clone()),
            Some(Ok(list)) => match &list.page {
                Some(p) if p.total == 0 => ListState::Empty,
                Some(p) if p.matched == 0 => ListState::NoMatch,
                _ => ListState::Table,
            },
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
    let varying = Memo::new(move |_| {
        page.with(|p| {
            p.as_ref()
                .map(|p| p.varying.iter().take(MAX_PARAM_COLUMNS).cloned().collect())
                .unwrap_or_default()
        })
    });
    let selected = RwSignal::new(Vec::<u32>::new());
    // A new search or sort starts at the first page.
    let apply = move |text: String| {
        if search.get_untracked() != text {
            offset.set(0);
            search.set(text);
        }
    };
    let on_input = move |ev: leptos::ev::Event| {
        let text = event_target_value(&ev);
        draft.set(text.clone());
        set_timeout(
            move || {
                if draft.get_untracked() == text {
                    apply(text);
                }
            },
            SEARCH_PAUSE,
        );
    };
    let on_key = move |ev: leptos::ev::KeyboardEvent| {
        if ev.key() == "Enter" {
            apply(draft.get_untracked());
        }
    };

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
                    data-action="compare-images"
                    disabled=move || selected.with(Vec::is_empty)
                    on:click=move |_| {
                        let mut runs = selected.get();
                        runs.sort_unstable();
                        navigate(&Route::Compare { runs });
                    }
                >
                    {move || format!("Compare images ({})", selected.with(Vec::len))}
                </button>
                <button
                    class="secondary"
                    data-action="compare"
                    disabled=move || selected.with(|s| s.len() < 2)
                    on:click=open_selected
                >
                    {move || format!("Compare selected ({})", selected.with(Vec::len))}
                </button>
            </header>
            <div class="runs-tools">
                <input
                    type="search"
                    class="run-search"
                    data-search=""
                    placeholder="Search: lr<1e-3 tag:sweep -status:broken trees"
                    title="Terms, all of which must hold: KEY<VALUE (also <=, >, >=, =, !=, : for contains) over a run field (run, experiment, status, created, checkpoints, best_val_loss, base_val_loss, best, note) or a config value (learning_rate, training.batch_size, lora.rank, lr …); tag:NAME; a word found in the name, note or tags; a leading - negates."
                    prop:value=move || draft.get()
                    on:input=on_input
                    on:keydown=on_key
                />
                <Pager page=page offset=offset/>
            </div>
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
                ListState::NoMatch => view! {
                    <p class="empty" data-no-match="">"No run matches the search."</p>
                }
                .into_any(),
                ListState::Table => view! {
                    <RunsTable runs=list sort=sort offset=offset varying=varying selected=selected/>
                }
                .into_any(),
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
    NoMatch,
    Table,
}

/// "Runs 101–200 of 1,234 (10,000 in all)" with the previous and next pages.
#[component]
fn Pager(page: Memo<Option<RunPage>>, offset: RwSignal<usize>) -> impl IntoView {
    let text = move || {
        page.with(|p| {
            p.as_ref().map(|p| {
                let first = (p.offset + 1).min(p.matched);
                let last = (p.offset + DEFAULT_PAGE).min(p.matched);
                let all = if p.matched == p.total {
                    String::new()
                } else {
                    format!(" ({} in all)", display::count(p.total))
                };
                format!(
                    "Runs {}–{} of {}{all}",
                    display::count(first),
                    display::count(last),
                    display::count(p.matched)
                )
            })
        })
    };
    let has_next = move || {
        page.with(|p| {
            p.as_ref()
                .is_some_and(|p| p.offset + DEFAULT_PAGE < p.matched)
        })
    };
    view! {
        <div class="pager">
            <span class="sub" data-page-info="">{text}</span>
            <button
                class="secondary"
                data-action="previous-page"
                disabled=move || offset.get() == 0
                on:click=move |_| offset.update(|o| *o = o.saturating_sub(DEFAULT_PAGE))
            >
                "‹ Previous"
            </button>
            <button
                class="secondary"
                data-action="next-page"
                disabled=move || !has_next()
                on:click=move |_| offset.update(|o| *o += DEFAULT_PAGE)
            >
                "Next ›"
            </button>
        </div>
    }
}

/// A sortable column title: a click sorts by it, a second click reverses.
fn sort_header(
    sort: RwSignal<(String, bool)>,
    offset: RwSignal<usize>,
    key: String,
    label: String,
    class: &'static str,
) -> impl IntoView {
    let (k1, k2, k3) = (key.clone(), key.clone(), key.clone());
    let arrow = move || match sort.get() {
        (k, true) if k == k1 => " ▲",
        (k, false) if k == k1 => " ▼",
        _ => "",
    };
    let on_click = move |_| {
        offset.set(0);
        sort.update(|(k, ascending)| {
            if *k == k2 {
                *ascending = !*ascending;
            } else {
                k.clone_from(&k2);
                *ascending = true;
            }
        })
    };
    view! {
        <th data-sort=key.clone() title=key class=class class:sorted=move || sort.get().0 == k3 on:click=on_click>
            {label}
            {arrow}
        </th>
    }
}

#[component]
fn RunsTable(
    runs: Signal<Vec<RunSummary>>,
    sort: RwSignal<(String, bool)>,
    offset: RwSignal<usize>,
    varying: Memo<Vec<String>>,
    selected: RwSignal<Vec<u32>>,
) -> impl IntoView {
    let header = move || {
        let fixed = COLUMNS
            .iter()
            .map(|&(key, label)| sort_header(sort, offset, key.to_string(), label.to_string(), ""));
        let params = varying.get().into_iter().map(|key| {
            let label = param_title(&key).to_string();
            sort_header(sort, offset, key, label, "param varying")
        });
        fixed.chain(params).collect_view()
    };
    view! {
        <table class="runs">
            <thead>
                <tr>
                    <th class="select"></th>
                    {header}
                </tr>
            </thead>
            <tbody>
                // Keyed by the whole summary and the columns: a row is rebuilt only when what
                // it shows changed.
                <For
                    each=move || runs.get()
                    key=move |run| format!("{run:?}{:?}", varying.get_untracked())
                    let:run
                >
                    <RunRow run=run selected=selected varying=varying.get_untracked()/>
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
fn RunRow(run: RunSummary, selected: RwSignal<Vec<u32>>, varying: Vec<String>) -> impl IntoView {
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
                <td colspan=6 + varying.len() class="error-text">{format!("unreadable: {error}")}</td>
            </tr>
        }
        .into_any();
    }
    let status = run.status.as_str();
    let info = run.info.as_ref();
    let tags = info
        .map(|i| i.tags.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|tag| {
            let label = tag.clone();
            view! { <span class="tag" data-tag=tag>{label}</span> }
        })
        .collect_view();
    let note = info.and_then(|i| i.note.clone()).map(|note| {
        view! { <span class="note-mark" data-note="" title=note>"✎"</span> }
    });
    let params = varying
        .iter()
        .map(|key| {
            let value = info.and_then(|i| i.params.get(key));
            view! { <td class="param" data-param=key.clone()>{param_cell(value)}</td> }
        })
        .collect_view();
    view! {
        <tr data-run=n on:click=open>
            {checkbox}
            <td class="num">{n}</td>
            <td>{info.map(|i| i.experiment_name.clone()).unwrap_or_default()} {tags} {note}</td>
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
            {params}
        </tr>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_read_as_written() {
        assert_eq!(param_cell(Some(&serde_json::json!(0.0001))), "1e-4");
        assert_eq!(param_cell(Some(&serde_json::json!(0.01))), "0.01");
        assert_eq!(param_cell(Some(&serde_json::json!(8))), "8");
        assert_eq!(param_cell(Some(&serde_json::json!("adamw"))), "adamw");
        assert_eq!(param_cell(Some(&serde_json::json!([1, 2]))), "[1,2]");
        assert_eq!(param_cell(None), "—");
        assert_eq!(param_title("training.learning_rate"), "learning_rate");
    }
}
