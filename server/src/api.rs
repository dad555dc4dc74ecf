//! The JSON API handlers: the run list, one run, its metrics, its checkpoint files and the
//! change events. Request data is parsed into typed values (run number, `CheckpointName`)
//! before anything touches the filesystem. A run the seed system wrote is shown with its
//! `seed` note, and its `.ckpt` files are served whole as plain downloads, never parsed.

use std::convert::Infallible;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use format::api::{
    RunDetail, RunList, RunMetrics, RunPage, RunQuery, RunSamples, RunSteps, RunSummary, SortOrder,
    DEFAULT_PAGE, MAX_PAGE, READY_EVENT, RESYNC_EVENT,
};
use format::{CheckpointName, Metadata};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::catalog::{self, RunSet};
use crate::error::ApiError;
use crate::root::ConfineError;
use crate::state::{AppState, Shared};
use crate::tensor_file::{compute_checksum, FileFacts, FileKey, Representation};
use crate::watch::RunsSnapshot;

/// Interval of SSE keep-alive comments.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Every checkpoint file is revalidated by its ETag (the file's checksum) on each use, a 304
/// when unchanged. Not `immutable`: an epoch file never changes once written, but its URL is
/// not its content, since a checkpoints dir deleted and trained again serves other bytes under
/// `/api/runs/1/checkpoints/epoch_002`, which a browser must not take from its cache.
const REVALIDATE: &str = "no-cache";

/// Parses a run number: a plain decimal integer, no sign, no leading zeros.
pub fn parse_run_number(text: &str) -> Result<u32, ApiError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical
        .then(|| text.parse::<u32>().ok())
        .flatten()
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid run number {text:?}: expected a decimal integer"
            ))
        })
}

/// `GET /api/runs`: every run, broken ones included, from the watcher's cached list; with a
/// query (`q`, `sort`, `order`, `offset`, `limit`: [`RunQuery`]) the matching runs, sorted,
/// one page of them, with the counts and the config keys that differ between the runs.
pub async fn list_runs(
    State(state): State<AppState>,
    query: Result<Query<RunQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let snapshot = state.shared.runs();
    let etag = if query.is_plain() {
        format!("\"runs-{}\"", snapshot.generation)
    } else {
        // The same query of the same list is the same answer.
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&query.path(), &mut hasher);
        format!(
            "\"runs-{}-{:016x}\"",
            snapshot.generation,
            std::hash::Hasher::finish(&hasher)
        )
    };
    let mut response = if if_none_match(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = if query.is_plain() {
            snapshot.json.clone()
        } else {
            let page = run_page(&snapshot, &query)?;
            serde_json::to_vec(&page)
                .map_err(|e| ApiError::Internal(format!("cannot encode the run list: {e}")))?
                .into()
        };
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    set_header(&mut response, header::ETAG, &etag);
    set_header(&mut response, header::CACHE_CONTROL, REVALIDATE);
    Ok(response)
}

/// One page of the runs `query` matches, sorted as it asks.
fn run_page(snapshot: &RunsSnapshot, query: &RunQuery) -> Result<RunList, ApiError> {
    let all = || snapshot.summaries.values();
    let search = format::query::Query::parse(query.q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    search
        .check_keys(all())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit {limit} is more than a page holds ({MAX_PAGE})"
        )));
    }
    let mut matched: Vec<&RunSummary> = all().filter(|row| search.matches(row)).collect();
    if let Some(key) = &query.sort {
        format::query::check_key(key, all()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    let key = query.sort.as_deref().unwrap_or("run");
    let ascending = query.order.unwrap_or_default() == SortOrder::Asc;
    matched.sort_by(|a, b| format::query::compare_rows(a, b, key, ascending));
    let offset = query.offset.unwrap_or(0);
    Ok(RunList {
        runs: matched
            .iter()
            .skip(offset)
            .take(limit)
            .map(|r| (*r).clone())
            .collect(),
        base_training: snapshot.base_training.summaries.values().cloned().collect(),
        page: Some(RunPage {
            offset,
            matched: matched.len(),
            total: snapshot.summaries.len(),
            varying: snapshot.varying.clone(),
        }),
    })
}

/// `GET /api/runs/{n}`: the run's state, its metadata and its `config.json` (null if absent).
pub async fn run_detail(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RunDetail>, ApiError> {
    detail(state, RunSet::Runs, run_from_path(path)?).await
}

/// `GET /api/runs/base_training/{n}`: a base-training run's state, metadata and config.
pub async fn base_training_run_detail(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RunDetail>, ApiError> {
    detail(state, RunSet::BaseTraining, run_from_path(path)?).await
}

async fn detail(state: AppState, set: RunSet, n: u32) -> Result<Json<RunDetail>, ApiError> {
    let shared = state.shared.clone();
    tokio::task::spawn_blocking(move || {
        let metadata = catalog::read_metadata(&shared.root, set, n)?;
        let config = catalog::read_config(&shared.root, set, n)?;
        let summary = catalog::summarize(&shared.root, set, n);
        let seed = catalog::seed_run(&shared.root, set, n, &metadata);
        Ok(Json(RunDetail {
            run_number: n,
            status: summary.status,
            writer_active: summary.info.as_ref().is_some_and(|i| i.writer_active),
            metadata,
            config,
            seed,
        }))
    })
    .await?
}

/// `GET /api/runs/{n}/metrics`: the per-epoch metric series and the base model's metrics.
pub async fn run_metrics(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RunMetrics>, ApiError> {
    let n = run_from_path(path)?;
    let shared = state.shared.clone();
    let meta: Metadata =
        tokio::task::spawn_blocking(move || catalog::read_metadata(&shared.root, RunSet::Runs, n))
            .await??;
    Ok(Json(RunMetrics {
        run_number: n,
        monitor: meta
            .monitor
            .clone()
            .unwrap_or_else(|| "val_loss".to_string()),
        mode: meta.mode.unwrap_or_default(),
        series: meta.metric_series(),
        best_epoch: meta.best_checkpoint.as_ref().map(|b| b.epoch),
        base_metrics: meta.base_metrics,
    }))
}

/// `GET /api/runs/{n}/steps`: the per-step training log, every epoch that wrote one.
pub async fn run_steps(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RunSteps>, ApiError> {
    let n = run_from_path(path)?;
    let shared = state.shared.clone();
    let logs =
        tokio::task::spawn_blocking(move || catalog::read_step_logs(&shared.root, n)).await??;
    Ok(Json(RunSteps {
        run_number: n,
        logs,
    }))
}

/// `GET /api/runs/{n}/samples`: the epochs with a sample grid.
pub async fn run_samples(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RunSamples>, ApiError> {
    let n = run_from_path(path)?;
    let shared = state.shared.clone();
    let epochs =
        tokio::task::spawn_blocking(move || catalog::sample_epochs(&shared.root, n)).await??;
    Ok(Json(RunSamples {
        run_number: n,
        epochs,
    }))
}

/// Largest sample grid served (a grid of a few small images is tens of KiB).
const MAX_SAMPLE_BYTES: u64 = 16 * 1024 * 1024;

/// `GET /api/runs/{n}/samples/{epoch}`: the PNG grid drawn after that epoch, with an ETag of
/// its version (a 304 when unchanged).
pub async fn run_sample(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((run, epoch_text)) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let n = parse_run_number(&run)?;
    let epoch = parse_run_number(&epoch_text)
        .ok()
        .filter(|e| *e >= 1)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid epoch {epoch_text:?}: expected a positive decimal integer"
            ))
        })?;
    let shared = state.shared.clone();
    let (etag, bytes) = tokio::task::spawn_blocking(move || {
        let layout = catalog::run_layout(&shared.root, RunSet::Runs, n)?;
        let path = layout.sample_grid(epoch);
        let file = shared.root.open(&path).map_err(|err| match err {
            ConfineError::NotFound(_) => {
                ApiError::LogNotFound(format!("run {n} has no sample grid for epoch {epoch}"))
            }
            other => other.into(),
        })?;
        let key = FileKey::of(&file).map_err(|e| ApiError::io("reading metadata of", &path, e))?;
        if key.size > MAX_SAMPLE_BYTES {
            return Err(ApiError::BrokenRun {
                run: n,
                reason: format!("{} is larger than {MAX_SAMPLE_BYTES} bytes", path.display()),
            });
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_SAMPLE_BYTES), &mut bytes)
            .map_err(|e| ApiError::io("reading", &path, e))?;
        Ok::<_, ApiError>((format!("\"{}\"", key.version_tag()), bytes))
    })
    .await??;
    let mut response = if if_none_match(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "image/png")], bytes).into_response()
    };
    set_header(&mut response, header::ETAG, &etag);
    set_header(&mut response, header::CACHE_CONTROL, REVALIDATE);
    Ok(response)
}

/// Query of the checkpoint route.
#[derive(Debug, Deserialize)]
pub struct CheckpointQuery {
    /// `true`: only the LoRA tensors, as a valid safetensors file.
    weights_only: Option<String>,
}

/// `GET /api/runs/{n}/checkpoints/{name}`: the file (or its LoRA-only view), streamed, with
/// ETag / If-None-Match, single-range requests and caching headers.
pub async fn checkpoint(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<CheckpointQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((run, name)) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let n = parse_run_number(&run)?;
    let name: CheckpointName = name
        .parse()
        .map_err(|e: format::layout::InvalidCheckpointName| ApiError::BadRequest(e.to_string()))?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let weights_only = match query.weights_only.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid weights_only {other:?}: expected true or false"
            )))
        }
    };
    if weights_only && name == CheckpointName::Base {
        return Err(ApiError::BadRequest(
            "weights_only applies to LoRA checkpoints, not the base model".into(),
        ));
    }

    let shared = state.shared.clone();
    let opened = tokio::task::spawn_blocking(move || open_checkpoint(&shared, n, name)).await??;
    let representation = match (&opened.facts, weights_only) {
        (Some(facts), true) => {
            Representation::lora_only(facts).map_err(|e| ApiError::BrokenRun {
                run: n,
                reason: format!("{}: {e}", name.relative_path(n)),
            })?
        }
        (None, true) => {
            return Err(ApiError::BadRequest(format!(
                "run {n} was written by the seed system: its {} is a PyTorch pickle, served only \
                 whole (weights_only needs a safetensors file)",
                name.seed_file_name()
            )))
        }
        (_, false) => Representation::whole(opened.key.size),
    };
    let etag = if weights_only {
        format!("\"{}+lora\"", opened.checksum)
    } else {
        format!("\"{}\"", opened.checksum)
    };
    let cache = REVALIDATE;
    let suffix = if weights_only { "_lora" } else { "" };
    let file_name = match opened.facts {
        Some(_) => format!("{name}{suffix}.{}", format::layout::TENSOR_EXT),
        None => format!("{name}.{}", format::seed::SEED_CKPT_EXT),
    };
    let disposition = format!(
        "attachment; filename=\"{}_{file_name}\"",
        format::layout::run_dir_name(n)
    );

    let total = representation.len();
    let (status, body_rep) = if if_none_match(&headers, &etag) {
        (StatusCode::NOT_MODIFIED, None)
    } else {
        match requested_range(&headers, &etag, total)? {
            Some(range) => (
                StatusCode::PARTIAL_CONTENT,
                Some((representation.slice(range.clone()), Some(range))),
            ),
            None => (StatusCode::OK, Some((representation, None))),
        }
    };

    let mut response = match body_rep {
        None => StatusCode::NOT_MODIFIED.into_response(),
        Some((rep, range)) => {
            let len = rep.len();
            let mut response =
                Response::new(Body::from_stream(rep.into_stream(Arc::new(opened.file))));
            *response.status_mut() = status;
            set_header(&mut response, header::CONTENT_LENGTH, &len.to_string());
            set_header(
                &mut response,
                header::CONTENT_TYPE,
                "application/octet-stream",
            );
            set_header(&mut response, header::CONTENT_DISPOSITION, &disposition);
            if let Some(range) = range {
                set_header(
                    &mut response,
                    header::CONTENT_RANGE,
                    &format!("bytes {}-{}/{total}", range.start(), range.end()),
                );
            }
            response
        }
    };
    set_header(&mut response, header::ETAG, &etag);
    set_header(&mut response, header::CACHE_CONTROL, cache);
    set_header(&mut response, header::ACCEPT_RANGES, "bytes");
    Ok(response)
}

/// An opened checkpoint file and what is known about this version of it.
struct OpenedCheckpoint {
    file: File,
    key: FileKey,
    /// Its safetensors header; `None` for a seed run's `.ckpt` file, which is never parsed.
    facts: Option<Arc<FileFacts>>,
    /// The content checksum, or for a seed run's file a tag of its version.
    checksum: String,
}

/// Opens a checkpoint inside the root, validates its header, finds its checksum. Blocking. A
/// seed run's checkpoint is its `.ckpt` file, opened as plain bytes.
fn open_checkpoint(
    shared: &Shared,
    n: u32,
    name: CheckpointName,
) -> Result<OpenedCheckpoint, ApiError> {
    let layout = catalog::run_layout(&shared.root, RunSet::Runs, n)?;
    // From the scanned list: a seed run stays one, and this costs no read per request.
    let seed = shared
        .runs()
        .summaries
        .get(&n)
        .is_some_and(|row| row.info.as_ref().is_some_and(|i| i.seed.is_some()));
    let path = if seed {
        layout.seed_checkpoint(name)
    } else {
        layout.checkpoint(name)
    };
    let file = shared.root.open(&path).map_err(|err| match err {
        ConfineError::NotFound(_) => ApiError::CheckpointNotFound {
            run: n,
            name: name.to_string(),
        },
        other => other.into(),
    })?;
    let rel = name.relative_path(n);
    let key = FileKey::of(&file).map_err(|e| ApiError::io("reading metadata of", &path, e))?;
    if seed {
        return Ok(OpenedCheckpoint {
            file,
            key,
            facts: None,
            checksum: format!("seed-{}", key.version_tag()),
        });
    }
    let facts = shared
        .files
        .get_or_read(&file, key)
        .map_err(|e| ApiError::BrokenRun {
            run: n,
            reason: format!("{rel}: {e}"),
        })?;
    let checksum = match facts.checksum() {
        Some(known) => known.to_string(),
        None => {
            let found = match recorded_checksum(shared, n, name, key.size) {
                Some(recorded) => recorded,
                None => compute_checksum(&file, key.size)
                    .map_err(|e| ApiError::io("hashing", &path, e))?,
            };
            facts.set_checksum(found).to_string()
        }
    };
    Ok(OpenedCheckpoint {
        file,
        key,
        facts: Some(facts),
        checksum,
    })
}

/// The checksum metadata records for an immutable file of this size (epoch files, base model).
/// `best`/`last` are replaced in place, so their checksum is always computed from the file.
fn recorded_checksum(shared: &Shared, n: u32, name: CheckpointName, size: u64) -> Option<String> {
    let meta = catalog::read_metadata(&shared.root, RunSet::Runs, n).ok()?;
    match name {
        CheckpointName::Epoch(epoch) => meta
            .checkpoint(epoch)
            .filter(|record| !record.removed && record.size == Some(size))
            .and_then(|record| record.checksum.clone()),
        CheckpointName::Base => meta
            .base_model
            .filter(|record| record.size == size)
            .map(|record| record.checksum),
        CheckpointName::Best | CheckpointName::Last => None,
    }
}

/// The single byte range to send, `None` for the whole representation. Multiple ranges and
/// malformed headers are answered with the whole file (as HTTP allows); a range starting past
/// the end is `416`.
fn requested_range(
    headers: &HeaderMap,
    etag: &str,
    total: u64,
) -> Result<Option<std::ops::RangeInclusive<u64>>, ApiError> {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        if if_range.as_bytes() != etag.as_bytes() {
            return Ok(None);
        }
    }
    let Ok(parsed) = http_range_header::parse_range_header(range) else {
        return Ok(None);
    };
    match parsed.validate(total) {
        Ok(ranges) => match ranges.as_slice() {
            [single] if *single.start() < total => Ok(Some(single.clone())),
            [_] => Err(ApiError::RangeNotSatisfiable { size: total }),
            _ => Ok(None),
        },
        Err(_) => Err(ApiError::RangeNotSatisfiable { size: total }),
    }
}

/// `GET /api/events`: server-sent events. First `ready`, then `run_added`, `run_updated`,
/// `checkpoint_added`, `run_removed` (JSON data with `run_number`), and `resync` when this
/// subscriber fell behind and should refetch the list.
pub async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.shared.events.subscribe();
    let generation = state.shared.runs().generation;
    let ready = Event::default()
        .event(READY_EVENT)
        .data(json!({ "generation": generation }).to_string());
    let updates = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(change) => {
                let data =
                    serde_json::to_string(&change.event).unwrap_or_else(|_| "{}".to_string());
                Event::default().event(change.kind.as_str()).data(data)
            }
            Err(RecvError::Lagged(_)) => Event::default().event(RESYNC_EVENT).data("{}"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    let stream = futures_util::stream::once(async move { Ok(ready) })
        .chain(updates)
        .take_until(state.shared.shutdown.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// Any other `/api/...` path.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_string())
}

fn run_from_path(path: Result<Path<String>, PathRejection>) -> Result<u32, ApiError> {
    let Path(run) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    parse_run_number(&run)
}

/// True when `If-None-Match` lists `etag` (weak comparison) or `*`.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|list| {
            list.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
        })
}

fn set_header(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_numbers_are_canonical_integers() {
        assert_eq!(parse_run_number("7").unwrap(), 7);
        assert_eq!(parse_run_number("0").unwrap(), 0);
        assert_eq!(parse_run_number("1000").unwrap(), 1000);
        for bad in [
            "",
            "007",
            "+7",
            "-1",
            "7a",
            "1e3",
            " 7",
            "..",
            "run_007",
            "99999999999",
            "%37",
        ] {
            assert!(parse_run_number(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"a\", W/\"b\""),
        );
        assert!(if_none_match(&headers, "\"b\""));
        assert!(if_none_match(&headers, "\"a\""));
        assert!(!if_none_match(&headers, "\"c\""));
    }

    #[test]
    fn ranges() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=10-19"));
        assert_eq!(
            requested_range(&headers, "\"e\"", 100).unwrap(),
            Some(10..=19)
        );
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=-5"));
        assert_eq!(
            requested_range(&headers, "\"e\"", 100).unwrap(),
            Some(95..=99)
        );
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=200-"));
        assert!(matches!(
            requested_range(&headers, "\"e\"", 100),
            Err(ApiError::RangeNotSatisfiable { size: 100 })
        ));
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-1,5-6"));
        assert_eq!(requested_range(&headers, "\"e\"", 100).unwrap(), None);
        headers.insert(header::RANGE, HeaderValue::from_static("lines=1-2"));
        assert_eq!(requested_range(&headers, "\"e\"", 100).unwrap(), None);
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-9"));
        headers.insert(header::IF_RANGE, HeaderValue::from_static("\"old\""));
        assert_eq!(requested_range(&headers, "\"e\"", 100).unwrap(), None);
    }
}
