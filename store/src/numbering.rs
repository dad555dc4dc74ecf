//! Run numbers: a new run is assembled in a locked staging directory and renamed to `run_NNN`
//! complete; the rename fails when the number is taken, so concurrent creators always get
//! distinct numbers and nobody ever sees a half-created run.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::Duration;

use format::layout::{
    parse_run_dir_name, BASE_MODEL_DIR, LOCK_FILE, LOGS_DIR, LORA_DIR, METADATA_FILE,
};
use format::{Metadata, RunLayout};

use super::atomic::{sync_dir, write_bytes_atomic};
use super::error::{IoContext, Result, StoreError};
use super::hooks::NoHooks;
use super::manager::{now, CheckpointManager};

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
}
