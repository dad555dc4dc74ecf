//! `diffit pretrain`: train a full base model on the generic set as a managed base run
//! (`<checkpoints>/base_training/run_NNN/`), resume one, list them, or export the result.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Args;

use super::values;
use crate::train::base_runs::{
    run_base_training, BaseRunRequest, BASE_MONITOR, DEFAULT_BASE_KEEP_LAST_N,
};
use format::layout::DEFAULT_BASE_DIR;

use crate::train::base_runs::base_training_dir;
use crate::train::config::Preset;
use crate::train::pretrain::PretrainConfig;

/// `diffit pretrain` flags.
#[derive(Debug, Clone, Args)]
pub struct PretrainArgs {
    /// Model size.
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    pub preset: Preset,
    /// Passes over the generic set (default: the preset's); on resume, the new total.
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub epochs: Option<u32>,
    /// Seed of initialisation, data and noise.
    #[arg(long, allow_negative_numbers = true, value_parser = values::seed)]
    pub seed: Option<u64>,
    /// Generic images to generate (default: the preset's).
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<usize>())]
    pub num_images: Option<usize>,
    /// Images per step.
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<usize>())]
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long, allow_hyphen_values = true, value_parser = values::positive)]
    pub learning_rate: Option<f64>,
    /// The checkpoints dir; base runs go under its `base_training/`.
    #[arg(long = "checkpoints", value_name = "DIR", default_value = DEFAULT_BASE_DIR)]
    pub checkpoints: PathBuf,
    /// Base run to create (or, with --resume, to continue); default: the next number.
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub run_number: Option<u32>,
    /// Continue the base run given by --run-number from its newest valid epoch.
    #[arg(long, requires = "run_number")]
    pub resume: bool,
    /// Keep only the newest N epoch files (the best is always kept); 0 keeps every one.
    #[arg(long, allow_negative_numbers = true, default_value_t = DEFAULT_BASE_KEEP_LAST_N,
          value_parser = values::at_least_zero::<u32>())]
    pub keep_last_n: u32,
    /// Also write the final model as a plain base file (for `diffit train --base FILE`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print the table of base runs and exit.
    #[arg(long)]
    pub list_runs: bool,
}

/// Runs `diffit pretrain`; once `stop` is set it fails with
/// [`crate::train::TrainError::Interrupted`], the run resumable from its last saved epoch.
pub fn pretrain(args: &PretrainArgs, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    if args.list_runs {
        print!("{}", base_runs_table(&args.checkpoints)?);
        return Ok(());
    }
    let preset = args.preset;
    let mut cfg = PretrainConfig::for_preset(preset);
    cfg.epochs = args.epochs.unwrap_or(cfg.epochs);
    cfg.seed = args.seed.unwrap_or(cfg.seed);
    cfg.num_images = args.num_images.unwrap_or(cfg.num_images);
    cfg.batch_size = args.batch_size.unwrap_or(cfg.batch_size);
    cfg.learning_rate = args.learning_rate.unwrap_or(cfg.learning_rate);
    let req = BaseRunRequest {
        config: cfg,
        resume_epochs: args.epochs,
        checkpoints: args.checkpoints.clone(),
        run_number: args.run_number,
        resume: args.resume,
        keep_last_n: args.keep_last_n,
        out: args.out.clone(),
        show_progress: true,
    };
    let report = run_base_training(&req, stop)?;
    eprintln!(
        "base run {:03} finished {} epochs in {}",
        report.run_number,
        report.epochs_done,
        report.run_dir.display()
    );
    if let Some((epoch, loss)) = report.best {
        eprintln!("best {BASE_MONITOR}: {loss:.5} (epoch {epoch})");
    }
    eprintln!(
        "fine-tune on it with: diffit train --base-run {} --base-checkpoint best",
        report.run_number
    );
    Ok(())
}

/// `diffit pretrain --list-runs`: the base runs under `<checkpoints>/base_training/`, the
/// seed's columns and a `Best Loss` one (the best epoch's `train_loss`); the seed system's own
/// base runs there are marked read-only, broken ones say why.
pub fn base_runs_table(checkpoints: &std::path::Path) -> anyhow::Result<String> {
    let dir = base_training_dir(checkpoints);
    let runs = if dir.is_dir() {
        store::list_all_runs(&dir)?
    } else {
        Vec::new()
    };
    let titles = ["Run #", "Experiment", "Created", "Epochs", "Best Loss"];
    let rows: Vec<[String; 6]> = runs
        .iter()
        .map(|run| match &run.info {
            Ok(info) => [
                run.run_number.to_string(),
                info.experiment_name.clone(),
                super::runs::created_cell(&info.created_at),
                info.last_epoch.map_or("-".into(), |e| e.to_string()),
                info.best
                    .as_ref()
                    .and_then(|b| b.value)
                    .map_or("-".into(), |v| format!("{v:.5}")),
                match (&info.seed, info.state()) {
                    (Some(seed), _) => format!("({})", seed.label()),
                    (None, format::api::RunState::Finished) => String::new(),
                    (None, other) => format!("({})", other.as_str()),
                },
            ],
            Err(e) => [
                run.run_number.to_string(),
                format!("BROKEN: {e}"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
        })
        .collect();
    let mut widths = [8, 25, 21, 8, 10];
    for row in &rows {
        if row[2].is_empty() {
            continue; // A broken run's message runs on past the columns.
        }
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i < widths.len() && i + 1 < cells.len() {
                text.push_str(&format!("{cell:<width$} ", width = widths[i]));
            } else {
                text.push_str(cell);
            }
        }
        text.trim_end().to_string() + "\n"
    };
    let mut out = format!("base-training runs in {}\n", dir.display());
    out.push_str(&line(&titles));
    out.push_str(&"-".repeat(80));
    out.push('\n');
    if rows.is_empty() {
        out.push_str("(none yet: diffit pretrain creates one)\n");
    }
    for row in &rows {
        if row[2].is_empty() {
            out.push_str(&format!("{:<w$} {}\n", row[0], row[1], w = widths[0]));
        } else {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            out.push_str(&line(&cells));
        }
    }
    Ok(out)
}
