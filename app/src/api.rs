//! The server's HTTP API as the app calls it: the fetch functions and their errors. The bodies
//! are `format::api`'s types, the very ones the server serializes.

use format::api::{
    run_path, samples_path, steps_path, ErrorBody, RunDetail, RunList, RunQuery, RunSamples,
    RunSteps, RunSummary, RUNS_PATH,
};
use gloo_net::http::{Request, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use web_sys::RequestCache;

/// Why a request to the server failed; shown to the user as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The server could not be reached at all.
    #[error("cannot reach the server ({url}): {message}")]
    Network {
        /// The URL asked for.
        url: String,
        /// The browser's explanation.
        message: String,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        /// The URL asked for.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The server's error message (its `error` field, or the body).
        message: String,
    },
    /// The answer was not what this version of the app understands.
    #[error("{url}: unexpected answer: {message}")]
    Decode {
        /// The URL asked for.
        url: String,
        /// What did not parse.
        message: String,
    },
}

/// Every run the server knows, broken ones included.
pub async fn fetch_runs() -> Result<Vec<RunSummary>, ApiError> {
    Ok(fetch_run_list().await?.runs)
}

/// The whole run list: the runs and the base-training runs.
pub async fn fetch_run_list() -> Result<RunList, ApiError> {
    get_json::<RunList>(RUNS_PATH).await
}

/// One page of the runs a query matches (searched, sorted and paged by the server).
pub async fn fetch_run_page(query: &RunQuery) -> Result<RunList, ApiError> {
    get_json::<RunList>(&query.path()).await
}

/// One run's per-step training log.
pub async fn fetch_steps(run_number: u32) -> Result<RunSteps, ApiError> {
    get_json(&steps_path(run_number)).await
}

/// The epochs of one run's sample grids.
pub async fn fetch_samples(run_number: u32) -> Result<RunSamples, ApiError> {
    get_json(&samples_path(run_number)).await
}

/// One run's metadata and configuration.
pub async fn fetch_run(run_number: u32) -> Result<RunDetail, ApiError> {
    get_json(&run_path(run_number)).await
}

/// The raw bytes at `url` (checkpoint files).
pub async fn fetch_bytes(url: &str) -> Result<Vec<u8>, ApiError> {
    binary(url, get_ok(Request::get(url), url).await?).await
}

/// The raw bytes at `url` from the server itself, never the browser's HTTP cache (which is
/// refreshed with them): for a file whose earlier copy turned out damaged.
pub async fn fetch_bytes_fresh(url: &str) -> Result<Vec<u8>, ApiError> {
    let request = Request::get(url).cache(RequestCache::Reload);
    binary(url, get_ok(request, url).await?).await
}

async fn binary(url: &str, response: Response) -> Result<Vec<u8>, ApiError> {
    response.binary().await.map_err(|e| ApiError::Network {
        url: url.to_string(),
        message: e.to_string(),
    })
}

async fn get_json<T: DeserializeOwned>(url: &str) -> Result<T, ApiError> {
    let response = get_ok(Request::get(url), url).await?;
    let text = response.text().await.map_err(|e| ApiError::Network {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ApiError::Decode {
        url: url.to_string(),
        message: e.to_string(),
    })
}

async fn get_ok(request: RequestBuilder, url: &str) -> Result<Response, ApiError> {
    let response = request.send().await.map_err(|e| ApiError::Network {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    if response.ok() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(ApiError::Status {
        url: url.to_string(),
        status: response.status(),
        message: error_message(&body),
    })
}

/// The `error` field of a JSON error body, else the body itself (trimmed, shortened).
fn error_message(body: &str) -> String {
    if let Ok(ErrorBody { error }) = serde_json::from_str(body) {
        return error;
    }
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return "no details".to_string();
    }
    trimmed.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_messages() {
        assert_eq!(
            error_message(r#"{"error":"run 9 not found"}"#),
            "run 9 not found"
        );
        assert_eq!(error_message("  plain text "), "plain text");
        assert_eq!(error_message(""), "no details");
    }
}
