//! MLflow tracking through its REST API (`/api/2.0/mlflow/...`), off the training thread.
//!
//! [`MlflowCallback`] turns the fit's events into batches and hands them to a background
//! worker over a bounded queue; training never waits on the network. The worker creates (or, on
//! resume, reopens) the MLflow run named `run_NNN` in the experiment named after ours, logs
//! params, metrics and tags with `log-batch`, retries transient failures with backoff, and
//! counts whatever it could not log; the first failure is reported once as a warning, the
//! totals when the fit ends. The MLflow run's id is recorded in the run's metadata, so that a
//! resume continues the same MLflow run.
//!
//! What is logged:
//! - params: the run's training, LoRA and model config, flattened (`training.learning_rate`,
//!   `lora.r`, `model.depth`, ...);
//! - metrics: `base_val_loss` at step 0; `train_loss`, `val_loss`, `lr` per epoch at step =
//!   epoch; `train_loss_step`, `lr_step` every `log_every_n_steps` optimizer steps at step =
//!   the global step;
//! - tags: `diffit.run_number`, `diffit.run_dir`, `diffit.checkpoints_uri`, `diffit.status`,
//!   and at the end `best.epoch`, `best.path`, `best.checksum`, `best.<metric>`;
//! - the MLflow status: FINISHED, FAILED or KILLED (an interrupted run), as ours ends.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use format::metadata::Metrics;
use format::{MlflowLink, RunStatus};
use store::CheckpointManager;

use super::epoch::StepProgress;
use super::error::TrainError;
use super::state::TrainState;
use super::trainer::{Callback, FitOutcome};

/// MLflow's `log-batch` limits.
const MAX_METRICS_PER_BATCH: usize = 1000;
const MAX_PARAMS_PER_BATCH: usize = 100;
const MAX_TAGS_PER_BATCH: usize = 100;
/// MLflow refuses longer param values.
const MAX_PARAM_VALUE: usize = 6000;
/// Batches waiting for the worker; beyond this, batches are dropped (and counted), never waited for.
const QUEUE: usize = 256;
/// Retries of a transient failure (connection, timeout, 429, 5xx) and the first pause.
const RETRIES: u32 = 4;
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// One HTTP call's limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the end of a fit waits for the worker to log what is queued.
const FLUSH_DEADLINE: Duration = Duration::from_secs(30);

/// Checks a tracking URI: `http` or `https`, a host, no credentials (those come from the
/// environment, so they are never stored or shown).
pub fn check_tracking_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err("names no host".into());
    }
    if authority.contains('@') {
        return Err("must not hold credentials: set MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD".into());
    }
    Ok(())
}

/// The tracking URI a run uses: the config's (YAML or `--mlflow-uri`), else `MLFLOW_TRACKING_URI`.
pub fn tracking_uri(configured: Option<&str>) -> Option<String> {
    configured
        .map(str::to_string)
        .or_else(|| std::env::var("MLFLOW_TRACKING_URI").ok())
        .filter(|uri| !uri.trim().is_empty())
}

/// Milliseconds since the Unix epoch, as MLflow timestamps are.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One metric value.
#[derive(Debug, Clone, PartialEq)]
struct Metric {
    key: String,
    value: f64,
    timestamp: i64,
    step: i64,
}

impl Metric {
    fn new(key: &str, value: f64, step: i64) -> Self {
        Self {
            key: key.into(),
            value,
            timestamp: now_ms(),
            step,
        }
    }

    fn to_json(&self) -> Value {
        // JSON has no NaN or infinities; MLflow's protobuf JSON reads them as these strings.
        let value = if self.value.is_nan() {
            json!("NaN")
        } else if self.value.is_infinite() {
            json!(if self.value > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            })
        } else {
            json!(self.value)
        };
        json!({"key": self.key, "value": value, "timestamp": self.timestamp, "step": self.step})
    }
}

/// Things to log, in one message to the worker.
#[derive(Debug, Default, Clone)]
struct Batch {
    metrics: Vec<Metric>,
    params: Vec<(String, String)>,
    tags: Vec<(String, String)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.metrics.is_empty() && self.params.is_empty() && self.tags.is_empty()
    }

    fn append(&mut self, other: Batch) {
        self.metrics.extend(other.metrics);
        self.params.extend(other.params);
        self.tags.extend(other.tags);
    }
}

/// What the training thread sends the worker.
#[derive(Debug)]
enum Message {
    Log(Batch),
    /// The last message: end the MLflow run with this status.
    End {
        status: &'static str,
        end_time: i64,
    },
}

/// What the worker could not log, reported when the fit ends.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Unlogged {
    /// Metric values not logged.
    pub metrics: usize,
    /// Params not logged.
    pub params: usize,
    /// Tags not logged.
    pub tags: usize,
    /// Whether the MLflow run's final status was not set.
    pub status: bool,
    /// The last error seen.
    pub last_error: Option<String>,
}

impl Unlogged {
    fn is_nothing(&self) -> bool {
        self.metrics == 0 && self.params == 0 && self.tags == 0 && !self.status
    }

    fn count(&mut self, batch: &Batch, error: &str) {
        self.metrics += batch.metrics.len();
        self.params += batch.params.len();
        self.tags += batch.tags.len();
        self.last_error = Some(error.to_string());
    }
}

/// A failed call: worth retrying (the server may come back) or refused.
#[derive(Debug)]
enum CallError {
    Transient(String),
    Refused(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transient(e) | CallError::Refused(e) => f.write_str(e),
        }
    }
}

/// The REST client (used on the worker thread only).
struct Client {
    agent: ureq::Agent,
    /// `<tracking uri>/api/2.0/mlflow`.
    api: String,
    /// The `Authorization` header value, from the environment.
    auth: Option<String>,
    /// After a call failed even with retries, later calls try once until one succeeds, so a
    /// server that is gone costs each batch one attempt rather than the whole backoff.
    failing: bool,
}

impl Client {
    fn new(tracking_uri: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(CALL_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        let auth = match (
            std::env::var("MLFLOW_TRACKING_TOKEN"),
            std::env::var("MLFLOW_TRACKING_USERNAME"),
            std::env::var("MLFLOW_TRACKING_PASSWORD"),
        ) {
            (Ok(token), _, _) => Some(format!("Bearer {token}")),
            (_, Ok(user), Ok(password)) => Some(format!(
                "Basic {}",
                base64_encode(format!("{user}:{password}").as_bytes())
            )),
            _ => None,
        };
        Self {
            agent,
            api: format!("{}/api/2.0/mlflow", tracking_uri.trim_end_matches('/')),
            auth,
            failing: false,
        }
    }

    /// One call: `GET` with `query`, or `POST` with `body`.
    fn call_once(
        &self,
        endpoint: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        let url = format!("{}/{endpoint}", self.api);
        let sent = match body {
            Some(body) => {
                let mut req = self.agent.post(&url);
                if let Some(auth) = &self.auth {
                    req = req.header("Authorization", auth);
                }
                req.send_json(body)
            }
            None => {
                let mut req = self.agent.get(&url);
                for (k, v) in query {
                    req = req.query(*k, *v);
                }
                if let Some(auth) = &self.auth {
                    req = req.header("Authorization", auth);
                }
                req.call()
            }
        };
        let mut response = sent.map_err(|e| CallError::Transient(format!("{endpoint}: {e}")))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| CallError::Transient(format!("{endpoint}: reading the reply: {e}")))?;
        if status == 200 {
            return serde_json::from_str(&text).map_err(|e| {
                CallError::Refused(format!("{endpoint}: the reply is not JSON: {e}"))
            });
        }
        // MLflow's errors are `{"error_code": ..., "message": ...}`.
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .map(|v| {
                format!(
                    "{}: {}",
                    v["error_code"].as_str().unwrap_or("error"),
                    v["message"].as_str().unwrap_or_default()
                )
            })
            .unwrap_or_else(|| text.chars().take(200).collect());
        let message = format!("{endpoint}: HTTP {status}: {detail}");
        if status == 429 || status >= 500 {
            Err(CallError::Transient(message))
        } else {
            Err(CallError::Refused(message))
        }
    }

    /// A call with retries of transient failures (one try while the server is failing).
    fn call(
        &mut self,
        endpoint: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        let tries = if self.failing { 1 } else { RETRIES + 1 };
        let mut pause = FIRST_PAUSE;
        let mut last = None;
        for attempt in 0..tries {
            if attempt > 0 {
                std::thread::sleep(pause);
                pause *= 2;
            }
            match self.call_once(endpoint, query, body) {
                Ok(v) => {
                    self.failing = false;
                    return Ok(v);
                }
                Err(CallError::Refused(e)) => return Err(CallError::Refused(e)),
                Err(CallError::Transient(e)) => last = Some(e),
            }
        }
        self.failing = true;
        Err(CallError::Transient(last.unwrap_or_default()))
    }

    fn post(&mut self, endpoint: &str, body: &Value) -> Result<Value, CallError> {
        self.call(endpoint, &[], Some(body))
    }

    /// The id of experiment `name`, created when absent (another client may create it first).
    fn experiment_id(&mut self, name: &str) -> Result<String, CallError> {
        let get = |client: &mut Self| {
            client
                .call(
                    "experiments/get-by-name",
                    &[("experiment_name", name)],
                    None,
                )
                .map(|v| {
                    v["experiment"]["experiment_id"]
                        .as_str()
                        .map(str::to_string)
                })
        };
        match get(self) {
            Ok(Some(id)) => return Ok(id),
            Ok(None) => {}
            Err(CallError::Refused(e)) if e.contains("RESOURCE_DOES_NOT_EXIST") => {}
            Err(e) => return Err(e),
        }
        match self.post("experiments/create", &json!({ "name": name })) {
            Ok(v) => v["experiment_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| CallError::Refused("experiments/create: no experiment_id".into())),
            Err(CallError::Refused(e)) if e.contains("RESOURCE_ALREADY_EXISTS") => get(self)?
                .ok_or_else(|| CallError::Refused(format!("experiment {name:?} vanished"))),
            Err(e) => Err(e),
        }
    }

    /// `log-batch` within MLflow's limits: params alone first (a param logged again with
    /// another value is refused, and must not take metrics down with it), then metrics and tags.
    fn log(&mut self, run_id: &str, batch: &Batch) -> Result<(), (Batch, CallError)> {
        let mut failed = Batch::default();
        let mut error = None;
        for chunk in batch.params.chunks(MAX_PARAMS_PER_BATCH) {
            let params: Vec<Value> = chunk
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect();
            if let Err(e) = self.post(
                "runs/log-batch",
                &json!({"run_id": run_id, "params": params}),
            ) {
                failed.params.extend_from_slice(chunk);
                error = Some(e);
            }
        }
        let tags: Vec<Value> = batch
            .tags
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        let metrics: Vec<Value> = batch.metrics.iter().map(Metric::to_json).collect();
        let mut tag_chunks = tags.chunks(MAX_TAGS_PER_BATCH);
        let mut tag_offset = 0;
        let mut metric_offset = 0;
        for metric_chunk in metrics.chunks(MAX_METRICS_PER_BATCH - MAX_TAGS_PER_BATCH) {
            let tag_chunk = tag_chunks.next().unwrap_or_default();
            let body = json!({"run_id": run_id, "metrics": metric_chunk, "tags": tag_chunk});
            if let Err(e) = self.post("runs/log-batch", &body) {
                failed.metrics.extend_from_slice(
                    &batch.metrics[metric_offset..metric_offset + metric_chunk.len()],
                );
                failed
                    .tags
                    .extend_from_slice(&batch.tags[tag_offset..tag_offset + tag_chunk.len()]);
                error = Some(e);
            }
            metric_offset += metric_chunk.len();
            tag_offset += tag_chunk.len();
        }
        for tag_chunk in tag_chunks {
            if let Err(e) = self.post(
                "runs/log-batch",
                &json!({"run_id": run_id, "tags": tag_chunk}),
            ) {
                failed
                    .tags
                    .extend_from_slice(&batch.tags[tag_offset..tag_offset + tag_chunk.len()]);
                error = Some(e);
            }
            tag_offset += tag_chunk.len();
        }
        match error {
            None => Ok(()),
            Some(e) => Err((failed, e)),
        }
    }
}

/// Standard base64 (for HTTP basic authentication).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Everything the worker needs to find or create the MLflow run.
#[derive(Debug, Clone)]
struct RunTarget {
    tracking_uri: String,
    experiment: String,
    run_name: String,
    /// The MLflow run a previous fit of this run logged to.
    existing: Option<MlflowLink>,
}

/// The worker's side: owns the client and the MLflow run.
struct Worker {
    client: Client,
    target: RunTarget,
    link: Arc<Mutex<Option<MlflowLink>>>,
    run_id: Option<String>,
    /// Params the MLflow run already has (on resume), which must not be logged again.
    logged_params: BTreeMap<String, String>,
    unlogged: Unlogged,
    warned: bool,
}

impl Worker {
    fn warn_once(&mut self, error: &str) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                "MLflow at {}: {error}; training goes on, and what is not logged is reported at the end",
                self.target.tracking_uri
            );
        }
    }

    /// The MLflow run, found or created on first use (retried with each batch while it fails).
    fn run_id(&mut self) -> Result<String, CallError> {
        if let Some(id) = &self.run_id {
            return Ok(id.clone());
        }
        let reopened = match self.target.existing.clone() {
            Some(link) if link.tracking_uri == self.target.tracking_uri => {
                match self
                    .client
                    .call("runs/get", &[("run_id", &link.run_id)], None)
                {
                    Ok(run) if run["run"]["info"]["lifecycle_stage"] != "deleted" => {
                        for p in run["run"]["data"]["params"]
                            .as_array()
                            .into_iter()
                            .flatten()
                        {
                            if let (Some(k), Some(v)) = (p["key"].as_str(), p["value"].as_str()) {
                                self.logged_params.insert(k.into(), v.into());
                            }
                        }
                        self.client.post(
                            "runs/update",
                            &json!({"run_id": link.run_id, "status": "RUNNING"}),
                        )?;
                        Some(link)
                    }
                    Ok(_) => None,
                    Err(CallError::Refused(e)) if e.contains("RESOURCE_DOES_NOT_EXIST") => None,
                    Err(e) => return Err(e),
                }
            }
            _ => None,
        };
        let link = match reopened {
            Some(link) => link,
            None => {
                let experiment_id = self.client.experiment_id(&self.target.experiment)?;
                let created = self.client.post(
                    "runs/create",
                    &json!({
                        "experiment_id": experiment_id,
                        "run_name": self.target.run_name,
                        "start_time": now_ms(),
                    }),
                )?;
                let run_id = created["run"]["info"]["run_id"]
                    .as_str()
                    .ok_or_else(|| CallError::Refused("runs/create: no run_id".into()))?
                    .to_string();
                MlflowLink {
                    tracking_uri: self.target.tracking_uri.clone(),
                    experiment_id,
                    run_id,
                }
            }
        };
        if let Ok(mut slot) = self.link.lock() {
            *slot = Some(link.clone());
        }
        self.run_id = Some(link.run_id.clone());
        Ok(link.run_id)
    }

    fn log(&mut self, mut batch: Batch) {
        // The run first: reopening it on resume tells which params it already has.
        let run_id = match self.run_id() {
            Ok(id) => id,
            Err(e) => {
                let e = e.to_string();
                self.unlogged.count(&batch, &e);
                self.warn_once(&e);
                return;
            }
        };
        // A param the MLflow run has already is not sent again; a changed one (a setting
        // overridden on resume) is kept as a tag, since MLflow params cannot change.
        let mut changed = Vec::new();
        batch
            .params
            .retain(|(k, v)| match self.logged_params.get(k) {
                None => true,
                Some(old) if old == v => false,
                Some(_) => {
                    changed.push((format!("resumed_with.{k}"), v.clone()));
                    false
                }
            });
        batch.tags.extend(changed);
        if batch.is_empty() {
            return;
        }
        let params = batch.params.clone();
        if let Err((failed, e)) = self.client.log(&run_id, &batch) {
            let e = e.to_string();
            self.unlogged.count(&failed, &e);
            self.warn_once(&e);
        }
        self.logged_params.extend(params);
    }

    fn end(&mut self, status: &str, end_time: i64) {
        let result = self.run_id().and_then(|run_id| {
            self.client.post(
                "runs/update",
                &json!({"run_id": run_id, "status": status, "end_time": end_time}),
            )
        });
        if let Err(e) = result {
            let e = e.to_string();
            self.unlogged.status = true;
            self.unlogged.last_error = Some(e.clone());
            self.warn_once(&e);
        }
    }

    /// Serves messages until `End` (or the callback is gone), merging what queued up meanwhile
    /// into one batch.
    fn serve(mut self, rx: Receiver<Message>) -> Unlogged {
        while let Ok(message) = rx.recv() {
            match message {
                Message::Log(mut batch) => {
                    let mut end = None;
                    while let Ok(next) = rx.try_recv() {
                        match next {
                            Message::Log(more) => batch.append(more),
                            Message::End { status, end_time } => {
                                end = Some((status, end_time));
                                break;
                            }
                        }
                    }
                    self.log(batch);
                    if let Some((status, end_time)) = end {
                        self.end(status, end_time);
                        break;
                    }
                }
                Message::End { status, end_time } => {
                    self.end(status, end_time);
                    break;
                }
            }
        }
        self.unlogged
    }
}

/// Flattens a JSON config into MLflow params: `{"a": {"b": 1}}` → `a.b = 1`.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Null => {}
        Value::String(s) => out.push((prefix.to_string(), truncate(s))),
        other => out.push((prefix.to_string(), truncate(&other.to_string()))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_PARAM_VALUE).collect()
}

/// A worker running, as the callback holds it.
struct Running {
    tx: SyncSender<Message>,
    done: Receiver<Unlogged>,
    handle: JoinHandle<()>,
}

/// Logs the fit to MLflow (see the module docs); never fails or slows training.
pub struct MlflowCallback {
    manager: Rc<RefCell<CheckpointManager>>,
    tracking_uri: String,
    experiment: String,
    log_every: u64,
    link: Arc<Mutex<Option<MlflowLink>>>,
    recorded: Option<MlflowLink>,
    worker: Option<Running>,
    steps: Vec<Metric>,
    /// Batches dropped because the queue was full.
    dropped: Unlogged,
    /// What was not logged, once the fit ended.
    pub unlogged: Option<Unlogged>,
}

impl std::fmt::Debug for MlflowCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowCallback")
            .field("tracking_uri", &self.tracking_uri)
            .field("experiment", &self.experiment)
            .finish_non_exhaustive()
    }
}

impl MlflowCallback {
    /// Logs to `tracking_uri`, into MLflow experiment `experiment`.
    pub fn new(
        manager: Rc<RefCell<CheckpointManager>>,
        tracking_uri: String,
        experiment: String,
        log_every_n_steps: u64,
    ) -> Self {
        Self {
            manager,
            tracking_uri,
            experiment,
            log_every: log_every_n_steps.max(1),
            link: Arc::new(Mutex::new(None)),
            recorded: None,
            worker: None,
            steps: Vec::new(),
            dropped: Unlogged::default(),
            unlogged: None,
        }
    }

    /// The tracking server.
    pub fn tracking_uri(&self) -> &str {
        &self.tracking_uri
    }

    /// The MLflow experiment.
    pub fn experiment(&self) -> &str {
        &self.experiment
    }

    /// Hands `batch` to the worker without waiting: a full queue drops it (counted).
    fn send(&mut self, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        let Some(worker) = &self.worker else {
            return;
        };
        match worker.tx.try_send(Message::Log(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(Message::Log(batch)))
            | Err(TrySendError::Disconnected(Message::Log(batch))) => {
                self.dropped
                    .count(&batch, "the MLflow queue was full (the server is too slow)");
            }
            Err(_) => {}
        }
    }

    /// Records the MLflow run's id in the run's metadata once the worker knows it.
    fn record_link(&mut self) -> Result<(), TrainError> {
        let link = self.link.lock().ok().and_then(|l| l.clone());
        if let Some(link) = link {
            if self.recorded.as_ref() != Some(&link) {
                self.manager.borrow_mut().set_mlflow_link(link.clone())?;
                self.recorded = Some(link);
            }
        }
        Ok(())
    }

    /// The run's tags with `status` (ours, lowercase).
    fn tags_now(&self, status: &str) -> Vec<(String, String)> {
        let m = self.manager.borrow();
        let run_dir = std::path::absolute(m.run_dir()).unwrap_or_else(|_| m.run_dir());
        let checkpoints = run_dir
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        let mut tags = vec![
            ("diffit.run_number".into(), m.run_number().to_string()),
            ("diffit.run_dir".into(), run_dir.display().to_string()),
            (
                "diffit.checkpoints_uri".into(),
                format!("file://{}", checkpoints.display()),
            ),
            ("diffit.status".into(), status.into()),
        ];
        if let Some(best) = &m.metadata().best_checkpoint {
            tags.push(("best.epoch".into(), best.epoch.to_string()));
            tags.push((
                "best.path".into(),
                checkpoints.join(&best.path).display().to_string(),
            ));
            let checksum = m
                .metadata()
                .checkpoint(best.epoch)
                .and_then(|c| c.checksum.clone());
            if let Some(checksum) = checksum {
                tags.push(("best.checksum".into(), checksum));
            }
            for (k, v) in &best.metrics {
                tags.push((format!("best.{k}"), v.to_string()));
            }
        }
        tags
    }
}

impl Callback for MlflowCallback {
    fn on_fit_start(&mut self, state: &mut TrainState) -> Result<(), TrainError> {
        let (run_name, existing) = {
            let m = self.manager.borrow();
            (
                format!("run_{:03}", m.run_number()),
                m.metadata().mlflow.clone(),
            )
        };
        self.recorded = existing.clone();
        let target = RunTarget {
            tracking_uri: self.tracking_uri.clone(),
            experiment: self.experiment.clone(),
            run_name,
            existing,
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let (done_tx, done) = mpsc::channel();
        let worker = Worker {
            client: Client::new(&self.tracking_uri),
            target,
            link: self.link.clone(),
            run_id: None,
            logged_params: BTreeMap::new(),
            unlogged: Unlogged::default(),
            warned: false,
        };
        let handle = std::thread::Builder::new()
            .name("mlflow".into())
            .spawn(move || {
                let _ = done_tx.send(worker.serve(rx));
            })
            .map_err(|e| TrainError::Internal(format!("cannot start the MLflow thread: {e}")))?;
        self.worker = Some(Running { tx, done, handle });
        let mut params = Vec::new();
        flatten("", &state.run_config(), &mut params);
        let tags = self.tags_now("running");
        self.send(Batch {
            metrics: Vec::new(),
            params,
            tags,
        });
        Ok(())
    }

    fn on_base_validation_end(
        &mut self,
        _state: &mut TrainState,
        metrics: &Metrics,
    ) -> Result<(), TrainError> {
        let metrics = metrics
            .iter()
            .map(|(k, v)| Metric::new(&format!("base_{k}"), *v, 0))
            .collect();
        self.send(Batch {
            metrics,
            ..Batch::default()
        });
        Ok(())
    }

    fn on_train_step(&mut self, step: &StepProgress) {
        if !step.global_step.is_multiple_of(self.log_every) {
            return;
        }
        let at = i64::try_from(step.global_step).unwrap_or(i64::MAX);
        self.steps
            .push(Metric::new("train_loss_step", step.loss, at));
        self.steps.push(Metric::new("lr_step", step.lr, at));
        if self.steps.len() >= MAX_METRICS_PER_BATCH / 2 {
            let metrics = std::mem::take(&mut self.steps);
            self.send(Batch {
                metrics,
                ..Batch::default()
            });
        }
    }

    fn on_epoch_end(
        &mut self,
        state: &mut TrainState,
        metrics: &Metrics,
    ) -> Result<(), TrainError> {
        let epoch = i64::from(state.epoch);
        let mut batch = Batch {
            metrics: std::mem::take(&mut self.steps),
            ..Batch::default()
        };
        batch
            .metrics
            .extend(metrics.iter().map(|(k, v)| Metric::new(k, *v, epoch)));
        self.send(batch);
        self.record_link()
    }

    fn on_fit_end(
        &mut self,
        _state: &mut TrainState,
        outcome: FitOutcome,
    ) -> Result<(), TrainError> {
        let (status, ours) = match outcome {
            FitOutcome::Finished => ("FINISHED", RunStatus::Finished),
            FitOutcome::Interrupted => ("KILLED", RunStatus::Interrupted),
            FitOutcome::Failed => ("FAILED", RunStatus::Failed),
        };
        let ours = serde_json::to_value(ours)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut batch = Batch {
            metrics: std::mem::take(&mut self.steps),
            ..Batch::default()
        };
        batch.tags = self.tags_now(&ours);
        self.send(batch);
        let Some(worker) = self.worker.take() else {
            return Ok(());
        };
        let end = Message::End {
            status,
            end_time: now_ms(),
        };
        // The end waits its turn in the queue (a full queue is waited on here: training is over).
        let _ = worker.tx.send(end);
        let mut unlogged = match worker.done.recv_timeout(FLUSH_DEADLINE) {
            Ok(unlogged) => {
                let _ = worker.handle.join();
                unlogged
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Unlogged {
                status: true,
                last_error: Some(format!(
                    "the MLflow server did not take the queued updates within {}s",
                    FLUSH_DEADLINE.as_secs()
                )),
                ..Unlogged::default()
            },
        };
        unlogged.metrics += self.dropped.metrics;
        unlogged.params += self.dropped.params;
        unlogged.tags += self.dropped.tags;
        if unlogged.last_error.is_none() {
            unlogged.last_error = self.dropped.last_error.take();
        }
        if !unlogged.is_nothing() {
            tracing::warn!(
                "MLflow at {}: not logged: {} metric values, {} params, {} tags{} (last error: {})",
                self.tracking_uri,
                unlogged.metrics,
                unlogged.params,
                unlogged.tags,
                if unlogged.status {
                    ", and the run's final status"
                } else {
                    ""
                },
                unlogged.last_error.as_deref().unwrap_or("none")
            );
        }
        self.unlogged = Some(unlogged);
        // The link may have become known only now (a short run, or a server that was slow).
        self.record_link()
    }
}

/// The callback for a run's settings, when tracking is on (a URI is configured or in the
/// environment).
pub fn callback_for(
    manager: Rc<RefCell<CheckpointManager>>,
    state: &TrainState,
) -> Option<MlflowCallback> {
    let t = &state.config.training;
    let uri = tracking_uri(t.mlflow.tracking_uri.as_deref())?;
    let experiment = t
        .mlflow
        .experiment_name
        .clone()
        .unwrap_or_else(|| t.experiment_name.clone());
    Some(MlflowCallback::new(
        manager,
        uri,
        experiment,
        t.log_every_n_steps,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_uris_must_be_http_without_credentials() {
        assert!(check_tracking_uri("http://127.0.0.1:5000").is_ok());
        assert!(check_tracking_uri("https://mlflow.example.com/prefix").is_ok());
        assert!(check_tracking_uri("file:///tmp/mlruns").is_err());
        assert!(check_tracking_uri("http://").is_err());
        let err = check_tracking_uri("https://me:secret@host").unwrap_err();
        assert!(err.contains("MLFLOW_TRACKING_PASSWORD") && !err.contains("secret"));
    }

    #[test]
    fn configs_flatten_to_dotted_params() {
        let mut out = Vec::new();
        flatten(
            "",
            &json!({"training": {"lr": 0.5, "name": "e", "gone": null}, "lora": {"r": 4}}),
            &mut out,
        );
        out.sort();
        assert_eq!(
            out,
            vec![
                ("lora.r".to_string(), "4".to_string()),
                ("training.lr".to_string(), "0.5".to_string()),
                ("training.name".to_string(), "e".to_string()),
            ]
        );
    }

    #[test]
    fn non_finite_metrics_are_sent_as_protobuf_json_strings() {
        assert_eq!(Metric::new("a", f64::NAN, 1).to_json()["value"], "NaN");
        assert_eq!(
            Metric::new("a", f64::NEG_INFINITY, 1).to_json()["value"],
            "-Infinity"
        );
        assert_eq!(Metric::new("a", 0.25, 1).to_json()["value"], 0.25);
    }

    #[test]
    fn basic_auth_is_standard_base64() {
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64_encode(b"a"), "YQ==");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b""), "");
    }
}
