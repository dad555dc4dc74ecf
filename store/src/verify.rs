//! `diffit verify`: every live file of a run checked against its recorded checksum.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use format::{CheckpointName, SeedRun};

use super::atomic::same_file;
use super::checksum::{digest_file, record_digest, FileDigest};
use super::error::{Result, StoreError};
use super::manager::CheckpointManager;

/// The outcome of [`CheckpointManager::verify`].
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Files whose bytes match their recorded checksum.
    pub ok: Vec<PathBuf>,
    /// One error per damaged or missing file, each naming it.
    pub damaged: Vec<StoreError>,
    /// Set for a run the seed system wrote: it records no checksums and its `.ckpt` files are
    /// PyTorch pickles, so nothing was checked (it is not damaged either).
    pub seed: Option<SeedRun>,
}

impl VerifyReport {
    /// True when every file was checked and nothing is damaged.
    pub fn is_ok(&self) -> bool {
        self.damaged.is_empty() && self.seed.is_none()
    }
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

impl CheckpointManager {
    /// Checks every live file of the run against its recorded checksum; a seed run's report
    /// says so and checks nothing.
    pub fn verify(&self) -> VerifyReport {
        let mut report = VerifyReport::default();
        if let Some(seed) = self.seed_run() {
            report.seed = Some(seed);
            return report;
        }
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
}
