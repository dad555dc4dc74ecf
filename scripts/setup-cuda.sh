#!/usr/bin/env bash
# Makes a CUDA *build* toolchain, enough to compile the trainer's `cuda` feature on a machine
# with no GPU and no driver, and prints its root (a CUDA_HOME). Idempotent: the toolchain is kept
# in the machine-wide tool cache (scripts/tool-cache.sh) as cuda-<version>/ and installed once.
#
# What it holds, laid out as a CUDA toolkit:
#   bin/nvcc, nvvm/  NVIDIA's compiler, from NVIDIA's PyPI wheels (nvidia-cuda-nvcc, nvidia-nvvm,
#                    nvidia-cuda-crt), which candle's kernels are compiled with to PTX and SASS;
#   include/         the runtime and CCCL headers (nvidia-cuda-runtime, nvidia-cuda-cccl);
#   lib/libcudart.so the CUDA runtime, which candle's statically compiled kernels link to;
#   lib/stubs/       link stubs for the driver-side libraries candle links with (libcuda, libnvrtc,
#                    libcurand, libcublas, libcublasLt, libnccl): one exported symbol per function
#                    the driver API and libraries declare, each failing as NVIDIA's own stubs do,
#                    and each library carrying the real one's soname (libcuda.so.1, libcublas.so.13).
#                    A real CUDA toolkit ships the same kind of stub for libcuda; the binary loads
#                    the real libraries of the machine it runs on, never these.
#
# The stubs' symbol lists are the C declarations of the same CUDA release's headers as cudarc
# (candle's CUDA crate) binds them; they are read from the locked cudarc's sources, so the stubs
# match what the build links against. Environment:
#   DIFFIT_TOOLS_CACHE  the tool cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/diffit-lora)
#   PYTHON              the interpreter whose pip downloads the wheels (default python3)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/tool-cache.sh
. scripts/tool-cache.sh
PYTHON=${PYTHON:-python3}

# The CUDA release. cudarc (candle's binding) supports up to 13.4; NVIDIA publishes nvcc itself
# as a wheel only from CUDA 13 on (the -cu12 wheels hold ptxas alone).
CUDA_VERSION=13.4.92
CCCL_VERSION=13.3.5.0.6
WHEELS=(
    "nvidia-cuda-nvcc==$CUDA_VERSION"
    "nvidia-nvvm==$CUDA_VERSION"
    "nvidia-cuda-crt==$CUDA_VERSION"
    "nvidia-cuda-runtime==$CUDA_VERSION"
    "nvidia-cuda-cccl==$CCCL_VERSION"
)
# library   soname          cudarc's declarations (src/<dir>/sys/mod.rs)
STUBS=(
    "cuda      libcuda.so.1      driver"
    "nvrtc     libnvrtc.so.13    nvrtc"
    "curand    libcurand.so.10   curand"
    "cublas    libcublas.so.13   cublas"
    "cublasLt  libcublasLt.so.13 cublaslt"
    "nccl      libnccl.so.2      nccl"
)

log() { printf 'setup-cuda: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

CUDARC_VERSION=$(awk '/^name = "cudarc"$/ { getline; gsub(/[^0-9.]/, "", $3); print $3; exit }' Cargo.lock)
[ -n "$CUDARC_VERSION" ] || die "no cudarc in Cargo.lock"
ENTRY=cuda-$CUDA_VERSION-cudarc-$CUDARC_VERSION

cuda_ok() {
    local dir=$1 lib name soname
    [ -x "$dir/bin/nvcc" ] && [ -x "$dir/nvvm/bin/cicc" ] || return 1
    [ -f "$dir/include/cuda_runtime.h" ] && [ -e "$dir/lib/libcudart.so" ] || return 1
    "$dir/bin/nvcc" --version 2>/dev/null | grep -q "release ${CUDA_VERSION%.*}," || return 1
    for lib in "${STUBS[@]}"; do
        read -r name soname _ <<<"$lib"
        [ -f "$dir/lib/stubs/lib$name.so" ] && [ -e "$dir/lib/stubs/$soname" ] || return 1
    done
}

# cudarc's sources, from cargo's registry (fetched first when missing).
cudarc_src() {
    local manifest
    manifest=$(cargo metadata --format-version 1 --locked --features trainer/cuda 2>/dev/null \
        | "$PYTHON" -c 'import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc" and p["version"] == sys.argv[1]:
        print(p["manifest_path"])' "$CUDARC_VERSION") || true
    [ -n "$manifest" ] || die "cannot find cudarc $CUDARC_VERSION's sources (cargo metadata --features trainer/cuda)"
    dirname "$manifest"
}

install_cuda() {
    local dir=$1 src lib name soname decls
    command -v "$PYTHON" >/dev/null || die "no $PYTHON (its pip downloads NVIDIA's wheels)"
    command -v cc >/dev/null || die "no C compiler (cc) for the link stubs"
    src=$(cudarc_src)
    # Inside the install: removed with it if this fails, and before it is published.
    local tmp=$dir/.download
    log "downloading CUDA $CUDA_VERSION's compiler and headers (NVIDIA's wheels, ~130 MB, once per machine)"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: -d "$tmp/wheels" "${WHEELS[@]}"
    for whl in "$tmp"/wheels/*.whl; do
        "$PYTHON" -m zipfile -e "$whl" "$tmp/root"
    done
    # Every wheel puts its part of the toolkit under nvidia/cu13/.
    cp -a "$tmp/root/nvidia/cu13/." "$dir/"
    chmod +x "$dir"/bin/* "$dir"/nvvm/bin/*
    ln -sf libcudart.so.13 "$dir/lib/libcudart.so"
    mkdir -p "$dir/lib/stubs"
    for lib in "${STUBS[@]}"; do
        read -r name soname decls <<<"$lib"
        [ -f "$src/src/$decls/sys/mod.rs" ] || die "no $decls declarations in $src"
        # One stub per function cudarc declares `extern "C"` (what the binary links against),
        # failing as NVIDIA's own stubs do: a status of 34 (CUDA_ERROR_STUB_LIBRARY), or a
        # message for the functions that return one.
        {
            echo "static const char message[] = \"$soname is a link stub: this machine has no CUDA driver or library\";"
            grep -A1 'extern "C" {' "$src/src/$decls/sys/mod.rs" | grep -E '^\s+fn \w+' \
                | awk '{ name = $2; sub(/\(.*/, "", name) }
                       seen[name]++ { next }
                       {     if ($0 ~ /-> \*const ::core::ffi::c_char;/) printf "const char *%s(void) { return message; }\n", name
                         else if ($0 ~ /-> \*/) printf "void *%s(void) { return 0; }\n", name
                         else printf "int %s(void) { return 34; }\n", name }'
        } >"$tmp/$name.c"
        cc -shared -fPIC -O1 -Wl,-soname,"$soname" -o "$dir/lib/stubs/lib$name.so" "$tmp/$name.c"
        # The soname too, so that a binary linked against the stubs starts where the real
        # libraries are missing (LD_LIBRARY_PATH=lib/stubs): it then runs on the CPU and
        # reports that no GPU can be opened.
        ln -s "lib$name.so" "$dir/lib/stubs/$soname"
    done
    rm -rf "$tmp"
    log "CUDA $CUDA_VERSION build toolchain in $DIFFIT_CACHE/$ENTRY"
}

cache_install "$ENTRY" cuda_ok install_cuda
echo "$DIFFIT_CACHE/$ENTRY"
