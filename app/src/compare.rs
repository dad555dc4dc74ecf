//! The image comparison: runs × epochs, each cell a checkpoint sampled in the browser from the
//! same seed and the same noise, so what differs between cells is the model alone. A row per
//! run starts with its base model; the columns are the epochs picked, and a last column follows
//! the epoch slider, which scrubs every run at once. Finished images are kept per (checkpoint
//! checksum, seed, steps, guidance), so scrubbing back or picking an epoch again is instant.
//! Cells are sampled one at a time on the sampling workers (the base and the fused model of a
//! cell side by side); changing a setting (or Cancel) stops the work in flight.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use format::api::RunDetail;
use format::layout::CheckpointName;
use format::Metadata;
use leptos::prelude::*;
use leptos::task::spawn_local;
use model::diffusion::DEFAULT_CFG_SCALE;
use wasm_bindgen::JsCast;

use crate::api::fetch_run;
use crate::error::ErrorBox;
use crate::pool::{Event, Task};
use crate::route::Route;
use crate::sample::{class_choices, guidance_fields, paint, parse_request};
use crate::sampler::{download, run_job, ClassGuidance, Models, SampleJob, SampleProgress, Source};

/// Epoch columns picked when the page opens, spread over the epochs the runs share.
const DEFAULT_COLUMNS: usize = 4;

/// The settings every cell is sampled with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Noise seed (the same noise in every cell).
    pub seed: u64,
    /// DDIM steps.
    pub steps: usize,
    /// Class guidance, for a labelled model.
    pub guidance: Option<ClassGuidance>,
}

/// The cache key of an image: the checkpoint's content and the settings.
pub fn cell_key(checksum: &str, settings: &Settings) -> String {
    let guidance = settings.guidance.map_or(String::new(), |g| {
        format!("class{}-cfg{}", g.class, g.scale)
    });
    format!(
        "{checksum}|seed{}|steps{}|{guidance}",
        settings.seed, settings.steps
    )
}

/// A run's epochs whose files exist, each with its recorded checksum.
pub fn sampleable_epochs(meta: &Metadata) -> Vec<(u32, String)> {
    meta.checkpoints
        .iter()
        .filter(|c| !c.removed && c.damaged.is_none())
        .filter_map(|c| c.checksum.clone().map(|sum| (c.epoch, sum)))
        .collect()
}

/// Every epoch some run can sample, ascending.
pub fn union_epochs(runs: &[Metadata]) -> Vec<u32> {
    let all: BTreeSet<u32> = runs
        .iter()
        .flat_map(|m| sampleable_epochs(m).into_iter().map(|(e, _)| e))
        .collect();
    all.into_iter().collect()
}

/// Up to `n` of `epochs`, spread evenly, the last always among them.
pub fn spread_epochs(epochs: &[u32], n: usize) -> Vec<u32> {
    if epochs.len() <= n {
        return epochs.to_vec();
    }
    let last = epochs.len() - 1;
    let mut picked: Vec<u32> = (0..n)
        .map(|i| epochs[(i * last).div_ceil(n - 1).min(last)])
        .collect();
    picked.dedup();
    picked
}

/// What a cell samples: its key, the run and checkpoint, and the base's key when the base
/// image of that run is wanted too.
#[derive(Debug, Clone, PartialEq)]
struct Job {
    key: String,
    run: usize,
    checkpoint: CheckpointName,
    base_key: Option<String>,
}

/// The image of a run's base model under `settings`, keyed by the base's checksum.
fn base_key(meta: &Metadata, settings: &Settings) -> Option<String> {
    meta.base_model
        .as_ref()
        .map(|b| cell_key(&format!("base:{}", b.checksum), settings))
}

/// The cells still to sample, in the order shown (row by row), the base of a run with its
/// first cell.
fn jobs(
    runs: &[Metadata],
    columns: &[u32],
    settings: &Settings,
    done: &HashMap<String, String>,
) -> Vec<Job> {
    let mut out = vec![];
    for (i, meta) in runs.iter().enumerate() {
        let epochs: HashMap<u32, String> = sampleable_epochs(meta).into_iter().collect();
        let mut base = base_key(meta, settings).filter(|k| !done.contains_key(k));
        let mut seen = BTreeSet::new();
        for epoch in columns {
            let Some(sum) = epochs.get(epoch) else {
                continue;
            };
            let key = cell_key(sum, settings);
            if done.contains_key(&key) || !seen.insert(key.clone()) {
                continue;
            }
            out.push(Job {
                key,
                run: i,
                checkpoint: CheckpointName::Epoch(*epoch),
                base_key: base.take(),
            });
        }
        // Every shown cell is cached but the base is not: sample it beside the first one.
        if let Some(base_key) = base {
            if let Some((epoch, sum)) = columns
                .iter()
                .find_map(|e| epochs.get(e).map(|sum| (*e, sum)))
            {
                out.push(Job {
                    key: cell_key(sum, settings),
                    run: i,
                    checkpoint: CheckpointName::Epoch(epoch),
                    base_key: Some(base_key),
                });
            }
        }
    }
    out
}

/// RGB images (`size`×`size`; a cell has one) as a PNG data URL, for an `<img>`.
fn data_url(images: &[Vec<u8>], size: usize) -> Result<String, String> {
    let canvas: web_sys::HtmlCanvasElement = web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?
        .create_element("canvas")
        .map_err(|e| format!("canvas: {e:?}"))?
        .dyn_into()
        .map_err(|_| "not a canvas".to_string())?;
    paint(&canvas, images, size)?;
    canvas
        .to_data_url()
        .map_err(|e| format!("toDataURL: {e:?}"))
}

/// Samples one cell (and its run's base, when asked) to the end on the sampling pool; `None`
/// when `live` turned false on the way (a newer request took over: the work is cancelled).
/// Models the pool built from downloaded files go to `built`, for the run's next cell.
async fn sample_cell(
    source: Source,
    settings: &Settings,
    with_base: bool,
    live: &dyn Fn() -> bool,
    built: impl Fn(Arc<Models>),
) -> Result<Option<(String, Option<String>)>, String> {
    let job = SampleJob {
        source,
        seed: settings.seed,
        steps: settings.steps,
        count: 1,
        with_base,
        guidance: settings.guidance,
        preview_every_ms: None,
    };
    // Dropped on return, which cancels the work if it is still running.
    let mut task = Task::spawn(move |r| run_job(job, r)).await?;
    let outcome = loop {
        if !live() {
            return Ok(None);
        }
        match task.next().await {
            Event::Progress(SampleProgress::Models(models)) => built(models),
            Event::Progress(SampleProgress::Step { .. }) => {}
            Event::Done(result) => break result?,
            Event::Lost => return Err("the sampling worker stopped".to_string()),
        }
    };
    let Some(outcome) = outcome else {
        return Ok(None);
    };
    let (lora, base) = &outcome.images;
    let size = outcome.image_size;
    let lora = data_url(lora, size)?;
    let base = base.as_ref().map(|b| data_url(b, size)).transpose()?;
    Ok(Some((lora, base)))
}

/// The comparison view of `runs`.
#[component]
pub fn CompareView(
    /// The runs compared, one row each.
    runs: Vec<u32>,
) -> impl IntoView {
    let numbers = runs.clone();
    let details = LocalResource::new(move || {
        let numbers = numbers.clone();
        async move {
            let mut loaded = vec![];
            for n in numbers {
                loaded.push(fetch_run(n).await.map_err(|e| e.to_string())?);
            }
            Ok::<Vec<RunDetail>, String>(loaded)
        }
    });
    view! {
        <section class="view compare-view">
            <header class="view-header">
                <h1>"Compare images"</h1>
                <a class="button secondary" href=Route::Runs.to_hash()>"All runs"</a>
            </header>
            {move || match runs.is_empty() {
                true => view! {
                    <p class="empty">"Pick runs in the runs table, then Compare images."</p>
                }
                .into_any(),
                false => view! {
                    <Transition fallback=|| view! { <p class="loading">"Loading the runs…"</p> }>
                        {move || details.get().map(|result| match result {
                            Err(e) => view! { <ErrorBox message=e/> }.into_any(),
                            Ok(details) => view! { <CompareGrid details=details/> }.into_any(),
                        })}
                    </Transition>
                }
                .into_any(),
            }}
        </section>
    }
}

#[component]
fn CompareGrid(details: Vec<RunDetail>) -> impl IntoView {
    let metas: Arc<Vec<Metadata>> = Arc::new(details.iter().map(|d| d.metadata.clone()).collect());
    let epochs = Arc::new(union_epochs(&metas));
    let classes = details
        .first()
        .and_then(|d| class_choices(&d.metadata, d.config.as_ref()));
    let picked = RwSignal::new(spread_epochs(&epochs, DEFAULT_COLUMNS));
    let scrub = RwSignal::new(epochs.len().saturating_sub(1));
    let seed = RwSignal::new("0".to_string());
    let steps = RwSignal::new("20".to_string());
    let class = RwSignal::new(String::new());
    let cfg_scale = RwSignal::new(DEFAULT_CFG_SCALE.to_string());
    let images = RwSignal::new(HashMap::<String, String>::new());
    let status = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    // Bumped by every new request and by Cancel: work of an older generation stops.
    let generation = Rc::new(Cell::new(0u64));
    // The models of the last checkpoint sampled, so a run's next cell reuses its base download.
    let loaded = StoredValue::new_local(None::<(usize, CheckpointName, Arc<Models>)>);

    // The sample form's rules for seed, steps and guidance (the checkpoint is each cell's own).
    let settings = Memo::new(move |_| {
        parse_request(
            "last",
            &seed.get(),
            &steps.get(),
            "1",
            &class.get(),
            &cfg_scale.get(),
        )
        .map(|r| Settings {
            seed: r.seed,
            steps: r.steps,
            guidance: r.guidance,
        })
    });
    let columns = {
        let epochs = epochs.clone();
        Memo::new(move |_| {
            let mut cols = picked.get();
            if let Some(e) = epochs.get(scrub.get()) {
                cols.push(*e);
            }
            cols
        })
    };

    {
        let metas = metas.clone();
        let generation = generation.clone();
        Effect::new(move |_| {
            let settings = settings.get();
            let cols = columns.get();
            // Any change stops the work in flight, an invalid setting too.
            let mine = generation.get() + 1;
            generation.set(mine);
            let Ok(settings) = settings else {
                status.set(String::new());
                return;
            };
            let todo = images.with_untracked(|done| jobs(&metas, &cols, &settings, done));
            error.set(None);
            if todo.is_empty() {
                status.set(String::new());
                return;
            }
            let metas = metas.clone();
            let generation = generation.clone();
            spawn_local(async move {
                let live = move || generation.get() == mine;
                let total = todo.len();
                for (i, job) in todo.into_iter().enumerate() {
                    if !live() {
                        return;
                    }
                    if images.with_untracked(|d| d.contains_key(&job.key)) {
                        continue;
                    }
                    let meta = &metas[job.run];
                    // The cell's run and checkpoint name what failed; the work stops there.
                    let fail = |e: String| {
                        error.set(Some(format!(
                            "run {} {}: {e}",
                            meta.run_number, job.checkpoint
                        )));
                        status.set(String::new());
                    };
                    status.set(format!(
                        "sampling run {} {} ({} of {total})",
                        meta.run_number,
                        job.checkpoint,
                        i + 1
                    ));
                    let cached = loaded.with_value(|l| {
                        l.as_ref()
                            .filter(|(r, c, _)| *r == job.run && *c == job.checkpoint)
                            .map(|(_, _, m)| m.clone())
                    });
                    let source = match cached {
                        Some(m) => Source::Loaded(m),
                        None => match download(meta, job.checkpoint, |_| {}).await {
                            Ok(files) => Source::Downloaded(Box::new(files)),
                            Err(e) => return fail(e.to_string()),
                        },
                    };
                    let built = |m| loaded.set_value(Some((job.run, job.checkpoint, m)));
                    let with_base = job.base_key.is_some();
                    match sample_cell(source, &settings, with_base, &live, built).await {
                        Ok(Some((lora, base))) => images.update(|d| {
                            d.insert(job.key.clone(), lora);
                            if let (Some(key), Some(base)) = (job.base_key.clone(), base) {
                                d.insert(key, base);
                            }
                        }),
                        Ok(None) => return,
                        Err(e) => return fail(e),
                    }
                }
                if live() {
                    status.set(String::new());
                }
            });
        });
    }

    let cancel = {
        let generation = generation.clone();
        move |_| {
            generation.set(generation.get() + 1);
            status.set("cancelled".to_string());
        }
    };
    let epoch_boxes = epochs
        .iter()
        .map(|&epoch| {
            view! {
                <label class="inline">
                    <input
                        type="checkbox"
                        data-pick-epoch=epoch
                        prop:checked=move || picked.with(|p| p.contains(&epoch))
                        on:change=move |ev| {
                            let on = event_target_checked(&ev);
                            picked.update(|p| {
                                p.retain(|&e| e != epoch);
                                if on {
                                    p.push(epoch);
                                    p.sort_unstable();
                                }
                            });
                        }
                    />
                    {format!(" {epoch}")}
                </label>
            }
        })
        .collect_view();
    let guidance_fields = classes.map(|classes| guidance_fields(classes, class, cfg_scale));
    let scrub_max = epochs.len().saturating_sub(1);
    let scrub_label = {
        let epochs = epochs.clone();
        move || {
            epochs
                .get(scrub.get())
                .map_or("—".to_string(), |e| format!("epoch {e}"))
        }
    };
    let grid = move || {
        let Ok(settings) = settings.get() else {
            return ().into_any();
        };
        let picked = picked.get();
        let scrubbed = epochs.get(scrub.get()).copied();
        let done = images.get();
        let header = picked
            .iter()
            .map(|e| view! { <th>{format!("epoch {e}")}</th> })
            .collect_view();
        let rows = metas
            .iter()
            .map(|meta| {
                let epochs: HashMap<u32, String> = sampleable_epochs(meta).into_iter().collect();
                let n = meta.run_number;
                let cell = |epoch: Option<u32>, scrub: bool| {
                    let key = epoch
                        .and_then(|e| epochs.get(&e))
                        .map(|sum| cell_key(sum, &settings));
                    let src = key.as_ref().and_then(|k| done.get(k).cloned());
                    let label = epoch.map_or("base".to_string(), |e| e.to_string());
                    cell_view(n, label, scrub, key.is_some(), src)
                };
                let base_src = base_key(meta, &settings).and_then(|k| done.get(&k).cloned());
                let base = cell_view(
                    n,
                    "base".to_string(),
                    false,
                    meta.base_model.is_some(),
                    base_src,
                );
                let cells = picked.iter().map(|&e| cell(Some(e), false)).collect_view();
                let scrub_cell = scrubbed.map(|e| cell(Some(e), true));
                view! {
                    <tr data-compare-run=n>
                        <th class="run-label">{format!("run {n} · {}", meta.experiment_name)}</th>
                        {base}
                        {cells}
                        {scrub_cell}
                    </tr>
                }
            })
            .collect_view();
        view! {
            <table class="compare-grid">
                <thead>
                    <tr>
                        <th></th>
                        <th>"base"</th>
                        {header}
                        <th class="scrub">{scrubbed.map(|e| format!("slider: epoch {e}"))}</th>
                    </tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        }
        .into_any()
    };

    view! {
        <form class="sample-form compare-form" on:submit=|ev| ev.prevent_default()>
            <label>
                "Seed"
                <input type="number" min="0" data-field="seed" prop:value=seed on:input=move |ev| seed.set(event_target_value(&ev))/>
            </label>
            <label>
                "Steps"
                <input type="number" min="1" data-field="steps" prop:value=steps on:input=move |ev| steps.set(event_target_value(&ev))/>
            </label>
            {guidance_fields}
            <button type="button" class="secondary" data-action="cancel" on:click=cancel>"Cancel"</button>
            <span class="sub" data-field="compare-status">{move || status.get()}</span>
        </form>
        <div class="compare-controls">
            <span class="sub">"Epochs:"</span>
            {epoch_boxes}
            <label class="scrub-label">
                "Slider "
                <input
                    type="range"
                    data-field="scrub"
                    min="0"
                    max=scrub_max
                    prop:value=move || scrub.get().to_string()
                    on:input=move |ev| {
                        if let Ok(i) = event_target_value(&ev).parse() {
                            scrub.set(i);
                        }
                    }
                />
                <span data-field="scrub-epoch">{scrub_label}</span>
            </label>
        </div>
        {move || settings.get().err().map(|e| view! { <ErrorBox message=e/> })}
        {move || error.get().map(|e| view! { <ErrorBox message=e/> })}
        {grid}
    }
}

/// One cell: the image once sampled, else a placeholder saying why there is none yet.
fn cell_view(run: u32, epoch: String, scrub: bool, exists: bool, src: Option<String>) -> AnyView {
    let body = match (exists, src) {
        (_, Some(src)) => view! {
            <img data-state="done" src=src alt=format!("run {run}, {epoch}")/>
        }
        .into_any(),
        (true, None) => {
            view! { <span class="sub" data-state="pending">"sampling…"</span> }.into_any()
        }
        (false, None) => view! { <span class="sub" data-state="none">"—"</span> }.into_any(),
    };
    view! {
        <td class="compare-cell" class:scrub=scrub data-compare-cell="" data-run=run data-epoch=epoch data-scrub=scrub.then_some("")>
            {body}
        </td>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;
    use format::CheckpointRecord;

    fn meta(run: u32, epochs: &[u32]) -> Metadata {
        let mut m = Metadata::new(run, "e", "t");
        m.base_model = Some(format::FileRecord {
            path: "base".into(),
            checksum: "blake3:base".into(),
            size: 1,
            extra: Default::default(),
        });
        for &epoch in epochs {
            m.checkpoints.push(CheckpointRecord {
                epoch,
                path: String::new(),
                metrics: Default::default(),
                saved_at: String::new(),
                checksum: Some(format!("blake3:{run}-{epoch}")),
                size: Some(1),
                global_step: None,
                removed: false,
                damaged: None,
                weights_only: false,
                extra: Default::default(),
            });
        }
        m
    }

    fn settings() -> Settings {
        Settings {
            seed: 7,
            steps: 12,
            guidance: None,
        }
    }

    #[test]
    fn epochs_are_spread_with_the_last_kept() {
        assert_eq!(spread_epochs(&[1, 2, 3], 4), [1, 2, 3]);
        assert_eq!(
            spread_epochs(&(1..=12).collect::<Vec<_>>(), 4),
            [1, 5, 9, 12]
        );
        assert_eq!(spread_epochs(&[], 4), Vec::<u32>::new());
        assert_eq!(
            union_epochs(&[meta(1, &[1, 3]), meta(2, &[2, 3])]),
            [1, 2, 3]
        );
    }

    #[test]
    fn jobs_skip_cached_cells_and_carry_each_runs_base_once() {
        let runs = [meta(1, &[1, 2]), meta(2, &[2])];
        let s = settings();
        let all = jobs(&runs, &[1, 2, 2], &s, &HashMap::new());
        let keys: Vec<&str> = all.iter().map(|j| j.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "blake3:1-1|seed7|steps12|",
                "blake3:1-2|seed7|steps12|",
                "blake3:2-2|seed7|steps12|"
            ]
        );
        assert!(all[0].base_key.is_some() && all[1].base_key.is_none());
        assert!(all[2].base_key.is_some(), "each run's base once");
        let mut done = HashMap::new();
        done.insert(all[0].key.clone(), String::new());
        done.insert(all[0].base_key.clone().unwrap(), String::new());
        let rest = jobs(&runs, &[1, 2], &s, &done);
        assert_eq!(rest.len(), 2);
        assert!(rest[0].base_key.is_none(), "the base is cached too");
        // Other settings are other images.
        let other = Settings {
            seed: 8,
            ..s.clone()
        };
        assert_eq!(jobs(&runs, &[1, 2], &other, &done).len(), 3);
        // Cells cached, base not: the base comes with a cell sampled again.
        let mut cells_only = HashMap::new();
        for job in &all {
            cells_only.insert(job.key.clone(), String::new());
        }
        let bases = jobs(&runs, &[1, 2], &s, &cells_only);
        assert_eq!(bases.len(), 2);
        assert!(bases.iter().all(|j| j.base_key.is_some()));
    }
}
