//! Runs in object storage. A checkpoints location is a local directory or an object-store URL
//! (`s3://bucket/prefix`, `gs://…`, `az://…`, `file:///…`, `memory:///` for tests); under it a
//! bucket holds the same tree as a disk (`run_001/metadata.json`, `run_001/lora_weights/…`).
//!
//! - [`Location`]: parsing and displaying locations (never with credentials).
//! - [`Bucket`]: a blocking handle on an object store prefix (its own small tokio runtime).
//! - [`sync`]: copying runs between two locations, only what differs, verified by checksum,
//!   `metadata.json` last and conditional on the version it replaces.
//! - [`RunReplica`] / [`Mirror`]: a run kept in a bucket while it trains (claimed run numbers,
//!   pushes conditional on this writer's last commit, pulls for resuming elsewhere).
//! - [`index`]: the prefix's run index, which the commit protocol keeps equal to the committed
//!   metadata of every run it calls settled, so a listing reads two objects, not one per run.
//!
//! S3 settings come from the standard AWS environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` for
//! S3-compatible servers, `AWS_ALLOW_HTTP=true` for plain-HTTP ones) and, for what the
//! environment leaves unset, the `AWS_PROFILE` (or `default`) section of `~/.aws/credentials`
//! and `~/.aws/config`.

pub mod bucket;
pub mod follow;
pub mod index;
pub mod listing;
pub mod location;
pub mod profile;
pub mod replica;
pub mod sync;

pub use bucket::{Bucket, ObjectVersion};
pub use follow::{FollowRound, Follower};
pub use listing::list_runs;
pub use location::Location;
pub use replica::{Mirror, MirrorReport, RetryPolicy, RunReplica};
pub use sync::{sync, SyncReport};

use std::path::PathBuf;

/// A failure of object storage or of a sync; each names the location or object involved, never
/// credentials.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The location is not one we can use.
    #[error("invalid checkpoints location {location:?}: {reason}")]
    BadLocation {
        /// The location as given (credentials removed).
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// An object-store call failed (after the store's own retries).
    #[error("{action} {object}: {message}")]
    Store {
        /// What was being done.
        action: &'static str,
        /// The object (`s3://bucket/prefix/run_001/metadata.json`).
        object: String,
        /// What the store reported.
        message: String,
    },
    /// Someone else changed a run's `metadata.json` while we were writing it.
    #[error(
        "{object} was changed by another writer during the sync; nothing of theirs was \
         overwritten: run the sync again"
    )]
    Conflict {
        /// The metadata object.
        object: String,
    },
    /// Another writer committed to a run in the bucket since this one last did.
    #[error(
        "{object} was changed by another writer since this process last committed it: the run \
         has two writers; theirs is kept and this process writes nothing more to it"
    )]
    Superseded {
        /// The metadata object.
        object: String,
    },
    /// An explicitly requested run number is taken in the bucket.
    #[error("{object} exists: that run number is taken (pass --resume to continue that run)")]
    RunExists {
        /// The metadata object.
        object: String,
    },
    /// The bucket has no such run.
    #[error("{location} has no run {run}")]
    NoSuchRun {
        /// The bucket location.
        location: String,
        /// The run asked for.
        run: u32,
    },
    /// The bucket's copy of a run is another run than the local one of the same number.
    #[error(
        "{object} belongs to another run than {} (another experiment or creation time): \
         mirror this run elsewhere, or resume from the bucket into an empty checkpoints dir",
        local.display()
    )]
    OtherRun {
        /// The bucket's metadata object.
        object: String,
        /// The local run directory.
        local: PathBuf,
    },
    /// A copied file's bytes do not match the checksum its run records.
    #[error("{object}: {reason}; not copied")]
    Damaged {
        /// The file or object read.
        object: String,
        /// What did not match.
        reason: String,
    },
    /// The local run store failed.
    #[error(transparent)]
    Local(#[from] store::StoreError),
    /// A local file operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A run's `metadata.json` does not parse.
    #[error("invalid metadata {object}: {reason}")]
    BadMetadata {
        /// The metadata file or object.
        object: String,
        /// What serde reported.
        reason: String,
    },
    /// The local run is being written (a trainer holds its lock).
    #[error("run {} is being written by another process; sync it when that has finished", .0.display())]
    Busy(PathBuf),
}

/// Result of remote operations.
pub type Result<T, E = RemoteError> = std::result::Result<T, E>;
