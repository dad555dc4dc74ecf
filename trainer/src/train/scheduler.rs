//! Learning-rate schedule: linear warmup then cosine decay to a floor, with serialisable state.
//!
//! A resumed run may ask for more steps (more epochs) or a new base LR. Jumping to the LR the
//! new curve would have had at this step would make the LR leap, so instead the schedule is
//! re-anchored: the cosine restarts at the current step, from the current LR (or from the new
//! base LR when one was given), and decays to the floor over the remaining steps. Each change is
//! recorded in the state so the run's history explains its LR curve.

use serde::{Deserialize, Serialize};

/// Errors of the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The scheduler's JSON state could not be read.
    #[error("invalid scheduler state JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A setting is out of range.
    #[error("invalid LR schedule: {0}")]
    Invalid(String),
}

/// One change of the schedule made when resuming.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleChange {
    /// Step at which the change took effect.
    pub at_step: u64,
    /// Total steps before / after.
    pub total_steps: (u64, u64),
    /// Base LR before / after.
    pub base_lr: (f64, f64),
    /// LR the cosine restarted from.
    pub anchor_lr: f64,
}

/// An `f64` as its shortest round-trip decimal string.
mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:?}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| serde::de::Error::custom(format!("invalid number {text:?}")))
    }
}

/// Warmup + cosine schedule; `lr()` is the LR of the next optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrScheduler {
    /// Steps taken so far.
    pub step: u64,
    /// Steps the schedule ends at (the LR stays at `min_lr` after).
    pub total_steps: u64,
    /// Peak LR reached at the end of warmup.
    pub base_lr: f64,
    /// Linear warmup length in steps.
    pub warmup_steps: u64,
    /// Floor of the cosine.
    pub min_lr: f64,
    /// Step where the current cosine segment starts (0 for an unchanged schedule).
    #[serde(default)]
    pub anchor_step: u64,
    /// LR at the start of the current cosine segment. Computed, not typed in, so it is stored
    /// as a decimal string that Rust parses back to the same bits (serde_json's default float
    /// parser may be one ULP off for long decimals, which would break exact resume).
    #[serde(with = "exact_f64")]
    pub anchor_lr: f64,
    /// Changes made on resume, oldest first.
    #[serde(default)]
    pub changes: Vec<ScheduleChange>,
}

impl LrScheduler {
    /// A schedule that warms up over `warmup_steps` to `base_lr` then decays to `min_lr` at
    /// `total_steps`.
    pub fn new(
        base_lr: f64,
        min_lr: f64,
        warmup_steps: u64,
        total_steps: u64,
    ) -> Result<Self, SchedulerError> {
        let s = Self {
            step: 0,
            total_steps,
            base_lr,
            warmup_steps,
            min_lr,
            anchor_step: 0,
            anchor_lr: base_lr,
            changes: Vec::new(),
        };
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), SchedulerError> {
        if !(self.base_lr.is_finite() && self.base_lr > 0.0) {
            return Err(SchedulerError::Invalid(format!(
                "learning rate {} must be finite and > 0",
                self.base_lr
            )));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return Err(SchedulerError::Invalid(format!(
                "min_lr {} must be finite and >= 0",
                self.min_lr
            )));
        }
        if self.total_steps == 0 {
            return Err(SchedulerError::Invalid("total steps must be > 0".into()));
        }
        Ok(())
    }

    /// LR of the next step.
    pub fn lr(&self) -> f64 {
        self.lr_at(self.step)
    }

    /// LR at any step of the current schedule.
    pub fn lr_at(&self, step: u64) -> f64 {
        if self.anchor_step == 0 && step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let start = if self.anchor_step == 0 {
            self.warmup_steps
        } else {
            self.anchor_step
        };
        let floor = self.min_lr.min(self.anchor_lr);
        if self.total_steps <= start {
            return floor;
        }
        let progress =
            (step.saturating_sub(start) as f64 / (self.total_steps - start) as f64).min(1.0);
        floor + (self.anchor_lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }

    /// Advances one step (call after each optimizer step).
    pub fn advance(&mut self) {
        self.step += 1;
    }

    /// Applies a resumed run's new total steps and/or base LR; a no-op when both are unchanged.
    /// Returns the recorded change, if any.
    pub fn retarget(
        &mut self,
        total_steps: u64,
        base_lr: f64,
    ) -> Result<Option<ScheduleChange>, SchedulerError> {
        if total_steps == self.total_steps && base_lr.to_bits() == self.base_lr.to_bits() {
            return Ok(None);
        }
        let mut next = self.clone();
        next.total_steps = total_steps;
        next.base_lr = base_lr;
        next.validate()?;
        let in_warmup = self.anchor_step == 0 && self.step < self.warmup_steps;
        let lr_changed = base_lr.to_bits() != self.base_lr.to_bits();
        // Still warming up: the ramp simply heads for the new peak.
        if !in_warmup {
            next.anchor_step = self.step.max(1);
            next.anchor_lr = if lr_changed { base_lr } else { self.lr() };
        } else {
            next.anchor_lr = base_lr;
        }
        let change = ScheduleChange {
            at_step: self.step,
            total_steps: (self.total_steps, total_steps),
            base_lr: (self.base_lr, base_lr),
            anchor_lr: next.anchor_lr,
        };
        next.changes.push(change.clone());
        *self = next;
        Ok(Some(change))
    }

    /// The state as JSON text (for a checkpoint's `__metadata__`).
    pub fn state_json(&self) -> Result<String, SchedulerError> {
        Ok(serde_json::to_string(self)?)
    }

    /// Restores a schedule from its JSON state.
    pub fn from_state_json(json: &str) -> Result<Self, SchedulerError> {
        let s: Self = serde_json::from_str(json)?;
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn warms_up_linearly_then_decays_by_cosine() {
        let mut s = LrScheduler::new(1e-3, 1e-5, 4, 20).unwrap();
        let lrs: Vec<f64> = (0..22)
            .map(|_| {
                let lr = s.lr();
                s.advance();
                lr
            })
            .collect();
        assert!(close(lrs[0], 2.5e-4) && close(lrs[3], 1e-3), "{lrs:?}");
        assert!(close(lrs[4], 1e-3));
        // Halfway through the decay the cosine is at the midpoint.
        assert!(close(lrs[12], 1e-5 + (1e-3 - 1e-5) * 0.5));
        assert!(lrs[4..=20].windows(2).all(|w| w[1] <= w[0]));
        assert!(close(lrs[20], 1e-5) && close(lrs[21], 1e-5));
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let s = LrScheduler::new(0.1, 0.0, 0, 10).unwrap();
        assert!(close(s.lr(), 0.1));
    }

    #[test]
    fn state_round_trips_exactly() {
        let mut s = LrScheduler::new(3e-4, 1e-6, 5, 100).unwrap();
        for _ in 0..37 {
            s.advance();
        }
        s.retarget(150, 3e-4).unwrap();
        assert!(
            s.anchor_lr.to_string().len() > 15,
            "a long decimal exercises exact parsing"
        );
        let back = LrScheduler::from_state_json(&s.state_json().unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.lr().to_bits(), s.lr().to_bits());
    }

    #[test]
    fn more_epochs_on_resume_continue_without_a_jump() {
        let mut s = LrScheduler::new(1e-3, 0.0, 2, 40).unwrap();
        for _ in 0..20 {
            s.advance();
        }
        let before = s.lr();
        let change = s.retarget(80, 1e-3).unwrap().expect("recorded");
        assert_eq!(change.at_step, 20);
        assert_eq!(change.total_steps, (40, 80));
        assert!(close(s.lr(), before), "continues from the current LR");
        s.step = 80;
        assert!(close(s.lr(), 0.0), "reaches the floor at the new end");
        assert_eq!(s.changes.len(), 1);
    }

    #[test]
    fn a_new_base_lr_on_resume_takes_effect_now() {
        let mut s = LrScheduler::new(1e-4, 0.0, 0, 60).unwrap();
        for _ in 0..30 {
            s.advance();
        }
        s.retarget(90, 1e-5).unwrap();
        assert!(close(s.lr(), 1e-5));
        s.step = 60;
        assert!(s.lr() < 1e-5 && s.lr() > 0.0);
        assert_eq!(s.changes[0].base_lr, (1e-4, 1e-5));
    }

    #[test]
    fn unchanged_retarget_is_a_no_op() {
        let mut s = LrScheduler::new(1e-3, 0.0, 2, 40).unwrap();
        s.advance();
        let before = s.clone();
        assert!(s.retarget(40, 1e-3).unwrap().is_none());
        assert_eq!(s, before);
    }

    #[test]
    fn retarget_during_warmup_ramps_to_the_new_peak() {
        let mut s = LrScheduler::new(1e-3, 0.0, 10, 40).unwrap();
        s.advance();
        s.retarget(40, 2e-3).unwrap();
        s.step = 9;
        assert!(close(s.lr(), 2e-3));
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(LrScheduler::new(0.0, 0.0, 0, 10).is_err());
        assert!(LrScheduler::new(1e-3, -1.0, 0, 10).is_err());
        assert!(LrScheduler::new(1e-3, 0.0, 0, 0).is_err());
        assert!(LrScheduler::from_state_json("{}").is_err());
    }
}
