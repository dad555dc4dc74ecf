//! Runs whose home is a bucket, and runs mirrored to one.
//!
//! - `--checkpoints s3://bucket/prefix`: the bucket is the run's home. The run number is
//!   claimed in the bucket (create-if-absent), the run store writes into a local staging
//!   directory (`--staging DIR`, default under `~/.cache/diffit-lora/buckets/`), and after every
//!   commit the bucket is brought up to it before training goes on; a push that fails after
//!   its retries stops training with an error naming the object (what is committed in the
//!   bucket stays valid). `--resume` brings the run from the bucket first, so any machine can
//!   continue it.
//! - `--mirror s3://…` with a local `--checkpoints DIR`: the run lives on the local disk and
//!   every commit is uploaded by a worker thread; training never waits on the network, a
//!   failed upload is retried and reported but never fails training, and the last state is
//!   flushed before exit. `--resume` on a machine whose checkpoints dir lacks the run brings it
//!   from the mirror.
//!
//! Either way the bucket holds the same tree as a disk, written by [`remote::RunReplica`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use format::metadata::Metrics;
use format::RunLayout;
use remote::{Bucket, Location, Mirror, RetryPolicy, RunReplica};
use store::CheckpointManager;

use super::error::TrainError;
use super::state::TrainState;
use super::trainer::{Callback, FitOutcome};

/// How long the end of a fit waits for the last upload.
const FLUSH_DEADLINE: Duration = Duration::from_secs(300);

/// Whether a bucket is a run's home or a mirror of its local directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `--checkpoints s3://…`: pushes are waited for; a failed one stops training.
    Home,
    /// `--mirror s3://…`: pushes run in the background; failures are reported only.
    Mirror,
}

/// Where a run is written: the local checkpoints directory the run store uses, and the
/// bucket (if any) that follows it.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The directory the run store writes (the checkpoints dir, or the staging dir of a bucket).
    pub local: PathBuf,
    /// The bucket and its role.
    pub remote: Option<(url::Url, Role)>,
}

fn remote_error(e: remote::RemoteError) -> TrainError {
    TrainError::Remote(Box::new(e))
}

/// Settles where a run goes from `--checkpoints`, `--mirror` and `--staging`.
pub fn place(
    checkpoints: &Path,
    mirror: Option<&str>,
    staging: Option<&Path>,
) -> Result<Placement, TrainError> {
    let text = checkpoints.to_string_lossy();
    let home =
        Location::parse(&text).map_err(|e| TrainError::Usage(format!("--checkpoints: {e}")))?;
    let mirror = match mirror {
        Some(text) => {
            match Location::parse(text).map_err(|e| TrainError::Usage(format!("--mirror: {e}")))? {
                Location::Objects(url) => Some(url),
                Location::Local(dir) => {
                    return Err(TrainError::Usage(format!(
                    "--mirror {}: give an object-store URL (s3://bucket/prefix, gs://…, az://…); \
                     to copy runs between directories use `diffit sync`",
                    dir.display()
                )))
                }
            }
        }
        None => None,
    };
    match (home, mirror) {
        (Location::Local(dir), None) => Ok(Placement {
            local: dir,
            remote: None,
        }),
        (Location::Local(dir), Some(url)) => Ok(Placement {
            local: dir,
            remote: Some((url, Role::Mirror)),
        }),
        (Location::Objects(url), None) => Ok(Placement {
            local: staging.map_or_else(
                || remote::location::cache_dir("buckets", &url),
                Path::to_path_buf,
            ),
            remote: Some((url, Role::Home)),
        }),
        (Location::Objects(_), Some(_)) => Err(TrainError::Usage(
            "--mirror needs a local --checkpoints DIR: a run whose checkpoints are in a bucket \
             is already there"
                .into(),
        )),
    }
}

fn open_bucket(url: &url::Url) -> Result<Bucket, TrainError> {
    Bucket::open(url).map_err(remote_error)
}

/// Removes a stale local copy of run `run` from a staging directory (the bucket decides what
/// the run is); a copy some process is writing is an error instead.
fn clear_staged(local: &Path, run: u32) -> Result<(), TrainError> {
    let layout = RunLayout::new(local, run);
    let root = layout.root();
    if !root.exists() {
        return Ok(());
    }
    if store::writer_active(&layout) {
        return Err(TrainError::Usage(format!(
            "run {run} in the staging directory {} is being written by another process",
            local.display()
        )));
    }
    std::fs::remove_dir_all(&root).map_err(|e| TrainError::io("remove", root, e))
}

/// Creates a new run where `placement` says: claimed in the bucket first when that is its home.
pub fn create_run(
    placement: &Placement,
    experiment: &str,
    requested: Option<u32>,
) -> Result<(CheckpointManager, Option<(RunReplica, Role)>), TrainError> {
    match &placement.remote {
        None => Ok((
            CheckpointManager::open_or_create(&placement.local, experiment, requested)?,
            None,
        )),
        Some((url, Role::Home)) => {
            let replica =
                RunReplica::claim(open_bucket(url)?, &placement.local, experiment, requested)
                    .map_err(remote_error)?;
            let run = replica.run();
            clear_staged(&placement.local, run)?;
            let manager =
                CheckpointManager::open_or_create(&placement.local, experiment, Some(run))?;
            Ok((manager, Some((replica, Role::Home))))
        }
        Some((url, Role::Mirror)) => {
            let manager =
                CheckpointManager::open_or_create(&placement.local, experiment, requested)?;
            let replica =
                RunReplica::follow(open_bucket(url)?, &placement.local, manager.run_number());
            Ok((manager, Some((replica, Role::Mirror))))
        }
    }
}

/// Opens run `run` to resume it: brought from the bucket first when that is its home, or
/// when the local directory lacks it and the mirror has it.
pub fn open_for_resume(
    placement: &Placement,
    run: u32,
    show: bool,
) -> Result<(CheckpointManager, Option<(RunReplica, Role)>), TrainError> {
    let replica = match &placement.remote {
        None => None,
        Some((url, role)) => {
            let bucket = open_bucket(url)?;
            let have_locally = RunLayout::new(&placement.local, run).root().is_dir();
            if *role == Role::Mirror && have_locally {
                Some((RunReplica::follow(bucket, &placement.local, run), *role))
            } else {
                let (replica, report) =
                    RunReplica::pull(bucket, &placement.local, run).map_err(remote_error)?;
                if show {
                    eprintln!(
                        "brought run {run:03} from {} into {} ({} file(s), {} bytes; {} unchanged)",
                        replica.bucket_name(),
                        placement.local.display(),
                        report.copied,
                        report.bytes,
                        report.unchanged
                    );
                }
                Some((replica, *role))
            }
        }
    };
    Ok((CheckpointManager::open(&placement.local, run)?, replica))
}

/// Keeps the bucket up to the run's commits: after the run store's callback has committed
/// (this one is registered after it), each event asks the [`Mirror`] for a push; in a
/// bucket-home run it waits for it, in a mirrored run it does not.
#[derive(Debug)]
pub struct ReplicaCallback {
    mirror: Option<Mirror>,
    role: Role,
    show: bool,
    /// Saves seen, and the longest a save waited on the mirror.
    saves: u32,
    longest_wait: Duration,
}

impl ReplicaCallback {
    /// Starts uploading `replica`'s run.
    pub fn start(replica: RunReplica, role: Role, show: bool) -> Result<Self, TrainError> {
        let mirror = Mirror::start(replica, RetryPolicy::default()).map_err(remote_error)?;
        Ok(Self {
            mirror: Some(mirror),
            role,
            show,
            saves: 0,
            longest_wait: Duration::ZERO,
        })
    }

    /// Asks for a push; in a bucket-home run, waits for it.
    fn push(&mut self) -> Result<(), TrainError> {
        let Some(mirror) = &self.mirror else {
            return Ok(());
        };
        let started = Instant::now();
        let ticket = mirror.request();
        let outcome = match self.role {
            Role::Home => mirror.wait(ticket),
            Role::Mirror => Ok(()),
        };
        self.longest_wait = self.longest_wait.max(started.elapsed());
        outcome.map_err(|why| upload_error(mirror.name().to_string(), why, mirror.superseded()))
    }
}

/// Why a bucket-home run stopped: another writer took the run over, or the bucket could not be
/// brought up to date.
fn upload_error(to: String, reason: String, superseded: bool) -> TrainError {
    if superseded {
        TrainError::Superseded { to, reason }
    } else {
        TrainError::Upload { to, reason }
    }
}

impl Callback for ReplicaCallback {
    fn on_fit_start(&mut self, _state: &mut TrainState) -> Result<(), TrainError> {
        self.push()
    }

    fn on_base_validation_end(
        &mut self,
        _state: &mut TrainState,
        _metrics: &Metrics,
    ) -> Result<(), TrainError> {
        self.push()
    }

    fn on_epoch_end(
        &mut self,
        _state: &mut TrainState,
        _metrics: &Metrics,
    ) -> Result<(), TrainError> {
        self.saves += 1;
        self.push()
    }

    fn on_fit_end(
        &mut self,
        _state: &mut TrainState,
        _outcome: FitOutcome,
    ) -> Result<(), TrainError> {
        let Some(mirror) = self.mirror.take() else {
            return Ok(());
        };
        let name = mirror.name().to_string();
        let report = mirror.finish(FLUSH_DEADLINE);
        if self.show {
            eprintln!(
                "{name}: {} upload(s), {} file(s), {} bytes; {} failed attempt(s); the longest a save waited: {:.1} ms",
                report.pushes,
                report.files,
                report.bytes,
                report.failed_attempts,
                self.longest_wait.as_secs_f64() * 1e3
            );
        }
        match (report.behind, self.role) {
            (None, _) => Ok(()),
            (Some(why), Role::Home) => Err(upload_error(name, why, report.superseded)),
            (Some(why), Role::Mirror) => {
                tracing::warn!(
                    "the mirror {name} is behind the local run: {why}; the local run is complete: \
                     `diffit sync` it when the bucket is reachable"
                );
                Ok(())
            }
        }
    }
}
