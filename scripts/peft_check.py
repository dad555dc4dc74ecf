#!/usr/bin/env python3
"""PEFT, checked by PEFT: our exported adapter on NVlabs' official DiffiT through Hugging Face
`peft` computes what our fused model computes.

For a run of the published architecture (a fresh `published-tiny` run made here, or one given
with --checkpoints/--run-number) it

1. exports the run's base in the official format (`diffit export --format official
   --checkpoint base`) and loads it, strictly, into the official PyTorch `DiffiT`;
2. exports the checkpoint's adapters (`diffit export --format peft`) and attaches them with
   `peft.PeftModel.from_pretrained`, checking that every tensor of the adapter file landed on
   a LoRA layer of the official model (the label table's as PEFT's embedding adapter);
3. runs both on fixed inputs (several timesteps, classes and the null class) and compares with
   our fused model's output on the same inputs (`trainer/examples/fused_forward.rs`), and
   with PEFT's own `merge_and_unload()`.

Run by hand (not by `make test`); it needs PyTorch, numpy, timm 0.9.x, safetensors and peft,
the official `diffit/diffit.py` (NVlabs/DiffiT, which this repository does not vendor), and
the binaries:

    cargo build -p trainer --bin diffit --example fused_forward
    python3 scripts/peft_check.py PATH/TO/diffit.py [--checkpoints DIR --run-number N]

On Debian 12: `apt-get install python3-torch python3-torchvision`, a venv made with
`--system-site-packages`, then `pip install --no-deps timm==0.9.16 safetensors peft==0.13.2
transformers==4.44.2 accelerate==0.34.2 tokenizers==0.19.1 huggingface_hub==0.24.6 packaging
regex tqdm filelock requests fsspec` (peft imports transformers and accelerate; `--no-deps`
keeps pip from replacing Debian's torch 1.13).

Exits non-zero when the difference exceeds --tolerance.
"""

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
# A quick run when none is given: the published-tiny preset (its base pretrained once, cached
# in the run's checkpoints dir), fine-tuned on 64 tree images, labelled by species.
QUICK_YAML = "data:\n  num_images: 64\ntraining:\n  batch_size: 16\n  warmup_steps: 1\n"
TIMESTEPS = [999, 0, 437, 250, 60]
SEED = 20240615


def load_official(path: Path):
    spec = importlib.util.spec_from_file_location("official_diffit", path)
    if spec is None or spec.loader is None:
        sys.exit(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args) -> None:
    command = [str(a) for a in args]
    print("$", " ".join(command), file=sys.stderr)
    done = subprocess.run(command)
    if done.returncode != 0:
        sys.exit(f"{command[0]} failed with exit status {done.returncode}")


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("official", type=Path, help="the official diffit/diffit.py")
    parser.add_argument("--checkpoints", type=Path, help="runs dir (default: a fresh run)")
    parser.add_argument("--run-number", type=int, default=1)
    parser.add_argument("--checkpoint", default="best", help="best, last or epoch_NNN")
    parser.add_argument("--diffit", type=Path, default=ROOT / "target/debug/diffit")
    parser.add_argument(
        "--forward", type=Path, default=ROOT / "target/debug/examples/fused_forward"
    )
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    for binary in (args.diffit, args.forward):
        if not binary.is_file():
            sys.exit(
                f"{binary} is missing: cargo build -p trainer --bin diffit --example fused_forward"
            )

    official = load_official(args.official)
    from peft import PeftModel  # after the official file: a missing module is named there

    work = Path(tempfile.mkdtemp(prefix="peft_check."))
    checkpoints = args.checkpoints
    if checkpoints is None:
        checkpoints = work / "checkpoints"
        yaml = work / "quick.yaml"
        yaml.write_text(QUICK_YAML)
        run(args.diffit, "train", "--preset", "published-tiny", "--epochs", "2",
            "--config", yaml, "--checkpoints", checkpoints)
    run_dir = checkpoints / f"run_{args.run_number:03d}"
    config = json.loads((run_dir / "config.json").read_text())
    cfg = config["model"]
    if cfg.get("architecture") != "published":
        sys.exit(f"{run_dir}: not the published architecture ({cfg.get('architecture', 'hybrid')})")

    base_file = work / "base_official.safetensors"
    adapter_dir = work / "adapter"
    common = ["--run-number", args.run_number, "--checkpoints", checkpoints]
    run(args.diffit, "export", "--format", "official", "--checkpoint", "base",
        "--out", base_file, *common)
    run(args.diffit, "export", "--format", "peft", "--checkpoint", args.checkpoint,
        "--out", adapter_dir, *common)

    num_classes = cfg["num_classes"]
    model = official.DiffiT(
        input_size=cfg["image_size"],
        patch_size=cfg["patch_size"],
        in_channels=cfg["in_channels"],
        hidden_size=cfg["hidden_size"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        class_dropout_prob=0.1,  # > 0: the table has the null class's row
        num_classes=num_classes,
        learn_sigma=cfg.get("learn_sigma", False),
    )
    model.load_state_dict(load_file(base_file), strict=True)
    model.eval()

    gen = torch.Generator().manual_seed(SEED)
    n = len(TIMESTEPS)
    size, channels = cfg["image_size"], cfg["in_channels"]
    inputs = {
        "x": torch.randn(n, channels, size, size, generator=gen),
        "t": torch.tensor(TIMESTEPS, dtype=torch.float32),
        # Every class in turn, the null class (num_classes) included.
        "y": torch.tensor([i % (num_classes + 1) for i in range(n - 1)] + [num_classes]),
    }
    with torch.no_grad():
        base_out = model(inputs["x"], inputs["t"], inputs["y"])

    peft_model = PeftModel.from_pretrained(model, adapter_dir)
    peft_model.eval()
    # Every adapter tensor sits on a LoRA layer of the official model (PEFT names it with the
    # adapter's name, `default`), with the file's values.
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    state = peft_model.state_dict()
    for name, tensor in adapter.items():
        module, half = name.rsplit(".lora_", 1)
        if half.endswith(".weight"):
            key = f"{module}.lora_{half[: -len('.weight')]}.default.weight"
        else:
            key = f"{module}.lora_{half}.default"
        if key not in state:
            sys.exit(f"adapter tensor {name}: no {key} in the PEFT model (not attached)")
        if not torch.equal(state[key], tensor):
            sys.exit(f"adapter tensor {name}: {key} holds other values")
    attached = sum(1 for k in state if ".lora_" in k)
    if attached != len(adapter):
        sys.exit(f"the PEFT model has {attached} LoRA tensors, the adapter file {len(adapter)}")
    with torch.no_grad():
        peft_out = peft_model(inputs["x"], inputs["t"], inputs["y"])

    inputs_file, ours_file = work / "inputs.safetensors", work / "ours.safetensors"
    save_file(inputs, inputs_file)
    run(args.forward, checkpoints, args.run_number, args.checkpoint, inputs_file, ours_file)
    ours = load_file(ours_file)["out"]
    if ours.shape != peft_out.shape:
        sys.exit(f"our output is {tuple(ours.shape)}, PEFT's {tuple(peft_out.shape)}")

    with torch.no_grad():
        merged_out = peft_model.merge_and_unload()(inputs["x"], inputs["t"], inputs["y"])

    diff = max_abs(peft_out, ours)
    scale = ours.abs().max().item()
    modules = sorted({k.rsplit(".lora_", 1)[0].removeprefix("base_model.model.") for k in adapter})
    print(f"run {run_dir}, checkpoint {args.checkpoint}: {len(modules)} adapted modules "
          f"on the official model, {len(adapter)} tensors")
    print(f"adapter's effect on the official model (PEFT - base): {max_abs(peft_out, base_out):.3e}")
    print(f"max |official + PEFT - diffit fused| = {diff:.3e} (outputs up to {scale:.3f})")
    print(f"max |official merged by PEFT - diffit fused| = {max_abs(merged_out, ours):.3e}")
    print(f"max |PEFT unmerged - PEFT merged| = {max_abs(peft_out, merged_out):.3e}")
    if diff > args.tolerance:
        sys.exit(f"difference {diff:.3e} > tolerance {args.tolerance:.1e}")
    print("ok")


if __name__ == "__main__":
    main()
