//! [`Follower`]: a local directory kept a copy of a bucket's runs, for serving them. Each round
//! lists the bucket once (one listing gives every `metadata.json`'s ETag) and brings down the
//! runs whose metadata changed since the last round, through the same verified sync as
//! `diffit sync` (changed files checked against their checksums, `metadata.json` last, so the
//! copy only ever names complete files). The bucket is the truth: the copy is rewritten to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use format::layout::{parse_run_dir_name, METADATA_FILE};

use super::bucket::Bucket;
use super::sync::{sync_run, Guard, Side};
use super::{Result, SyncReport};

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FollowRound {
    /// Runs brought up to date this round.
    pub updated: Vec<u32>,
    /// Runs that could not be brought down, with why (tried again next round).
    pub failed: Vec<(u32, String)>,
    /// Files copied.
    pub files: usize,
}

/// Follows a bucket's runs into a local directory.
#[derive(Debug)]
pub struct Follower {
    bucket: Side,
    local: Side,
    dir: PathBuf,
    /// The ETag of each run's `metadata.json` the local copy was last brought to.
    seen: HashMap<u32, Option<String>>,
}

impl Follower {
    /// A follower of `bucket` into `dir` (created on the first round).
    pub fn new(bucket: Bucket, dir: &Path) -> Follower {
        Follower {
            bucket: Side::Remote(bucket),
            local: Side::Local(dir.to_path_buf()),
            dir: dir.to_path_buf(),
            seen: HashMap::new(),
        }
    }

    /// The local directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One round: brings down every run whose metadata changed in the bucket. Fails only when
    /// the bucket cannot be listed; a run that fails is reported and retried next round.
    pub fn round(&mut self) -> Result<FollowRound> {
        let Side::Remote(bucket) = &self.bucket else {
            return Ok(FollowRound::default());
        };
        let mut versions: Vec<(u32, Option<String>)> = bucket
            .list_versions("")?
            .into_iter()
            .filter_map(|(rel, _, e_tag)| {
                let (dir, file) = rel.split_once('/')?;
                (file == METADATA_FILE)
                    .then(|| parse_run_dir_name(dir))
                    .flatten()
                    .map(|n| (n, e_tag))
            })
            .collect();
        versions.sort_by_key(|(n, _)| *n);
        let mut round = FollowRound::default();
        for (n, e_tag) in versions {
            if e_tag.is_some() && self.seen.get(&n) == Some(&e_tag) {
                continue;
            }
            let mut report = SyncReport::default();
            match sync_run(&self.bucket, &self.local, n, &mut report, Guard::AsRead) {
                Ok(_) => {
                    self.seen.insert(n, e_tag);
                    round.updated.push(n);
                    round.files += report.copied;
                }
                Err(e) => {
                    tracing::warn!("cannot bring run {n} down from {}: {e}", bucket.name());
                    round.failed.push((n, e.to_string()));
                }
            }
        }
        Ok(round)
    }
}
