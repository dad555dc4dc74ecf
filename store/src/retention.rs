//! Which saved epochs to delete, and which to keep without their optimizer state: a pure
//! decision over the checkpoint history, kept apart from the code that touches files (the
//! manager), so it is tested without any files.
//!
//! Rules, in order:
//! - the newest saved epoch is always kept whole (it is what a resume needs);
//! - with `keep_best`, the best epoch is always kept, even when older than the last N;
//! - the `keep_top_k` best epochs by the monitored metric are kept (Lightning's `save_top_k`);
//! - of the rest, the `keep_last_n` newest are kept and older ones deleted; `keep_last_n: 0`
//!   keeps every epoch (as the seed system does);
//! - with `keep_optimizer_last_n: Some(n)`, kept epochs older than the newest `n` lose their
//!   optimizer state: they keep weights and metrics and can no longer be resumed from.
//!
//! Deleted epochs keep their metadata entry (marked `"removed": true`), so metric history stays
//! whole; that marking is the manager's job.

use format::CheckpointRecord;

use crate::BestPolicy;

/// A retention policy: keep the last N epochs, optionally the best and the top k, and the
/// optimizer state of only the newest few.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// How many of the newest saved epochs to keep; 0 keeps every epoch (at least the newest one
    /// is always kept).
    pub keep_last_n: usize,
    /// Never delete the best epoch.
    pub keep_best: bool,
    /// Also keep the k best epochs by the monitored metric (0: none besides `keep_best`).
    pub keep_top_k: usize,
    /// Keep the optimizer state of only the newest N live epochs (`None`: of every epoch).
    pub keep_optimizer_last_n: Option<usize>,
}

/// What a [`RetentionPolicy`] decided: epochs to delete and epochs to keep weights-only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Epochs whose files to delete, oldest first.
    pub delete: Vec<u32>,
    /// Kept epochs that still hold optimizer state and must lose it, oldest first.
    pub strip_optimizer: Vec<u32>,
}

impl RetentionPolicy {
    /// Keep the `keep_last_n` newest epochs (0: all), and the best one when `keep_best`.
    pub fn new(keep_last_n: usize, keep_best: bool) -> Self {
        Self {
            keep_last_n,
            keep_best,
            keep_top_k: 0,
            keep_optimizer_last_n: None,
        }
    }

    /// Epochs whose files to delete, oldest first, given the saved epochs still on disk and the
    /// best epoch (no top-k ranking). Duplicates and order of `live` do not matter.
    pub fn epochs_to_delete(&self, live: &[u32], best: Option<u32>) -> Vec<u32> {
        self.plan(live, best, &[], &[]).delete
    }

    /// The whole decision. `ranked` lists epochs best first (those with a finite monitored
    /// value); `weights_only` the live epochs that already lack optimizer state.
    pub fn plan(
        &self,
        live: &[u32],
        best: Option<u32>,
        ranked: &[u32],
        weights_only: &[u32],
    ) -> RetentionPlan {
        let mut epochs = live.to_vec();
        epochs.sort_unstable();
        epochs.dedup();
        let top: Vec<u32> = ranked.iter().copied().take(self.keep_top_k).collect();
        let cut = match self.keep_last_n {
            0 => 0,
            n => epochs.len().saturating_sub(n),
        };
        let delete: Vec<u32> = epochs[..cut]
            .iter()
            .copied()
            .filter(|&e| {
                let kept_as_best = self.keep_best && Some(e) == best;
                !kept_as_best && !top.contains(&e)
            })
            .collect();
        let strip_optimizer = match self.keep_optimizer_last_n {
            None => Vec::new(),
            Some(n) => {
                let whole_from = epochs.len().saturating_sub(n.max(1));
                epochs[..whole_from]
                    .iter()
                    .copied()
                    .filter(|e| !delete.contains(e) && !weights_only.contains(e))
                    .collect()
            }
        };
        RetentionPlan {
            delete,
            strip_optimizer,
        }
    }

    /// [`epochs_to_delete`](Self::epochs_to_delete) over a metadata history, skipping epochs
    /// already removed.
    pub fn apply_to_history(&self, history: &[CheckpointRecord], best: Option<u32>) -> Vec<u32> {
        self.plan_history(history, best, None).delete
    }

    /// [`plan`](Self::plan) over a metadata history: live epochs only, ranked by `ranking` (the
    /// run's monitored metric) for `keep_top_k`.
    pub fn plan_history(
        &self,
        history: &[CheckpointRecord],
        best: Option<u32>,
        ranking: Option<&BestPolicy>,
    ) -> RetentionPlan {
        let live: Vec<&CheckpointRecord> = history.iter().filter(|c| c.is_live()).collect();
        let mut ranked: Vec<(u32, f64)> = match ranking {
            Some(policy) => live
                .iter()
                .filter_map(|c| policy.value(&c.metrics).map(|v| (c.epoch, v)))
                .collect(),
            None => Vec::new(),
        };
        if let Some(policy) = ranking {
            // Best first; ties go to the older epoch, so the ranking is stable across saves.
            ranked.sort_by(|a, b| {
                let by_value = match policy.mode {
                    format::Mode::Min => a.1.total_cmp(&b.1),
                    format::Mode::Max => b.1.total_cmp(&a.1),
                };
                by_value.then(a.0.cmp(&b.0))
            });
        }
        let ranked: Vec<u32> = ranked.into_iter().map(|(e, _)| e).collect();
        let epochs: Vec<u32> = live.iter().map(|c| c.epoch).collect();
        let weights_only: Vec<u32> = live
            .iter()
            .filter(|c| c.weights_only)
            .map(|c| c.epoch)
            .collect();
        self.plan(&epochs, best, &ranked, &weights_only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use format::metadata::Metrics;

    fn record(epoch: u32, removed: bool) -> CheckpointRecord {
        CheckpointRecord {
            epoch,
            path: format!("run_001/lora_weights/epoch_{epoch:03}.safetensors"),
            metrics: Metrics::new(),
            saved_at: String::new(),
            checksum: None,
            size: None,
            global_step: None,
            removed,
            damaged: None,
            weights_only: false,
            extra: Default::default(),
        }
    }

    #[test]
    fn keeps_the_last_n() {
        let p = RetentionPolicy::new(3, false);
        assert_eq!(p.epochs_to_delete(&[1, 2, 3, 4, 5], None), vec![1, 2]);
        assert_eq!(
            p.epochs_to_delete(&[5, 3, 1, 4, 2], Some(1)),
            vec![1, 2],
            "unsorted input"
        );
        assert_eq!(p.epochs_to_delete(&[1, 2, 3], None), Vec::<u32>::new());
        assert_eq!(p.epochs_to_delete(&[], None), Vec::<u32>::new());
    }

    #[test]
    fn never_deletes_the_best_when_asked() {
        let p = RetentionPolicy::new(2, true);
        assert_eq!(p.epochs_to_delete(&[1, 2, 3, 4, 5], Some(2)), vec![1, 3]);
        assert_eq!(p.epochs_to_delete(&[1, 2, 3, 4, 5], Some(5)), vec![1, 2, 3]);
        assert_eq!(p.epochs_to_delete(&[1, 2, 3, 4, 5], None), vec![1, 2, 3]);
    }

    #[test]
    fn zero_keeps_everything() {
        for keep_best in [true, false] {
            assert_eq!(
                RetentionPolicy::new(0, keep_best).epochs_to_delete(&[1, 2, 3], Some(1)),
                Vec::<u32>::new()
            );
        }
    }

    #[test]
    fn keeps_the_top_k_by_rank() {
        let p = RetentionPolicy {
            keep_top_k: 2,
            ..RetentionPolicy::new(1, false)
        };
        // Ranked best first: 2, then 4.
        assert_eq!(
            p.plan(&[1, 2, 3, 4, 5], None, &[2, 4, 1, 3, 5], &[]).delete,
            vec![1, 3]
        );
        let mut history: Vec<CheckpointRecord> = (1..=5).map(|e| record(e, false)).collect();
        for (r, v) in history.iter_mut().zip([0.5, 0.1, 0.4, 0.2, f64::NAN]) {
            r.metrics.insert("val_loss".into(), v);
        }
        let min = BestPolicy::new("val_loss", format::Mode::Min);
        assert_eq!(
            p.plan_history(&history, None, Some(&min)).delete,
            vec![1, 3]
        );
        let max = BestPolicy::new("val_loss", format::Mode::Max);
        assert_eq!(
            p.plan_history(&history, None, Some(&max)).delete,
            vec![2, 4]
        );
    }

    #[test]
    fn optimizer_state_is_kept_for_the_newest_only() {
        let p = RetentionPolicy {
            keep_optimizer_last_n: Some(2),
            ..RetentionPolicy::new(4, true)
        };
        let plan = p.plan(&[1, 2, 3, 4, 5, 6], Some(1), &[], &[3]);
        assert_eq!(plan.delete, vec![2]);
        // 1 (best, kept) and 4 lose it; 3 already has; 5 and 6 keep it.
        assert_eq!(plan.strip_optimizer, vec![1, 4]);
        // At least the newest keeps it, whatever N says.
        let p = RetentionPolicy {
            keep_optimizer_last_n: Some(0),
            ..RetentionPolicy::new(0, true)
        };
        assert_eq!(p.plan(&[1, 2], None, &[], &[]).strip_optimizer, vec![1]);
    }

    #[test]
    fn history_skips_removed_entries() {
        let history = [
            record(1, true),
            record(2, true),
            record(3, false),
            record(4, false),
            record(5, false),
        ];
        let p = RetentionPolicy::new(2, true);
        assert_eq!(p.apply_to_history(&history, Some(1)), vec![3]);
        assert_eq!(p.apply_to_history(&history, Some(3)), Vec::<u32>::new());
    }
}
