//! The sample view: pick a checkpoint, seed, steps and count (and, for a labelled run, a class
//! and a guidance scale); the browser downloads the base (cached by checksum) and the LoRA
//! weights, fuses them, runs DDIM step by step and draws the base and base+LoRA images side by
//! side as they denoise.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use format::layout::CheckpointName;
use format::Metadata;
use leptos::html::Canvas;
use leptos::prelude::*;
use leptos::task::spawn_local;
use model::diffusion::DEFAULT_CFG_SCALE;
use serde_json::Value;
use wasm_bindgen::JsCast;

use crate::api::fetch_run;
use crate::base_cache::BaseSource;
use crate::error::ErrorBox;
use crate::now_ms;
use crate::pool::{Canceller, Event, Task};
use crate::route::Route;
use crate::sampler::{
    download, model_config_from_metadata, run_job, ClassGuidance, Models, SampleJob,
    SampleProgress, SampledImages, Source,
};
use format::api::RunDetail;

/// Largest count of images per model, to keep the page responsive.
const MAX_COUNT: usize = 16;
/// Largest number of DDIM steps (the schedule's length).
const MAX_STEPS: usize = 1000;
/// How often the workers send the partly denoised images to draw (about 20 a second).
const PREVIEW_EVERY_MS: f64 = 50.0;
/// The period of the page-responsiveness probe while sampling runs.
const PROBE_MS: u32 = 16;

/// Records in `worst` the page thread's longest stall while `running` holds: how late a
/// [`PROBE_MS`] timer fires past its due time, which is also how long a click or a key press
/// would wait for the page to answer.
pub async fn watch_stalls(worst: Rc<Cell<f64>>, running: impl Fn() -> bool) {
    while running() {
        let due = now_ms() + f64::from(PROBE_MS);
        gloo_timers::future::TimeoutFuture::new(PROBE_MS).await;
        worst.set(worst.get().max(now_ms() - due));
    }
}

/// Checkpoint choices for a run: `best` (if any), `last`, then every epoch whose file exists.
pub fn checkpoint_choices(meta: &Metadata) -> Vec<(String, String)> {
    let mut choices = Vec::new();
    if let Some(best) = &meta.best_checkpoint {
        choices.push(("best".to_string(), format!("best (epoch {})", best.epoch)));
    }
    if let Some(last) = meta.last_epoch() {
        choices.push(("last".to_string(), format!("last (epoch {last})")));
    }
    for c in meta
        .live_checkpoints()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        choices.push((
            format!("epoch_{:03}", c.epoch),
            format!("epoch {}", c.epoch),
        ));
    }
    choices
}

/// The class selector of a labelled run: `(label, name)` for each class, the names from its
/// `config.json` (`classes`, written by the trainer; `class N` where it names none), the count
/// from its model config (`config.json`'s `model`, else the one its metadata records). `None`
/// for a model without labels.
pub fn class_choices(meta: &Metadata, config: Option<&Value>) -> Option<Vec<(u32, String)>> {
    let count = config
        .and_then(|c| c.get("model"))
        .and_then(|m| m.get("num_classes"))
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .or_else(|| model_config_from_metadata(meta).and_then(|c| c.num_classes))?;
    let names = config
        .and_then(|c| c.get("classes"))
        .and_then(Value::as_array);
    Some(
        (0..count as u32)
            .map(|label| {
                let name = names
                    .and_then(|n| n.get(label as usize))
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("class {label}"), str::to_string);
                (label, name)
            })
            .collect(),
    )
}

/// The form's values, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Checkpoint to fuse.
    pub checkpoint: CheckpointName,
    /// Noise seed.
    pub seed: u64,
    /// DDIM steps.
    pub steps: usize,
    /// Images per model.
    pub count: usize,
    /// The class to guide towards (`None`: unconditional, as `diffit sample` without `--class`).
    pub guidance: Option<ClassGuidance>,
}

/// Parses the form fields into a [`Request`], or says which field is wrong. `class` is a label
/// number or empty (unconditional, `scale` then unused).
pub fn parse_request(
    checkpoint: &str,
    seed: &str,
    steps: &str,
    count: &str,
    class: &str,
    scale: &str,
) -> Result<Request, String> {
    let checkpoint: CheckpointName = checkpoint.parse().map_err(|e| format!("{e}"))?;
    if checkpoint == CheckpointName::Base {
        return Err("choose a LoRA checkpoint (best, last or an epoch)".to_string());
    }
    let seed = seed
        .trim()
        .parse()
        .map_err(|_| format!("seed {seed:?} is not a non-negative integer"))?;
    let steps: usize = steps
        .trim()
        .parse()
        .map_err(|_| format!("steps {steps:?} is not a positive integer"))?;
    if !(1..=MAX_STEPS).contains(&steps) {
        return Err(format!("steps must be between 1 and {MAX_STEPS}"));
    }
    let count: usize = count
        .trim()
        .parse()
        .map_err(|_| format!("count {count:?} is not a positive integer"))?;
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(format!("count must be between 1 and {MAX_COUNT}"));
    }
    let guidance = match class.trim() {
        "" => None,
        class => {
            let class = class
                .parse()
                .map_err(|_| format!("class {class:?} is not a class number"))?;
            let scale: f64 = scale
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite())
                .ok_or_else(|| format!("guidance scale {scale:?} is not a number"))?;
            Some(ClassGuidance { class, scale })
        }
    };
    Ok(Request {
        checkpoint,
        seed,
        steps,
        count,
        guidance,
    })
}

/// Grid of `count` images: (columns, rows).
pub fn grid(count: usize) -> (usize, usize) {
    let cols = (count as f64).sqrt().ceil().max(1.0) as usize;
    (cols, count.div_ceil(cols))
}

/// Lays out RGB images (HWC, `size`×`size`) in a grid as one RGBA buffer, with its width and height.
pub fn compose_rgba(images: &[Vec<u8>], size: usize) -> (Vec<u8>, usize, usize) {
    let (cols, rows) = grid(images.len());
    let (width, height) = (cols * size, rows * size);
    let mut rgba = vec![0u8; width * height * 4];
    for (i, image) in images.iter().enumerate() {
        let (ox, oy) = ((i % cols) * size, (i / cols) * size);
        for (p, px) in image.chunks(3).enumerate().take(size * size) {
            let at = ((oy + p / size) * width + ox + p % size) * 4;
            rgba[at..at + 3].copy_from_slice(px);
            rgba[at + 3] = 255;
        }
    }
    (rgba, width, height)
}

/// Lifecycle of one sampling run, also the canvases' `data-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    Done,
    Cancelled,
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Running => "running",
            Phase::Done => "done",
            Phase::Cancelled => "cancelled",
            Phase::Failed => "error",
        }
    }
}

/// Timings and sizes of the last run, shown under the progress bar.
#[derive(Debug, Clone, PartialEq)]
struct Stats {
    total_ms: f64,
    step_ms: f64,
    steps: usize,
    /// Where the base came from; `None` when it was already in memory.
    base_source: Option<BaseSource>,
    /// Time spent checking the base against its recorded checksum (none when it was in memory).
    base_verify_ms: Option<f64>,
    downloaded: u64,
    /// Threads of the sampling pool.
    threads: usize,
    /// Whether the steps ran on a sampling worker (off the page's thread).
    on_worker: bool,
    /// The page thread's longest stall while sampling ran (ms past a timer's due time).
    stall_ms: f64,
}

/// Sampling from one run.
#[component]
pub fn SampleView(
    /// The run sampled from.
    run: u32,
    /// The checkpoint asked for in the URL (`best` when absent).
    checkpoint: Option<String>,
) -> impl IntoView {
    let detail = LocalResource::new(move || fetch_run(run));
    view! {
        <section class="view sample-view">
            <header class="view-header">
                <h1>{format!("Sample from run {run}")}</h1>
                <a class="button secondary" href=Route::Run { run, with: Vec::new() }.to_hash()>"Back to the run"</a>
            </header>
            <Suspense fallback=|| view! { <p class="loading">"Loading the run…"</p> }>
                {move || {
                    let checkpoint = checkpoint.clone();
                    detail.get().map(|result| match result {
                        Err(e) => view! { <ErrorBox message=e.to_string()/> }.into_any(),
                        // Its .ckpt files are PyTorch pickles: nothing here can load them.
                        Ok(RunDetail { seed: Some(seed), .. }) => view! { <ErrorBox message=format!("cannot sample run {run}: {}", seed.note)/> }.into_any(),
                        Ok(detail) => view! { <SamplePanel meta=detail.metadata config=detail.config checkpoint=checkpoint/> }.into_any(),
                    })
                }}
            </Suspense>
        </section>
    }
}

fn draw(canvas: &NodeRef<Canvas>, images: &[Vec<u8>], size: usize) -> Result<(), String> {
    match canvas.get_untracked() {
        Some(canvas) => paint(&canvas, images, size),
        None => Ok(()),
    }
}

/// Draws the fused images, and the base's when it was sampled beside them.
fn draw_both(
    lora: &NodeRef<Canvas>,
    base: &NodeRef<Canvas>,
    (lora_images, base_images): &SampledImages,
    size: usize,
) -> Result<(), String> {
    draw(lora, lora_images, size)?;
    match base_images {
        Some(images) => draw(base, images, size),
        None => Ok(()),
    }
}

/// Paints RGB images (`size`×`size`) on `canvas` as [`compose_rgba`]'s grid, sized to fit.
pub fn paint(
    canvas: &web_sys::HtmlCanvasElement,
    images: &[Vec<u8>],
    size: usize,
) -> Result<(), String> {
    let (rgba, width, height) = compose_rgba(images, size);
    canvas.set_width(width as u32);
    canvas.set_height(height as u32);
    let context = canvas
        .get_context("2d")
        .ok()
        .flatten()
        .and_then(|c| c.dyn_into::<web_sys::CanvasRenderingContext2d>().ok())
        .ok_or("this browser has no 2D canvas")?;
    // A copy in the page's own memory: wasm memory is shared with the workers, and ImageData
    // refuses a view of shared memory.
    let pixels = js_sys::Uint8ClampedArray::new_with_length(rgba.len() as u32);
    pixels.copy_from(&rgba);
    let data = web_sys::ImageData::new_with_js_u8_clamped_array_and_sh(
        &pixels,
        width as u32,
        height as u32,
    )
    .map_err(|e| format!("ImageData: {e:?}"))?;
    context
        .put_image_data(&data, 0.0, 0.0)
        .map_err(|e| format!("putImageData: {e:?}"))
}

fn download_png(canvas: &NodeRef<Canvas>, name: &str) {
    let Some(canvas) = canvas.get_untracked() else {
        return;
    };
    let Ok(url) = canvas.to_data_url() else {
        return;
    };
    let anchor = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.create_element("a").ok())
        .and_then(|a| a.dyn_into::<web_sys::HtmlAnchorElement>().ok());
    if let Some(anchor) = anchor {
        anchor.set_href(&url);
        anchor.set_download(name);
        anchor.click();
    }
}

/// `data-base-source`: `memory`, `cache`, `network` or `refetched`.
fn source_name(source: Option<BaseSource>) -> &'static str {
    source.map_or("memory", BaseSource::as_str)
}

/// The line under the progress bar after a run.
fn stats_line(s: &Stats) -> String {
    let checked = s
        .base_verify_ms
        .map(|ms| format!(" (checksum checked in {ms:.1} ms)"))
        .unwrap_or_default();
    let source = match s.base_source {
        Some(BaseSource::Refetched) => "network, refetched: a cached copy was damaged",
        other => source_name(other),
    };
    let place = if s.on_worker {
        format!("on {} worker threads", s.threads)
    } else {
        "on the page's thread".to_string()
    };
    format!(
        "{:.0} ms from click to image · {:.1} ms per step ({} steps, both models, {place}) · base from {source}{checked} · {} downloaded · page stalled at most {:.0} ms",
        s.total_ms,
        s.step_ms,
        s.steps,
        crate::display::bytes(s.downloaded),
        s.stall_ms
    )
}

/// The class selector (`none` first: unconditional) and the guidance scale of a labelled run's
/// form; the scale is editable once a class is chosen.
pub fn guidance_fields(
    classes: Vec<(u32, String)>,
    class: RwSignal<String>,
    cfg_scale: RwSignal<String>,
) -> impl IntoView {
    let options = classes
        .into_iter()
        .map(|(label, name)| {
            let value = label.to_string();
            view! { <option value=value>{name}</option> }
        })
        .collect_view();
    view! {
        <label>
            "Class"
            <select data-field="class" on:change=move |ev| class.set(event_target_value(&ev))>
                <option value="" selected=true>"none (unconditional)"</option>
                {options}
            </select>
        </label>
        <label title="Classifier-free guidance: 1 samples the class plainly, more pushes harder towards it">
            "Guidance"
            <input type="number" step="0.5" data-field="cfg-scale" prop:value=cfg_scale prop:disabled=move || class.get().is_empty() on:input=move |ev| cfg_scale.set(event_target_value(&ev))/>
        </label>
    }
}

#[component]
fn SamplePanel(meta: Metadata, config: Option<Value>, checkpoint: Option<String>) -> impl IntoView {
    let run = meta.run_number;
    let choices = checkpoint_choices(&meta);
    let classes = class_choices(&meta, config.as_ref());
    let initial = checkpoint
        .filter(|c| choices.iter().any(|(v, _)| v == c))
        .or_else(|| choices.first().map(|c| c.0.clone()));
    let chosen = RwSignal::new(initial.unwrap_or_default());
    let seed = RwSignal::new("0".to_string());
    let steps = RwSignal::new("20".to_string());
    let count = RwSignal::new("1".to_string());
    let with_base = RwSignal::new(true);
    // The class as a label number, empty for unconditional sampling.
    let class = RwSignal::new(String::new());
    let cfg_scale = RwSignal::new(DEFAULT_CFG_SCALE.to_string());

    let phase = RwSignal::new(Phase::Idle);
    let status = RwSignal::new(String::new());
    let progress = RwSignal::new((0usize, 0usize));
    let error = RwSignal::new(None::<String>);
    let stats = RwSignal::new(None::<Stats>);
    let lora_canvas = NodeRef::<Canvas>::new();
    let base_canvas = NodeRef::<Canvas>::new();
    // Loaded models stay in memory for the page's life, keyed by checkpoint, so a second click
    // only samples.
    let loaded = StoredValue::new_local(None::<(CheckpointName, Arc<Models>)>);
    // The run in flight, for Cancel.
    let running = StoredValue::new_local(None::<Canceller>);
    let meta = Rc::new(meta);
    let has_choices = !choices.is_empty();

    let start = move |_| {
        if phase.get_untracked() == Phase::Running {
            return;
        }
        let request = match parse_request(
            &chosen.get_untracked(),
            &seed.get_untracked(),
            &steps.get_untracked(),
            &count.get_untracked(),
            &class.get_untracked(),
            &cfg_scale.get_untracked(),
        ) {
            Ok(r) => r,
            Err(e) => {
                error.set(Some(e));
                return;
            }
        };
        let compare = with_base.get_untracked();
        let meta = meta.clone();
        error.set(None);
        stats.set(None);
        phase.set(Phase::Running);
        progress.set((0, request.steps));
        spawn_local(async move {
            let started = now_ms();
            let stall = Rc::new(Cell::new(0.0));
            spawn_local(watch_stalls(stall.clone(), move || {
                phase.get_untracked() == Phase::Running
            }));
            let result = async {
                let cached = loaded.with_value(|l| {
                    l.as_ref()
                        .filter(|(c, _)| *c == request.checkpoint)
                        .map(|(_, m)| m.clone())
                });
                let mut size = cached.as_ref().map(|m| m.config.image_size);
                let source = match cached {
                    Some(models) => Source::Loaded(models),
                    None => {
                        let files =
                            download(&meta, request.checkpoint, |s| status.set(s.to_string()))
                                .await
                                .map_err(|e| e.to_string())?;
                        status.set("fusing LoRA into the base".to_string());
                        Source::Downloaded(Box::new(files))
                    }
                };
                let job = SampleJob {
                    source,
                    seed: request.seed,
                    steps: request.steps,
                    count: request.count,
                    with_base: compare,
                    guidance: request.guidance,
                    preview_every_ms: Some(PREVIEW_EVERY_MS),
                };
                let mut task = Task::spawn(move |r| run_job(job, r)).await?;
                running.set_value(Some(task.canceller()));
                let mut fresh = None;
                let outcome = loop {
                    match task.next().await {
                        Event::Progress(SampleProgress::Models(models)) => {
                            size = Some(models.config.image_size);
                            loaded.set_value(Some((request.checkpoint, models.clone())));
                            fresh = Some(models);
                        }
                        Event::Progress(SampleProgress::Step {
                            done,
                            total,
                            images,
                        }) => {
                            progress.set((done, total));
                            status.set(format!("denoising: step {done} of {total}"));
                            if let (Some(images), Some(size)) = (images, size) {
                                draw_both(&lora_canvas, &base_canvas, &images, size)?;
                            }
                        }
                        Event::Done(result) => break result?,
                        Event::Lost => return Err("the sampling worker stopped".to_string()),
                    }
                };
                let Some(outcome) = outcome else {
                    return Ok(None);
                };
                if let Some(size) = size {
                    draw_both(&lora_canvas, &base_canvas, &outcome.images, size)?;
                }
                Ok::<_, String>(Some(Stats {
                    total_ms: now_ms() - started,
                    step_ms: outcome.step_ms,
                    steps: outcome.steps,
                    base_source: fresh.as_ref().map(|m| m.base_source),
                    base_verify_ms: fresh.as_ref().and_then(|m| m.base_verify_ms),
                    downloaded: fresh.as_ref().map_or(0, |m| m.downloaded_bytes),
                    threads: outcome.threads,
                    on_worker: outcome.on_worker,
                    stall_ms: stall.get(),
                }))
            }
            .await;
            running.set_value(None);
            status.set(String::new());
            match result {
                Ok(Some(s)) => {
                    stats.set(Some(s));
                    phase.set(Phase::Done);
                }
                Ok(None) => {
                    status.set("cancelled".to_string());
                    phase.set(Phase::Cancelled);
                }
                Err(e) => {
                    error.set(Some(e));
                    phase.set(Phase::Failed);
                }
            }
        });
    };
    let cancel = move |_| {
        running.with_value(|r| {
            if let Some(r) = r {
                r.cancel();
            }
        })
    };

    let options = choices
        .into_iter()
        .map(|(value, label)| {
            let selected = value.clone();
            view! { <option value=value selected=move || chosen.get() == selected>{label}</option> }
        })
        .collect_view();
    let file_name = move |side: &str| {
        let class = class.get_untracked();
        let guided = if class.is_empty() {
            String::new()
        } else {
            format!("-class{class}-cfg{}", cfg_scale.get_untracked())
        };
        format!(
            "run{run:03}-{}-seed{}{guided}-{side}.png",
            chosen.get_untracked(),
            seed.get_untracked()
        )
    };
    let guidance_fields = classes.map(|classes| guidance_fields(classes, class, cfg_scale));

    view! {
        <form class="sample-form" on:submit=|ev| ev.prevent_default()>
            <label>
                "Checkpoint"
                <select data-field="checkpoint" on:change=move |ev| chosen.set(event_target_value(&ev))>{options}</select>
            </label>
            <label>
                "Seed"
                <input type="number" min="0" data-field="seed" prop:value=seed on:input=move |ev| seed.set(event_target_value(&ev))/>
            </label>
            <label>
                "Steps"
                <input type="number" min="1" max=MAX_STEPS data-field="steps" prop:value=steps on:input=move |ev| steps.set(event_target_value(&ev))/>
            </label>
            <label>
                "Count"
                <input type="number" min="1" max=MAX_COUNT data-field="count" prop:value=count on:input=move |ev| count.set(event_target_value(&ev))/>
            </label>
            {guidance_fields}
            <label class="inline">
                <input type="checkbox" data-field="compare-base" prop:checked=with_base on:change=move |ev| with_base.set(event_target_checked(&ev))/>
                " Compare with the base"
            </label>
            <button
                type="button"
                data-action="sample"
                disabled=move || !has_choices || phase.get() == Phase::Running
                on:click=start
            >
                {move || if phase.get() == Phase::Running { "Sampling…" } else { "Sample" }}
            </button>
            <button
                type="button"
                class="secondary"
                data-action="cancel"
                disabled=move || phase.get() != Phase::Running
                on:click=cancel
            >
                "Cancel"
            </button>
        </form>
        {(!has_choices).then(|| view! { <ErrorBox message="this run has no LoRA checkpoint to sample from yet"/> })}
        {move || error.get().map(|e| view! { <ErrorBox message=e/> })}
        <div class="sample-progress">
            <progress
                data-field="progress"
                max=move || progress.get().1.max(1)
                value=move || progress.get().0
            ></progress>
            <span class="sub" data-field="status">{move || status.get()}</span>
            {move || stats.get().map(|s| view! {
                <span class="sample-stats" data-field="stats" data-total-ms=s.total_ms data-step-ms=s.step_ms data-base-source=source_name(s.base_source) data-verify-ms=s.base_verify_ms data-threads=s.threads data-on-worker=s.on_worker.to_string() data-stall-ms=s.stall_ms>
                    {stats_line(&s)}
                </span>
                {(s.base_source == Some(BaseSource::Refetched)).then(|| view! {
                    <span class="sub" data-field="base-refetched">
                        "A cached copy of the base model failed its checksum against the run's metadata: it was dropped and downloaded again."
                    </span>
                })}
            })}
        </div>
        <div class="samples">
            <div class="sample-card" class:hidden=move || !with_base.get()>
                <h2>"Base model"</h2>
                <canvas node_ref=base_canvas data-sample="base" data-state=move || if with_base.get() { phase.get().as_str() } else { "idle" } width="1" height="1"></canvas>
                <button type="button" class="secondary" data-action="download-base" disabled=move || phase.get() != Phase::Done on:click=move |_| download_png(&base_canvas, &file_name("base"))>
                    "Download PNG"
                </button>
            </div>
            <div class="sample-card">
                <h2>"Base + LoRA"</h2>
                <canvas node_ref=lora_canvas data-sample="lora" data-state=move || phase.get().as_str() width="1" height="1"></canvas>
                <button type="button" class="secondary" data-action="download" disabled=move || phase.get() != Phase::Done on:click=move |_| download_png(&lora_canvas, &file_name("lora"))>
                    "Download PNG"
                </button>
            </div>
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        let r = parse_request("best", "7", "20", "2", "", "x").unwrap();
        assert_eq!(
            r,
            Request {
                checkpoint: CheckpointName::Best,
                seed: 7,
                steps: 20,
                count: 2,
                guidance: None,
            }
        );
        let parse =
            |checkpoint, seed, steps, count| parse_request(checkpoint, seed, steps, count, "", "2");
        assert!(parse("base", "7", "20", "1").is_err());
        assert!(parse("epoch_1", "7", "20", "1").is_err());
        assert!(parse("last", "-1", "20", "1").is_err());
        assert!(parse("last", "1", "0", "1").is_err());
        assert!(parse("last", "1", "10", "17").is_err());
    }

    #[test]
    fn a_class_comes_with_its_guidance_scale() {
        let r = parse_request("last", "1", "10", "1", "3", " 2.5 ").unwrap();
        assert_eq!(
            r.guidance,
            Some(ClassGuidance {
                class: 3,
                scale: 2.5
            })
        );
        let e = parse_request("last", "1", "10", "1", "3", "").unwrap_err();
        assert!(e.contains("guidance scale"), "{e}");
        assert!(parse_request("last", "1", "10", "1", "3", "inf").is_err());
        assert!(parse_request("last", "1", "10", "1", "-1", "2").is_err());
    }

    #[test]
    fn labelled_runs_offer_their_classes_by_name() {
        let meta = Metadata::new(1, "e", "t");
        let config = serde_json::json!({
            "model": { "num_classes": 3 },
            "classes": ["broadleaf", "conifer"],
        });
        assert_eq!(
            class_choices(&meta, Some(&config)).unwrap(),
            [
                (0, "broadleaf".to_string()),
                (1, "conifer".to_string()),
                (2, "class 2".to_string())
            ]
        );
        // Without labels: no selector.
        let unlabelled =
            serde_json::json!({ "model": serde_json::to_value(model::Config::tiny()).unwrap() });
        assert_eq!(class_choices(&meta, Some(&unlabelled)), None);
        assert_eq!(class_choices(&meta, None), None);
        // Without a config.json, the model config the metadata records.
        let mut meta = meta;
        meta.training_config = serde_json::json!({ "preset": "published-tiny" });
        assert_eq!(class_choices(&meta, None).unwrap().len(), 7);
    }

    #[test]
    fn images_are_laid_out_in_a_grid() {
        assert_eq!(grid(1), (1, 1));
        assert_eq!(grid(3), (2, 2));
        assert_eq!(grid(4), (2, 2));
        assert_eq!(grid(5), (3, 2));
        let red = vec![255, 0, 0, 255, 0, 0, 255, 0, 0, 255, 0, 0];
        let blue = vec![0, 0, 255, 0, 0, 255, 0, 0, 255, 0, 0, 255];
        let (rgba, w, h) = compose_rgba(&[red, blue], 2);
        assert_eq!((w, h), (4, 2));
        assert_eq!(&rgba[0..4], &[255, 0, 0, 255]);
        assert_eq!(&rgba[8..12], &[0, 0, 255, 255]);
    }

    #[test]
    fn the_stats_line_says_where_the_base_came_from() {
        let mut stats = Stats {
            total_ms: 120.4,
            step_ms: 3.25,
            steps: 12,
            base_source: Some(BaseSource::Cache),
            base_verify_ms: Some(0.3),
            downloaded: 2048,
            threads: 4,
            on_worker: true,
            stall_ms: 3.4,
        };
        assert_eq!(
            stats_line(&stats),
            "120 ms from click to image · 3.2 ms per step (12 steps, both models, on 4 worker threads) · base from cache (checksum checked in 0.3 ms) · 2.0 KiB downloaded · page stalled at most 3 ms"
        );
        stats.base_source = Some(BaseSource::Refetched);
        assert!(
            stats_line(&stats).contains("base from network, refetched: a cached copy was damaged")
        );
        stats.base_source = None;
        stats.base_verify_ms = None;
        assert!(stats_line(&stats).contains("base from memory · "));
    }

    #[test]
    fn choices_put_best_first_and_skip_removed_epochs() {
        let meta: Metadata = serde_json::from_str(
            r#"{"run_number":1,"experiment_name":"e","created_at":"t","training_config":{},"lora_config":{},
            "checkpoints":[{"epoch":1,"path":"p","metrics":{},"saved_at":"t","removed":true},
                           {"epoch":2,"path":"p","metrics":{},"saved_at":"t"}],
            "best_checkpoint":{"epoch":2,"path":"p","metrics":{}}}"#,
        )
        .unwrap();
        let values: Vec<String> = checkpoint_choices(&meta).into_iter().map(|c| c.0).collect();
        assert_eq!(values, ["best", "last", "epoch_002"]);
    }
}
