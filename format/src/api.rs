//! The HTTP API: its paths and every JSON body, declared once. The server serializes these
//! types and the app deserializes the same ones, so the two cannot drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::layout::CheckpointName;
use crate::metadata::{EpochMetrics, Metadata, Metrics, Mode, RunStatus};
use crate::seed::{SeedRun, BASE_TRAINING_DIR};

/// `GET`: the run list ([`RunList`]).
pub const RUNS_PATH: &str = "/api/runs";
/// `GET`: server-sent events ([`RunEvent`] payloads, named by [`EventKind::as_str`]).
pub const EVENTS_PATH: &str = "/api/events";

/// The first event of every `/api/events` stream (data: `{"generation": N}`).
pub const READY_EVENT: &str = "ready";
/// Sent to a subscriber that fell behind: refetch the list rather than trust the stream.
pub const RESYNC_EVENT: &str = "resync";

/// Path of one run's detail ([`RunDetail`]).
pub fn run_path(run_number: u32) -> String {
    format!("{RUNS_PATH}/{run_number}")
}

/// Path of one base-training run ([`RunDetail`]), listed in [`RunList::base_training`]:
/// `/api/runs/base_training/{n}`.
pub fn base_training_run_path(run_number: u32) -> String {
    format!("{RUNS_PATH}/{BASE_TRAINING_DIR}/{run_number}")
}

/// Path of one run's metric series ([`RunMetrics`]).
pub fn metrics_path(run_number: u32) -> String {
    format!("{RUNS_PATH}/{run_number}/metrics")
}

/// Path of one run's per-step training log ([`RunSteps`]).
pub fn steps_path(run_number: u32) -> String {
    format!("{RUNS_PATH}/{run_number}/steps")
}

/// Path of the list of one run's sample grids drawn during training ([`RunSamples`]).
pub fn samples_path(run_number: u32) -> String {
    format!("{RUNS_PATH}/{run_number}/samples")
}

/// Path of the sample grid (PNG) drawn after `epoch`.
pub fn sample_path(run_number: u32, epoch: u32) -> String {
    format!("{RUNS_PATH}/{run_number}/samples/{epoch}")
}

/// Path of a checkpoint file; `weights_only` asks for the LoRA tensors alone (no optimizer
/// state), which only LoRA checkpoints have.
pub fn checkpoint_path(run_number: u32, name: CheckpointName, weights_only: bool) -> String {
    let query = if weights_only && name != CheckpointName::Base {
        "?weights_only=true"
    } else {
        ""
    };
    format!("{RUNS_PATH}/{run_number}/checkpoints/{name}{query}")
}

/// A run's state as the dashboard shows it: the recorded status corrected by whether a writer
/// is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Its writer holds the run's lock.
    Running,
    /// Training reached its last epoch.
    Finished,
    /// Stopped (Ctrl-C, an error, or a writer that died) and resumable.
    Interrupted,
    /// Its files cannot be read as a run; the row's `error` says why.
    Broken,
    /// Written by the seed system: listed and shown, never resumed (the row's `seed` says why).
    Seed,
}

impl RunState {
    /// The state derived from what the writer last recorded and whether its lock is held now.
    pub fn of(recorded: RunStatus, writer_active: bool) -> Self {
        if writer_active {
            return RunState::Running;
        }
        match recorded {
            RunStatus::Finished => RunState::Finished,
            // A run recorded as created/running whose lock nobody holds lost its writer.
            RunStatus::Created
            | RunStatus::Running
            | RunStatus::Interrupted
            | RunStatus::Failed => RunState::Interrupted,
        }
    }

    /// The lowercase name, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Interrupted => "interrupted",
            RunState::Broken => "broken",
            RunState::Seed => "seed",
        }
    }
}

/// The best epoch by the monitored metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestSummary {
    /// The epoch `best.safetensors` holds.
    pub epoch: u32,
    /// Monitored metric name (`val_loss` unless the run says otherwise).
    pub monitor: String,
    /// Its value at that epoch, when recorded.
    pub value: Option<f64>,
}

/// What the list shows of a readable run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Experiment name.
    pub experiment_name: String,
    /// Creation time as recorded (`2025-01-15T10:30:00`).
    pub created_at: String,
    /// Last metadata write as recorded.
    pub updated_at: Option<String>,
    /// Status as the writer last recorded it.
    pub recorded_status: RunStatus,
    /// Why the writer stopped, when it recorded a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Saved epochs whose files still exist.
    pub checkpoints_count: usize,
    /// Newest saved epoch.
    pub last_epoch: Option<u32>,
    /// Best epoch, once one exists.
    pub best: Option<BestSummary>,
    /// Validation loss of the base model alone.
    pub base_val_loss: Option<f64>,
    /// Whether a writer holds the run's lock right now.
    pub writer_active: bool,
    /// Set when the seed system wrote the run: it is read-only here, and this says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedRun>,
    /// The user's tags (`diffit runs tag`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The user's note (`diffit runs note`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The run's config values by dotted path in `config.json` (`training.learning_rate`),
    /// scalars and lists ([`crate::query::flatten_params`]); empty when it has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, Value>,
}

impl RunInfo {
    /// The run's state: a seed run's is [`RunState::Seed`], any other's follows its writer.
    pub fn state(&self) -> RunState {
        match self.seed {
            Some(_) => RunState::Seed,
            None => RunState::of(self.recorded_status, self.writer_active),
        }
    }
}

/// One row of [`RunList`]: a run, or a run directory that could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run's number (`run_003` → 3).
    pub run_number: u32,
    /// Running / finished / interrupted / broken.
    pub status: RunState,
    /// Why the run is broken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The readable part (absent for broken runs).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub info: Option<RunInfo>,
}

impl RunSummary {
    /// The monitored metric's value at the best epoch, if the run monitors `metric`.
    pub fn best_value_of(&self, metric: &str) -> Option<f64> {
        let best = self.info.as_ref()?.best.as_ref()?;
        (best.monitor == metric).then_some(best.value).flatten()
    }
}

/// `GET /api/runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunList {
    /// Every run directory, by number, broken ones included.
    pub runs: Vec<RunSummary>,
    /// The base-training runs (`base_training/run_NNN`), by number, the seed's marked by their
    /// `seed` field; each one's detail is at [`base_training_run_path`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base_training: Vec<RunSummary>,
    /// A page ([`RunQuery`]): where `runs` starts among the matching runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<RunPage>,
}

/// What a paged or filtered list answers besides its rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPage {
    /// Index of the first row among the matching runs.
    pub offset: usize,
    /// Runs that match the query (all pages).
    pub matched: usize,
    /// Every run of the checkpoints dir.
    pub total: usize,
    /// The config keys whose values differ between the runs (the columns worth showing; taken
    /// over every run, so they stay put while a search narrows the rows).
    pub varying: Vec<String>,
}

/// Most rows one page holds.
pub const MAX_PAGE: usize = 1000;
/// Rows of a page when the query names no limit.
pub const DEFAULT_PAGE: usize = 100;

/// Sort direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    /// Smallest first.
    #[default]
    Asc,
    /// Largest first.
    Desc,
}

/// `GET /api/runs?q=…&sort=…&order=…&offset=…&limit=…`: the matching runs ([`crate::query`]),
/// sorted by a field or config value, one page of them. With none of these the list is
/// every run, unpaged, as before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunQuery {
    /// The search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// A field or config key to sort by (run number by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<String>,
    /// Direction of the sort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<SortOrder>,
    /// Rows to skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    /// Rows to send, at most [`MAX_PAGE`] ([`DEFAULT_PAGE`] when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl RunQuery {
    /// True when it asks for the plain, whole list.
    pub fn is_plain(&self) -> bool {
        *self == RunQuery::default()
    }

    /// `/api/runs?…` for this query.
    pub fn path(&self) -> String {
        let mut parts = vec![];
        let mut push = |key: &str, value: &str| {
            parts.push(format!("{key}={}", percent_encode(value)));
        };
        if let Some(q) = &self.q {
            push("q", q);
        }
        if let Some(sort) = &self.sort {
            push("sort", sort);
        }
        if let Some(order) = self.order {
            push(
                "order",
                match order {
                    SortOrder::Asc => "asc",
                    SortOrder::Desc => "desc",
                },
            );
        }
        if let Some(offset) = self.offset {
            push("offset", &offset.to_string());
        }
        if let Some(limit) = self.limit {
            push("limit", &limit.to_string());
        }
        if parts.is_empty() {
            RUNS_PATH.to_string()
        } else {
            format!("{RUNS_PATH}?{}", parts.join("&"))
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// `GET /api/runs/{n}`: the run's state, its metadata and its `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    /// The run's number.
    pub run_number: u32,
    /// Its state now.
    pub status: RunState,
    /// Whether a writer holds the run's lock right now.
    pub writer_active: bool,
    /// `metadata.json`.
    pub metadata: Metadata,
    /// `config.json` (training, LoRA and model configuration); `None` when the run has none.
    pub config: Option<Value>,
    /// Set when the seed system wrote the run: it is read-only here, and this says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedRun>,
}

/// `GET /api/runs/{n}/metrics`: the per-epoch metric series and the base model's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// The run's number.
    pub run_number: u32,
    /// The monitored metric.
    pub monitor: String,
    /// Whether lower or higher is better.
    pub mode: Mode,
    /// The base model's own metrics.
    #[serde(with = "crate::metadata::metric_values")]
    pub base_metrics: Metrics,
    /// The best epoch, once one exists.
    pub best_epoch: Option<u32>,
    /// One entry per logged epoch.
    pub series: Vec<EpochMetrics>,
}

/// `GET /api/runs/{n}/steps`: every epoch's step log (`logs/steps/`), by epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSteps {
    /// The run's number.
    pub run_number: u32,
    /// One entry per epoch that logged its steps.
    pub logs: Vec<crate::logs::StepLog>,
}

/// `GET /api/runs/{n}/samples`: the epochs after which a sample grid was drawn
/// (`logs/samples/`); each is at [`sample_path`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSamples {
    /// The run's number.
    pub run_number: u32,
    /// The epochs, ascending.
    pub epochs: Vec<u32>,
}

/// What happened to a run (the SSE `event:` name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A run folder appeared.
    RunAdded,
    /// A run's metadata or state changed.
    RunUpdated,
    /// A new epoch checkpoint was recorded.
    CheckpointAdded,
    /// A run folder disappeared.
    RunRemoved,
}

impl EventKind {
    /// Every kind, for subscribers that listen to all of them.
    pub const ALL: [EventKind; 4] = [
        EventKind::RunAdded,
        EventKind::RunUpdated,
        EventKind::CheckpointAdded,
        EventKind::RunRemoved,
    ];

    /// The SSE `event:` name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RunAdded => "run_added",
            EventKind::RunUpdated => "run_updated",
            EventKind::CheckpointAdded => "checkpoint_added",
            EventKind::RunRemoved => "run_removed",
        }
    }
}

/// The data of one `/api/events` event; its kind is the SSE event name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    /// The run.
    pub run_number: u32,
    /// The run's state after the change (absent when removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunState>,
    /// The new epoch (checkpoint events) or the newest epoch (updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    /// Live checkpoints after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints_count: Option<usize>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person to read.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable() -> RunSummary {
        RunSummary {
            run_number: 1,
            status: RunState::Finished,
            error: None,
            info: Some(RunInfo {
                experiment_name: "e".into(),
                created_at: "2025-01-15T10:30:00".into(),
                updated_at: None,
                recorded_status: RunStatus::Finished,
                status_reason: None,
                checkpoints_count: 3,
                last_epoch: Some(3),
                best: Some(BestSummary {
                    epoch: 2,
                    monitor: "val_loss".into(),
                    value: Some(0.25),
                }),
                base_val_loss: Some(0.9),
                writer_active: false,
                seed: None,
                tags: vec![],
                note: None,
                params: BTreeMap::new(),
            }),
        }
    }

    #[test]
    fn a_query_becomes_an_encoded_path_and_reads_back() {
        assert_eq!(RunQuery::default().path(), RUNS_PATH);
        assert!(RunQuery::default().is_plain());
        let q = RunQuery {
            q: Some("lr<1e-3 tag:sweep \"a&b\"".into()),
            sort: Some("training.learning_rate".into()),
            order: Some(SortOrder::Desc),
            offset: Some(200),
            limit: Some(100),
        };
        assert_eq!(
            q.path(),
            "/api/runs?q=lr%3C1e-3%20tag%3Asweep%20%22a%26b%22\
             &sort=training.learning_rate&order=desc&offset=200&limit=100"
        );
    }

    #[test]
    fn run_list_round_trips_readable_and_broken_rows() {
        let broken = RunSummary {
            run_number: 2,
            status: RunState::Broken,
            error: Some("run_002/metadata.json is missing".into()),
            info: None,
        };
        let list = RunList {
            runs: vec![readable(), broken],
            base_training: Vec::new(),
            page: None,
        };
        let json = serde_json::to_value(&list).unwrap();
        // The readable part is flattened into the row, as the API has always sent it.
        assert_eq!(json["runs"][0]["checkpoints_count"], 3);
        assert_eq!(json["runs"][0]["status"], "finished");
        assert!(json["runs"][1].get("experiment_name").is_none());
        assert!(json.get("base_training").is_none());
        assert!(json["runs"][0].get("seed").is_none());
        let back: RunList = serde_json::from_value(json).unwrap();
        assert_eq!(back, list);
        assert_eq!(back.runs[0].best_value_of("val_loss"), Some(0.25));
        assert_eq!(back.runs[0].best_value_of("train_loss"), None);
        assert_eq!(back.runs[1].best_value_of("val_loss"), None);
    }

    #[test]
    fn seed_rows_say_so_and_read_as_seed() {
        use crate::seed::{SeedRunKind, SEED_RUN_NOTE};

        let mut row = readable();
        let info = row.info.as_mut().unwrap();
        info.recorded_status = RunStatus::Created;
        info.seed = Some(SeedRun::new(SeedRunKind::Lora));
        row.status = info.state();
        assert_eq!(row.status, RunState::Seed);
        let list = RunList {
            runs: vec![row.clone()],
            base_training: vec![row],
            page: None,
        };
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["runs"][0]["status"], "seed");
        assert_eq!(json["runs"][0]["seed"]["kind"], "lora");
        assert_eq!(json["runs"][0]["seed"]["note"], SEED_RUN_NOTE);
        assert_eq!(json["base_training"][0]["run_number"], 1);
        assert_eq!(serde_json::from_value::<RunList>(json).unwrap(), list);
        assert_eq!(base_training_run_path(2), "/api/runs/base_training/2");
    }

    #[test]
    fn state_follows_the_writer_lock() {
        assert_eq!(RunState::of(RunStatus::Running, true), RunState::Running);
        assert_eq!(
            RunState::of(RunStatus::Running, false),
            RunState::Interrupted
        );
        assert_eq!(RunState::of(RunStatus::Finished, false), RunState::Finished);
        for kind in EventKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
        }
    }

    #[test]
    fn checkpoint_paths() {
        assert_eq!(
            checkpoint_path(3, CheckpointName::Base, true),
            "/api/runs/3/checkpoints/base"
        );
        assert_eq!(
            checkpoint_path(3, CheckpointName::Epoch(2), true),
            "/api/runs/3/checkpoints/epoch_002?weights_only=true"
        );
        assert_eq!(metrics_path(4), "/api/runs/4/metrics");
    }
}
