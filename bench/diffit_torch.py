"""PyTorch reference of `diffit train --preset small`: the same DiffiT, LoRA and loss, on CPU.

Mirrors trainer/src/model (DiffiT with time-dependent self-attention, a relative position
bias and adaLN-Zero modulation, LoRA r=8 / alpha=16 on attn.qkv, attn.proj, mlp.fc1, mlp.fc2,
adaLN_modulation), trainer/src/diffusion.rs
(cosine schedule, 1000 steps, v-prediction MSE) and the trainer's AdamW on the LoRA
tensors only, with the same batch size and float32. Prints one JSON line with images/s of
LoRA fine-tuning steps (forward, backward, optimizer step), measured after warm-up.

    python bench/diffit_torch.py [--steps N] [--batch-size B] [--threads T] [--preset small|tiny]
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

PRESETS = {
    "tiny": dict(image_size=16, in_channels=3, patch_size=2, hidden_size=32, depth=2,
                 num_heads=2, mlp_ratio=4.0, time_freq_dim=32),
    "small": dict(image_size=16, in_channels=3, patch_size=2, hidden_size=128, depth=4,
                  num_heads=4, mlp_ratio=4.0, time_freq_dim=128),
}
LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation")
LN_EPS = 1e-6


class LoraLinear(nn.Module):
    """A frozen linear layer plus an optional trainable `B·A` update scaled by alpha / r."""

    def __init__(self, in_dim, out_dim, lora_r=None, alpha=16.0):
        super().__init__()
        self.base = nn.Linear(in_dim, out_dim)
        self.base.requires_grad_(False)
        self.lora_A = self.lora_B = None
        if lora_r:
            self.lora_A = nn.Parameter(torch.randn(lora_r, in_dim) / math.sqrt(in_dim))
            self.lora_B = nn.Parameter(torch.zeros(out_dim, lora_r))
            self.scaling = alpha / lora_r

    def forward(self, x):
        y = self.base(x)
        if self.lora_A is not None:
            y = y + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling
        return y


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


def pos_embed(grid, dim):
    quarter = dim // 4
    omega = 1.0 / (10_000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows = []
    for row in range(grid):
        for col in range(grid):
            parts = []
            for pos in (row, col):
                parts += [torch.sin(pos * omega), torch.cos(pos * omega)]
            rows.append(torch.cat(parts))
    return torch.stack(rows).float()[None]


def relative_position_index(grid):
    n = grid * grid
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    dy = i // grid + grid - 1 - j // grid
    dx = i % grid + grid - 1 - j % grid
    return (dy * (2 * grid - 1) + dx).reshape(-1)


class Attention(nn.Module):
    def __init__(self, cfg, lin):
        super().__init__()
        h = cfg["hidden_size"]
        grid = cfg["image_size"] // cfg["patch_size"]
        self.qkv = lin("attn.qkv", h, 3 * h)
        self.qkv_temb = lin("attn.qkv_temb", h, 3 * h)
        self.proj = lin("attn.proj", h, h)
        self.bias_table = nn.Parameter(torch.randn((2 * grid - 1) ** 2, cfg["num_heads"]) * 0.02,
                                       requires_grad=False)
        self.register_buffer("bias_index", relative_position_index(grid), persistent=False)
        self.heads = cfg["num_heads"]
        self.head_dim = h // self.heads

    def forward(self, x, temb):
        b, n, c = x.shape
        qkv = self.qkv(x) + self.qkv_temb(temb)[:, None]
        qkv = qkv.reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.head_dim ** -0.5, qkv[1], qkv[2]
        bias = self.bias_table[self.bias_index].reshape(n, n, self.heads).permute(2, 0, 1)
        attn = torch.softmax(q @ k.transpose(-2, -1) + bias[None], dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


def modulate(x, shift, scale):
    return F.layer_norm(x, x.shape[-1:], eps=LN_EPS) * (1 + scale) + shift


class Block(nn.Module):
    def __init__(self, cfg, lin):
        super().__init__()
        h = cfg["hidden_size"]
        hidden = round(h * cfg["mlp_ratio"])
        self.attn = Attention(cfg, lin)
        self.fc1 = lin("mlp.fc1", h, hidden)
        self.fc2 = lin("mlp.fc2", hidden, h)
        self.modulation = lin("adaLN_modulation", h, 6 * h)

    def forward(self, x, temb):
        m = self.modulation(F.silu(temb))[:, None, :].chunk(6, dim=-1)
        x = x + m[2] * self.attn(modulate(x, m[0], m[1]), temb)
        hidden = F.gelu(self.fc1(modulate(x, m[3], m[4])), approximate="tanh")
        return x + m[5] * self.fc2(hidden)


class DiffiT(nn.Module):
    def __init__(self, cfg, lora_r=8, lora_alpha=16.0):
        super().__init__()
        self.cfg = cfg

        def lin(path, i, o):
            targeted = any(path == t or path.endswith("." + t) for t in LORA_TARGETS)
            return LoraLinear(i, o, lora_r if targeted else None, lora_alpha)

        h, p, c = cfg["hidden_size"], cfg["patch_size"], cfg["in_channels"]
        self.x_embedder = lin("x_embedder.proj", p * p * c, h)
        self.t_mlp0 = lin("t_embedder.mlp.0", cfg["time_freq_dim"], h)
        self.t_mlp2 = lin("t_embedder.mlp.2", h, h)
        self.blocks = nn.ModuleList(Block(cfg, lin) for _ in range(cfg["depth"]))
        self.final_modulation = lin("final_layer.adaLN_modulation", h, 2 * h)
        self.final = lin("final_layer.linear", h, p * p * c)
        grid = cfg["image_size"] // p
        self.register_buffer("pos", pos_embed(grid, h), persistent=False)

    def forward(self, x, t):
        cfg = self.cfg
        b, c, hh, ww = x.shape
        p = cfg["patch_size"]
        g = hh // p
        tokens = x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, p * p * c)
        hid = self.x_embedder(tokens) + self.pos
        temb = self.t_mlp2(F.silu(self.t_mlp0(timestep_embedding(t, cfg["time_freq_dim"]))))
        for block in self.blocks:
            hid = block(hid, temb)
        shift, scale = self.final_modulation(F.silu(temb))[:, None, :].chunk(2, dim=-1)
        out = self.final(modulate(hid, shift, scale))
        return out.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)


def cosine_alpha_bar(steps=1000, s=0.008):
    f = lambda t: math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = [min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)]
    ab, out = 1.0, []
    for beta in betas:
        ab *= 1 - beta
        out.append(ab)
    return torch.tensor(out, dtype=torch.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]
    model = DiffiT(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    alpha_bar = cosine_alpha_bar()
    x0 = torch.rand(args.batch_size, cfg["in_channels"], cfg["image_size"], cfg["image_size"]) * 2 - 1

    def step():
        t = torch.randint(0, len(alpha_bar), (args.batch_size,))
        eps = torch.randn_like(x0)
        ab = alpha_bar[t][:, None, None, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
        loss = F.mse_loss(model(xt, t.float()), v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    secs = time.perf_counter() - start
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}",
        "preset": args.preset,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "trainable_params": sum(p.numel() for p in params),
        "ms_per_step": secs * 1000 / args.steps,
        "images_per_s": args.steps * args.batch_size / secs,
    }))


if __name__ == "__main__":
    main()
