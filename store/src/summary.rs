//! The human-readable summary of a run (`diffit runs show`).

use format::metadata::Metrics;
use format::{CheckpointName, RunStatus};

use super::lock::writer_active;

use super::manager::CheckpointManager;

impl CheckpointManager {
    /// A human-readable summary of the run.
    pub fn get_run_summary(&self) -> String {
        use std::fmt::Write as _;
        let m = &self.metadata;
        let mut s = String::new();
        let metrics_text = |metrics: &Metrics| {
            metrics
                .iter()
                .map(|(k, v)| format!("{k}={v:.6}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(s, "Run {} ({})", m.run_number, self.layout.root().display());
        let _ = writeln!(s, "  Experiment:   {}", m.experiment_name);
        let _ = writeln!(s, "  Created:      {}", m.created_at);
        let _ = writeln!(
            s,
            "  Updated:      {}",
            m.updated_at.as_deref().unwrap_or("-")
        );
        // The writer's own handle shows what it recorded; anyone else sees whether a writer
        // is still there.
        let active = !self.is_writer() && writer_active(&self.layout);
        let seed = self.seed_run();
        let status = match (m.status, active) {
            _ if seed.is_some() => "seed run (read-only)",
            (_, true) => "running",
            (RunStatus::Created, false) if self.is_writer() => "created",
            (RunStatus::Running, false) if self.is_writer() => "running",
            (RunStatus::Finished, false) => "finished",
            (RunStatus::Interrupted, false) => "interrupted (resumable)",
            (RunStatus::Failed, false) => {
                "interrupted (by an error; resumable from its last valid checkpoint)"
            }
            (RunStatus::Created | RunStatus::Running, false) => {
                "interrupted (its writer stopped without recording why; resumable)"
            }
        };
        let _ = writeln!(s, "  Status:       {status}");
        if let Ok(annotations) = super::annotations::read_annotations(&self.layout) {
            if !annotations.tags.is_empty() {
                let _ = writeln!(s, "  Tags:         {}", annotations.tags.join(" "));
            }
            if let Some(note) = &annotations.note {
                let _ = writeln!(
                    s,
                    "  Note:         {}",
                    note.replace('\n', "\n                ")
                );
            }
        }
        if let Some(seed) = &seed {
            let _ = writeln!(s, "  Seed run:     {}", seed.note);
        }
        if let (Some(reason), false) = (&m.status_reason, active) {
            let _ = writeln!(s, "  Stopped by:   {reason}");
        }
        if let Some(monitor) = &m.monitor {
            let _ = writeln!(
                s,
                "  Monitor:      {monitor} ({:?})",
                m.mode.unwrap_or_default()
            );
        }
        let seed_base = self.layout.seed_checkpoint(CheckpointName::Base);
        match &m.base_model {
            None if seed.is_some() && seed_base.is_file() => {
                let _ = writeln!(
                    s,
                    "  Base model:   {} (a PyTorch pickle, not loaded)",
                    seed_base.display()
                );
            }
            Some(base) => {
                let _ = writeln!(
                    s,
                    "  Base model:   {} ({} bytes, {})",
                    base.path, base.size, base.checksum
                );
            }
            None => {
                let _ = writeln!(s, "  Base model:   not saved");
            }
        }
        if !m.base_metrics.is_empty() {
            let _ = writeln!(s, "  Base metrics: {}", metrics_text(&m.base_metrics));
        }
        let live = m.live_checkpoints().count();
        let _ = writeln!(
            s,
            "  Checkpoints:  {} saved, {live} on disk",
            m.checkpoints.len()
        );
        match &m.best_checkpoint {
            Some(best) => {
                let _ = writeln!(
                    s,
                    "  Best:         epoch {} ({})",
                    best.epoch,
                    metrics_text(&best.metrics)
                );
            }
            None => {
                let _ = writeln!(s, "  Best:         -");
            }
        }
        if let Some(last) = self.newest_live() {
            let _ = writeln!(s, "  Last:         epoch {}", last.epoch);
        }
        if !m.checkpoints.is_empty() {
            // The seed's stamps carry microseconds; the column widens to the longest.
            let width = m
                .checkpoints
                .iter()
                .map(|c| c.saved_at.chars().count())
                .max()
                .unwrap_or(0)
                .max(20);
            let _ = writeln!(s, "  {:<7} {:<width$} Metrics", "Epoch", "Saved at");
            for c in &m.checkpoints {
                let removed = match (&c.damaged, c.removed) {
                    (Some(reason), _) => format!("  (damaged: {reason})"),
                    (None, true) => "  (removed)".to_string(),
                    (None, false) if c.weights_only => {
                        "  (weights only: cannot be resumed from)".to_string()
                    }
                    (None, false) => String::new(),
                };
                let _ = writeln!(
                    s,
                    "  {:<7} {:<width$} {}{removed}",
                    c.epoch,
                    c.saved_at,
                    metrics_text(&c.metrics)
                );
            }
        }
        s
    }
}
