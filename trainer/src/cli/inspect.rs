//! `diffit inspect FILE` (the seed system's `inspect_checkpoint`): what a safetensors file is
//! (base model, LoRA epoch checkpoint, merged export, PEFT adapter), its size and checksum,
//! its header metadata, its tensors, and, for a file inside a run, whether it is the file the
//! run's metadata recorded. Only the header and a checksum pass are read, through the store's
//! one header reader ([`store::read_header`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use format::layout::{parse_run_dir_name, BASE_MODEL_DIR, BASE_MODEL_FILE, LORA_DIR, TENSOR_EXT};
use format::tensors::{
    is_lora_tensor, meta_keys, BASE_MODEL_FORMAT, BASE_TRAINING_CHECKPOINT_FORMAT,
    LORA_CHECKPOINT_FORMAT, OPTIMIZER_PREFIX,
};
use format::CheckpointName;
use store::{CheckpointManager, HeaderError};

use crate::train::export::{is_peft_lora_tensor, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE};
use crate::train::TrainError;

/// `diffit inspect FILE`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// A safetensors file: a run's base model or epoch/best/last checkpoint, a merged export,
    /// a PEFT adapter (its `adapter_model.safetensors` or its folder), or any other.
    pub file: PathBuf,
    /// How many tensors to list (the first by name).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub tensors: usize,
    /// List every tensor.
    #[arg(long)]
    pub all: bool,
    /// Print one JSON object instead of text (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// What kind of file it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A base model (`diffit-base-model`): a run's, `diffit pretrain`'s or `diffit import`'s.
    BaseModel,
    /// One epoch's LoRA checkpoint (`diffit-lora-checkpoint`), also `best` and `last`.
    LoraCheckpoint,
    /// One epoch of a base-training run (`diffit-base-training-checkpoint`): the whole model
    /// with its optimizer state.
    BaseTrainingCheckpoint,
    /// Base weights with LoRA fused in (`diffit export --format merged`).
    MergedExport,
    /// A PEFT adapter (`diffit export --format peft`): `base_model.model.*lora_A/B*` tensors.
    PeftAdapter,
    /// A safetensors file of none of these kinds.
    Other,
}

impl FileKind {
    fn describe(self) -> &'static str {
        match self {
            FileKind::BaseModel => "base model",
            FileKind::LoraCheckpoint => "LoRA epoch checkpoint",
            FileKind::BaseTrainingCheckpoint => "base-training epoch checkpoint (whole model)",
            FileKind::MergedExport => "merged export (base with LoRA fused in)",
            FileKind::PeftAdapter => "PEFT adapter",
            FileKind::Other => "safetensors file (not one of diffit's kinds)",
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, Serialize)]
pub struct TensorEntry {
    /// Its name.
    pub name: String,
    /// Its dtype (`F32`, ...).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// Which training state a checkpoint carries.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StatePresence {
    /// AdamW's moments (tensors) and step (metadata): resumable.
    pub optimizer: bool,
    /// The LR scheduler's state.
    pub scheduler: bool,
    /// The RNG states (data order, noise).
    pub rng: bool,
}

/// How the file relates to the run it lies in.
#[derive(Debug, Clone, Serialize)]
pub struct RunCheck {
    /// The run's directory.
    pub run_dir: PathBuf,
    /// What the run's metadata says this file is (`epoch 3`, `best (epoch 2)`, `base model`).
    pub recorded_as: Option<String>,
    /// The checksum metadata records for it.
    pub recorded_checksum: Option<String>,
    /// Whether the file's checksum is the recorded one (`None`: nothing recorded).
    pub matches: Option<bool>,
    /// Why nothing could be compared, when so.
    pub note: Option<String>,
}

/// Everything `diffit inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file inspected.
    pub path: PathBuf,
    /// Its kind.
    pub kind: FileKind,
    /// Bytes on disk.
    pub size: u64,
    /// `blake3:<hex>` of the whole file.
    pub checksum: String,
    /// The header's `format` key, when present.
    pub format: Option<String>,
    /// The header's `format_version`.
    pub format_version: Option<String>,
    /// 1-based epoch (checkpoints, merged exports).
    pub epoch: Option<u32>,
    /// Optimizer steps when saved.
    pub global_step: Option<u64>,
    /// The metrics recorded with it.
    pub metrics: Option<Value>,
    /// The model config.
    pub model_config: Option<Value>,
    /// The LoRA config (a PEFT adapter's `adapter_config.json` when beside it).
    pub lora_config: Option<Value>,
    /// `blake3:<hex>` of the base the adapters were trained on.
    pub base_checksum: Option<String>,
    /// Which training state a checkpoint carries (`None` for other kinds).
    pub state: Option<StatePresence>,
    /// Other `__metadata__` keys, as stored.
    pub other_metadata: BTreeMap<String, String>,
    /// Number of tensors.
    pub tensor_count: usize,
    /// Elements over all tensors.
    pub parameter_count: u64,
    /// Elements of the LoRA tensors.
    pub lora_parameter_count: u64,
    /// Elements of the optimizer tensors.
    pub optimizer_parameter_count: u64,
    /// Tensors per dtype.
    pub dtypes: BTreeMap<String, usize>,
    /// The tensors listed (sorted by name; the first N unless `--all`).
    pub tensors: Vec<TensorEntry>,
    /// Against the run's metadata, when the file lies inside a run.
    pub run: Option<RunCheck>,
}

/// The file itself, or a PEFT folder's weights file.
fn weights_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(PEFT_WEIGHTS_FILE)
    } else {
        path.to_path_buf()
    }
}

/// Inspects `path`, listing `limit` tensors (all with `None`).
pub fn inspect_file(path: &Path, limit: Option<usize>) -> Result<Inspection, TrainError> {
    let path = weights_file(path);
    let bad = |reason: String| TrainError::BadFile {
        path: path.clone(),
        reason,
    };
    let file = File::open(&path).map_err(|e| TrainError::io("open", &path, e))?;
    let size = file
        .metadata()
        .map_err(|e| TrainError::io("stat", &path, e))?
        .len();
    let header = store::read_header(BufReader::new(file), size).map_err(|e| match e {
        HeaderError::Io(e) => TrainError::io("read", &path, e),
        HeaderError::Truncated(why) => bad(format!("truncated safetensors file: {why}")),
        HeaderError::Invalid(why) => bad(format!("not a safetensors file: {why}")),
    })?;
    let digest = store::checksum::digest_file(&path)?;
    let mut meta: BTreeMap<String, String> = header
        .header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut entries: Vec<TensorEntry> = header
        .header
        .tensors()
        .into_iter()
        .map(|(name, info)| TensorEntry {
            name,
            dtype: format!("{:?}", info.dtype),
            shape: info.shape.clone(),
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let elements = |e: &TensorEntry| e.shape.iter().map(|&d| d as u64).product::<u64>();
    let mut dtypes = BTreeMap::new();
    for e in &entries {
        *dtypes.entry(e.dtype.clone()).or_insert(0) += 1;
    }
    let sum_where = |keep: &dyn Fn(&str) -> bool| -> u64 {
        entries.iter().filter(|e| keep(&e.name)).map(elements).sum()
    };
    let parameter_count = sum_where(&|_| true);
    let optimizer_parameter_count = sum_where(&|n| n.starts_with(OPTIMIZER_PREFIX));
    let lora_parameter_count = sum_where(&|n| is_lora_tensor(n) || is_peft_lora_tensor(n));
    let format = meta.remove(meta_keys::FORMAT);
    let json = |meta: &mut BTreeMap<String, String>, key: &str| -> Option<Value> {
        let text = meta.remove(key)?;
        Some(serde_json::from_str(&text).unwrap_or(Value::String(text))).filter(|v| !v.is_null())
    };
    let model_config = json(&mut meta, meta_keys::MODEL_CONFIG);
    let mut lora_config = json(&mut meta, meta_keys::LORA_CONFIG);
    let metrics = json(&mut meta, meta_keys::METRICS);
    let optimizer = json(&mut meta, meta_keys::OPTIMIZER);
    let scheduler = json(&mut meta, meta_keys::SCHEDULER);
    let rng = json(&mut meta, meta_keys::RNG);
    let epoch = meta
        .remove(meta_keys::EPOCH)
        .map(|e| {
            e.parse::<u32>()
                .map_err(|_| bad(format!("header epoch {e:?} is not a number")))
        })
        .transpose()?;
    let global_step = meta
        .remove(meta_keys::GLOBAL_STEP)
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| bad(format!("header global_step {s:?} is not a number")))
        })
        .transpose()?;
    let base_checksum = meta.remove(meta_keys::BASE_CHECKSUM);
    let format_version = meta.remove(meta_keys::FORMAT_VERSION);
    let is_peft = !entries.is_empty() && entries.iter().all(|e| is_peft_lora_tensor(&e.name));
    let kind = match format.as_deref() {
        Some(LORA_CHECKPOINT_FORMAT) => FileKind::LoraCheckpoint,
        Some(BASE_TRAINING_CHECKPOINT_FORMAT) => FileKind::BaseTrainingCheckpoint,
        Some(BASE_MODEL_FORMAT) if lora_config.is_some() => FileKind::MergedExport,
        Some(BASE_MODEL_FORMAT) => FileKind::BaseModel,
        _ if is_peft => FileKind::PeftAdapter,
        _ => FileKind::Other,
    };
    if kind == FileKind::PeftAdapter && lora_config.is_none() {
        let config = path.with_file_name(PEFT_CONFIG_FILE);
        lora_config = std::fs::read_to_string(&config)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
    }
    let resumable = matches!(
        kind,
        FileKind::LoraCheckpoint | FileKind::BaseTrainingCheckpoint
    );
    let state = resumable.then_some(StatePresence {
        optimizer: optimizer_parameter_count > 0 && optimizer.is_some(),
        scheduler: scheduler.is_some(),
        rng: rng.is_some(),
    });
    let run = run_check(&path, &digest.checksum);
    let tensor_count = entries.len();
    entries.truncate(limit.unwrap_or(usize::MAX));
    Ok(Inspection {
        path,
        kind,
        size: digest.size,
        checksum: digest.checksum,
        format,
        format_version,
        epoch,
        global_step,
        metrics,
        model_config,
        lora_config,
        base_checksum,
        state,
        other_metadata: meta,
        tensor_count,
        parameter_count,
        lora_parameter_count,
        optimizer_parameter_count,
        dtypes,
        tensors: entries,
        run,
    })
}

/// The run a file lies in (`…/run_NNN/lora_weights/NAME.safetensors` or
/// `…/run_NNN/base_model/base_model.safetensors`) and what its metadata records for it.
fn run_check(path: &Path, checksum: &str) -> Option<RunCheck> {
    let absolute = std::path::absolute(path).ok()?;
    let folder = absolute.parent()?;
    let run_dir = folder.parent()?;
    let run = parse_run_dir_name(run_dir.file_name()?.to_str()?)?;
    let file_name = absolute.file_name()?.to_str()?;
    let folder_name = folder.file_name()?.to_str()?;
    let mut check = RunCheck {
        run_dir: run_dir.to_path_buf(),
        recorded_as: None,
        recorded_checksum: None,
        matches: None,
        note: None,
    };
    let manager = match CheckpointManager::open_read_only(run_dir.parent()?, run) {
        Ok(manager) => manager,
        Err(e) => {
            check.note = Some(format!("cannot read the run's metadata: {e}"));
            return Some(check);
        }
    };
    let meta = manager.metadata();
    let recorded: Option<(String, Option<String>)> = if folder_name == BASE_MODEL_DIR {
        (file_name == BASE_MODEL_FILE).then(|| {
            (
                "base model".to_string(),
                meta.base_model.as_ref().map(|r| r.checksum.clone()),
            )
        })
    } else if folder_name == LORA_DIR {
        let stem = file_name.strip_suffix(&format!(".{TENSOR_EXT}"))?;
        match stem.parse::<CheckpointName>().ok()? {
            CheckpointName::Epoch(n) => meta
                .checkpoint(n)
                .map(|r| (format!("epoch {n}"), r.checksum.clone())),
            CheckpointName::Best => meta.best_checkpoint.as_ref().and_then(|b| {
                meta.checkpoint(b.epoch)
                    .map(|r| (format!("best (epoch {})", b.epoch), r.checksum.clone()))
            }),
            CheckpointName::Last => meta
                .live_checkpoints()
                .max_by_key(|c| c.epoch)
                .map(|r| (format!("last (epoch {})", r.epoch), r.checksum.clone())),
            CheckpointName::Base => None,
        }
    } else {
        None
    };
    match recorded {
        None => check.note = Some("the run's metadata records no such file".into()),
        Some((what, recorded_checksum)) => {
            check.recorded_as = Some(what);
            check.matches = recorded_checksum.as_deref().map(|r| r == checksum);
            if recorded_checksum.is_none() {
                check.note = Some("metadata records no checksum for it".into());
            }
            check.recorded_checksum = recorded_checksum;
        }
    }
    Some(check)
}

/// `1234567` → `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The text report.
pub fn render(i: &Inspection) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<13}{value}");
    };
    line("file:", i.path.display().to_string());
    let format = match (&i.format, &i.format_version) {
        (Some(f), Some(v)) => format!(" ({f}, format version {v})"),
        (Some(f), None) => format!(" ({f})"),
        _ => String::new(),
    };
    line("kind:", format!("{}{format}", i.kind.describe()));
    line(
        "size:",
        format!(
            "{} bytes ({:.1} KiB)",
            grouped(i.size),
            i.size as f64 / 1024.0
        ),
    );
    line("checksum:", i.checksum.clone());
    if let Some(run) = &i.run {
        let verdict = match (run.matches, &run.recorded_checksum) {
            (Some(true), _) => "matches the run's metadata".to_string(),
            (Some(false), Some(recorded)) => {
                format!("DIFFERS from the run's metadata ({recorded})")
            }
            _ => run.note.clone().unwrap_or_default(),
        };
        let what = run
            .recorded_as
            .as_ref()
            .map(|w| format!(", {w}"))
            .unwrap_or_default();
        line(
            "run:",
            format!("{}{what}: {verdict}", run.run_dir.display()),
        );
    }
    if let Some(epoch) = i.epoch {
        line("epoch:", epoch.to_string());
    }
    if let Some(step) = i.global_step {
        line("global step:", step.to_string());
    }
    if let Some(metrics) = i.metrics.as_ref().and_then(Value::as_object) {
        let text: Vec<String> = metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line("metrics:", text.join(" "));
    }
    if let Some(s) = i.state {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let resumable = if s.optimizer {
            ""
        } else {
            " (weights only: cannot be resumed from)"
        };
        line(
            "state:",
            format!(
                "optimizer {}, scheduler {}, RNG {}{resumable}",
                yes(s.optimizer),
                yes(s.scheduler),
                yes(s.rng)
            ),
        );
    }
    if let Some(c) = &i.model_config {
        line("model:", c.to_string());
    }
    if let Some(c) = &i.lora_config {
        line("LoRA:", c.to_string());
    }
    if let Some(b) = &i.base_checksum {
        line("trained on:", format!("base {b}"));
    }
    for (k, v) in &i.other_metadata {
        line(&format!("{k}:"), v.clone());
    }
    let dtypes: Vec<String> = i.dtypes.iter().map(|(d, n)| format!("{n} {d}")).collect();
    let mut counts = format!("{} parameters", grouped(i.parameter_count));
    if i.lora_parameter_count > 0 {
        counts += &format!(", LoRA {}", grouped(i.lora_parameter_count));
    }
    if i.optimizer_parameter_count > 0 {
        counts += &format!(", optimizer {}", grouped(i.optimizer_parameter_count));
    }
    line(
        "tensors:",
        format!("{} ({counts}; {})", i.tensor_count, dtypes.join(", ")),
    );
    let width = i.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in &i.tensors {
        let _ = writeln!(out, "  {:<width$}  {:<4} {:?}", t.name, t.dtype, t.shape);
    }
    if i.tensors.len() < i.tensor_count {
        let _ = writeln!(
            out,
            "  ... {} more (--all lists them)",
            i.tensor_count - i.tensors.len()
        );
    }
    out
}

/// Runs `diffit inspect`.
pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let limit = (!args.all).then_some(args.tensors);
    let inspection = inspect_file(&args.file, limit)?;
    if args.json {
        let text = serde_json::to_string_pretty(&inspection)
            .context("cannot encode the inspection as JSON")?;
        println!("{text}");
    } else {
        print!("{}", render(&inspection));
    }
    Ok(())
}
