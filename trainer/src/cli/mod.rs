//! The `diffit` command line: `train` (with the seed's flags), `runs show`, `verify`.
//!
//! Parsing lives here; each subcommand's work lives in its own module, and the binary is a thin
//! `main` over [`run_cli`] (it parses, installs logging and the Ctrl-C handler, and maps the
//! error to an exit code with [`exit::exit_code`]).

pub mod exit;
pub mod pretrain;
pub mod runs;
pub mod sample;
pub mod train;
pub mod values;
pub mod verify;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use format::layout::DEFAULT_BASE_DIR;
use format::Mode;

/// `diffit`: train DiffiT LoRA adapters and manage their runs.
#[derive(Debug, Parser)]
#[command(
    name = "diffit",
    version,
    about = "Train DiffiT LoRA adapters and manage their runs"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a LoRA run (new, numbered or resumed), or list runs with --list-runs.
    Train(Box<TrainArgs>),
    /// Inspect runs.
    Runs {
        /// Which inspection.
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Check every file of a run against its recorded checksum; non-zero exit if any is damaged.
    Verify(VerifyArgs),
    /// Train a full base model on the generic (tree-free) set and write it.
    Pretrain(pretrain::PretrainArgs),
    /// Sample an image grid from a run's checkpoint (base + LoRA fused, DDIM).
    Sample(sample::SampleArgs),
    /// Export a run's checkpoint as merged weights or a PEFT adapter folder.
    Export(sample::ExportArgs),
}

/// `diffit runs ...`.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Print a run's summary.
    Show(ShowArgs),
    /// Print the table of all runs (same as `train --list-runs`).
    List(CheckpointsArg),
}

/// The checkpoints directory every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct CheckpointsArg {
    /// Directory holding the runs (`run_001/`, ...).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BASE_DIR)]
    pub checkpoints: PathBuf,
}

/// `diffit runs show N`.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The run number.
    #[arg(allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub run_number: u32,
    /// Where the runs are.
    #[command(flatten)]
    pub dir: CheckpointsArg,
}

/// `diffit verify --run-number N`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The run to check.
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub run_number: u32,
    /// Where the runs are.
    #[command(flatten)]
    pub dir: CheckpointsArg,
}

/// `diffit train`: the seed's flags. Unset options fall back to the config file / preset.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Epochs to train (in total, counting resumed ones).
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub epochs: Option<u32>,
    /// Images per batch.
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<usize>())]
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long, allow_hyphen_values = true, value_parser = values::positive)]
    pub learning_rate: Option<f64>,
    /// Run to use: an existing number opens that run, a new number creates it.
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub run_number: Option<u32>,
    /// Resume the run given by --run-number from its newest valid checkpoint.
    #[arg(long, requires = "run_number")]
    pub resume: bool,
    /// Print the table of runs and exit.
    #[arg(long)]
    pub list_runs: bool,
    /// YAML config file (the seed's `lora_finetuning.yaml` keys).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Named preset (e.g. `small`).
    #[arg(long)]
    pub preset: Option<String>,
    /// Seed for data order, initialisation and noise.
    #[arg(long, allow_negative_numbers = true, value_parser = values::seed)]
    pub seed: Option<u64>,
    /// Directory holding the runs (default: the config's `base_dir`, else `checkpoints`).
    #[arg(long, value_name = "DIR")]
    pub checkpoints: Option<PathBuf>,
    /// Experiment name recorded in a new run.
    #[arg(long)]
    pub experiment: Option<String>,
    /// Keep only the newest N epoch files (the best is always kept).
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub keep_last_n: Option<u32>,
    /// Metric that picks the best checkpoint.
    #[arg(long)]
    pub monitor: Option<String>,
    /// Whether a lower (`min`) or higher (`max`) monitored metric is better.
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Save a checkpoint every N epochs.
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub save_every_n_epochs: Option<u32>,
    /// Training data (dataset name or directory).
    #[arg(long)]
    pub data: Option<String>,
    /// Base model to fine-tune (a safetensors file).
    #[arg(long, value_name = "FILE")]
    pub base: Option<PathBuf>,
}

impl Command {
    /// Whether this command trains (and so splits batches over the cores and stops on Ctrl-C
    /// at the next step instead of at once).
    pub fn trains(&self) -> bool {
        matches!(self, Command::Train(args) if !args.list_runs)
            || matches!(self, Command::Pretrain(_))
    }
}

/// Runs a parsed command line. Training commands stop at the next step once `stop` is set
/// (the binary sets it on Ctrl-C) and then fail with [`crate::train::TrainError::Interrupted`].
pub fn run_cli(cli: Cli, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) if args.list_runs => {
            let dir = args
                .checkpoints
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE_DIR));
            runs::print_runs_table(&dir)
        }
        Command::Train(args) => train::train(&args, stop),
        Command::Pretrain(args) => pretrain::pretrain(&args, stop),
        Command::Sample(args) => sample::sample(&args),
        Command::Export(args) => sample::export(&args),
        Command::Runs {
            command: RunsCommand::Show(args),
        } => runs::show_run(&args.dir.checkpoints, args.run_number),
        Command::Runs {
            command: RunsCommand::List(dir),
        } => runs::print_runs_table(&dir.checkpoints),
        Command::Verify(args) => verify::verify_run(&args.dir.checkpoints, args.run_number),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_seed_flag() {
        let cli = Cli::try_parse_from([
            "diffit",
            "train",
            "--epochs",
            "10",
            "--batch-size",
            "64",
            "--learning-rate",
            "1e-4",
            "--run-number",
            "3",
            "--resume",
            "--config",
            "c.yaml",
            "--preset",
            "small",
            "--seed",
            "7",
            "--checkpoints",
            "ck",
            "--experiment",
            "e",
            "--keep-last-n",
            "5",
            "--monitor",
            "val_loss",
            "--mode",
            "max",
            "--save-every-n-epochs",
            "2",
            "--data",
            "trees",
            "--base",
            "b.safetensors",
        ])
        .unwrap();
        let Command::Train(a) = cli.command else {
            panic!("not train")
        };
        assert_eq!(
            (a.epochs, a.batch_size, a.run_number, a.seed),
            (Some(10), Some(64), Some(3), Some(7))
        );
        assert_eq!(a.learning_rate, Some(1e-4));
        assert!(a.resume && !a.list_runs);
        assert_eq!(a.mode, Some(Mode::Max));
        assert_eq!(a.checkpoints, Some(PathBuf::from("ck")));
        assert_eq!(a.keep_last_n, Some(5));
        assert_eq!(a.save_every_n_epochs, Some(2));
        assert!(
            Cli::try_parse_from(["diffit", "train", "--resume"]).is_err(),
            "--resume needs --run-number"
        );
    }

    #[test]
    fn every_subcommand_defaults_the_checkpoints_dir() {
        let cli = Cli::try_parse_from(["diffit", "runs", "show", "4"]).unwrap();
        let Command::Runs {
            command: RunsCommand::Show(a),
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(
            (a.run_number, a.dir.checkpoints),
            (4, PathBuf::from("checkpoints"))
        );
        let cli = Cli::try_parse_from([
            "diffit",
            "verify",
            "--run-number",
            "2",
            "--checkpoints",
            "x",
        ])
        .unwrap();
        let Command::Verify(a) = cli.command else {
            panic!()
        };
        assert_eq!((a.run_number, a.dir.checkpoints), (2, PathBuf::from("x")));
    }
}
