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

use crate::catalog::{self, RunFingerprint, RunSet};
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

/// The runs of one [`RunSet`] as last seen.
#[derive(Debug, Clone, Default)]
pub struct RunSetView {
    /// Row per run number.
    pub summaries: BTreeMap<u32, RunSummary>,
    fingerprints: HashMap<u32, RunFingerprint>,
}

/// The run list as last seen, with its JSON ready to send.
#[derive(Debug)]
pub struct RunsSnapshot {
    /// Bumped on every change; also the list's ETag.
    pub generation: u64,
    /// Row per run number.
    pub summaries: BTreeMap<u32, RunSummary>,
    fingerprints: HashMap<u32, RunFingerprint>,
    /// The base-training runs (`base_training/`).
    pub base_training: RunSetView,
    /// `{"runs": [...], "base_training": [...]}`.
    pub json: Bytes,
    /// The config keys whose values differ between the runs (every page's `varying`), found
    /// once per list rather than per request.
    pub varying: Vec<String>,
}

impl RunsSnapshot {
    /// An empty list (before the first scan).
    pub fn empty() -> Self {
        Self::build(0, RunSetView::default(), RunSetView::default())
    }

    fn build(generation: u64, runs: RunSetView, base_training: RunSetView) -> Self {
        let body = RunList {
            runs: runs.summaries.values().cloned().collect(),
            base_training: base_training.summaries.values().cloned().collect(),
            page: None,
        };
        // Serializing plain data structures cannot fail; an empty list is the safe fallback.
        let json = serde_json::to_vec(&body)
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from_static(b"{\"runs\":[]}"));
        Self {
            generation,
            varying: format::query::varying_params(runs.summaries.values()),
            summaries: runs.summaries,
            fingerprints: runs.fingerprints,
            base_training,
            json,
        }
    }
}

/// What a rescan of one set found against its previous view.
struct SetChanges {
    view: RunSetView,
    /// Runs re-read (their metadata changed, or their writer came or went).
    reread: usize,
    /// Runs added or changed, each with its previous row (`None` when new).
    changed: Vec<(u32, Option<RunSummary>)>,
    removed: Vec<u32>,
}

impl SetChanges {
    fn is_empty(&self) -> bool {
        self.reread == 0 && self.removed.is_empty()
    }
}

/// Rescans `set` against `prev`: re-reads the runs whose metadata changed, or whose writer
/// came or went.
fn rescan_set(root: &CheckpointsRoot, set: RunSet, prev: &RunSetView) -> SetChanges {
    let seen = catalog::scan(root, set);
    let mut stale: Vec<u32> = vec![];
    for (n, fingerprint) in &seen {
        let is_stale = match (prev.fingerprints.get(n), prev.summaries.get(n)) {
            (Some(old), Some(summary)) => {
                old != fingerprint
                    || (catalog::may_be_running(summary)
                        && summary.info.as_ref().map(|i| i.writer_active)
                            != Some(catalog::writer_active_now(root, set, *n)))
            }
            _ => true,
        };
        if is_stale {
            stale.push(*n);
        }
    }
    let present: HashSet<u32> = seen.iter().map(|(n, _)| *n).collect();
    let removed: Vec<u32> = prev
        .summaries
        .keys()
        .filter(|n| !present.contains(n))
        .copied()
        .collect();
    let mut summaries = prev.summaries.clone();
    for n in &removed {
        summaries.remove(n);
    }
    let mut changed = vec![];
    let reread = stale.len();
    for n in stale {
        let summary = catalog::summarize(root, set, n);
        let old = summaries.insert(n, summary.clone());
        if old.as_ref() != Some(&summary) {
            changed.push((n, old));
        }
    }
    SetChanges {
        view: RunSetView {
            summaries,
            fingerprints: seen.into_iter().collect(),
        },
        reread,
        changed,
        removed,
    }
}

/// Rescans the root against `prev`. `None` when nothing changed. Blocking. Events are sent for
/// the runs (`run_NNN/`); a change to a base-training run only renews the list.
pub fn rescan(
    root: &CheckpointsRoot,
    prev: &RunsSnapshot,
) -> Option<(RunsSnapshot, Vec<RunChange>)> {
    let prev_runs = RunSetView {
        summaries: prev.summaries.clone(),
        fingerprints: prev.fingerprints.clone(),
    };
    let runs = rescan_set(root, RunSet::Runs, &prev_runs);
    let base_training = rescan_set(root, RunSet::BaseTraining, &prev.base_training);
    if runs.is_empty() && base_training.is_empty() {
        return None;
    }

    let mut events = vec![];
    for n in &runs.removed {
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
    for (n, old) in &runs.changed {
        let Some(summary) = runs.view.summaries.get(n) else {
            continue;
        };
        let last_epoch = summary.info.as_ref().and_then(|i| i.last_epoch);
        let event = |kind, epoch| RunChange {
            kind,
            event: RunEvent {
                run_number: *n,
                status: Some(summary.status),
                epoch,
                checkpoints_count: summary.info.as_ref().map(|i| i.checkpoints_count),
            },
        };
        match old {
            None => events.push(event(EventKind::RunAdded, last_epoch)),
            Some(old) => {
                let old_epoch = old.info.as_ref().and_then(|i| i.last_epoch);
                if last_epoch > old_epoch {
                    events.push(event(EventKind::CheckpointAdded, last_epoch));
                }
                events.push(event(EventKind::RunUpdated, last_epoch));
            }
        }
    }
    Some((
        RunsSnapshot::build(prev.generation + 1, runs.view, base_training.view),
        events,
    ))
}
