//! Noticing change: a rescan compares the runs' `metadata.json` fingerprints with the last
//! snapshot and returns the new run list and the `RunChange`s for `/api/events` (the server
//! state polls it in the background and publishes what it returns).
//!
//! Polling (a `lstat` per run every interval) is used rather than inotify because it sees
//! writers on any filesystem, costs little next to the interval, and also notices a writer
//! that died (its lock is released without any file changing).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use format::api::{EventKind, RunEvent, RunList, RunSummary};

use crate::catalog::{self, Fingerprint};
use crate::root::CheckpointsRoot;

/// One change, as broadcast to `/api/events` subscribers: its kind (the SSE event name) and
/// its data.
#[derive(Debug, Clone, PartialEq)]
pub struct RunChange {
    /// What happened.
    pub kind: EventKind,
    /// The event's data.
    pub event: RunEvent,
}

/// The run list as last seen, with its JSON ready to send.
#[derive(Debug)]
pub struct RunsSnapshot {
    /// Bumped on every change; also the list's ETag.
    pub generation: u64,
    /// Row per run number.
    pub summaries: BTreeMap<u32, RunSummary>,
    fingerprints: HashMap<u32, Fingerprint>,
    /// `{"runs": [...]}`.
    pub json: Bytes,
}

impl RunsSnapshot {
    /// An empty list (before the first scan).
    pub fn empty() -> Self {
        Self::build(0, BTreeMap::new(), HashMap::new())
    }

    fn build(
        generation: u64,
        summaries: BTreeMap<u32, RunSummary>,
        fingerprints: HashMap<u32, Fingerprint>,
    ) -> Self {
        let body = RunList {
            runs: summaries.values().cloned().collect(),
        };
        // Serializing plain data structures cannot fail; an empty list is the safe fallback.
        let json = serde_json::to_vec(&body)
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from_static(b"{\"runs\":[]}"));
        Self {
            generation,
            summaries,
            fingerprints,
            json,
        }
    }
}

/// Rescans the root against `prev`. `None` when nothing changed. Blocking.
pub fn rescan(
    root: &CheckpointsRoot,
    prev: &RunsSnapshot,
) -> Option<(RunsSnapshot, Vec<RunChange>)> {
    let seen = catalog::scan(root);
    let mut changed: Vec<u32> = vec![];
    for (n, fingerprint) in &seen {
        let stale = match (prev.fingerprints.get(n), prev.summaries.get(n)) {
            (Some(old), Some(summary)) => {
                old != fingerprint
                    || (catalog::may_be_running(summary)
                        && summary.info.as_ref().map(|i| i.writer_active)
                            != Some(catalog::writer_active_now(root, *n)))
            }
            _ => true,
        };
        if stale {
            changed.push(*n);
        }
    }
    let present: HashSet<u32> = seen.iter().map(|(n, _)| *n).collect();
    let removed: Vec<u32> = prev
        .summaries
        .keys()
        .filter(|n| !present.contains(n))
        .copied()
        .collect();
    if changed.is_empty() && removed.is_empty() {
        return None;
    }

    let mut events = vec![];
    let mut summaries = prev.summaries.clone();
    for n in &removed {
        summaries.remove(n);
        events.push(RunChange {
            kind: EventKind::RunRemoved,
            event: RunEvent {
                run_number: *n,
                status: None,
                epoch: None,
                checkpoints_count: None,
            },
        });
    }
    for n in changed {
        let summary = catalog::summarize(root, n);
        let old = summaries.get(&n);
        let last_epoch = summary.info.as_ref().and_then(|i| i.last_epoch);
        let event = |kind, epoch| RunChange {
            kind,
            event: RunEvent {
                run_number: n,
                status: Some(summary.status),
                epoch,
                checkpoints_count: summary.info.as_ref().map(|i| i.checkpoints_count),
            },
        };
        match old {
            None => events.push(event(EventKind::RunAdded, last_epoch)),
            Some(old) if *old != summary => {
                let old_epoch = old.info.as_ref().and_then(|i| i.last_epoch);
                if last_epoch > old_epoch {
                    events.push(event(EventKind::CheckpointAdded, last_epoch));
                }
                events.push(event(EventKind::RunUpdated, last_epoch));
            }
            Some(_) => {}
        }
        summaries.insert(n, summary);
    }
    let fingerprints = seen.into_iter().collect();
    Some((
        RunsSnapshot::build(prev.generation + 1, summaries, fingerprints),
        events,
    ))
}
