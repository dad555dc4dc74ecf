//! A run kept in a bucket while it trains. The trainer writes through the local run store (its
//! crash-safe files, locks and checksums) into a local directory, and a [`RunReplica`] brings
//! the bucket's copy of the run up to each commit: the changed files first, whole, then
//! `metadata.json`, conditional on the version this replica committed last. So the bucket only
//! ever names complete objects, and a second writer of the same run (another machine that
//! resumed it) makes the later of the two fail before it writes anything, instead of both
//! interleaving their epochs.
//!
//! - [`RunReplica::claim`] takes a new run number in the bucket with create-if-absent on its
//!   `metadata.json`, so trainers on different machines get distinct numbers.
//! - [`RunReplica::pull`] brings a run from the bucket into the local directory (to resume on a
//!   machine that lacks it) and deletes the leftovers of an interrupted upload.
//! - [`RunReplica::follow`] continues a local run in the bucket (checked on the first push).
//! - [`Mirror`] pushes from a worker thread, so training never waits on the network.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use format::layout::{parse_run_dir_name, run_dir_name, BASE_MODEL_DIR, LORA_DIR, METADATA_FILE};
use format::Metadata;

use super::bucket::{Bucket, ObjectVersion};
use super::index;
use super::sync::{run_files, sync_run, Guard, OwnCommits, Side};
use super::{RemoteError, Result, SyncReport};

/// How many numbers past the highest listed one a claim tries before giving up (other
/// trainers claiming at the same moment each take one).
const CLAIM_TRIES: u32 = 4096;

/// One run in a bucket, mirrored from a local checkpoints directory.
#[derive(Debug)]
pub struct RunReplica {
    local: Side,
    /// Always [`Side::Remote`].
    bucket: Side,
    /// `s3://bucket/prefix`.
    name: String,
    run: u32,
    /// The version of the bucket's `metadata.json` this replica wrote (or found) last, and
    /// the bytes it last tried to commit.
    own: OwnCommits,
    /// The bucket's copy has not been checked yet ([`RunReplica::follow`]).
    unchecked: bool,
}

fn metadata_rel(run: u32) -> String {
    format!("{}/{METADATA_FILE}", run_dir_name(run))
}

impl RunReplica {
    fn new(bucket: Bucket, local: &Path, run: u32, committed: Option<ObjectVersion>) -> Self {
        Self {
            local: Side::Local(local.to_path_buf()),
            name: bucket.name().to_string(),
            bucket: Side::Remote(bucket),
            run,
            own: OwnCommits {
                committed,
                attempted: None,
            },
            unchecked: false,
        }
    }

    /// Claims run `requested`, or the next free number, in `bucket`: its `metadata.json` is
    /// created only if absent (a fresh run's metadata, status `created`), so of several
    /// trainers claiming at once each gets its own number. An explicitly requested number
    /// that is taken is an error naming it.
    pub fn claim(
        bucket: Bucket,
        local: &Path,
        experiment: &str,
        requested: Option<u32>,
    ) -> Result<RunReplica> {
        let mut run = match requested {
            Some(n) => n,
            None => {
                let listed = bucket.list_dirs()?;
                listed
                    .iter()
                    .filter_map(|name| parse_run_dir_name(name))
                    .max()
                    .map_or(1, |n| n.saturating_add(1))
            }
        };
        for _ in 0..CLAIM_TRIES {
            let mut metadata = Metadata::new(run, experiment, store::now());
            metadata.updated_at = Some(metadata.created_at.clone());
            let bytes =
                serde_json::to_vec_pretty(&metadata).map_err(|e| RemoteError::BadMetadata {
                    object: bucket.object_name(&metadata_rel(run)),
                    reason: e.to_string(),
                })?;
            match bucket.put_if(&metadata_rel(run), Bytes::from(bytes), None) {
                Ok(version) => {
                    // Marked only once the number is ours (marking a number another trainer
                    // took would replace their mark): a number reused after its run was deleted
                    // by hand may still have that run's settled entry until here.
                    index::mark_writing(&bucket, &[run])?;
                    return Ok(Self::new(bucket, local, run, Some(version)));
                }
                Err(RemoteError::Conflict { object }) => {
                    if requested.is_some() {
                        return Err(RemoteError::RunExists { object });
                    }
                    run = run.checked_add(1).ok_or_else(|| RemoteError::BadLocation {
                        location: bucket.name().to_string(),
                        reason: "run numbers exhausted".into(),
                    })?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(RemoteError::BadLocation {
            location: bucket.name().to_string(),
            reason: format!("no free run number after {CLAIM_TRIES} tries"),
        })
    }

    /// Brings run `run` from `bucket` into the checkpoints directory `local` (only what
    /// differs, each file checked against its recorded checksum, `metadata.json` last), then
    /// deletes the bucket's objects of that run that its metadata does not name: the leftovers
    /// of an upload that was interrupted. The replica then continues from the version read.
    pub fn pull(bucket: Bucket, local: &Path, run: u32) -> Result<(RunReplica, SyncReport)> {
        if bucket.version(&metadata_rel(run))?.is_none() {
            return Err(RemoteError::NoSuchRun {
                location: bucket.name().to_string(),
                run,
            });
        }
        let mut replica = Self::new(bucket, local, run, None);
        let mut report = SyncReport::default();
        let synced = sync_run(
            &replica.bucket,
            &replica.local,
            run,
            &mut report,
            Guard::AsRead,
        )?;
        replica.own.committed = synced.source;
        if let Some(metadata) = &synced.metadata {
            replica.remove_leftovers(metadata)?;
        }
        Ok((replica, report))
    }

    /// Follows run `run`, which the local directory has, into `bucket`, without touching the
    /// network yet: the first push checks the bucket's copy. A run the bucket lacks is created
    /// there by that push; one it has must be the same run (same experiment and creation
    /// time), or the push fails with [`RemoteError::OtherRun`] rather than merge two runs.
    pub fn follow(bucket: Bucket, local: &Path, run: u32) -> RunReplica {
        let mut replica = Self::new(bucket, local, run, None);
        replica.unchecked = true;
        replica
    }

    /// The check [`RunReplica::follow`] leaves to the first push.
    fn check_bucket_copy(&mut self) -> Result<()> {
        let (Side::Remote(bucket), Side::Local(local)) = (&self.bucket, &self.local) else {
            return Ok(());
        };
        let rel = metadata_rel(self.run);
        let Some((bytes, version)) = bucket.get(&rel)? else {
            return Ok(());
        };
        let object = bucket.object_name(&rel);
        let theirs: Metadata =
            serde_json::from_slice(&bytes).map_err(|e| RemoteError::BadMetadata {
                object: object.clone(),
                reason: e.to_string(),
            })?;
        let ours = store::read_metadata(&format::RunLayout::new(local, self.run))?;
        if theirs.created_at != ours.created_at || theirs.experiment_name != ours.experiment_name {
            return Err(RemoteError::OtherRun {
                object,
                local: local.join(run_dir_name(self.run)),
            });
        }
        self.own.committed = Some(version);
        self.remove_leftovers(&theirs)
    }

    /// Deletes the objects under the run's `lora_weights/` and `base_model/` that `metadata`
    /// does not name.
    fn remove_leftovers(&self, metadata: &Metadata) -> Result<()> {
        let Side::Remote(bucket) = &self.bucket else {
            return Ok(());
        };
        let named: Vec<String> = run_files(metadata).into_iter().map(|f| f.rel).collect();
        let run_dir = run_dir_name(self.run);
        for dir in [LORA_DIR, BASE_MODEL_DIR] {
            for (rel, _) in bucket.list(&format!("{run_dir}/{dir}"))? {
                if !named.contains(&rel) {
                    tracing::info!(
                        object = %bucket.object_name(&rel),
                        "removing the leftover of an interrupted upload"
                    );
                    bucket.delete(&rel)?;
                }
            }
        }
        Ok(())
    }

    /// The run's number.
    pub fn run(&self) -> u32 {
        self.run
    }

    /// `s3://bucket/prefix`.
    pub fn bucket_name(&self) -> &str {
        &self.name
    }

    /// Brings the bucket's copy up to the local run's last commit. Fails with
    /// [`RemoteError::Superseded`] (before writing anything) when another writer committed to
    /// the run in the bucket since this replica did.
    pub fn push(&mut self) -> Result<SyncReport> {
        if self.unchecked {
            self.check_bucket_copy()?;
            self.unchecked = false;
        }
        let mut report = SyncReport::default();
        let synced = sync_run(
            &self.local,
            &self.bucket,
            self.run,
            &mut report,
            Guard::Ours(&mut self.own),
        )?;
        // The run index's rule 2, once the run stops being written.
        if let (Side::Remote(bucket), Some(meta)) = (&self.bucket, &synced.metadata) {
            if let Some(row) = index::ends_writing(meta.status)
                .then(|| index::row_of(meta))
                .flatten()
            {
                if let Err(e) = index::settle(bucket, &[(self.run, row)]) {
                    tracing::warn!("the run index of {} stays as it is: {e}", bucket.name());
                }
            }
        }
        Ok(report)
    }
}

/// How a [`Mirror`] retries a push that failed.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per push (the object store's client retries each request inside one).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            backoff: Duration::from_millis(500),
        }
    }
}

/// What a [`Mirror`] did, when it finished.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MirrorReport {
    /// Pushes that brought the bucket up to date.
    pub pushes: u32,
    /// Files uploaded, over all pushes.
    pub files: usize,
    /// Bytes uploaded, over all pushes.
    pub bytes: u64,
    /// Attempts that failed (and were retried, or given up).
    pub failed_attempts: u32,
    /// Why the bucket is behind the local run at the end, if it is.
    pub behind: Option<String>,
    /// Whether it is behind because another writer committed to the run there.
    pub superseded: bool,
}

#[derive(Debug, Default)]
struct MirrorState {
    /// Pushes asked for (each covers every commit before it).
    requested: u64,
    /// The newest request the worker has pushed for (or given up on).
    attempted: u64,
    /// The newest request the bucket is up to date with.
    done: u64,
    /// The newest request whose push gave up, with why.
    failed: Option<(u64, String)>,
    /// Another writer owns the run in the bucket now: nothing more is pushed.
    superseded: Option<String>,
    stop: bool,
    report: MirrorReport,
}

type Shared = Arc<(Mutex<MirrorState>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, MirrorState> {
    // A panic in the worker leaves the state as it was; it is still meaningful.
    shared
        .0
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A [`RunReplica`] pushed from a worker thread: [`Mirror::request`] never waits on the
/// network; requests made while a push runs are folded into the next one (each push brings
/// the bucket up to the local run's newest commit); a failed push is retried with backoff,
/// then reported, and the next request tries again.
#[derive(Debug)]
pub struct Mirror {
    shared: Shared,
    worker: Option<JoinHandle<()>>,
    name: String,
}

impl Mirror {
    /// Starts the worker for `replica`.
    pub fn start(replica: RunReplica, retry: RetryPolicy) -> Result<Mirror> {
        let name = format!("{}/{}", replica.bucket_name(), run_dir_name(replica.run()));
        let shared: Shared = Arc::new((Mutex::new(MirrorState::default()), Condvar::new()));
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("mirror".into())
                .spawn(move || work(replica, retry, &shared))
                .map_err(|e| RemoteError::Io {
                    action: "start the upload thread for",
                    path: name.clone().into(),
                    source: e,
                })?
        };
        Ok(Mirror {
            shared,
            worker: Some(worker),
            name,
        })
    }

    /// `s3://bucket/prefix/run_NNN`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks for the bucket to be brought up to the local run's current commit; returns at
    /// once with a ticket for [`Mirror::wait`].
    pub fn request(&self) -> u64 {
        let mut state = lock(&self.shared);
        state.requested += 1;
        let ticket = state.requested;
        drop(state);
        self.shared.1.notify_all();
        ticket
    }

    /// Waits until the push for `ticket` is done (`Ok`), or has given up (`Err` with why).
    pub fn wait(&self, ticket: u64) -> std::result::Result<(), String> {
        let mut state = lock(&self.shared);
        loop {
            if state.done >= ticket {
                return Ok(());
            }
            if let Some(why) = &state.superseded {
                return Err(why.clone());
            }
            if let Some((failed, why)) = &state.failed {
                if *failed >= ticket {
                    return Err(why.clone());
                }
            }
            state = self
                .shared
                .1
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Whether another writer committed to the run in the bucket, so that this mirror pushes
    /// nothing more (its [`Mirror::wait`] errors say so).
    pub fn superseded(&self) -> bool {
        lock(&self.shared).superseded.is_some()
    }

    /// Pushes what is left (waiting at most `deadline` for it), stops the worker and says
    /// what was done. A push still running at the deadline is abandoned with the thread: the
    /// bucket then holds the last complete commit, never a part of one.
    pub fn finish(mut self, deadline: Duration) -> MirrorReport {
        let ticket = self.request();
        let until = Instant::now() + deadline;
        let mut state = lock(&self.shared);
        let outcome = loop {
            if state.done >= ticket {
                break None;
            }
            if let Some(why) = &state.superseded {
                break Some(why.clone());
            }
            if let Some((failed, why)) = &state.failed {
                if *failed >= ticket {
                    break Some(why.clone());
                }
            }
            let now = Instant::now();
            if now >= until {
                break Some(format!(
                    "the last upload did not finish within {} s",
                    deadline.as_secs()
                ));
            }
            state = self
                .shared
                .1
                .wait_timeout(state, until - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        };
        state.stop = true;
        let mut report = state.report.clone();
        report.behind = outcome;
        report.superseded = state.superseded.is_some();
        drop(state);
        self.shared.1.notify_all();
        if report.behind.is_none() {
            if let Some(worker) = self.worker.take() {
                let _ = worker.join();
            }
        }
        report
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        lock(&self.shared).stop = true;
        self.shared.1.notify_all();
    }
}

/// The worker: one push per round of requests, with retries.
fn work(mut replica: RunReplica, retry: RetryPolicy, shared: &Shared) {
    loop {
        let target = {
            let mut state = lock(shared);
            while !state.stop && state.requested == state.attempted {
                state = shared
                    .1
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            // Stopped with nothing new to push.
            if state.requested == state.attempted || state.superseded.is_some() {
                return;
            }
            state.attempted = state.requested;
            state.requested
        };
        let mut backoff = retry.backoff;
        let mut last_error = String::new();
        let mut pushed = false;
        for attempt in 1..=retry.attempts.max(1) {
            match replica.push() {
                Ok(report) => {
                    let mut state = lock(shared);
                    state.done = state.done.max(target);
                    state.report.pushes += 1;
                    state.report.files += report.copied;
                    state.report.bytes += report.bytes;
                    pushed = true;
                    break;
                }
                Err(e @ (RemoteError::Superseded { .. } | RemoteError::OtherRun { .. })) => {
                    let why = e.to_string();
                    tracing::warn!("{why}");
                    let mut state = lock(shared);
                    state.report.failed_attempts += 1;
                    state.superseded = Some(why);
                    drop(state);
                    shared.1.notify_all();
                    return;
                }
                Err(e) => {
                    last_error = e.to_string();
                    lock(shared).report.failed_attempts += 1;
                    if attempt < retry.attempts && !lock(shared).stop {
                        tracing::debug!("upload attempt {attempt} failed: {last_error}");
                        std::thread::sleep(backoff);
                        backoff = backoff.saturating_mul(2);
                    }
                }
            }
        }
        if !pushed {
            tracing::warn!(
                "could not upload run {} to {} after {} attempts: {last_error}",
                replica.run(),
                replica.bucket_name(),
                retry.attempts
            );
            lock(shared).failed = Some((target, last_error));
        }
        shared.1.notify_all();
    }
}
