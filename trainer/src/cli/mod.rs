//! The `diffit` command line: `train` (with the seed's flags), `runs show`, `verify`.
//!
//! Parsing lives here; each subcommand's work lives in its own module, and the binary is a thin
//! `main` over [`run_cli`] (it parses, installs logging and the Ctrl-C handler, and maps the
//! error to an exit code with [`exit::exit_code`]).

pub mod exit;
pub mod inspect;
pub mod official;
pub mod pretrain;
pub mod runs;
pub mod sample;
pub mod sync;
pub mod train;
pub mod values;
pub mod verify;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::train::config::Overrides;
use crate::train::device::DeviceChoice;
use format::layout::DEFAULT_BASE_DIR;

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
    /// Show what a safetensors file is: kind, size, header metadata, tensors, checksum (and
    /// whether it matches the run's metadata when the file is inside a run).
    Inspect(inspect::InspectArgs),
    /// Train a full base model on the generic (tree-free) set and write it.
    Pretrain(pretrain::PretrainArgs),
    /// Sample an image grid from a run's checkpoint (base + LoRA fused, DDIM).
    Sample(sample::SampleArgs),
    /// Export a run's checkpoint as merged weights or a PEFT adapter folder, or a run or base
    /// file as NVlabs' official DiffiT state_dict.
    Export(sample::ExportArgs),
    /// Convert NVlabs' official DiffiT weights (a state_dict in safetensors or a PyTorch
    /// .pt/.pth) into a base model file.
    Import(official::ImportArgs),
    /// Copy runs between a checkpoints dir and object storage (either way): only what
    /// differs, verified by checksum, metadata.json last.
    Sync(sync::SyncArgs),
}

/// `diffit runs ...`.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Print a run's summary.
    Show(ShowArgs),
    /// Print the table of all runs (same as `train --list-runs`).
    List(CheckpointsArg),
    /// Add tags to a run (`--remove` takes them off); the dashboard searches them (`tag:NAME`).
    /// Written to the run's annotations.json, so a run can be tagged while it trains.
    Tag(TagArgs),
    /// Set a run's note (`--clear` removes it); with neither, print it.
    Note(NoteArgs),
}

/// `diffit runs tag N TAG... [--remove TAG]...`.
#[derive(Debug, Clone, Args)]
pub struct TagArgs {
    /// The run number.
    #[arg(allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub run_number: u32,
    /// Tags to add: letters, digits, '_', '-' and '.'.
    #[arg(value_name = "TAG")]
    pub tags: Vec<String>,
    /// A tag to remove (repeatable).
    #[arg(long = "remove", value_name = "TAG")]
    pub remove: Vec<String>,
    /// Where the runs are.
    #[command(flatten)]
    pub dir: CheckpointsArg,
}

/// `diffit runs note N [TEXT | --clear]`.
#[derive(Debug, Clone, Args)]
pub struct NoteArgs {
    /// The run number.
    #[arg(allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub run_number: u32,
    /// The note (quote it); replaces the run's note.
    #[arg(value_name = "TEXT", conflicts_with = "clear")]
    pub text: Option<String>,
    /// Remove the note.
    #[arg(long)]
    pub clear: bool,
    /// Where the runs are.
    #[command(flatten)]
    pub dir: CheckpointsArg,
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
    /// Settings that override the config file (and, on resume, the run's stored config).
    #[command(flatten)]
    pub overrides: Overrides,
    /// Resume the run given by --run-number from its newest valid checkpoint.
    #[arg(long, requires = "run_number")]
    pub resume: bool,
    /// Print the table of runs and exit.
    #[arg(long)]
    pub list_runs: bool,
    /// YAML config file (the seed's `lora_finetuning.yaml` keys).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to compute: `cpu`, or `cuda` / `cuda:N` for an NVIDIA GPU (a build with the
    /// `cuda` feature; under an MPI launcher `cuda` is each process's local-rank GPU).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceChoice,
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
///
/// Only `diffit train` runs as a job of several processes; any other command started by an
/// MPI launcher on more than one rank is refused (each rank would do the same work, and
/// writing commands would write the same files from several processes).
pub fn run_cli(cli: Cli, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let distributed = matches!(&cli.command, Command::Train(args) if !args.list_runs);
    if let (false, Some(ranks)) = (distributed, crate::train::collective::launched_ranks()) {
        if ranks > 1 {
            return Err(crate::train::TrainError::Usage(format!(
                "only `diffit train` runs on several processes; run this command as one \
                 process (it was started on {ranks} by an MPI launcher)"
            ))
            .into());
        }
    }
    match cli.command {
        Command::Train(args) if args.list_runs => {
            let dir = args
                .overrides
                .base_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE_DIR));
            runs::print_runs_table(&dir)
        }
        Command::Train(args) => train::train(&args, stop),
        Command::Pretrain(args) => pretrain::pretrain(&args, stop),
        Command::Sample(args) => sample::sample(&args),
        Command::Export(args) => sample::export(&args),
        Command::Import(args) => official::import(&args),
        Command::Sync(args) => sync::sync(&args),
        Command::Runs {
            command: RunsCommand::Show(args),
        } => runs::show_run(&args.dir.checkpoints, args.run_number),
        Command::Runs {
            command: RunsCommand::List(dir),
        } => runs::print_runs_table(&dir.checkpoints),
        Command::Runs {
            command: RunsCommand::Tag(args),
        } => runs::tag_run(&args),
        Command::Runs {
            command: RunsCommand::Note(args),
        } => runs::note_run(&args),
        Command::Verify(args) => verify::verify_run(&args.dir.checkpoints, args.run_number),
        Command::Inspect(args) => inspect::inspect(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::{DataSource, Preset};
    use format::Mode;

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
            "--sample-every-n-epochs",
            "0",
            "--data",
            "trees",
            "--base",
            "b.safetensors",
            "--save-base-model",
            "false",
        ])
        .unwrap();
        let Command::Train(a) = cli.command else {
            panic!("not train")
        };
        assert!(a.resume && !a.list_runs);
        assert_eq!(a.config, Some(PathBuf::from("c.yaml")));
        let expected = Overrides {
            experiment_name: Some("e".into()),
            preset: Some(Preset::Small),
            base: Some(PathBuf::from("b.safetensors")),
            epochs: Some(10),
            batch_size: Some(64),
            learning_rate: Some(1e-4),
            seed: Some(7),
            data: Some(DataSource::Trees),
            base_dir: Some(PathBuf::from("ck")),
            run_number: Some(3),
            keep_last_n: Some(5),
            monitor: Some("val_loss".into()),
            mode: Some(Mode::Max),
            save_every_n_epochs: Some(2),
            sample_every_n_epochs: Some(0),
            save_base_model: Some(false),
            mlflow_uri: None,
            mlflow_experiment: None,
            mirror: None,
            staging: None,
            keep_optimizer_last_n: None,
            background: None,
            label_dropout: None,
            data_format: None,
            classes: None,
            augment: false,
            base_run: None,
            base_checkpoint: None,
            data_shards: None,
        };
        assert_eq!(a.overrides, expected);
        // The seed's spelling of --base, keeping everything, the newest moments, a background.
        let cli = Cli::try_parse_from([
            "diffit",
            "train",
            "--base-model",
            "b.safetensors",
            "--keep-last-n",
            "0",
            "--keep-optimizer-last-n",
            "2",
            "--background",
            "#102030",
            "--data",
            "cifar-100-binary",
            "--data-format",
            "cifar100",
            "--classes",
            "47,52,56,59,96",
            "--augment",
        ])
        .unwrap();
        let Command::Train(a) = cli.command else {
            panic!("not train")
        };
        let o = &a.overrides;
        assert_eq!(o.base, Some(PathBuf::from("b.safetensors")));
        assert_eq!((o.keep_last_n, o.keep_optimizer_last_n), (Some(0), Some(2)));
        assert_eq!(o.data, Some(DataSource::Path("cifar-100-binary".into())));
        assert_eq!(o.data_format, Some(crate::data::DataFormat::Cifar100));
        assert_eq!(o.classes, Some(vec![47, 52, 56, 59, 96]));
        assert!(o.augment);
        assert_eq!(o.background, Some(crate::data::Background([16, 32, 48])));
        for bad in [
            ["--keep-optimizer-last-n", "0"],
            ["--background", "#12345"],
            ["--keep-last-n", "-1"],
        ] {
            let mut args = vec!["diffit", "train"];
            args.extend(bad);
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["diffit", "train", "--data", "imgs"]).unwrap();
        let Command::Train(a) = cli.command else {
            panic!("not train")
        };
        assert_eq!(a.overrides.data, Some(DataSource::Path("imgs".into())));
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
