//! `diffit-server` as a library: the Router (built in `router`), its state and its parts, so
//! tests start the real server on port 0.
//!
//! - `api`: JSON handlers; `tensor_file`: streamed checkpoint files and the LoRA-only view;
//! - `catalog`: reading runs; `root`: confinement to the checkpoints dir;
//! - `watch`: change polling and events; `static_app`: the dashboard; `error`: `ApiError`;
//! - `access`: the access token checked on every request when one is set.

pub mod access;
pub mod api;
pub mod catalog;
pub mod error;
pub mod root;
pub mod state;
pub mod static_app;
pub mod tensor_file;
pub mod watch;

use std::future::Future;

use axum::middleware;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::compression::CompressionLayer;

pub use error::ApiError;
pub use state::{AppState, ServerConfig};

/// The whole application: `/api/...` and the dashboard's static files, behind the access
/// token when the state has one.
pub fn router(state: AppState) -> Router {
    let json_api = Router::new()
        .route("/runs", get(api::list_runs))
        .route("/runs/{n}", get(api::run_detail))
        .route("/runs/{n}/metrics", get(api::run_metrics))
        .route("/runs/{n}/steps", get(api::run_steps))
        .route("/runs/{n}/samples", get(api::run_samples))
        .route(
            &format!("/runs/{}/{{n}}", format::seed::BASE_TRAINING_DIR),
            get(api::base_training_run_detail),
        )
        .layer(CompressionLayer::new());
    // Checkpoint bodies are not compressed (binary, and ranges address the stored bytes);
    // event streams must not be buffered by a compressor.
    let api = json_api
        .route("/runs/{n}/checkpoints/{name}", get(api::checkpoint))
        .route("/runs/{n}/samples/{epoch}", get(api::run_sample))
        .route("/events", get(api::events))
        .fallback(api::not_found);
    let app = static_app::router(&state.shared().app_dir);
    let token = state.shared().token.clone();
    let everything = Router::new().nest("/api", api).with_state(state).merge(app);
    let everything = match token {
        // Outside the routes, so no route, fallback or asset is reachable without it.
        Some(token) => {
            everything.layer(middleware::from_fn_with_state(token, access::require_token))
        }
        None => everything,
    };
    // Outermost: every response, a refusal too, carries the isolation headers.
    everything.layer(middleware::map_response(cross_origin_isolation))
}

/// Makes the page cross-origin isolated, which is what lets the dashboard share its wasm memory
/// with its sampling workers (`SharedArrayBuffer`, wasm threads): the page keeps no opener
/// relation with other origins' windows (COOP), loads nothing cross-origin that did not opt in
/// (COEP), and our own responses may only be embedded by our own origin (CORP).
async fn cross_origin_isolation(
    mut response: axum::response::Response,
) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    let headers = response.headers_mut();
    headers.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-embedder-policy"),
        HeaderValue::from_static("require-corp"),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Serves `router(state)` on `listener` until `shutdown` completes, then ends open event
/// streams and waits for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            state.shutdown();
        })
        .await
}
