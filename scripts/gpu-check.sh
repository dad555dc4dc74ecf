#!/usr/bin/env bash
# The GPU check, in one command on a machine with an NVIDIA GPU: the CUDA build of diffit
# (scripts/build-cuda.sh, built anywhere) trains the same LoRA run on the GPU and on the CPU,
# the two must agree within the tolerances below, and the GPU's training throughput is put
# beside the CPU's. Needs only the binary, python3 and the GPU's driver: no Rust, no network.
#
#   scripts/gpu-check.sh [DIFFIT]     (default target/cuda/release/diffit)
#
# What it compares, from the same base model, data, seed and noise (the noise is drawn on the
# CPU in both runs, and both split each batch into one shard, as a GPU process does, so each
# step draws the same noise; only the arithmetic differs):
#   - the base model's validation loss (forward passes only): relative difference <= 1e-3;
#   - every epoch's train_loss and val_loss after EPOCHS epochs of LoRA training (forward,
#     backward and AdamW): relative difference <= 1e-2 (a GPU sums in another order, and the
#     differences grow step by step through the optimizer);
#   - images/s of each epoch after the first (which pays one-off costs): reported, not judged;
#     the CPU's from a third run with its default shards (every core), as users train on it.
#
# Writes a markdown table to $OUT (default target/gpu-check.md) and prints it. Exit status: 0
# when every comparison is within its tolerance, 1 when one is not, 2 when the check cannot run.
#
# Environment:
#   CUDA_LIBS   directories holding CUDA 13's libcublas, libcublasLt, libcurand and libnvrtc when
#               they are not on the loader's path (e.g. a pip-installed nvidia-cublas wheel's lib/)
#   EPOCHS      LoRA epochs per device (default 2); PRESET (default small); OUT
#   DEVICE      the device under test (default cuda). DEVICE=cpu checks the check itself on a
#               machine without a GPU (`make test` does, with the CPU binary): both sides then
#               run on the CPU, and every difference must be exactly 0
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target/cuda/release/diffit}
EPOCHS=${EPOCHS:-2}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-small}
OUT=${OUT:-$ROOT/target/gpu-check.md}
log() { printf '\033[1mgpu-check:\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

[ -x "$BIN" ] || die "no diffit at $BIN: build it with scripts/build-cuda.sh (on any machine)"
command -v python3 >/dev/null || die "python3 is needed to compare the runs"
if [ -n "${CUDA_LIBS:-}" ]; then
    export LD_LIBRARY_PATH=$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if missing=$(ldd "$BIN" | grep "not found"); then
    die "the CUDA libraries $BIN needs are not on the loader's path (set CUDA_LIBS):
$missing"
fi
GPU=$([ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1 || true)
[ -n "$GPU" ] || log "nvidia-smi found no GPU; trying anyway"
log "GPU: ${GPU:-unknown}; CPU: $(nproc) cores; binary: $BIN"

mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d /tmp/diffit-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
log "pretraining a $PRESET base on the CPU (shared by both runs)"
"$BIN" pretrain --preset "$PRESET" --epochs 1 --num-images 64 --out "$WORK/base.safetensors" \
    --checkpoints "$WORK/pretrain" >"$WORK/pretrain.log" 2>&1 || { cat "$WORK/pretrain.log" >&2; die "pretraining failed"; }
# name, device, flags
for run in "gpu $DEVICE --data-shards 1" "cpu cpu --data-shards 1" "cpu-cores cpu"; do
    read -r name device flags <<<"$run"
    log "training $EPOCHS epochs on --device $device ${flags:-(default shards)}"
    # shellcheck disable=SC2086 # flags is a list of words
    "$BIN" train --device "$device" $flags --preset "$PRESET" --epochs "$EPOCHS" \
        --base "$WORK/base.safetensors" --checkpoints "$WORK/$name" >"$WORK/$name.log" 2>&1 \
        || { cat "$WORK/$name.log" >&2; die "training on $device failed"; }
done

python3 - "$WORK/cpu.log" "$WORK/gpu.log" "$WORK/cpu-cores.log" "$OUT" "${GPU:-unknown GPU}" "$(nproc)" "$PRESET" "$DEVICE" <<'PY'
import re, sys

cpu_log, gpu_log, cores_log, out, gpu, cores, preset, device = sys.argv[1:]
EPOCH = re.compile(r"epoch (\d+)/\d+: train_loss=([\d.eE+-]+) val_loss=([\d.eE+-]+).*?\(([\d.]+) images/s\)")
BASE = re.compile(r"base model val_loss: ([\d.eE+-]+)")

def read(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    epochs = [(int(e), float(t), float(v), float(r)) for e, t, v, r in EPOCH.findall(text)]
    base = BASE.search(text)
    if not epochs or not base:
        sys.exit(f"gpu-check: {path} has no epoch lines or no base val_loss")
    return float(base.group(1)), epochs

cpu_base, cpu = read(cpu_log)
gpu_base, gpu_epochs = read(gpu_log)
if len(cpu) != len(gpu_epochs):
    sys.exit("gpu-check: the two runs trained different numbers of epochs")

rows, ok = [], True
# Checking the check (DEVICE=cpu): the same device on both sides must agree exactly.
exact = device == "cpu"

def compare(what, a, b, tolerance):
    global ok
    tolerance = 0.0 if exact else tolerance
    rel = abs(a - b) / max(abs(a), 1e-12)
    good = rel <= tolerance
    ok &= good
    rows.append(f"| {what} | {a:.5f} | {b:.5f} | {rel:.2e} | {tolerance:.0e} | {'ok' if good else 'OUT OF TOLERANCE'} |")

compare("base val_loss", cpu_base, gpu_base, 1e-3)
for (e, ct, cv, _), (_, gt, gv, _) in zip(cpu, gpu_epochs):
    compare(f"epoch {e} train_loss", ct, gt, 1e-2)
    compare(f"epoch {e} val_loss", cv, gv, 1e-2)

steady = lambda runs: [r for _, _, _, r in (runs[1:] or runs)]
mean = lambda xs: sum(xs) / len(xs)
cpu_ips, gpu_ips = mean(steady(read(cores_log)[1])), mean(steady(gpu_epochs))
table = "\n".join([
    f"GPU check: `{preset}` LoRA training on {gpu if not exact else 'the CPU (DEVICE=cpu: the check checked)'} "
    f"vs this machine's {cores} CPU cores (scripts/gpu-check.sh)",
    "",
    "| value | CPU | GPU | relative difference | tolerance | verdict |",
    "|---|---|---|---|---|---|",
    *rows,
    "",
    "| throughput | CPU | GPU | GPU / CPU |",
    "|---|---|---|---|",
    f"| training images/s (epochs after the first; CPU: every core) | {cpu_ips:.1f} | {gpu_ips:.1f} | {gpu_ips / cpu_ips:.2f}x |",
    "",
])
open(out, "w", encoding="utf-8").write(table)
print(table)
sys.exit(0 if ok else 1)
PY
