#!/usr/bin/env python3
"""Writes the DiffiT parity fixture: NVlabs' official model at a tiny size, every stage of
one forward pass, in one small safetensors file that `model/tests/official_parity.rs` checks
our model against.

Run by hand (not by `make test`); it needs PyTorch, numpy, timm 0.9.x and safetensors, and
the official `diffit/diffit.py` (NVlabs/DiffiT, commit 9f6f0a57), which this repository does
not vendor:

    python3 scripts/diffit_parity_fixture.py PATH/TO/diffit.py \
        [--out model/tests/fixtures/diffit_official_tiny.safetensors] \
        [--pt-out trainer/tests/fixtures/diffit_official_tiny_f16.pt]

On Debian 12, `apt-get install python3-torch python3-torchvision python3-numpy` (torch 1.13;
timm imports torchvision) and `pip install --no-deps timm==0.9.16 safetensors` in a venv made
with `--system-site-packages` avoid the multi-GB PyPI torch wheel. Nothing is stubbed: the
official file runs as published, with timm's real `Mlp` and `PatchEmbed`.

The file holds:
- the official `state_dict()` under its own names (so the test imports exactly what
  PyTorch would save, buffers included), every parameter drawn at random (the official
  initialisation zeroes the head and all biases, which would hide errors there);
- `parity.input.{x,t,y}`: images, timesteps (t = 999, 0, 437) and labels (the last one the
  null class);
- `parity.stage.*`: the time features, the time token, the condition (time + label token)
  the blocks see, the patch tokens plus positions, each block's output and the final output.

It also writes the same state_dict in float16 with `torch.save` (the zip format), as
`.pt` files are shared, for `trainer/tests/import.rs` (candle's pickle reader, float16 weights).
"""

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

# The fixture's model: 8x8 RGB, patch 2 (a 4x4 token grid), width 16, 2 blocks of 2 heads,
# 3 classes (+ the null class), learned variance. `Config::published_tiny()` must match.
CONFIG = dict(
    input_size=8,
    patch_size=2,
    in_channels=3,
    hidden_size=16,
    depth=2,
    num_heads=2,
    mlp_ratio=4.0,
    class_dropout_prob=0.1,
    num_classes=3,
    learn_sigma=True,
)
TIMESTEPS = [999, 0, 437]
LABELS = [0, 2, CONFIG["num_classes"]]  # the last is the null class
SEED = 20240101


def load_official(path: Path):
    spec = importlib.util.spec_from_file_location("official_diffit", path)
    if spec is None or spec.loader is None:
        sys.exit(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter at random, scaled so activations stay of order one."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":  # fixed sin-cos, not a weight
                continue
            if name.endswith("relative_position_bias_table"):
                std = 0.5
            elif name.endswith("embedding_table.weight"):
                std = 0.5
            elif name.endswith(".bias"):
                std = 0.1
            else:
                fan_in = math.prod(p.shape[1:])
                std = 1.0 / math.sqrt(fan_in)
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("diffit_py", type=Path, help="the official diffit/diffit.py")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("model/tests/fixtures/diffit_official_tiny.safetensors"),
    )
    parser.add_argument(
        "--pt-out",
        type=Path,
        default=Path("trainer/tests/fixtures/diffit_official_tiny_f16.pt"),
    )
    args = parser.parse_args()

    official = load_official(args.diffit_py)
    torch.manual_seed(SEED)  # the official constructor initialises with the global RNG
    model = official.DiffiT(**CONFIG)
    gen = torch.Generator().manual_seed(SEED)
    randomise(model, gen)
    model.eval()

    b = len(TIMESTEPS)
    c, s = CONFIG["in_channels"], CONFIG["input_size"]
    x = torch.randn((b, c, s, s), generator=gen)
    t = torch.tensor(TIMESTEPS, dtype=torch.int64)  # as the diffusion loop passes them
    y = torch.tensor(LABELS, dtype=torch.int64)

    stages = {}

    def keep_block_inputs(_module, inputs):
        stages.setdefault("tokens", inputs[0].detach().clone())
        stages.setdefault("condition", inputs[1].detach().clone())

    model.blocks[0].register_forward_pre_hook(keep_block_inputs)
    model.t_embedder.register_forward_hook(
        lambda _m, _i, out: stages.__setitem__("time_token", out.detach().clone())
    )
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(
            lambda _m, _i, out, i=i: stages.__setitem__(f"block.{i}", out.detach().clone())
        )
    with torch.no_grad():
        output = model(x, t, y)
        stages["time_features"] = official.TimestepEmbedder.timestep_embedding(
            t, model.t_embedder.frequency_embedding_size
        )
    stages["output"] = output

    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors["parity.input.x"] = x
    tensors["parity.input.t"] = t.float()
    tensors["parity.input.y"] = y
    for name, value in stages.items():
        tensors[f"parity.stage.{name}"] = value.contiguous()
    metadata = {
        "generator": "scripts/diffit_parity_fixture.py",
        "official": "NVlabs/DiffiT diffit/diffit.py @ 9f6f0a57",
        "config": json.dumps(CONFIG),
        "torch": torch.__version__,
        "seed": str(SEED),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(tensors)} tensors)")

    half = {
        k: (v.half() if v.is_floating_point() else v)
        for k, v in model.state_dict().items()
    }
    args.pt_out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(half, args.pt_out)
    print(f"wrote {args.pt_out} ({args.pt_out.stat().st_size} bytes, {len(half)} tensors)")


if __name__ == "__main__":
    main()
