//! Which saved epochs to delete: a pure decision over the checkpoint history, kept apart from
//! the code that deletes files (the manager), so it is tested without any files.
//!
//! Rules, in order:
//! - the newest saved epoch is always kept (it is what a resume needs);
//! - with `keep_best`, the best epoch is always kept, even when older than the last N;
//! - of the rest, the `keep_last_n` newest are kept and older ones deleted.
//!
//! Deleted epochs keep their metadata entry (marked `"removed": true`), so metric history stays
//! whole; that marking is the manager's job.

use format::CheckpointRecord;

/// A retention policy: keep the last N epochs, optionally always keep the best one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// How many of the newest saved epochs to keep (at least the newest one is always kept).
    pub keep_last_n: usize,
    /// Never delete the best epoch.
    pub keep_best: bool,
}

impl RetentionPolicy {
    /// Keep the `keep_last_n` newest epochs, and the best one when `keep_best`.
    pub fn new(keep_last_n: usize, keep_best: bool) -> Self {
        Self {
            keep_last_n,
            keep_best,
        }
    }

    /// Epochs whose files to delete, oldest first, given the saved epochs still on disk and the
    /// best epoch. Duplicates and order of `live` do not matter.
    pub fn epochs_to_delete(&self, live: &[u32], best: Option<u32>) -> Vec<u32> {
        let mut epochs = live.to_vec();
        epochs.sort_unstable();
        epochs.dedup();
        let keep_newest = self.keep_last_n.max(1);
        let cut = epochs.len().saturating_sub(keep_newest);
        epochs[..cut]
            .iter()
            .copied()
            .filter(|&e| !(self.keep_best && Some(e) == best))
            .collect()
    }

    /// [`epochs_to_delete`](Self::epochs_to_delete) over a metadata history, skipping epochs
    /// already removed.
    pub fn apply_to_history(&self, history: &[CheckpointRecord], best: Option<u32>) -> Vec<u32> {
        let live: Vec<u32> = history
            .iter()
            .filter(|c| c.is_live())
            .map(|c| c.epoch)
            .collect();
        self.epochs_to_delete(&live, best)
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
    fn always_keeps_the_newest() {
        assert_eq!(
            RetentionPolicy::new(0, true).epochs_to_delete(&[1, 2, 3], Some(1)),
            vec![2]
        );
        assert_eq!(
            RetentionPolicy::new(0, false).epochs_to_delete(&[1, 2, 3], Some(1)),
            vec![1, 2]
        );
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
