//! `ApiError`: every way a request can fail, each mapped to a status and a `{"error": "..."}` body.

use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A failed API request. Handlers return `Result<_, ApiError>`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is malformed (bad run number, checkpoint name, query).
    #[error("{0}")]
    BadRequest(String),
    /// The server requires its access token and the request did not carry it.
    #[error("this server needs its access token: send `Authorization: Bearer <token>`, or open the dashboard with `?token=<token>` once")]
    Unauthorized,
    /// No such run.
    #[error("run {0} not found")]
    RunNotFound(u32),
    /// The run exists but has no such checkpoint file.
    #[error("run {run} has no checkpoint {name}")]
    CheckpointNotFound {
        /// The run asked for.
        run: u32,
        /// The checkpoint asked for.
        name: String,
    },
    /// The run exists but has no such log file (a sample grid of an epoch that drew none).
    #[error("{0}")]
    LogNotFound(String),
    /// No such API route.
    #[error("no such API endpoint: {0}")]
    NoRoute(String),
    /// A path resolved outside the checkpoints dir (a symlink pointing out, usually).
    #[error("{0}: refusing to serve a path outside the checkpoints dir")]
    OutsideRoot(String),
    /// A run's files exist but cannot be read as the run format (bad JSON, truncated tensors).
    #[error("run {run} is broken: {reason}")]
    BrokenRun {
        /// The run.
        run: u32,
        /// What is wrong, naming the file.
        reason: String,
    },
    /// The `Range` header cannot be satisfied for a file of this size.
    #[error("range not satisfiable for a {size}-byte file")]
    RangeNotSatisfiable {
        /// Size of the representation.
        size: u64,
    },
    /// An I/O error the client cannot fix.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done (`reading`, `opening`, ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A background task died (panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Builds an `Io` error naming `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ApiError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::RunNotFound(_)
            | ApiError::CheckpointNotFound { .. }
            | ApiError::LogNotFound(_)
            | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::OutsideRoot(_) => StatusCode::FORBIDDEN,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::BrokenRun { .. } | ApiError::Io { .. } | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(err: tokio::task::JoinError) -> Self {
        ApiError::Internal(err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let mut response = (
            status,
            Json(format::api::ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if let ApiError::RangeNotSatisfiable { size } = self {
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
        }
        response
    }
}
