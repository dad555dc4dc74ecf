//! The dashboard's static files (`make app` output): compressed, with caching headers, and a
//! small page explaining how to build the app when it is not there.

use std::path::{Path, PathBuf};

use axum::extract::Request;
use axum::handler::HandlerWithoutStateExt;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::Router;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;

/// Where `make app` puts the site, relative to the repository root.
pub const DEFAULT_APP_DIR: &str = "target/site";

/// The app dir to use when none is given: `target/site` under the current directory, else the
/// one next to this executable's `target/<profile>/` folder, else the former (not built yet).
pub fn default_app_dir() -> PathBuf {
    let from_cwd = PathBuf::from(DEFAULT_APP_DIR);
    if from_cwd.join("index.html").is_file() {
        return from_cwd;
    }
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|target| target.join("site")));
    match beside_exe {
        Some(dir) if dir.join("index.html").is_file() => dir,
        _ => from_cwd,
    }
}

/// Serves `app_dir`; `/` explains how to build the app while `index.html` is missing.
pub fn router(app_dir: &Path) -> Router {
    let shown = app_dir.display().to_string();
    let missing = move |uri: Uri| {
        let shown = shown.clone();
        async move { missing_app_page(&uri, &shown) }
    };
    let files = ServeDir::new(app_dir)
        .precompressed_br()
        .precompressed_gzip()
        .fallback(missing.into_service());
    Router::new()
        .fallback_service(files)
        .layer(middleware::from_fn(cache_headers))
        .layer(CompressionLayer::new())
}

/// `/` (and `/index.html`) while the app is not built: how to build it, reloading itself so it
/// becomes the dashboard once the app is written. Anything else: 404.
fn missing_app_page(uri: &Uri, app_dir: &str) -> Response {
    if uri.path() == "/" || uri.path() == "/index.html" {
        let page = format!(
            "<!doctype html><meta charset=utf-8><meta http-equiv=\"refresh\" content=\"5\">\
                 <title>diffit-server</title>\
                 <h1>The dashboard is not built (yet)</h1>\
                 <p>No <code>index.html</code> in <code>{}</code>. <code>make demo</code> builds \
                 it right after starting this server; otherwise run <code>make app</code> at the \
                 repository root (or pass <code>--app-dir</code>). This page reloads every 5 s \
                 and turns into the dashboard once the app is there.</p>\
                 <p>The API is up: <a href=\"/api/runs\">/api/runs</a>.</p>",
            html_escape(app_dir)
        );
        (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-cache")],
            Html(page),
        )
            .into_response()
    } else {
        (StatusCode::NOT_FOUND, "not found").into_response()
    }
}

/// HTML and unhashed assets revalidate on every load (cheap: ServeDir answers 304 from
/// `Last-Modified`), so a rebuilt app is never mixed with stale pieces; content-hashed
/// file names are immutable.
async fn cache_headers(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let mut response = next.run(request).await;
    if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
        let value = if is_content_hashed(&path) {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
    }
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `app-3f9a0c1d2e4b5a67.wasm`: a name part of 16+ hex digits marks a content hash.
fn is_content_hashed(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or_default();
    !name.ends_with(".html")
        && name
            .split(['-', '.', '_'])
            .any(|part| part.len() >= 16 && part.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `text` made safe inside HTML text and double-quoted attributes.
pub(crate) fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names() {
        assert!(is_content_hashed("/pkg/app-3f9a0c1d2e4b5a67.wasm"));
        assert!(!is_content_hashed("/pkg/app_bg.wasm"));
        assert!(!is_content_hashed("/index.html"));
        assert!(!is_content_hashed("/"));
    }
}
