//! The dashboard, a Leptos client-side app: the runs table, each run's charts and checkpoints,
//! and sampling from a checkpoint in the browser (LoRA fused into the base with candle in wasm).
//!
//! One view per file (`runs`, `run`, `sample`); `api` talks to `diffit-server`, `live` follows its
//! event stream, `route` keeps the open view in the URL hash.

pub mod api;
pub mod base_cache;
pub mod chart;
pub mod compare;
pub mod display;
pub mod error;
pub mod live;
pub mod pool;
pub mod route;
pub mod run;
pub mod runs;
pub mod sample;
pub mod sampler;
pub mod steps;

use leptos::prelude::*;
use wasm_bindgen::prelude::wasm_bindgen;

use crate::live::{Connection, LiveUpdates};
use crate::route::{use_route, Route};

/// Milliseconds on this thread's monotonic clock (`performance.now()`, the page's or a sampling
/// worker's: only differences on one thread mean anything); 0 where there is none.
pub fn now_ms() -> f64 {
    use wasm_bindgen::JsCast;
    js_sys::Reflect::get(&js_sys::global(), &"performance".into())
        .ok()
        .and_then(|p| p.dyn_into::<web_sys::Performance>().ok())
        .map(|p| p.now())
        .unwrap_or(0.0)
}

/// Entry point called by the wasm-bindgen glue when the module loads.
#[wasm_bindgen(start)]
pub fn start() {
    // The sampling workers load this same module: the app runs on the page's thread only.
    if web_sys::window().is_none() {
        return;
    }
    console_panic_hook();
    // Start the workers now, so they are up by the time the first Sample click comes (on
    // wasm-bindgen's executor: Leptos' own is set up only by the mount below).
    wasm_bindgen_futures::spawn_local(async {
        if let Err(e) = pool::ready().await {
            web_sys::console::warn_1(&e.into());
        }
    });
    leptos::mount::mount_to_body(App);
}

/// Shows a panic in the page as well as the console, so a bug never leaves a blank screen.
fn console_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info.to_string();
        web_sys::console::error_1(&message.clone().into());
        if let Some(body) = web_sys::window()
            .and_then(|w| w.document())
            .and_then(|d| d.body())
        {
            if let Some(document) = body.owner_document() {
                if let Ok(div) = document.create_element("div") {
                    div.set_class_name("error-box fatal");
                    let _ = div.set_attribute("role", "alert");
                    let _ = div.set_attribute("data-error", "");
                    div.set_text_content(Some(&format!(
                        "The dashboard crashed: {message}. Reload the page."
                    )));
                    let _ = body.prepend_with_node_1(&div);
                }
            }
        }
    }));
}

/// The app root: header, live-update indicator and the open view.
#[component]
pub fn App() -> impl IntoView {
    let live = LiveUpdates::connect();
    provide_context(live);
    let route = use_route();
    let indicator = move || match live.connection.get() {
        Connection::Open => ("live", "live updates on"),
        Connection::Connecting => ("connecting", "connecting to live updates…"),
        Connection::Closed => ("offline", "live updates off"),
    };
    view! {
        <header class="topbar">
            <a class="brand" href=Route::Runs.to_hash()>"DiffiT-LoRA"</a>
            <span class="tagline">"runs · metrics · sampling"</span>
            <span class=move || format!("live-indicator {}", indicator().0) data-live=move || indicator().0>
                {move || indicator().1}
            </span>
        </header>
        <main>
            {move || match route.get() {
                Route::Runs => view! { <runs::RunsView/> }.into_any(),
                Route::Run { run, with } => view! { <run::RunView run=run with=with/> }.into_any(),
                Route::Compare { runs } => view! { <compare::CompareView runs=runs/> }.into_any(),
                Route::Sample { run, checkpoint } => {
                    view! { <sample::SampleView run=run checkpoint=checkpoint/> }.into_any()
                }
            }}
        </main>
    }
}
