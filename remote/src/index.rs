//! The run index of a bucket prefix (`runs_index.json`, beside the `run_NNN/` directories): what
//! the run list shows of each run, so listing a thousand runs takes two requests (the index and
//! one listing of the run directories) instead of one `metadata.json` read per run.
//!
//! The index is a cache the commit protocol keeps safe, never a source of truth. Each run's entry
//! is either *settled* (the run's list row, equal to what its committed `metadata.json` gives) or
//! *being written* (read the metadata itself). The rules, for every writer of a bucket run:
//!
//! 1. before committing a run's `metadata.json`, mark its entry as being written, with a token
//!    unique to this writer (a conditional read-modify-write of the index);
//! 2. after a commit that ends a stretch of writing (the run finished, failed or was
//!    interrupted; a sync), settle the entry with the committed row, but only if the entry still
//!    holds this writer's token; another writer's mark stays.
//!
//! So a settled entry always equals the committed metadata: every commit is preceded by a mark,
//! and a settle replaces only the writer's own mark, made before its own latest commit. A writer
//! that dies between the two leaves the run marked, and it is read from its metadata until the
//! next writer settles it. A run missing from the index (made by a tool that does not know it, or
//! listed before its first commit) is read from its metadata too, as is everything when the index
//! is absent or unreadable. The index is written with conditional puts, so concurrent writers
//! retry instead of losing each other's entries (on a store whose conditional put is atomic).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use format::api::RunInfo;
use format::{Metadata, RunStatus};

use super::bucket::Bucket;
use super::{RemoteError, Result};

/// The index object, relative to the prefix.
pub const INDEX_OBJECT: &str = "runs_index.json";

/// The index's schema version.
const FORMAT: u32 = 1;

/// Conditional writes tried before an index update gives up.
const UPDATE_TRIES: u32 = 64;

/// One run's entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    /// A writer (its token) is about to commit or has committed since the last settle.
    Writing(String),
    /// The run's list row, as its committed metadata gives it (boxed: a row is far bigger than
    /// a token).
    Settled(Box<RunInfo>),
}

/// The whole index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunIndex {
    /// Schema version.
    pub format: u32,
    /// Entries by run number.
    pub runs: BTreeMap<u32, Entry>,
}

impl RunIndex {
    /// The settled row of run `n`, if the index has one.
    pub fn settled(&self, n: u32) -> Option<&RunInfo> {
        match self.runs.get(&n) {
            Some(Entry::Settled(info)) => Some(info),
            _ => None,
        }
    }
}

/// This process's token: its id, start time and a counter's worth of randomness.
fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{nanos:x}", std::process::id())
    })
}

/// Runs this process has marked and not settled since: (bucket name, run). Another writer's
/// settle after our mark implies a commit of theirs, which makes our next commit fail, so a run
/// in this set is still marked as being written whenever we commit it.
fn marked() -> &'static Mutex<HashSet<(String, u32)>> {
    static MARKED: OnceLock<Mutex<HashSet<(String, u32)>>> = OnceLock::new();
    MARKED.get_or_init(|| Mutex::new(HashSet::new()))
}

fn marked_set() -> std::sync::MutexGuard<'static, HashSet<(String, u32)>> {
    marked()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The bucket's index; `None` when it has none, or one this version cannot read (then every run
/// is read from its metadata, and the next writer replaces it).
pub fn read_index(bucket: &Bucket) -> Result<Option<RunIndex>> {
    Ok(bucket
        .get(INDEX_OBJECT)?
        .and_then(|(bytes, _)| parse(&bytes).filter(|index| index.format == FORMAT)))
}

fn parse(bytes: &[u8]) -> Option<RunIndex> {
    serde_json::from_slice(bytes).ok()
}

/// Applies `change` to the index with a conditional read-modify-write, retried while other
/// writers update it at the same moment.
fn update(bucket: &Bucket, change: impl Fn(&mut RunIndex)) -> Result<()> {
    for attempt in 0..UPDATE_TRIES {
        let (mut index, version) = match bucket.get(INDEX_OBJECT)? {
            Some((bytes, version)) => (
                parse(&bytes)
                    .filter(|index| index.format == FORMAT)
                    .unwrap_or_default(),
                Some(version),
            ),
            None => (RunIndex::default(), None),
        };
        index.format = FORMAT;
        let before = index.clone();
        change(&mut index);
        if index == before && version.is_some() {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&index).map_err(|e| RemoteError::BadMetadata {
            object: bucket.object_name(INDEX_OBJECT),
            reason: e.to_string(),
        })?;
        match bucket.put_if(INDEX_OBJECT, Bytes::from(bytes), version.as_ref()) {
            Ok(_) => return Ok(()),
            Err(RemoteError::Conflict { .. }) => {
                // Spread the retries of writers that collided (a few ms, growing, and different
                // for each process).
                let spread = token().bytes().fold(u64::from(attempt), |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                });
                std::thread::sleep(Duration::from_millis(
                    u64::from(attempt.min(10)) * 5 + spread % 17,
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Err(RemoteError::Store {
        action: "update",
        object: bucket.object_name(INDEX_OBJECT),
        message: format!("still changing under other writers after {UPDATE_TRIES} tries"),
    })
}

/// Rule 1: marks `runs` as being written by this process, before their metadata is committed.
/// Runs this process already marked are skipped; nothing is written when none is left.
pub fn mark_writing(bucket: &Bucket, runs: &[u32]) -> Result<()> {
    let todo: Vec<u32> = {
        let set = marked_set();
        runs.iter()
            .copied()
            .filter(|&n| !set.contains(&(bucket.name().to_string(), n)))
            .collect()
    };
    if todo.is_empty() {
        return Ok(());
    }
    update(bucket, |index| {
        for &n in &todo {
            index.runs.insert(n, Entry::Writing(token().to_string()));
        }
    })?;
    let mut set = marked_set();
    for n in todo {
        set.insert((bucket.name().to_string(), n));
    }
    Ok(())
}

/// The list row of committed metadata `meta`; `None` when it would not survive the index's JSON
/// unchanged (a non-finite base loss, which JSON numbers cannot hold), so the run stays read
/// from its metadata.
pub fn row_of(meta: &Metadata) -> Option<RunInfo> {
    let bytes = serde_json::to_vec(meta).ok()?;
    let info = store::run_info_from_json(&bytes, meta.run_number, false).ok()?;
    let back: RunInfo = serde_json::from_value(serde_json::to_value(&info).ok()?).ok()?;
    (back == info).then_some(info)
}

/// Whether a commit with this status ends a stretch of writing (so it is settled at once).
pub fn ends_writing(status: RunStatus) -> bool {
    !matches!(status, RunStatus::Running | RunStatus::Created)
}

/// Rule 2: settles each of `rows` (run, its committed row) whose entry still holds this
/// process's mark. Failing here leaves the marks, which is safe.
pub fn settle(bucket: &Bucket, rows: &[(u32, RunInfo)]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mine = Entry::Writing(token().to_string());
    update(bucket, |index| {
        for (n, info) in rows {
            if index.runs.get(n) == Some(&mine) {
                index
                    .runs
                    .insert(*n, Entry::Settled(Box::new(info.clone())));
            }
        }
    })?;
    let mut set = marked_set();
    for (n, _) in rows {
        set.remove(&(bucket.name().to_string(), *n));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn bucket(prefix: &str) -> Bucket {
        Bucket::open(&url::Url::parse(&format!("memory:///{prefix}")).unwrap()).unwrap()
    }

    fn meta(n: u32, status: RunStatus) -> Metadata {
        let mut m = Metadata::new(n, "e", "2026-12-01T12:00:00");
        m.status = status;
        m
    }

    #[test]
    fn a_settle_replaces_only_this_writers_own_mark() {
        let b = bucket("own");
        mark_writing(&b, &[1, 2]).unwrap();
        // Another writer marks run 2 after us (a resume on another machine).
        update(&b, |index| {
            index.runs.insert(2, Entry::Writing("someone-else".into()));
        })
        .unwrap();
        let rows: Vec<_> = [1, 2]
            .map(|n| (n, row_of(&meta(n, RunStatus::Finished)).unwrap()))
            .into();
        settle(&b, &rows).unwrap();
        let index = read_index(&b).unwrap().unwrap();
        assert_eq!(index.settled(1), Some(&rows[0].1));
        assert_eq!(index.runs[&2], Entry::Writing("someone-else".into()));
        assert_eq!(index.settled(2), None);
    }

    #[test]
    fn marks_are_written_once_per_stretch_of_writing() {
        let b = bucket("once");
        mark_writing(&b, &[7]).unwrap();
        let (_, first) = b.get(INDEX_OBJECT).unwrap().unwrap();
        mark_writing(&b, &[7]).unwrap();
        let (_, second) = b.get(INDEX_OBJECT).unwrap().unwrap();
        assert_eq!(
            first, second,
            "a second mark of a marked run wrote the index again"
        );
        settle(&b, &[(7, row_of(&meta(7, RunStatus::Failed)).unwrap())]).unwrap();
        mark_writing(&b, &[7]).unwrap();
        assert_eq!(
            read_index(&b).unwrap().unwrap().runs[&7],
            Entry::Writing(token().to_string())
        );
    }

    #[test]
    fn an_unreadable_index_counts_as_none_and_is_replaced() {
        let b = bucket("bad");
        b.put(INDEX_OBJECT, Bytes::from_static(b"{not json"))
            .unwrap();
        assert_eq!(read_index(&b).unwrap(), None);
        mark_writing(&b, &[3]).unwrap();
        assert!(read_index(&b).unwrap().unwrap().runs.contains_key(&3));
    }

    #[test]
    fn a_row_that_json_cannot_hold_is_not_settled() {
        let mut m = meta(1, RunStatus::Finished);
        m.base_metrics = [("val_loss".to_string(), f64::NAN)].into_iter().collect();
        assert_eq!(row_of(&m), None);
        assert!(row_of(&meta(1, RunStatus::Finished)).is_some());
    }
}
