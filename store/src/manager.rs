//! `CheckpointManager`: one run's directory, its metadata and its tensor files.
//!
//! Write order, which is what makes a `kill -9` at any instant harmless:
//! 1. the tensor file is written atomically under its final name;
//! 2. `metadata.json` is replaced atomically to point at it (the commit point);
//! 3. `best`/`last` hard links are replaced atomically (derived data, repaired on open).
//!
//! Retention marks entries removed in metadata first and deletes files afterwards, so
//! metadata never points at a missing file.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use format::layout::{
    parse_run_dir_name, BASE_MODEL_DIR, LOCK_FILE, LOGS_DIR, LORA_DIR, METADATA_FILE, TENSOR_EXT,
};
use format::metadata::{EpochMetrics, Metrics, FORMAT_VERSION};
use format::tensors::{meta_keys, BASE_MODEL_FORMAT};
use format::{
    BestCheckpoint, CheckpointName, CheckpointRecord, FileRecord, Metadata, Mode, RunLayout,
    RunStatus,
};

use super::atomic::{
    link_or_copy_atomic, link_or_copy_unsynced, remove_if_exists, remove_temp_leftovers, same_file,
    sync_dir, write_bytes_atomic,
};
use super::checkpoint::LoraCheckpoint;
use super::checksum::{digest_file, FileDigest};
use super::error::{IoContext, Result, StoreError};
use super::hooks::{NoHooks, SaveHooks};
use super::retention::RetentionPolicy;
use super::tensor_file::{
    digest_tensor_file, read_tensor_file, write_tensor_file, HeaderMetadata, TensorMap,
};

/// The seed's default experiment name.
pub const DEFAULT_EXPERIMENT: &str = "diffit_lora_trees";

/// How long a writer keeps retrying a lock that a reader may hold for an instant.
const LOCK_RETRIES: u32 = 25;
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Which LoRA checkpoint to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// One saved epoch (1-based).
    Epoch(u32),
    /// The best epoch by the monitored metric.
    Best,
    /// The newest saved epoch.
    Last,
}

impl From<Which> for CheckpointName {
    fn from(which: Which) -> Self {
        match which {
            Which::Epoch(n) => CheckpointName::Epoch(n),
            Which::Best => CheckpointName::Best,
            Which::Last => CheckpointName::Last,
        }
    }
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        CheckpointName::from(*self).fmt(f)
    }
}

/// What [`CheckpointManager::save_lora_weights`] wrote.
#[derive(Debug, Clone)]
pub struct SavedCheckpoint {
    /// The epoch saved.
    pub epoch: u32,
    /// The epoch file.
    pub path: PathBuf,
    /// Its metadata entry.
    pub record: CheckpointRecord,
    /// It became the best checkpoint.
    pub is_best: bool,
    /// It is the newest epoch (`last` points at it).
    pub is_last: bool,
}

/// What [`CheckpointManager::save_base_model`] did.
#[derive(Debug, Clone)]
pub struct SavedBase {
    /// The run's base model file.
    pub path: PathBuf,
    /// Its checksum and size.
    pub digest: FileDigest,
    /// The other run's identical base model it was hard-linked from, if any.
    pub linked_from: Option<PathBuf>,
}

/// A base model read back.
#[derive(Debug)]
pub struct BaseModel {
    /// The frozen parameters by module path.
    pub tensors: TensorMap,
    /// The model configuration stored with them (`Null` if none).
    pub model_config: Value,
}

/// The state to resume from, and the damaged files passed over to find it.
#[derive(Debug)]
pub struct Resume {
    /// The newest valid checkpoint.
    pub checkpoint: LoraCheckpoint,
    /// Its file.
    pub path: PathBuf,
    /// Newer checkpoints that failed to load, newest first.
    pub skipped: Vec<StoreError>,
}

/// The outcome of [`CheckpointManager::verify`].
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Files whose bytes match their recorded checksum.
    pub ok: Vec<PathBuf>,
    /// One error per damaged or missing file, each naming it.
    pub damaged: Vec<StoreError>,
}

impl VerifyReport {
    /// True when nothing is damaged.
    pub fn is_ok(&self) -> bool {
        self.damaged.is_empty()
    }
}

/// One training run: creates, opens and writes `run_NNN/` under a checkpoints directory.
///
/// A writer holds an OS lock on the run's lock file for its whole life; the OS drops it when
/// the process dies, however it dies. Read-only handles take no lock and refuse to write.
pub struct CheckpointManager {
    layout: RunLayout,
    metadata: Metadata,
    writer_lock: Option<File>,
    hooks: Box<dyn SaveHooks>,
}

impl fmt::Debug for CheckpointManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointManager")
            .field("run_dir", &self.layout.root())
            .field("writer", &self.writer_lock.is_some())
            .finish_non_exhaustive()
    }
}

/// Local time in the seed's format, `2025-01-15T10:30:00`.
pub(crate) fn now() -> String {
    chrono::Local::now().format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Reads and checks a run's metadata.json.
pub fn read_metadata(layout: &RunLayout) -> Result<Metadata> {
    let path = layout.metadata();
    let bytes = fs::read(&path).ctx("read", &path)?;
    let metadata: Metadata = serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
        action: "parse",
        path: path.clone(),
        source,
    })?;
    if metadata.run_number != layout.run_number() {
        return Err(StoreError::BadMetadata {
            path,
            reason: format!(
                "run_number is {}, but the directory is run {}",
                metadata.run_number,
                layout.run_number()
            ),
        });
    }
    Ok(metadata)
}

/// The highest canonical run number under `base_dir`, if any.
fn max_run_number(base_dir: &Path) -> Result<Option<u32>> {
    let entries = fs::read_dir(base_dir).ctx("list", base_dir)?;
    let mut max = None;
    for entry in entries {
        let entry = entry.ctx("list", base_dir)?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_run_dir_name) {
            max = max.max(Some(n));
        }
    }
    Ok(max)
}

/// Takes the run's writer lock, retrying briefly because a lister may hold it shared for an instant.
fn acquire_writer_lock(layout: &RunLayout) -> Result<File> {
    let path = layout.lock();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx("open lock file", &path)?;
    for attempt in 0..LOCK_RETRIES {
        match file.try_lock() {
            Ok(()) => {
                // The pid is only for people reading the file; the lock itself is the truth.
                file.set_len(0)
                    .and_then(|_| writeln!(file, "{}", std::process::id()))
                    .ctx("write lock file", &path)?;
                return Ok(file);
            }
            Err(TryLockError::WouldBlock) if attempt + 1 < LOCK_RETRIES => {
                std::thread::sleep(LOCK_RETRY_PAUSE)
            }
            Err(TryLockError::WouldBlock) => break,
            Err(TryLockError::Error(e)) => return Err(StoreError::io("lock", path, e)),
        }
    }
    Err(StoreError::Locked {
        run_dir: layout.root(),
        lock: path,
    })
}

/// True when some process holds the run's writer lock right now.
pub fn writer_active(layout: &RunLayout) -> bool {
    let Ok(file) = File::open(layout.lock()) else {
        return false;
    };
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
}

fn digest_of(checksum: &Option<String>, size: Option<u64>) -> Option<FileDigest> {
    Some(FileDigest {
        checksum: checksum.clone()?,
        size: size?,
    })
}

fn record_digest(record: &CheckpointRecord) -> Option<FileDigest> {
    digest_of(&record.checksum, record.size)
}

/// Checks a file on disk against its recorded digest (existence only when none is recorded).
fn check_file(path: &Path, expected: Option<&FileDigest>) -> Result<()> {
    match fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                reason: "file is missing".into(),
            });
        }
        Err(e) => return Err(StoreError::io("read", path, e)),
    }
    match expected {
        Some(expected) => expected.check(path, &digest_file(path)?),
        None => Ok(()),
    }
}

/// Name prefix of a run being assembled; holds the temp marker, so it is never a run.
const STAGING_PREFIX: &str = ".tmp-run-";
/// A staging directory older than this whose lock is free belongs to a dead process.
const STALE_STAGING: Duration = Duration::from_secs(60);

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// True when a rename failed because the target run directory already exists and is not empty.
fn number_taken(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AlreadyExists
            | io::ErrorKind::DirectoryNotEmpty
            | io::ErrorKind::NotADirectory
    )
}

/// Deletes staging directories left by processes killed while creating a run. Best effort: a
/// directory is removed only when old and unlocked, so a live creator is never disturbed.
fn remove_stale_staging(base_dir: &Path) {
    let Ok(entries) = fs::read_dir(base_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGING_PREFIX)
        {
            continue;
        }
        let path = entry.path();
        let age = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok());
        if age.is_none_or(|age| age < STALE_STAGING) {
            continue;
        }
        let unlocked = match File::open(path.join(LOCK_FILE)) {
            Ok(lock) => lock.try_lock().is_ok(),
            Err(_) => true,
        };
        if unlocked && fs::remove_dir_all(&path).is_ok() {
            tracing::info!(dir = %path.display(), "removed an interrupted run creation");
        }
    }
}

/// Only the part of metadata.json that base-model sharing looks at.
#[derive(Deserialize)]
struct BaseOnly {
    #[serde(default)]
    base_model: Option<FileRecord>,
}

impl CheckpointManager {
    /// Creates the next run (`run_NNN`, one past the highest) under `base_dir`, as its writer.
    ///
    /// The run is assembled in a staging directory and renamed to `run_NNN` complete, with its
    /// metadata, so no one ever sees a half-created run. The rename fails when the number is
    /// taken, so processes creating runs at the same time always get distinct numbers.
    pub fn create(base_dir: impl AsRef<Path>, experiment_name: &str) -> Result<Self> {
        let base_dir = base_dir.as_ref();
        fs::create_dir_all(base_dir).ctx("create checkpoints directory", base_dir)?;
        let first = max_run_number(base_dir)?.map_or(1, |m| m.saturating_add(1));
        let created = Self::create_staged(base_dir, experiment_name, first, false)?;
        created.ok_or_else(|| {
            StoreError::io(
                "create run directory in",
                base_dir,
                io::Error::other("run numbers exhausted"),
            )
        })
    }

    /// Opens run `run_number` if it exists, otherwise creates it with that number; with `None`,
    /// creates the next run (the seed's `CheckpointManager(run_number=...)`).
    pub fn open_or_create(
        base_dir: impl AsRef<Path>,
        experiment_name: &str,
        run_number: Option<u32>,
    ) -> Result<Self> {
        let base_dir = base_dir.as_ref();
        let Some(n) = run_number else {
            return Self::create(base_dir, experiment_name);
        };
        if RunLayout::new(base_dir, n).root().is_dir() {
            return Self::open(base_dir, n);
        }
        fs::create_dir_all(base_dir).ctx("create checkpoints directory", base_dir)?;
        match Self::create_staged(base_dir, experiment_name, n, true)? {
            Some(created) => Ok(created),
            // Someone else created it in the meantime.
            None => Self::open(base_dir, n),
        }
    }

    /// Builds a run in a locked staging directory and renames it to `run_<n>`; when the number
    /// is taken, tries the next one, or with `exact` gives up and returns `None`.
    fn create_staged(
        base_dir: &Path,
        experiment_name: &str,
        first: u32,
        exact: bool,
    ) -> Result<Option<Self>> {
        remove_stale_staging(base_dir);
        let staging = base_dir.join(format!(
            "{STAGING_PREFIX}{}-{}",
            std::process::id(),
            now_nanos()
        ));
        fs::create_dir(&staging).ctx("create staging directory", &staging)?;
        let outcome = Self::fill_and_claim(base_dir, &staging, experiment_name, first, exact);
        if !matches!(outcome, Ok(Some(_))) {
            let _ = fs::remove_dir_all(&staging);
        }
        outcome
    }

    fn fill_and_claim(
        base_dir: &Path,
        staging: &Path,
        experiment_name: &str,
        first: u32,
        exact: bool,
    ) -> Result<Option<Self>> {
        let lock_path = staging.join(LOCK_FILE);
        let lock = File::create(&lock_path).ctx("create lock file", &lock_path)?;
        lock.try_lock()
            .map_err(|e| StoreError::io("lock", &lock_path, e.into()))?;
        for dir in [BASE_MODEL_DIR, LORA_DIR, LOGS_DIR] {
            let dir = staging.join(dir);
            fs::create_dir(&dir).ctx("create directory", &dir)?;
        }
        let mut n = first;
        loop {
            let mut metadata = Metadata::new(n, experiment_name, now());
            metadata.updated_at = Some(metadata.created_at.clone());
            let path = staging.join(METADATA_FILE);
            let bytes =
                serde_json::to_vec_pretty(&metadata).map_err(|source| StoreError::Json {
                    action: "serialize",
                    path: path.clone(),
                    source,
                })?;
            // Also fsyncs the staging directory, making its subdirectories durable.
            write_bytes_atomic(&path, &bytes)?;
            let layout = RunLayout::new(base_dir, n);
            match fs::rename(staging, layout.root()) {
                Ok(()) => {
                    sync_dir(base_dir)?;
                    return Ok(Some(Self {
                        layout,
                        metadata,
                        writer_lock: Some(lock),
                        hooks: Box::new(NoHooks),
                    }));
                }
                Err(e) if number_taken(&e) => {
                    if exact || n == u32::MAX {
                        return Ok(None);
                    }
                    n += 1;
                }
                Err(e) => {
                    return Err(StoreError::io(
                        "rename staging directory to",
                        layout.root(),
                        e,
                    ))
                }
            }
        }
    }

    /// Opens existing run `run_number` as its writer: takes the lock, removes crash leftovers
    /// and repairs the `best`/`last` links.
    pub fn open(base_dir: impl AsRef<Path>, run_number: u32) -> Result<Self> {
        let layout = RunLayout::new(base_dir.as_ref(), run_number);
        if !layout.root().is_dir() {
            return Err(StoreError::RunNotFound {
                run_number,
                dir: layout.root(),
            });
        }
        let lock = acquire_writer_lock(&layout)?;
        for dir in [layout.root(), layout.base_model_dir(), layout.lora_dir()] {
            for leftover in remove_temp_leftovers(&dir)? {
                tracing::info!(file = %leftover.display(), "removed an interrupted write");
            }
        }
        let metadata = read_metadata(&layout)?;
        let manager = Self {
            layout,
            metadata,
            writer_lock: Some(lock),
            hooks: Box::new(NoHooks),
        };
        manager.repair()?;
        Ok(manager)
    }

    /// Opens run `run_number` for reading only: no lock, no cleanup, no writes.
    pub fn open_read_only(base_dir: impl AsRef<Path>, run_number: u32) -> Result<Self> {
        let layout = RunLayout::new(base_dir.as_ref(), run_number);
        if !layout.root().is_dir() {
            return Err(StoreError::RunNotFound {
                run_number,
                dir: layout.root(),
            });
        }
        let metadata = read_metadata(&layout)?;
        Ok(Self {
            layout,
            metadata,
            writer_lock: None,
            hooks: Box::new(NoHooks),
        })
    }

    /// Installs hooks called around every LoRA save.
    pub fn with_hooks(mut self, hooks: impl SaveHooks + 'static) -> Self {
        self.hooks = Box::new(hooks);
        self
    }

    /// The run's number.
    pub fn run_number(&self) -> u32 {
        self.layout.run_number()
    }
    /// The run's paths.
    pub fn layout(&self) -> &RunLayout {
        &self.layout
    }
    /// `<checkpoints>/run_NNN`.
    pub fn run_dir(&self) -> PathBuf {
        self.layout.root()
    }
    /// Where TensorBoard event files go.
    pub fn logs_dir(&self) -> PathBuf {
        self.layout.logs_dir()
    }
    /// The experiment name.
    pub fn experiment_name(&self) -> &str {
        &self.metadata.experiment_name
    }
    /// The metadata as last written (or read).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    /// True for a handle holding the writer lock.
    pub fn is_writer(&self) -> bool {
        self.writer_lock.is_some()
    }

    /// Re-reads metadata.json (for read-only handles following a live run).
    pub fn reload(&mut self) -> Result<()> {
        self.metadata = read_metadata(&self.layout)?;
        Ok(())
    }

    fn require_writer(&self, action: &'static str) -> Result<()> {
        match self.writer_lock {
            Some(_) => Ok(()),
            None => Err(StoreError::ReadOnly {
                action,
                run_dir: self.layout.root(),
            }),
        }
    }

    /// Writes `next` as metadata.json atomically, then adopts it; on error nothing changes.
    fn commit(&mut self, mut next: Metadata) -> Result<()> {
        next.updated_at = Some(now());
        next.format_version = FORMAT_VERSION;
        let path = self.layout.metadata();
        let bytes = serde_json::to_vec_pretty(&next).map_err(|source| StoreError::Json {
            action: "serialize",
            path: path.clone(),
            source,
        })?;
        write_bytes_atomic(&path, &bytes)?;
        self.metadata = next;
        Ok(())
    }

    /// Brings files in line with metadata after a crash: deletes epoch files metadata does not
    /// list as live (written but never committed, or removed but not yet deleted) and points
    /// `best`/`last` at the epochs metadata names.
    fn repair(&self) -> Result<()> {
        let lora_dir = self.layout.lora_dir();
        let entries = match fs::read_dir(&lora_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("list", lora_dir, e)),
        };
        for entry in entries {
            let entry = entry.ctx("list", &lora_dir)?;
            let name = entry.file_name();
            let Some(stem) = name
                .to_str()
                .and_then(|n| n.strip_suffix(&format!(".{TENSOR_EXT}")))
            else {
                continue;
            };
            if let Ok(CheckpointName::Epoch(epoch)) = stem.parse() {
                if self.metadata.checkpoint(epoch).is_none_or(|r| r.removed) {
                    tracing::info!(file = %entry.path().display(), "removed a checkpoint metadata does not list");
                    remove_if_exists(&entry.path())?;
                }
            }
        }
        if let Some(last) = self.newest_live() {
            self.ensure_link(CheckpointName::Epoch(last.epoch), CheckpointName::Last)?;
        }
        if let Some(best) = &self.metadata.best_checkpoint {
            if self
                .metadata
                .checkpoint(best.epoch)
                .is_some_and(|r| !r.removed)
            {
                self.ensure_link(CheckpointName::Epoch(best.epoch), CheckpointName::Best)?;
            }
        }
        Ok(())
    }

    fn ensure_link(&self, from: CheckpointName, to: CheckpointName) -> Result<()> {
        let (src, dst) = (self.layout.checkpoint(from), self.layout.checkpoint(to));
        if src.exists() && !same_file(&src, &dst) {
            link_or_copy_atomic(&src, &dst)?;
        }
        Ok(())
    }

    fn newest_live(&self) -> Option<&CheckpointRecord> {
        self.metadata.live_checkpoints().max_by_key(|c| c.epoch)
    }

    /// Writes config.json (the training + LoRA configuration) and mirrors its `training` and
    /// `lora` sections into metadata's `training_config` / `lora_config` (the whole value goes
    /// to `training_config` when it has no `training` section).
    pub fn save_config(&mut self, config: &Value) -> Result<PathBuf> {
        self.require_writer("save config.json")?;
        let path = self.layout.config();
        let bytes = serde_json::to_vec_pretty(config).map_err(|source| StoreError::Json {
            action: "serialize",
            path: path.clone(),
            source,
        })?;
        write_bytes_atomic(&path, &bytes)?;
        let mut next = self.metadata.clone();
        next.training_config = config
            .get("training")
            .cloned()
            .unwrap_or_else(|| config.clone());
        if let Some(lora) = config.get("lora") {
            next.lora_config = lora.clone();
        }
        self.commit(next)?;
        Ok(path)
    }

    /// Reads config.json.
    pub fn load_config(&self) -> Result<Value> {
        let path = self.layout.config();
        let bytes = fs::read(&path).ctx("read", &path)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            action: "parse",
            path,
            source,
        })
    }

    /// Saves the frozen base model once. When another run in the same checkpoints directory
    /// already stores a byte-identical base model, it is hard-linked instead of written again.
    pub fn save_base_model(
        &mut self,
        tensors: &TensorMap,
        model_config: &Value,
    ) -> Result<SavedBase> {
        self.require_writer("save the base model")?;
        let path = self.layout.checkpoint(CheckpointName::Base);
        let mut header = HeaderMetadata::new();
        header.insert(meta_keys::FORMAT.into(), BASE_MODEL_FORMAT.into());
        header.insert(meta_keys::FORMAT_VERSION.into(), FORMAT_VERSION.to_string());
        header.insert(meta_keys::MODEL_CONFIG.into(), model_config.to_string());
        let named = || tensors.iter().map(|(k, v)| (k.as_str(), v));
        let expected = digest_tensor_file(&path, named(), &header)?;
        let (digest, linked_from) = match self.find_identical_base(&expected) {
            Some(source) => {
                link_or_copy_atomic(&source, &path)?;
                (expected, Some(source))
            }
            None => (write_tensor_file(&path, named(), &header)?, None),
        };
        let mut next = self.metadata.clone();
        next.base_model = Some(FileRecord {
            path: CheckpointName::Base.relative_path(self.run_number()),
            checksum: digest.checksum.clone(),
            size: digest.size,
            extra: Map::new(),
        });
        self.commit(next)?;
        Ok(SavedBase {
            path,
            digest,
            linked_from,
        })
    }

    /// Another run's base model file with exactly these bytes (checked by hashing it).
    fn find_identical_base(&self, expected: &FileDigest) -> Option<PathBuf> {
        let base_dir = self.layout.base_dir();
        let entries = fs::read_dir(base_dir).ok()?;
        for entry in entries.flatten() {
            let Some(n) = entry.file_name().to_str().and_then(parse_run_dir_name) else {
                continue;
            };
            if n == self.run_number() {
                continue;
            }
            let other = RunLayout::new(base_dir, n);
            // Other runs may be broken or half-written; they are simply not candidates then.
            let Ok(bytes) = fs::read(other.metadata()) else {
                continue;
            };
            let Ok(BaseOnly {
                base_model: Some(record),
            }) = serde_json::from_slice(&bytes)
            else {
                continue;
            };
            if record.checksum != expected.checksum || record.size != expected.size {
                continue;
            }
            let candidate = other.checkpoint(CheckpointName::Base);
            if digest_file(&candidate).is_ok_and(|d| &d == expected) {
                return Some(candidate);
            }
        }
        None
    }

    /// True once a base model is recorded.
    pub fn has_base_model(&self) -> bool {
        self.metadata.base_model.is_some()
    }

    /// Loads and verifies the base model.
    pub fn load_base_model(&self) -> Result<BaseModel> {
        let path = self.layout.checkpoint(CheckpointName::Base);
        let record = self.metadata.base_model.as_ref();
        if !path.exists() {
            return Err(StoreError::MissingCheckpoint {
                which: "base".into(),
                run_dir: self.layout.root(),
                reason: format!("{} does not exist", path.display()),
            });
        }
        let expected = record.map(|r| FileDigest {
            checksum: r.checksum.clone(),
            size: r.size,
        });
        let file = read_tensor_file(&path, expected.as_ref())?;
        let bad = |reason: String| StoreError::BadTensorFile {
            path: path.clone(),
            reason,
        };
        if let Some(format) = file.metadata.get(meta_keys::FORMAT) {
            if format != BASE_MODEL_FORMAT {
                return Err(bad(format!(
                    "format is {format:?}, expected {BASE_MODEL_FORMAT:?}"
                )));
            }
        }
        let model_config = match file.metadata.get(meta_keys::MODEL_CONFIG) {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| bad(format!("model_config is not JSON: {e}")))?,
            None => Value::Null,
        };
        Ok(BaseModel {
            tensors: file.tensors,
            model_config,
        })
    }

    /// Saves one epoch's checkpoint, records it, and updates `best` (by `monitor`, `mode`) and
    /// `last`. Saving an epoch again replaces it.
    pub fn save_lora_weights(
        &mut self,
        checkpoint: &LoraCheckpoint,
        monitor: &str,
        mode: Mode,
    ) -> Result<SavedCheckpoint> {
        self.require_writer("save a LoRA checkpoint")?;
        let epoch = checkpoint.epoch;
        let name = CheckpointName::Epoch(epoch);
        let path = self.layout.checkpoint(name);
        if epoch == 0 {
            return Err(StoreError::BadTensorFile {
                path,
                reason: "epochs are 1-based; got epoch 0".into(),
            });
        }
        self.hooks.before_save(&self.layout, checkpoint);
        let digest =
            write_tensor_file(&path, checkpoint.all_tensors(&path)?, &checkpoint.header())?;

        let run = self.run_number();
        let record = CheckpointRecord {
            epoch,
            path: name.relative_path(run),
            metrics: checkpoint.metrics.clone(),
            saved_at: now(),
            checksum: Some(digest.checksum),
            size: Some(digest.size),
            global_step: Some(checkpoint.global_step),
            removed: false,
            extra: Map::new(),
        };
        let mut next = self.metadata.clone();
        match next.checkpoints.iter_mut().find(|c| c.epoch == epoch) {
            Some(existing) => *existing = record.clone(),
            None => next.checkpoints.push(record.clone()),
        }
        next.checkpoints.sort_by_key(|c| c.epoch);
        upsert_epoch_metrics(&mut next.metric_history, epoch, &checkpoint.metrics);
        next.monitor = Some(monitor.to_string());
        next.mode = Some(mode);

        let value = checkpoint
            .metrics
            .get(monitor)
            .copied()
            .filter(|v| !v.is_nan());
        let is_best = match (&next.best_checkpoint, value) {
            // Re-saving the best epoch: `best` must follow the new file.
            (Some(best), _) if best.epoch == epoch => true,
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(best), Some(v)) => best
                .metrics
                .get(monitor)
                .is_none_or(|&b| mode.is_better(v, b)),
        };
        if is_best {
            next.best_checkpoint = Some(BestCheckpoint {
                epoch,
                path: CheckpointName::Best.relative_path(run),
                metrics: checkpoint.metrics.clone(),
                extra: Map::new(),
            });
        }
        let is_last = next.live_checkpoints().map(|c| c.epoch).max() == Some(epoch);
        self.commit(next)?;

        // The links follow metadata, which is durable now. Their renames are not fsync'd: an
        // OS crash can only leave a link on its previous (complete) file, and `repair` re-points
        // it on the next open. That saves 2 of a save's 6 fsyncs.
        if is_last {
            link_or_copy_unsynced(&path, &self.layout.checkpoint(CheckpointName::Last))?;
        }
        if is_best {
            link_or_copy_unsynced(&path, &self.layout.checkpoint(CheckpointName::Best))?;
        }
        let saved = SavedCheckpoint {
            epoch,
            path,
            record,
            is_best,
            is_last,
        };
        self.hooks.after_save(&self.layout, &saved);
        Ok(saved)
    }

    /// Records an epoch's validation metrics for charts (whether or not the epoch is saved).
    pub fn record_epoch_metrics(&mut self, epoch: u32, metrics: &Metrics) -> Result<()> {
        self.require_writer("record metrics")?;
        let mut next = self.metadata.clone();
        upsert_epoch_metrics(&mut next.metric_history, epoch, metrics);
        self.commit(next)
    }

    /// Records the base model's own validation metrics (before any LoRA training).
    pub fn set_base_metrics(&mut self, metrics: Metrics) -> Result<()> {
        self.require_writer("record base metrics")?;
        let mut next = self.metadata.clone();
        next.base_metrics = metrics;
        self.commit(next)
    }

    /// Records the run's lifecycle status.
    pub fn set_status(&mut self, status: RunStatus) -> Result<()> {
        self.require_writer("set the run status")?;
        let mut next = self.metadata.clone();
        next.status = status;
        self.commit(next)
    }

    /// Where `which` lives and the record whose checksum it must match.
    fn resolve(&self, which: Which) -> Result<(PathBuf, &CheckpointRecord)> {
        let missing = |reason: String| StoreError::MissingCheckpoint {
            which: which.to_string(),
            run_dir: self.layout.root(),
            reason,
        };
        match which {
            Which::Epoch(n) => match self.metadata.checkpoint(n) {
                Some(r) if !r.removed => Ok((self.layout.checkpoint(CheckpointName::Epoch(n)), r)),
                Some(_) => Err(missing(format!("epoch {n} was removed by retention"))),
                None => Err(missing(format!("epoch {n} was never saved"))),
            },
            Which::Last => match self.newest_live() {
                Some(r) => Ok((self.layout.checkpoint(CheckpointName::Epoch(r.epoch)), r)),
                None => Err(missing("no epoch saved yet".into())),
            },
            Which::Best => {
                let best = self
                    .metadata
                    .best_checkpoint
                    .as_ref()
                    .ok_or_else(|| missing("no best epoch recorded yet".into()))?;
                let record = self.metadata.checkpoint(best.epoch).ok_or_else(|| {
                    StoreError::BadMetadata {
                        path: self.layout.metadata(),
                        reason: format!(
                            "best_checkpoint names epoch {}, which is not in checkpoints",
                            best.epoch
                        ),
                    }
                })?;
                // The epoch file is authoritative while it exists; best.safetensors is a link to
                // it that may lag by one save after a crash (repaired on the next open).
                let name = if record.removed {
                    CheckpointName::Best
                } else {
                    CheckpointName::Epoch(best.epoch)
                };
                Ok((self.layout.checkpoint(name), record))
            }
        }
    }

    fn load_checkpoint_file(path: &Path, record: &CheckpointRecord) -> Result<LoraCheckpoint> {
        let file = read_tensor_file(path, record_digest(record).as_ref())?;
        let checkpoint = LoraCheckpoint::from_tensor_file(path, file)?;
        if checkpoint.epoch != record.epoch {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                reason: format!(
                    "holds epoch {}, metadata expects epoch {}",
                    checkpoint.epoch, record.epoch
                ),
            });
        }
        Ok(checkpoint)
    }

    /// Loads and verifies a LoRA checkpoint.
    pub fn load_lora_weights(&self, which: Which) -> Result<LoraCheckpoint> {
        let (path, record) = self.resolve(which)?;
        Self::load_checkpoint_file(&path, record)
    }

    /// The newest checkpoint that loads and verifies, passing over damaged ones with a warning
    /// naming each; `None` for a run with no saved epoch.
    pub fn load_for_resume(&self) -> Result<Option<Resume>> {
        let mut live: Vec<&CheckpointRecord> = self.metadata.live_checkpoints().collect();
        if live.is_empty() {
            return Ok(None);
        }
        live.sort_by_key(|c| std::cmp::Reverse(c.epoch));
        let mut skipped = Vec::new();
        for record in live {
            let path = self.layout.checkpoint(CheckpointName::Epoch(record.epoch));
            match Self::load_checkpoint_file(&path, record) {
                Ok(checkpoint) => {
                    return Ok(Some(Resume {
                        checkpoint,
                        path,
                        skipped,
                    }))
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), "skipping damaged checkpoint: {e}");
                    skipped.push(e);
                }
            }
        }
        Err(StoreError::NoValidCheckpoint {
            run_dir: self.layout.root(),
            damaged: skipped.iter().map(ToString::to_string).collect(),
        })
    }

    /// Deletes old epoch files by [`RetentionPolicy`]; their entries stay, marked `removed`.
    /// Returns the epochs deleted.
    pub fn cleanup_old_checkpoints(
        &mut self,
        keep_last_n: usize,
        keep_best: bool,
    ) -> Result<Vec<u32>> {
        self.require_writer("clean up checkpoints")?;
        let best = self.metadata.best_checkpoint.as_ref().map(|b| b.epoch);
        let doomed = RetentionPolicy::new(keep_last_n, keep_best)
            .apply_to_history(&self.metadata.checkpoints, best);
        if doomed.is_empty() {
            return Ok(doomed);
        }
        let mut next = self.metadata.clone();
        for record in next
            .checkpoints
            .iter_mut()
            .filter(|c| doomed.contains(&c.epoch))
        {
            record.removed = true;
        }
        self.commit(next)?;
        for &epoch in &doomed {
            remove_if_exists(&self.layout.checkpoint(CheckpointName::Epoch(epoch)))?;
        }
        sync_dir(&self.layout.lora_dir())?;
        Ok(doomed)
    }

    /// Saved epochs whose files still exist, oldest first.
    pub fn list_checkpoints(&self) -> Vec<&CheckpointRecord> {
        self.metadata.live_checkpoints().collect()
    }

    /// The best checkpoint's entry, once one exists.
    pub fn get_best_checkpoint_info(&self) -> Option<&BestCheckpoint> {
        self.metadata.best_checkpoint.as_ref()
    }

    /// Checks every live file of the run against its recorded checksum.
    pub fn verify(&self) -> VerifyReport {
        let mut report = VerifyReport::default();
        let mut note = |path: PathBuf, outcome: Result<()>| match outcome {
            Ok(()) => report.ok.push(path),
            Err(e) => report.damaged.push(e),
        };
        if let Some(base) = &self.metadata.base_model {
            let path = self.layout.checkpoint(CheckpointName::Base);
            let expected = FileDigest {
                checksum: base.checksum.clone(),
                size: base.size,
            };
            let outcome = check_file(&path, Some(&expected));
            note(path, outcome);
        }
        for record in self.metadata.live_checkpoints() {
            let path = self.layout.checkpoint(CheckpointName::Epoch(record.epoch));
            let outcome = check_file(&path, record_digest(record).as_ref());
            note(path, outcome);
        }
        let links = [
            (CheckpointName::Last, self.newest_live()),
            (
                CheckpointName::Best,
                self.metadata
                    .best_checkpoint
                    .as_ref()
                    .and_then(|b| self.metadata.checkpoint(b.epoch)),
            ),
        ];
        for (link, record) in links {
            let Some(record) = record else { continue };
            let path = self.layout.checkpoint(link);
            let epoch_file = self.layout.checkpoint(CheckpointName::Epoch(record.epoch));
            // A link sharing the epoch file's inode was verified with it.
            let outcome = if !record.removed && same_file(&path, &epoch_file) {
                Ok(())
            } else {
                check_file(&path, record_digest(record).as_ref())
            };
            note(path, outcome);
        }
        report
    }

    /// A human-readable summary of the run.
    pub fn get_run_summary(&self) -> String {
        use std::fmt::Write as _;
        let m = &self.metadata;
        let mut s = String::new();
        let metrics_text = |metrics: &Metrics| {
            metrics
                .iter()
                .map(|(k, v)| format!("{k}={v:.6}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(s, "Run {} ({})", m.run_number, self.layout.root().display());
        let _ = writeln!(s, "  Experiment:   {}", m.experiment_name);
        let _ = writeln!(s, "  Created:      {}", m.created_at);
        let _ = writeln!(
            s,
            "  Updated:      {}",
            m.updated_at.as_deref().unwrap_or("-")
        );
        let _ = writeln!(s, "  Status:       {:?}", m.status);
        if let Some(monitor) = &m.monitor {
            let _ = writeln!(
                s,
                "  Monitor:      {monitor} ({:?})",
                m.mode.unwrap_or_default()
            );
        }
        match &m.base_model {
            Some(base) => {
                let _ = writeln!(
                    s,
                    "  Base model:   {} ({} bytes, {})",
                    base.path, base.size, base.checksum
                );
            }
            None => {
                let _ = writeln!(s, "  Base model:   not saved");
            }
        }
        if !m.base_metrics.is_empty() {
            let _ = writeln!(s, "  Base metrics: {}", metrics_text(&m.base_metrics));
        }
        let live = m.live_checkpoints().count();
        let _ = writeln!(
            s,
            "  Checkpoints:  {} saved, {live} on disk",
            m.checkpoints.len()
        );
        match &m.best_checkpoint {
            Some(best) => {
                let _ = writeln!(
                    s,
                    "  Best:         epoch {} ({})",
                    best.epoch,
                    metrics_text(&best.metrics)
                );
            }
            None => {
                let _ = writeln!(s, "  Best:         -");
            }
        }
        if let Some(last) = self.newest_live() {
            let _ = writeln!(s, "  Last:         epoch {}", last.epoch);
        }
        if !m.checkpoints.is_empty() {
            let _ = writeln!(s, "  {:<7} {:<20} Metrics", "Epoch", "Saved at");
            for c in &m.checkpoints {
                let removed = if c.removed { "  (removed)" } else { "" };
                let _ = writeln!(
                    s,
                    "  {:<7} {:<20} {}{removed}",
                    c.epoch,
                    c.saved_at,
                    metrics_text(&c.metrics)
                );
            }
        }
        s
    }
}

fn upsert_epoch_metrics(history: &mut Vec<EpochMetrics>, epoch: u32, metrics: &Metrics) {
    match history.iter_mut().find(|h| h.epoch == epoch) {
        Some(existing) => existing.metrics = metrics.clone(),
        None => history.push(EpochMetrics {
            epoch,
            metrics: metrics.clone(),
        }),
    }
    history.sort_by_key(|h| h.epoch);
}
