//! "Is this epoch the new best?": a pure decision over the current best and the candidate's
//! metrics, kept apart from the code that writes files (as [`RetentionPolicy`] is), so it is
//! tested without any files.
//!
//! Rules:
//! - re-saving the best epoch keeps it best (`best` must follow the new file);
//! - a candidate without a finite value of the monitored metric never becomes best (NaN and
//!   ±∞ are divergence, not progress);
//! - the first candidate with a finite value becomes best, as does one that beats the current
//!   best's value by the mode (or a current best without a finite value).
//!
//! [`RetentionPolicy`]: crate::RetentionPolicy

use format::metadata::Metrics;
use format::{BestCheckpoint, Mode};

/// Which metric decides the best epoch, and whether lower or higher is better.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestPolicy {
    /// The monitored metric (`val_loss`).
    pub monitor: String,
    /// `Min`: lower is better; `Max`: higher is better.
    pub mode: Mode,
}

impl BestPolicy {
    /// Best by `monitor` under `mode`.
    pub fn new(monitor: impl Into<String>, mode: Mode) -> Self {
        Self {
            monitor: monitor.into(),
            mode,
        }
    }

    /// The monitored metric's value in `metrics`, when present and finite.
    pub fn value(&self, metrics: &Metrics) -> Option<f64> {
        metrics
            .get(&self.monitor)
            .copied()
            .filter(|v| v.is_finite())
    }

    /// Whether epoch `epoch` with `metrics` becomes the best, given the current best.
    pub fn is_new_best(
        &self,
        current: Option<&BestCheckpoint>,
        epoch: u32,
        metrics: &Metrics,
    ) -> bool {
        let candidate = self.value(metrics);
        match (current, candidate) {
            (Some(best), _) if best.epoch == epoch => true,
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(best), Some(v)) => self
                .value(&best.metrics)
                .is_none_or(|b| self.mode.is_better(v, b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    fn metrics(val_loss: f64) -> Metrics {
        [("val_loss".to_string(), val_loss)].into()
    }

    fn best(epoch: u32, val_loss: f64) -> BestCheckpoint {
        BestCheckpoint {
            epoch,
            path: String::new(),
            metrics: metrics(val_loss),
            extra: Map::new(),
        }
    }

    #[test]
    fn lower_or_higher_wins_by_mode() {
        let min = BestPolicy::new("val_loss", Mode::Min);
        assert!(min.is_new_best(None, 1, &metrics(0.5)));
        assert!(min.is_new_best(Some(&best(1, 0.5)), 2, &metrics(0.4)));
        assert!(!min.is_new_best(Some(&best(1, 0.5)), 2, &metrics(0.6)));
        assert!(
            !min.is_new_best(Some(&best(1, 0.5)), 2, &metrics(0.5)),
            "ties keep the older"
        );
        let max = BestPolicy::new("val_loss", Mode::Max);
        assert!(max.is_new_best(Some(&best(1, 0.5)), 2, &metrics(0.6)));
        assert!(!max.is_new_best(Some(&best(1, 0.5)), 2, &metrics(0.4)));
    }

    #[test]
    fn non_finite_or_missing_values_never_become_best() {
        for mode in [Mode::Min, Mode::Max] {
            let policy = BestPolicy::new("val_loss", mode);
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                assert!(
                    !policy.is_new_best(None, 1, &metrics(bad)),
                    "{bad} {mode:?}"
                );
                assert!(!policy.is_new_best(Some(&best(1, 0.5)), 2, &metrics(bad)));
            }
            assert!(!policy.is_new_best(None, 1, &Metrics::new()));
            // A current best without a finite value is beaten by any finite one.
            assert!(policy.is_new_best(Some(&best(1, f64::NAN)), 2, &metrics(9.0)));
        }
    }

    #[test]
    fn re_saving_the_best_epoch_keeps_it() {
        let policy = BestPolicy::new("val_loss", Mode::Min);
        assert!(policy.is_new_best(Some(&best(3, 0.1)), 3, &metrics(0.9)));
        assert!(policy.is_new_best(Some(&best(3, 0.1)), 3, &metrics(f64::NAN)));
    }
}
