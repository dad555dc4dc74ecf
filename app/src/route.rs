//! Which view is open, kept in the URL's hash (`#/runs/3?with=1,2`) so that reloads, links and
//! the back button work with any static file server.

use leptos::prelude::*;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;

/// A view of the app and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The runs table.
    Runs,
    /// One run's charts and checkpoints, with other runs overlaid on the charts.
    Run {
        /// The run shown.
        run: u32,
        /// Runs overlaid on its charts.
        with: Vec<u32>,
    },
    /// Runs × epochs sampled in the browser from one seed (`#/compare?runs=1,2`).
    Compare {
        /// The runs, one row each.
        runs: Vec<u32>,
    },
    /// Sampling from one run's checkpoints in the browser.
    Sample {
        /// The run sampled from.
        run: u32,
        /// The checkpoint preselected (`best`, `last`, `epoch_003`), if any.
        checkpoint: Option<String>,
    },
}

impl Route {
    /// Parses a location hash; anything unknown is the runs table.
    pub fn parse(hash: &str) -> Route {
        let hash = hash.trim_start_matches('#');
        let (path, query) = hash.split_once('?').unwrap_or((hash, ""));
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        };
        match parts.as_slice() {
            ["runs", n] => match n.parse() {
                Ok(run) => {
                    let with = param("with")
                        .map(|list| {
                            list.split(',')
                                .filter_map(|v| v.parse().ok())
                                .filter(|&v| v != run)
                                .collect()
                        })
                        .unwrap_or_default();
                    Route::Run { run, with }
                }
                Err(_) => Route::Runs,
            },
            ["compare"] => Route::Compare {
                runs: param("runs")
                    .map(|list| list.split(',').filter_map(|v| v.parse().ok()).collect())
                    .unwrap_or_default(),
            },
            ["runs", n, "sample"] => match n.parse() {
                Ok(run) => Route::Sample {
                    run,
                    checkpoint: param("checkpoint").map(str::to_string),
                },
                Err(_) => Route::Runs,
            },
            _ => Route::Runs,
        }
    }

    /// The hash that opens this route.
    pub fn to_hash(&self) -> String {
        match self {
            Route::Runs => "#/".to_string(),
            Route::Run { run, with } if with.is_empty() => format!("#/runs/{run}"),
            Route::Run { run, with } => {
                let list: Vec<String> = with.iter().map(u32::to_string).collect();
                format!("#/runs/{run}?with={}", list.join(","))
            }
            Route::Compare { runs } => {
                let list: Vec<String> = runs.iter().map(u32::to_string).collect();
                format!("#/compare?runs={}", list.join(","))
            }
            Route::Sample {
                run,
                checkpoint: None,
            } => format!("#/runs/{run}/sample"),
            Route::Sample {
                run,
                checkpoint: Some(c),
            } => format!("#/runs/{run}/sample?checkpoint={c}"),
        }
    }
}

/// Opens `route` (adds a history entry, like following a link).
pub fn navigate(route: &Route) {
    if let Some(window) = web_sys::window() {
        // Setting the hash fires `hashchange`, which updates the route signal.
        let _ = window.location().set_hash(&route.to_hash());
    }
}

/// The current route, following the location hash for the app's lifetime.
pub fn use_route() -> ReadSignal<Route> {
    let window = web_sys::window();
    let current = || {
        web_sys::window()
            .and_then(|w| w.location().hash().ok())
            .unwrap_or_default()
    };
    let (route, set_route) = signal(Route::parse(&current()));
    if let Some(window) = window {
        let on_change =
            Closure::<dyn FnMut()>::new(move || set_route.set(Route::parse(&current())));
        let _ = window
            .add_event_listener_with_callback("hashchange", on_change.as_ref().unchecked_ref());
        // The listener lives as long as the page.
        on_change.forget();
    }
    route
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip() {
        for route in [
            Route::Runs,
            Route::Run {
                run: 3,
                with: vec![],
            },
            Route::Run {
                run: 3,
                with: vec![1, 2],
            },
            Route::Compare { runs: vec![1, 4] },
            Route::Sample {
                run: 12,
                checkpoint: None,
            },
            Route::Sample {
                run: 12,
                checkpoint: Some("epoch_002".into()),
            },
        ] {
            assert_eq!(Route::parse(&route.to_hash()), route);
        }
    }

    #[test]
    fn unknown_hashes_open_the_runs_table() {
        for hash in ["", "#", "#/nope", "#/runs/x", "#/runs/-1/sample"] {
            assert_eq!(Route::parse(hash), Route::Runs, "{hash}");
        }
        assert_eq!(
            Route::parse("#/runs/2?with=2,5,x"),
            Route::Run {
                run: 2,
                with: vec![5]
            }
        );
    }
}
