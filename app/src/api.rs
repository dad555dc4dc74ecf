//! The server's HTTP API as the app sees it: response types and the fetch functions.
//!
//! Summaries are read leniently (missing fields become `None`) so that one odd run never hides
//! the rest of the table; run details use the shared `trainer::format::Metadata` schema.

use gloo::net::http::Request;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use trainer::format::layout::CheckpointName;
use trainer::format::metadata::Metrics;
use trainer::format::Metadata;

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

/// The best epoch of a run in the runs list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BestSummary {
    /// Epoch of the best checkpoint.
    pub epoch: u32,
    /// The monitored metric (`val_loss` when absent).
    #[serde(default)]
    pub monitor: Option<String>,
    /// The monitored metric's value at that epoch.
    #[serde(default)]
    pub value: Option<f64>,
    /// Its metrics, when the server sends them all.
    #[serde(default)]
    pub metrics: Metrics,
}

/// One entry of `GET /api/runs`: a run, or a run directory the server could not read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunSummary {
    /// Run number (`run_003` → 3).
    pub run_number: u32,
    /// Experiment name.
    #[serde(default)]
    pub experiment_name: Option<String>,
    /// Creation time, `2025-01-15T10:30:00`.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Saved checkpoints whose files exist.
    #[serde(default)]
    pub checkpoints_count: Option<u64>,
    /// Saved checkpoints: a count, or the list itself (older servers).
    #[serde(default)]
    pub checkpoints: Value,
    /// The best epoch and its metrics.
    #[serde(default)]
    pub best: Option<BestSummary>,
    /// Validation loss of the base model alone.
    #[serde(default)]
    pub base_val_loss: Option<f64>,
    /// `running`, `finished`, `interrupted` or `broken`.
    #[serde(default)]
    pub status: Option<String>,
    /// Time of the last metadata write.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Set when the run directory is broken; the other fields may then be missing.
    #[serde(default)]
    pub error: Option<String>,
}

impl RunSummary {
    /// Number of saved checkpoints, whichever way the server spelled it.
    pub fn checkpoint_count(&self) -> Option<u64> {
        if self.checkpoints_count.is_some() {
            return self.checkpoints_count;
        }
        match &self.checkpoints {
            Value::Number(n) => n.as_u64(),
            Value::Array(items) => Some(items.len() as u64),
            _ => None,
        }
    }

    /// Validation loss of the best epoch.
    pub fn best_val_loss(&self) -> Option<f64> {
        let best = self.best.as_ref()?;
        let monitors_val_loss = best.monitor.as_deref().is_none_or(|m| m == "val_loss");
        best.metrics
            .get("val_loss")
            .copied()
            .or(if monitors_val_loss { best.value } else { None })
    }
}

/// `GET /api/runs/{n}`: the run's metadata and its `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunDetail {
    /// `metadata.json`.
    pub metadata: Metadata,
    /// `config.json` (training, LoRA and model configuration).
    #[serde(default)]
    pub config: Value,
}

/// The runs list, whether the server wraps it in an object or not.
#[derive(Deserialize)]
#[serde(untagged)]
enum RunsBody {
    Bare(Vec<RunSummary>),
    Wrapped { runs: Vec<RunSummary> },
}

/// URL of the runs list.
pub const RUNS_URL: &str = "/api/runs";
/// URL of the server-sent events stream.
pub const EVENTS_URL: &str = "/api/events";

/// URL of one run.
pub fn run_url(run_number: u32) -> String {
    format!("{RUNS_URL}/{run_number}")
}

/// URL of a checkpoint file; `weights_only` asks for the LoRA tensors alone (no optimizer state).
pub fn checkpoint_url(run_number: u32, name: CheckpointName, weights_only: bool) -> String {
    let query = if weights_only && name != CheckpointName::Base {
        "?weights_only=true"
    } else {
        ""
    };
    format!("{RUNS_URL}/{run_number}/checkpoints/{name}{query}")
}

/// Every run the server knows, broken ones included.
pub async fn fetch_runs() -> Result<Vec<RunSummary>, ApiError> {
    Ok(match get_json::<RunsBody>(RUNS_URL).await? {
        RunsBody::Bare(runs) | RunsBody::Wrapped { runs } => runs,
    })
}

/// One run's metadata and configuration.
pub async fn fetch_run(run_number: u32) -> Result<RunDetail, ApiError> {
    get_json(&run_url(run_number)).await
}

/// The raw bytes at `url` (checkpoint files).
pub async fn fetch_bytes(url: &str) -> Result<Vec<u8>, ApiError> {
    let response = get_ok(url).await?;
    response.binary().await.map_err(|e| ApiError::Network {
        url: url.to_string(),
        message: e.to_string(),
    })
}

async fn get_json<T: DeserializeOwned>(url: &str) -> Result<T, ApiError> {
    let response = get_ok(url).await?;
    let text = response.text().await.map_err(|e| ApiError::Network {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ApiError::Decode {
        url: url.to_string(),
        message: e.to_string(),
    })
}

async fn get_ok(url: &str) -> Result<gloo::net::http::Response, ApiError> {
    let response = Request::get(url)
        .send()
        .await
        .map_err(|e| ApiError::Network {
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
    if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(body) {
        if let Some(Value::String(message)) = fields.get("error") {
            return message.clone();
        }
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
    fn reads_bare_and_wrapped_lists_and_broken_entries() {
        let bare = r#"[{"run_number":1,"experiment_name":"e","checkpoints":3,
            "best":{"epoch":2,"metrics":{"val_loss":0.5}},"base_val_loss":0.9,"status":"finished"},
            {"run_number":2,"error":"metadata.json: expected value"}]"#;
        let RunsBody::Bare(runs) = serde_json::from_str(bare).unwrap() else {
            panic!("bare")
        };
        assert_eq!(runs[0].checkpoint_count(), Some(3));
        assert_eq!(runs[0].best_val_loss(), Some(0.5));
        assert_eq!(
            runs[1].error.as_deref(),
            Some("metadata.json: expected value")
        );
        let wrapped = r#"{"runs":[{"run_number":4,"checkpoints":[{},{}]},
            {"run_number":5,"status":"finished","checkpoints_count":7,
             "best":{"epoch":3,"monitor":"val_loss","value":0.25}}]}"#;
        let RunsBody::Wrapped { runs } = serde_json::from_str(wrapped).unwrap() else {
            panic!("wrapped")
        };
        assert_eq!(runs[0].checkpoint_count(), Some(2));
        assert_eq!(runs[1].checkpoint_count(), Some(7));
        assert_eq!(runs[1].best_val_loss(), Some(0.25));
    }

    #[test]
    fn error_bodies_become_messages() {
        assert_eq!(
            error_message(r#"{"error":"run 9 not found"}"#),
            "run 9 not found"
        );
        assert_eq!(error_message("  plain text "), "plain text");
        assert_eq!(error_message(""), "no details");
    }

    #[test]
    fn checkpoint_urls() {
        assert_eq!(
            checkpoint_url(3, CheckpointName::Base, true),
            "/api/runs/3/checkpoints/base"
        );
        assert_eq!(
            checkpoint_url(3, CheckpointName::Epoch(2), true),
            "/api/runs/3/checkpoints/epoch_002?weights_only=true"
        );
    }
}
