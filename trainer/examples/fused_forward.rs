//! One forward pass of a run's fused model (base + LoRA of a checkpoint, as `diffit sample`
//! loads it) on inputs from a file, for checking against another implementation:
//! `scripts/peft_check.py` runs the official PyTorch DiffiT with our PEFT adapter on the same
//! inputs.
//!
//! ```sh
//! cargo run -p trainer --example fused_forward -- CHECKPOINTS RUN CHECKPOINT IN OUT
//! ```
//!
//! `IN` (safetensors) holds `x` `[n, C, H, W]` (f32), `t` `[n]` (f32) and `y` `[n]` (integer
//! class labels, the null class allowed); `OUT` gets `out`, the network's whole output
//! `[n, C_out, H, W]` (learned-variance channels included).

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use format::CheckpointName;
use trainer::train::sample::load_fused;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [checkpoints, run, checkpoint, input, output] = args.as_slice() else {
        bail!("usage: fused_forward CHECKPOINTS RUN CHECKPOINT IN.safetensors OUT.safetensors");
    };
    let run: u32 = run.parse().with_context(|| format!("run number {run:?}"))?;
    let checkpoint: CheckpointName = checkpoint
        .parse()
        .map_err(|e| anyhow::anyhow!("checkpoint {checkpoint:?}: {e}"))?;
    let model = load_fused(&PathBuf::from(checkpoints), run, checkpoint)?;
    let net = model.network()?;

    let inputs = candle_core::safetensors::load(input, &Device::Cpu)
        .with_context(|| format!("read {input}"))?;
    let get = |name: &str| {
        inputs
            .get(name)
            .with_context(|| format!("{input} has no tensor `{name}`"))
    };
    let x = get("x")?.to_dtype(DType::F32)?;
    let t = get("t")?.to_dtype(DType::F32)?;
    let y = get("y")?.to_dtype(DType::U32)?;
    let labels = model.model_config.num_classes.map(|_| &y);
    let out = net.forward_labeled(&x, &t, labels, None)?;
    candle_core::safetensors::save(&[("out".to_string(), out)].into(), output)
        .with_context(|| format!("write {output}"))?;
    eprintln!(
        "wrote {output}: run {run:03} {checkpoint} on {} inputs",
        x.dim(0)?
    );
    Ok(())
}
