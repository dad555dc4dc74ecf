//! `diffit sample` and `diffit export`: use a trained run's checkpoint (or, for the official
//! format, a base file).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::official::{export_official, OfficialSource};
use super::values;
use crate::train::error::TrainError;
use crate::train::sample::{export_merged, export_peft, load_fused, sample_grid};
use format::layout::DEFAULT_BASE_DIR;
use format::CheckpointName;
use model::diffusion::{Guidance, DEFAULT_CFG_SCALE, DEFAULT_ETA};

/// `diffit sample` flags.
#[derive(Debug, Clone, Args)]
pub struct SampleArgs {
    /// The run to sample from.
    #[arg(long, allow_negative_numbers = true, value_parser = values::count::<u32>())]
    pub run_number: u32,
    /// Checkpoint: best, last, epoch_NNN, or base (no LoRA).
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = values::seed)]
    pub seed: u64,
    /// DDIM steps.
    #[arg(long, default_value_t = 50, allow_negative_numbers = true, value_parser = values::count::<usize>())]
    pub steps: usize,
    /// DDIM's η in [0, 1]: 0 is deterministic DDIM, 1 re-draws all of each step's noise.
    #[arg(long, default_value_t = DEFAULT_ETA, allow_hyphen_values = true, value_parser = values::unit_interval)]
    pub eta: f64,
    /// Number of images.
    #[arg(long, default_value_t = 16, allow_negative_numbers = true, value_parser = values::count::<usize>())]
    pub n: usize,
    /// For a labelled model: the class of the images, by name or number; several
    /// (comma-separated) take turns. Unset: unconditional (the null class).
    #[arg(long, value_name = "CLASS", value_delimiter = ',')]
    pub class: Vec<String>,
    /// Classifier-free guidance scale with --class: 1 samples the class plainly, more pushes
    /// harder towards it (ε = ε_uncond + s·(ε_cond − ε_uncond)).
    #[arg(long, value_name = "S", default_value_t = DEFAULT_CFG_SCALE, allow_hyphen_values = true, value_parser = values::finite)]
    pub cfg_scale: f64,
    /// Output PNG.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Directory holding the runs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BASE_DIR)]
    pub checkpoints: PathBuf,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One safetensors file: LoRA fused into the base, no LoRA tensors.
    Merged,
    /// A PEFT adapter folder: adapter_model.safetensors + adapter_config.json.
    Peft,
    /// NVlabs' official DiffiT state_dict (safetensors), for the published architecture:
    /// `--checkpoint base` (or `--base FILE`) the base alone, otherwise LoRA fused in.
    Official,
}

/// `diffit export` flags.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The run to export.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_parser = values::count::<u32>(),
        required_unless_present = "base",
        conflicts_with = "base"
    )]
    pub run_number: Option<u32>,
    /// A base model file to export instead of a run (`--format official` only).
    #[arg(long, value_name = "FILE")]
    pub base: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output file (merged, official) or folder (peft).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Checkpoint: best, last or epoch_NNN.
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    /// Directory holding the runs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BASE_DIR)]
    pub checkpoints: PathBuf,
}

fn checkpoint_name(text: &str) -> Result<CheckpointName, TrainError> {
    text.parse::<CheckpointName>()
        .map_err(|e| TrainError::Usage(format!("--checkpoint: {e}")))
}

/// Runs `diffit sample`.
pub fn sample(args: &SampleArgs) -> anyhow::Result<()> {
    let name = checkpoint_name(&args.checkpoint)?;
    let model = load_fused(&args.checkpoints, args.run_number, name)?;
    let guidance = if args.class.is_empty() {
        None
    } else {
        let labels = args
            .class
            .iter()
            .map(|c| model.class_label(c))
            .collect::<Result<Vec<_>, _>>()?;
        Some(Guidance {
            classes: labels.iter().copied().cycle().take(args.n).collect(),
            scale: args.cfg_scale,
        })
    };
    let what = match &guidance {
        Some(g) => format!(", class {}, guidance {}", args.class.join(","), g.scale),
        None => String::new(),
    };
    let path = sample_grid(
        &model, args.n, args.seed, args.steps, args.eta, guidance, &args.out,
    )?;
    eprintln!(
        "wrote {} ({} images, run {:03} {name}, seed {}{what})",
        path.display(),
        args.n,
        args.run_number,
        args.seed
    );
    Ok(())
}

/// Runs `diffit export`.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let name = checkpoint_name(&args.checkpoint)?;
    let path = match (args.format, &args.base, args.run_number) {
        (ExportFormat::Official, Some(base), _) => {
            export_official(&OfficialSource::Base(base.clone()), &args.out)?
        }
        (ExportFormat::Official, None, Some(run_number)) => export_official(
            &OfficialSource::Run {
                checkpoints: args.checkpoints.clone(),
                run_number,
                checkpoint: name,
            },
            &args.out,
        )?,
        (_, Some(_), _) => {
            return Err(TrainError::Usage(
                "--base exports only --format official; merged and peft export a run's \
                 adapters (pass --run-number)"
                    .into(),
            )
            .into())
        }
        (format, None, Some(run_number)) => export_run(args, format, run_number, name)?,
        (_, None, None) => {
            return Err(TrainError::Usage("pass --run-number or --base".into()).into())
        }
    };
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `diffit export --format merged|peft` of a run's adapters.
fn export_run(
    args: &ExportArgs,
    format: ExportFormat,
    run_number: u32,
    name: CheckpointName,
) -> Result<PathBuf, TrainError> {
    if name == CheckpointName::Base {
        return Err(TrainError::Usage(
            "--checkpoint base has no adapters; export best, last or epoch_NNN".into(),
        ));
    }
    let model = load_fused(&args.checkpoints, run_number, name)?;
    if format == ExportFormat::Peft {
        let base = CheckpointName::Base.relative_path(run_number);
        export_peft(&model, &args.out, &base)
    } else {
        export_merged(&model, &args.out)
    }
}
