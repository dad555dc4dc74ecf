//! Syncing runs between two locations (a checkpoints dir and a bucket, either way, or two of
//! a kind): only what differs is copied, every copied tensor file is checked against the
//! checksum its run records before it is written, and the run's `metadata.json` is written
//! last, so the destination's metadata only ever names complete files. In a bucket that last
//! write is conditional on the version of `metadata.json` the sync read first: a writer that
//! changed it meanwhile makes the sync fail for that run, and nothing of theirs is overwritten.
//! Files the source no longer has (epochs removed by retention) are left where they are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use format::layout::{parse_run_dir_name, run_dir_name, LOGS_DIR, METADATA_FILE};
use format::RunLayout;
use format::{CheckpointName, Metadata};
use store::atomic::{link_or_copy_atomic, write_bytes_atomic};
use store::checksum::{digest_bytes, digest_file, FileDigest};
use store::writer_active;

use super::bucket::{mismatch_reason, Bucket, ObjectVersion};
use super::index;
use super::location::Location;
use super::{RemoteError, Result};

/// What a sync did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SyncReport {
    /// Runs brought up to date.
    pub runs: Vec<u32>,
    /// Files copied.
    pub copied: usize,
    /// Files already identical at the destination.
    pub unchanged: usize,
    /// Bytes copied.
    pub bytes: u64,
    /// Runs that could not be synced, with why (the others were).
    pub failed: Vec<(u32, String)>,
}

/// Creates the directory `path` goes in.
fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) => std::fs::create_dir_all(parent).map_err(|source| RemoteError::Io {
            action: "create directory",
            path: parent.to_path_buf(),
            source,
        }),
        None => Ok(()),
    }
}

/// One end of a sync.
#[derive(Debug)]
pub(crate) enum Side {
    Local(PathBuf),
    Remote(Bucket),
}

impl Side {
    pub(crate) fn open(location: &Location) -> Result<Side> {
        Ok(match location {
            Location::Local(dir) => Side::Local(dir.clone()),
            Location::Objects(url) => Side::Remote(Bucket::open(url)?),
        })
    }

    fn name(&self, rel: &str) -> String {
        match self {
            Side::Local(dir) => dir.join(rel).display().to_string(),
            Side::Remote(bucket) => bucket.object_name(rel),
        }
    }

    fn path(dir: &Path, rel: &str) -> PathBuf {
        rel.split('/')
            .fold(dir.to_path_buf(), |p, part| p.join(part))
    }

    fn run_numbers(&self) -> Result<Vec<u32>> {
        let names = match self {
            Side::Local(dir) => match std::fs::read_dir(dir) {
                Ok(entries) => entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(source) => {
                    return Err(RemoteError::Io {
                        action: "list",
                        path: dir.clone(),
                        source,
                    })
                }
            },
            Side::Remote(bucket) => bucket.list_dirs()?,
        };
        let mut numbers: Vec<u32> = names.iter().filter_map(|n| parse_run_dir_name(n)).collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    fn read(&self, rel: &str) -> Result<Option<(Bytes, Option<ObjectVersion>)>> {
        match self {
            Side::Local(dir) => {
                let path = Self::path(dir, rel);
                match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some((Bytes::from(bytes), None))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(RemoteError::Io {
                        action: "read",
                        path,
                        source,
                    }),
                }
            }
            Side::Remote(bucket) => Ok(bucket.get(rel)?.map(|(b, v)| (b, Some(v)))),
        }
    }

    /// Whether the destination already holds `rel` with exactly `checksum`/`size`: a local
    /// file is hashed; an object counts when its run's metadata records that checksum for it
    /// and its size matches.
    fn holds(&self, rel: &str, checksum: &str, size: u64, recorded: Option<&str>) -> Result<bool> {
        match self {
            Side::Local(dir) => Ok(digest_file(&Self::path(dir, rel))
                .is_ok_and(|d| d.checksum == checksum && d.size == size)),
            Side::Remote(bucket) => {
                Ok(recorded == Some(checksum) && bucket.size(rel)? == Some(size))
            }
        }
    }

    fn size(&self, rel: &str) -> Result<Option<u64>> {
        match self {
            Side::Local(dir) => Ok(std::fs::metadata(Self::path(dir, rel))
                .ok()
                .map(|m| m.len())),
            Side::Remote(bucket) => bucket.size(rel),
        }
    }

    /// Files under `rel` (recursively), relative to the checkpoints dir, with sizes.
    fn list(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        match self {
            Side::Local(dir) => {
                let mut out = Vec::new();
                let root = Self::path(dir, rel);
                let mut stack = vec![(root, rel.to_string())];
                while let Some((path, rel)) = stack.pop() {
                    let Ok(entries) = std::fs::read_dir(&path) else {
                        continue;
                    };
                    for entry in entries.flatten() {
                        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                            continue;
                        };
                        let child = format!("{rel}/{name}");
                        match entry.metadata() {
                            Ok(m) if m.is_dir() => stack.push((entry.path(), child)),
                            Ok(m) if m.is_file() => out.push((child, m.len())),
                            _ => {}
                        }
                    }
                }
                Ok(out)
            }
            Side::Remote(bucket) => bucket.list(rel),
        }
    }

    fn write(&self, rel: &str, bytes: Bytes) -> Result<()> {
        match self {
            Side::Local(dir) => {
                let path = Self::path(dir, rel);
                create_parent(&path)?;
                write_bytes_atomic(&path, &bytes)?;
                Ok(())
            }
            Side::Remote(bucket) => bucket.put(rel, bytes),
        }
    }

    /// Copies the tensor file `rel` from this side to `dst` without holding it in memory, when
    /// one side is a disk and the other a bucket: the bytes are hashed as they pass and `dst`
    /// gets the file only if they match `checksum`/`size`. `None` for the other pairs, which
    /// the caller copies through memory.
    fn stream_to(&self, dst: &Side, rel: &str, checksum: &str, size: u64) -> Result<Option<u64>> {
        let expected = FileDigest {
            checksum: checksum.to_string(),
            size,
        };
        match (self, dst) {
            (Side::Remote(bucket), Side::Local(dir)) => {
                let path = Self::path(dir, rel);
                create_parent(&path)?;
                bucket.download(rel, &path, &expected).map(Some)
            }
            (Side::Local(dir), Side::Remote(bucket)) => {
                let path = Self::path(dir, rel);
                if !path.exists() {
                    return Err(RemoteError::Damaged {
                        object: path.display().to_string(),
                        reason: "metadata names it but it is missing".into(),
                    });
                }
                bucket.upload_file(rel, &path, &expected).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// `best`/`last` name an epoch file: a hard link on disk, a server-side copy in a bucket.
    fn alias(&self, target_rel: &str, alias_rel: &str) -> Result<()> {
        match self {
            Side::Local(dir) => {
                link_or_copy_atomic(&Self::path(dir, target_rel), &Self::path(dir, alias_rel))?;
                Ok(())
            }
            Side::Remote(bucket) => bucket.copy(target_rel, alias_rel),
        }
    }

    /// Writes `metadata.json` last; in a bucket only over the version `expected` (or only
    /// when still absent), returning the version written.
    fn commit(
        &self,
        rel: &str,
        bytes: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<Option<ObjectVersion>> {
        match self {
            Side::Local(_) => self.write(rel, bytes).map(|()| None),
            Side::Remote(bucket) => bucket.put_if(rel, bytes, expected).map(Some),
        }
    }

    /// Removes a file or object that a commit no longer names (best effort on disk).
    fn remove(&self, rel: &str) -> Result<()> {
        match self {
            Side::Local(dir) => {
                let _ = std::fs::remove_file(Self::path(dir, rel));
                Ok(())
            }
            Side::Remote(bucket) => bucket.delete(rel),
        }
    }
}

/// Which version of the destination's `metadata.json` a sync may replace.
#[derive(Debug)]
pub(crate) enum Guard<'a> {
    /// The version the sync read when it began (`diffit sync`).
    AsRead,
    /// Only this writer's own last commit: a replica that another writer has moved on from
    /// fails before writing. Files the new metadata no longer names are removed after the
    /// commit.
    Ours(&'a mut OwnCommits),
}

/// What a replica knows of its own commits to the destination.
#[derive(Debug, Default)]
pub(crate) struct OwnCommits {
    /// The version its last commit wrote (`None`: none; the run is new to the destination).
    pub committed: Option<ObjectVersion>,
    /// The bytes of its last commit attempt. A commit whose answer was lost (a cut
    /// connection) may still have landed: when the destination holds exactly these bytes, that
    /// version is this writer's own.
    pub attempted: Option<Bytes>,
}

/// What syncing one run found and did.
#[derive(Debug, Default)]
pub(crate) struct RunSynced {
    /// The version of the source's `metadata.json` that was copied.
    pub source: Option<ObjectVersion>,
    /// The source's metadata, as copied.
    pub metadata: Option<Metadata>,
}

/// A file of a run that a sync copies, with the digest its metadata records (if any).
pub(crate) struct RunFile {
    pub rel: String,
    pub digest: Option<(String, u64)>,
    /// For `best`/`last`: the epoch file it names.
    alias_of: Option<String>,
    /// For event files (not in metadata): their size in the source's listing.
    listed_size: Option<u64>,
}

/// The files `meta` names as complete, epochs before the `best`/`last` that name them.
pub(crate) fn run_files(meta: &Metadata) -> Vec<RunFile> {
    let n = meta.run_number;
    let mut files = vec![RunFile {
        rel: format!("{}/{}", run_dir_name(n), format::layout::CONFIG_FILE),
        digest: None,
        alias_of: None,
        listed_size: None,
    }];
    if let Some(base) = &meta.base_model {
        files.push(RunFile {
            rel: base.path.clone(),
            digest: Some((base.checksum.clone(), base.size)),
            alias_of: None,
            listed_size: None,
        });
    }
    let digest_of = |epoch: u32| {
        meta.checkpoint(epoch)
            .and_then(|c| Some((c.checksum.clone()?, c.size?)))
    };
    for c in meta.live_checkpoints() {
        files.push(RunFile {
            rel: c.path.clone(),
            digest: digest_of(c.epoch),
            alias_of: None,
            listed_size: None,
        });
    }
    if let Some(best) = &meta.best_checkpoint {
        if let Some(record) = meta.checkpoint(best.epoch).filter(|c| c.is_live()) {
            files.push(RunFile {
                rel: CheckpointName::Best.relative_path(n),
                digest: digest_of(best.epoch),
                alias_of: Some(record.path.clone()),
                listed_size: None,
            });
        }
    }
    if let Some(last) = meta.live_checkpoints().last() {
        files.push(RunFile {
            rel: CheckpointName::Last.relative_path(n),
            digest: digest_of(last.epoch),
            alias_of: Some(last.path.clone()),
            listed_size: None,
        });
    }
    files
}

/// Parses a run's metadata, naming the object it came from.
fn parse_metadata(bytes: &[u8], object: String) -> Result<Metadata> {
    serde_json::from_slice(bytes).map_err(|e| RemoteError::BadMetadata {
        object,
        reason: e.to_string(),
    })
}

/// Syncs run `n` from `src` to `dst`, replacing the destination's metadata as `guard` allows.
pub(crate) fn sync_run(
    src: &Side,
    dst: &Side,
    n: u32,
    report: &mut SyncReport,
    guard: Guard<'_>,
) -> Result<RunSynced> {
    let meta_rel = format!("{}/{METADATA_FILE}", run_dir_name(n));
    let Some((meta_bytes, source)) = src.read(&meta_rel)? else {
        return Err(RemoteError::BadMetadata {
            object: src.name(&meta_rel),
            reason: "missing".into(),
        });
    };
    let meta = parse_metadata(&meta_bytes, src.name(&meta_rel))?;
    if let Side::Local(dir) = dst {
        if writer_active(&RunLayout::new(dir, n)) {
            return Err(RemoteError::Busy(RunLayout::new(dir, n).root()));
        }
    }
    let (dst_bytes, dst_version) = match dst.read(&meta_rel)? {
        Some((bytes, version)) => (Some(bytes), version),
        None => (None, None),
    };
    // A replica checks first that nobody else has committed since it did: the destination
    // must hold its own last commit, or its last attempt (whose answer may have been lost).
    let replica = matches!(guard, Guard::Ours(_));
    let expected = match &guard {
        Guard::AsRead => dst_version.clone(),
        Guard::Ours(own) => {
            let own_after_all = own.attempted.is_some() && dst_bytes == own.attempted;
            if matches!(dst, Side::Remote(_)) && dst_version != own.committed && !own_after_all {
                return Err(RemoteError::Superseded {
                    object: dst.name(&meta_rel),
                });
            }
            dst_version.clone()
        }
    };
    let mut own = match guard {
        Guard::Ours(own) => {
            // What the destination holds now is this writer's.
            own.committed = dst_version.clone();
            Some(own)
        }
        Guard::AsRead => None,
    };
    if dst_bytes.as_ref() == Some(&meta_bytes) {
        report.runs.push(n);
        report.unchanged += 1;
        return Ok(RunSynced {
            source,
            metadata: Some(meta),
        });
    }
    let dst_meta = dst_bytes.and_then(|bytes| parse_metadata(&bytes, dst.name(&meta_rel)).ok());
    // The checksums the destination's metadata records, by file.
    let recorded_at_dst: HashMap<String, String> = dst_meta
        .as_ref()
        .map(|m| {
            run_files(m)
                .into_iter()
                .filter_map(|f| Some((f.rel, f.digest?.0)))
                .collect()
        })
        .unwrap_or_default();
    let mut files = run_files(&meta);
    // Event files are not in metadata; they are compared by size.
    for (rel, size) in src.list(&format!("{}/{LOGS_DIR}", run_dir_name(n)))? {
        files.push(RunFile {
            rel,
            digest: None,
            alias_of: None,
            listed_size: Some(size),
        });
    }
    for file in &files {
        // What was read of the source file to compare it, reused for the copy.
        let mut fetched = None;
        if let Some((checksum, size)) = &file.digest {
            let recorded = recorded_at_dst.get(&file.rel).map(String::as_str);
            if dst.holds(&file.rel, checksum, *size, recorded)? {
                report.unchanged += 1;
                continue;
            }
            if let Some(target) = &file.alias_of {
                dst.alias(target, &file.rel)?;
                report.copied += 1;
                continue;
            }
        } else if let Some(size) = file.listed_size {
            // Event files only grow: the same size is the same file.
            if dst.size(&file.rel)? == Some(size) {
                report.unchanged += 1;
                continue;
            }
        } else {
            // config.json is small: compared whole.
            let ours = src.read(&file.rel)?;
            let theirs = dst.read(&file.rel)?;
            if ours.is_some() && ours.as_ref().map(|(b, _)| b) == theirs.as_ref().map(|(b, _)| b) {
                report.unchanged += 1;
                continue;
            }
            fetched = ours;
        }
        if let (Some((checksum, size)), None) = (&file.digest, &fetched) {
            // Tensor files between a disk and a bucket stream, checked on the way.
            if let Some(bytes) = src.stream_to(dst, &file.rel, checksum, *size)? {
                report.bytes += bytes;
                report.copied += 1;
                continue;
            }
        }
        let fetched = match fetched {
            Some(read) => Some(read),
            None => src.read(&file.rel)?,
        };
        let Some((bytes, _)) = fetched else {
            return Err(RemoteError::Damaged {
                object: src.name(&file.rel),
                reason: "metadata names it but it is missing".into(),
            });
        };
        if let Some((checksum, size)) = &file.digest {
            let got = digest_bytes(&bytes);
            if &got.checksum != checksum || got.size != *size {
                return Err(RemoteError::Damaged {
                    object: src.name(&file.rel),
                    reason: mismatch_reason(&got, checksum, *size),
                });
            }
        }
        report.bytes += bytes.len() as u64;
        dst.write(&file.rel, bytes)?;
        report.copied += 1;
    }
    if let Some(own) = own.as_mut() {
        own.attempted = Some(meta_bytes.clone());
    }
    if let Side::Remote(bucket) = dst {
        // The run index's rule 1: marked as being written before the commit (once per stretch).
        index::mark_writing(bucket, &[n])?;
    }
    let committed = dst.commit(&meta_rel, meta_bytes, expected.as_ref())?;
    if let Some(own) = own {
        own.committed = committed;
    }
    report.copied += 1;
    report.runs.push(n);
    if let (true, Some(old)) = (replica, &dst_meta) {
        // What the replaced metadata named and this one does not (epochs retention removed,
        // a replaced base) is referenced by nothing now.
        let named: Vec<&str> = files.iter().map(|f| f.rel.as_str()).collect();
        for retired in run_files(old) {
            if retired.digest.is_some() && !named.contains(&retired.rel.as_str()) {
                dst.remove(&retired.rel)?;
            }
        }
    }
    Ok(RunSynced {
        source,
        metadata: Some(meta),
    })
}

/// Copies runs from `src` to `dst` (all of them, or `only`): see the module docs. A run that
/// fails is reported in [`SyncReport::failed`] and the others are still synced; an error is
/// returned only when a location cannot be opened or listed.
pub fn sync(src: &Location, dst: &Location, only: Option<u32>) -> Result<SyncReport> {
    let (from, to) = (Side::open(src)?, Side::open(dst)?);
    let numbers = match only {
        Some(n) => vec![n],
        None => from.run_numbers()?,
    };
    let mut report = SyncReport::default();
    // Into a bucket, the run index is marked for every run at once, and settled at once after.
    if let Side::Remote(bucket) = &to {
        index::mark_writing(bucket, &numbers)?;
    }
    let mut rows = Vec::new();
    for n in numbers {
        match sync_run(&from, &to, n, &mut report, Guard::AsRead) {
            Ok(synced) => rows.extend(
                synced
                    .metadata
                    .as_ref()
                    .and_then(index::row_of)
                    .map(|r| (n, r)),
            ),
            Err(e) => {
                tracing::warn!("run {n}: {e}");
                report.failed.push((n, e.to_string()));
            }
        }
    }
    if let Side::Remote(bucket) = &to {
        if let Err(e) = index::settle(bucket, &rows) {
            tracing::warn!("the run index of {} stays as it is: {e}", bucket.name());
        }
    }
    Ok(report)
}
