//! The sample view: pick a checkpoint, seed, steps and count; the browser downloads the base
//! (cached by checksum) and the LoRA weights, fuses them, runs DDIM step by step and draws the
//! base and base+LoRA images side by side as they denoise.

use leptos::prelude::*;
use trainer::format::Metadata;

use crate::api::fetch_run;
use crate::error::ErrorBox;
use crate::route::Route;

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

/// Sampling from one run.
#[component]
pub fn SampleView(run: u32, checkpoint: Option<String>) -> impl IntoView {
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
                        Ok(detail) => view! { <SamplePanel meta=detail.metadata checkpoint=checkpoint/> }.into_any(),
                    })
                }}
            </Suspense>
        </section>
    }
}

#[component]
fn SamplePanel(meta: Metadata, checkpoint: Option<String>) -> impl IntoView {
    let choices = checkpoint_choices(&meta);
    let initial = checkpoint
        .filter(|c| choices.iter().any(|(v, _)| v == c))
        .or_else(|| choices.first().map(|c| c.0.clone()));
    let chosen = RwSignal::new(initial.unwrap_or_default());
    let seed = RwSignal::new("0".to_string());
    let steps = RwSignal::new("20".to_string());
    let count = RwSignal::new("1".to_string());
    let error = RwSignal::new(None::<String>);
    let options = choices
        .into_iter()
        .map(|(value, label)| view! { <option value=value.clone() selected=move || chosen.get() == value>{label}</option> })
        .collect_view();
    let start = move |_| {
        error.set(Some(
            "sampling in the browser is not available in this build".to_string(),
        ))
    };
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
                <input type="number" min="1" max="1000" data-field="steps" prop:value=steps on:input=move |ev| steps.set(event_target_value(&ev))/>
            </label>
            <label>
                "Count"
                <input type="number" min="1" max="16" data-field="count" prop:value=count on:input=move |ev| count.set(event_target_value(&ev))/>
            </label>
            <button type="button" data-action="sample" on:click=start>"Sample"</button>
        </form>
        {move || error.get().map(|e| view! { <ErrorBox message=e/> })}
    }
}
