//! NVlabs' official DiffiT weights in and out: `diffit import` reads an official state_dict
//! (safetensors, or a PyTorch `.pt`/`.pth` through candle's pickle reader) and writes our base
//! file; `diffit export --format official` writes a base or a run's weights back as one.
//! The conversion itself is `model::official`'s; this module reads and writes the files.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use clap::Args;

use crate::train::error::TrainError;
use crate::train::export::write_safetensors;
use crate::train::pretrain::{base_model_config, load_base, save_base};
use crate::train::sample::load_fused;
use format::CheckpointName;
use model::official::{export_state_dict, import_state_dict};
use model::{parameter_count, Config};

/// `diffit import` flags.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The official state_dict: a safetensors file or a PyTorch checkpoint (`torch.save`'s
    /// zip format, `.pt` / `.pth`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The base model file to write (our safetensors, with its model config in the header).
    #[arg(long, value_name = "BASE")]
    pub out: PathBuf,
    /// In a PyTorch training checkpoint that holds several dicts, the entry with the
    /// state_dict (e.g. `ema` or `model`).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
}

/// The first bytes of a zip archive, which `torch.save` writes since PyTorch 1.6.
const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";
/// The first byte of a bare pickle (protocol 2 or later): PyTorch's legacy format.
const PICKLE_PROTO: u8 = 0x80;

fn bad(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The first four bytes of `path` (fewer if it is shorter).
fn magic(path: &Path) -> Result<Vec<u8>, TrainError> {
    let io = |e| TrainError::io("read", path, e);
    let mut head = Vec::with_capacity(4);
    std::fs::File::open(path)
        .map_err(io)?
        .take(4)
        .read_to_end(&mut head)
        .map_err(io)?;
    Ok(head)
}

/// Reads every tensor of a state_dict file, whichever of the two formats it is in (told by
/// its content, not its name). `key` picks the state_dict inside a PyTorch checkpoint dict.
pub fn read_state_dict(
    path: &Path,
    key: Option<&str>,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let head = magic(path)?;
    if head.as_slice() == ZIP_MAGIC {
        return read_pytorch(path, key);
    }
    if key.is_some() {
        return Err(TrainError::Usage(format!(
            "--key picks an entry of a PyTorch checkpoint; {} is not one",
            path.display()
        )));
    }
    if head.first() == Some(&PICKLE_PROTO) {
        return Err(bad(
            path,
            "a PyTorch checkpoint in the legacy (pre-1.6) pickle format, which candle cannot \
             read: save it again with torch.save (the zip format) or as safetensors",
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| TrainError::io("read", path, e))?;
    if let Err(e) = safetensors::SafeTensors::deserialize(&bytes) {
        return Err(bad(
            path,
            format!("neither a safetensors file nor a PyTorch checkpoint (zip): {e}"),
        ));
    }
    candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| bad(path, format!("cannot load tensors: {e}")))
}

/// The tensors of a PyTorch zip checkpoint. Each tensor's size is checked against the file's
/// before it is read: `torch.save` stores tensors uncompressed, so none can be larger.
fn read_pytorch(path: &Path, key: Option<&str>) -> Result<HashMap<String, Tensor>, TrainError> {
    let file_len = std::fs::metadata(path)
        .map_err(|e| TrainError::io("read", path, e))?
        .len();
    let pth = candle_core::pickle::PthTensors::new(path, key).map_err(|e| {
        bad(
            path,
            format!("cannot read it as a PyTorch checkpoint (candle's pickle reader): {e}"),
        )
    })?;
    let infos = pth.tensor_infos();
    if infos.is_empty() {
        let hint = match key {
            Some(key) => format!("entry `{key}` holds no tensors"),
            None => "it holds no tensors at the top level; if it is a training checkpoint, pass \
                     --key with the entry that holds the state_dict (e.g. --key ema)"
                .into(),
        };
        return Err(bad(path, hint));
    }
    let mut names: Vec<&String> = infos.keys().collect();
    names.sort();
    let mut out = HashMap::with_capacity(names.len());
    for name in names {
        let info = &infos[name];
        let bytes = info.layout.shape().elem_count() as u128 * info.dtype.size_in_bytes() as u128;
        if bytes > u128::from(file_len) {
            return Err(bad(
                path,
                format!(
                    "tensor `{name}` claims {bytes} bytes ({:?} {:?}), more than the whole file's \
                     {file_len}",
                    info.dtype,
                    info.layout.dims()
                ),
            ));
        }
        let tensor = pth
            .get(name)
            .map_err(|e| bad(path, format!("cannot read tensor `{name}`: {e}")))?
            .ok_or_else(|| bad(path, format!("tensor `{name}` vanished while reading")))?;
        out.insert(name.clone(), tensor);
    }
    Ok(out)
}

/// One line describing a published model's sizes.
fn describe(cfg: &Config) -> String {
    format!(
        "{s}×{s}×{c}, patch {p}, width {h}, {d} blocks of {n} heads, {classes} classes + null{sigma}, {params} parameters",
        s = cfg.image_size,
        c = cfg.in_channels,
        p = cfg.patch_size,
        h = cfg.hidden_size,
        d = cfg.depth,
        n = cfg.num_heads,
        classes = cfg.num_classes.unwrap_or(0),
        sigma = if cfg.learn_sigma { ", learned variance" } else { "" },
        params = parameter_count(cfg),
    )
}

/// Runs `diffit import`: reads, checks and converts the official state_dict, writes the base.
pub fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let tensors = read_state_dict(&args.file, args.key.as_deref())?;
    let imported = import_state_dict(tensors).map_err(|e| {
        bad(
            &args.file,
            format!("not an official DiffiT state_dict: {e}"),
        )
    })?;
    save_base(&args.out, &imported.tensors, &imported.config)?;
    eprintln!(
        "imported {}: published DiffiT, {} (pos_embed and {} relative_position_index buffers \
         checked and dropped); wrote {}",
        args.file.display(),
        describe(&imported.config),
        imported.config.depth,
        args.out.display()
    );
    Ok(())
}

/// Where `diffit export --format official` takes its weights from.
#[derive(Debug, Clone)]
pub enum OfficialSource {
    /// A base model file.
    Base(PathBuf),
    /// A run's checkpoint (`base`: the run's base; otherwise LoRA fused into it).
    Run {
        /// The checkpoints directory.
        checkpoints: PathBuf,
        /// The run.
        run_number: u32,
        /// The checkpoint.
        checkpoint: CheckpointName,
    },
}

/// `diffit export --format official`: writes the weights of `source` to `out` as the official
/// state_dict in safetensors (PyTorch: `model.load_state_dict(safetensors.torch.load_file(out))`).
pub fn export_official(source: &OfficialSource, out: &Path) -> Result<PathBuf, TrainError> {
    let (cfg, tensors, origin) = match source {
        OfficialSource::Base(path) => {
            let cfg = base_model_config(path)?.ok_or_else(|| {
                bad(
                    path,
                    "its header has no model_config, so its model is unknown",
                )
            })?;
            let loaded = load_base(path, &cfg)?;
            (cfg, loaded.tensors, path.display().to_string())
        }
        OfficialSource::Run {
            checkpoints,
            run_number,
            checkpoint,
        } => {
            let fused = load_fused(checkpoints, *run_number, *checkpoint)?;
            (
                fused.model_config,
                fused.tensors,
                format!("run {run_number:03} {checkpoint}"),
            )
        }
    };
    let official = export_state_dict(&cfg, &tensors).map_err(|e| {
        TrainError::Usage(format!(
            "{origin} cannot be exported as the official DiffiT: {e}"
        ))
    })?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io("create directory", dir, e))?;
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(out, &official, Some(meta))?;
    Ok(out.to_path_buf())
}
