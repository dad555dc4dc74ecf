#!/usr/bin/env bash
# Builds `diffit` with candle's CUDA backend (the trainer's `cuda` feature) on an x86-64 Linux
# machine with or without a GPU: nvcc and the CUDA headers come from scripts/setup-cuda.sh (no
# driver needed to compile), the kernels are compiled for CUDA_COMPUTE_CAP, and the binary links
# against the CUDA libraries' sonames, which it loads from the machine it runs on.
#
# Then it checks the binary where it was built: started on the link stubs (as on a machine with
# no GPU), `diffit --version` must run and `diffit train --device cuda` must fail with the
# usage error that says no CUDA device could be opened (exit status 2), before any work.
#
# Prints the binary's path last. Environment:
#   CUDA_COMPUTE_CAP  the GPU generation to compile for, as nvidia-smi reports it without the dot
#                     (default 90: H100/H200; 80: A100; 89: L4/L40; 100: B200)
#   CUDA_PROFILE      cargo profile (default release)
#   CUDA_FEATURES     more cargo features (e.g. trainer/nccl: MPI jobs of GPU processes over NCCL)
#   CUDA_CLIPPY=1     also lint the trainer as built here (the code behind `cuda` and `nccl`,
#                     which the CPU build's clippy never sees), with -D warnings
#   CARGO_TARGET_DIR  as for cargo; this build goes into its cuda/ subdirectory, so the CPU
#                     build's binaries are never overwritten by this one
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '\033[1mbuild-cuda:\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

CUDA_HOME=$(scripts/setup-cuda.sh)
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
PROFILE=${CUDA_PROFILE:-release}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/cuda
FEATURES=trainer/cuda${CUDA_FEATURES:+,$CUDA_FEATURES}

log "building diffit with $FEATURES for compute capability $CUDA_COMPUTE_CAP into $TARGET_DIR"
SECONDS=0
env -u CARGO_TARGET_DIR cargo build --locked --profile "$PROFILE" -p trainer --bin diffit \
    --features "$FEATURES" --target-dir "$TARGET_DIR"
log "built in ${SECONDS} s"
if [ -n "${CUDA_CLIPPY:-}" ]; then
    # The same profile and features: the kernels compiled above are reused, not rebuilt.
    env -u CARGO_TARGET_DIR cargo clippy --locked --profile "$PROFILE" -p trainer \
        --features "$FEATURES" --target-dir "$TARGET_DIR" -- -D warnings
fi
case $PROFILE in dev) DIR=debug ;; *) DIR=$PROFILE ;; esac
BIN=$TARGET_DIR/$DIR/diffit

# The check, on the stubs (this machine's real CUDA libraries, if any, are not used).
STUBS="$CUDA_HOME/lib/stubs:$CUDA_HOME/lib"
LD_LIBRARY_PATH=$STUBS "$BIN" --version >/dev/null || die "$BIN does not start"
for lib in libcuda.so.1 libcublas.so.13 libcudart.so.13; do
    readelf -d "$BIN" | grep -q "NEEDED.*\[$lib\]" || die "$BIN does not link $lib: is it a CUDA build?"
done
CHECK=$(mktemp -d)
trap 'rm -rf "$CHECK"' EXIT
status=0
LD_LIBRARY_PATH=$STUBS "$BIN" train --device cuda --preset tiny --epochs 1 \
    --checkpoints "$CHECK" >"$CHECK/out" 2>&1 || status=$?
if [ "$status" != 2 ] || ! grep -q "cannot open CUDA device 0" "$CHECK/out"; then
    cat "$CHECK/out" >&2
    die "diffit train --device cuda on a machine without a GPU: expected the usage error (exit 2), got exit $status"
fi
[ -z "$(ls -A "$CHECK" | grep -v '^out$')" ] || die "diffit train --device cuda wrote into --checkpoints before failing"
log "checked: the binary starts, and --device cuda without a GPU is refused before any work ($(grep -o 'cannot open CUDA device 0[^:]*' "$CHECK/out"))"
echo "$BIN"
