#!/usr/bin/env bash
# `make bench`: side-by-side performance numbers, each a ratio of two things measured in this run
# on this machine, written as a markdown table to bench/RESULTS.md (linked from the README).
#
#   1. training images/s: `diffit train --preset small` vs the PyTorch reference (bench/diffit_torch.py)
#   2. LoRA checkpoint save MB/s vs a plain fsync'd write of the same bytes; stall per save
#   3. bytes on disk: 3 runs x 10 epochs vs the seed's scheme and a full model per epoch
#   4. browser: ms per DDIM step in headless Chromium (its worker pool) vs native at the same
#      thread count; click -> image for `small`; the page's stall while sampling;
#      the runs view at 10,000 runs vs 200 (first rows, search, sort, next page)
#   5. server: /api/runs requests/s at 10,000 runs vs nginx; peak RSS streaming a 1 GiB file
#   6. bucket: listing 1,000 runs in an S3 server (moto) vs on disk; bytes of 3 runs in a bucket;
#      the longest a save waits for a --mirror upload vs an epoch of `small`
#
# Not part of `make test`. Installs PyTorch (CPU use only) into .venv-bench the first time.
# Env: BENCH_OUT (default bench/RESULTS.md), SKIP_TORCH=1, SKIP_BROWSER=1, SKIP_SERVER=1, SKIP_BUCKET=1,
#      TRAIN_EPOCHS (default 3), SAMPLE_STEPS (default 50), BENCH_ROUNDS (default 5: alternating
#      rounds per ratio), SAVE_ROUNDS (default 11: the checkpoint saves').
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${BENCH_OUT:-bench/RESULTS.md}
TRAIN_EPOCHS=${TRAIN_EPOCHS:-3}
# Every ratio is the median of ROUNDS alternating measurements of both sides (min-max shown).
ROUNDS=${BENCH_ROUNDS:-5}
export BENCH_ROUNDS=$ROUNDS
SAMPLE_STEPS=${SAMPLE_STEPS:-50}
WORK=$(mktemp -d /tmp/diffit-bench.XXXXXX)
LINES="$WORK/bench.jsonl"
trap 'rm -rf "$WORK"' EXIT
log() { printf '\033[1mbench:\033[0m %s\n' "$*" >&2; }
collect() { grep '^BENCH ' | sed 's/^BENCH //' >>"$LINES" || true; }

log "building (release)"
cargo build --release -p trainer -p server
cargo build --release -p trainer -p store -p remote --examples
R=target/release

# --- 1. Training -----------------------------------------------------------------------------
# ROUNDS rounds, each ours then PyTorch's, so drift in the machine's speed hits both alike; the
# report gives the median of the rounds' ratios with their min-max.
log "training: diffit train --preset small vs PyTorch, $ROUNDS alternating rounds ($TRAIN_EPOCHS epochs each)"
"$R/diffit" pretrain --preset small --epochs 1 --num-images 64 --out "$WORK/base.safetensors" \
    --checkpoints "$WORK/checkpoints"
VENV=.venv-bench
if [ -z "${SKIP_TORCH:-}" ] && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    log "installing PyTorch into $VENV (once; a large download)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet torch numpy
fi
for round in $(seq "$ROUNDS"); do
    # The first round's run is the one the browser section samples (run 1 of $WORK/checkpoints).
    dir=$WORK/checkpoints
    [ "$round" = 1 ] || dir=$WORK/train-$round
    "$R/diffit" train --preset small --epochs "$TRAIN_EPOCHS" --base "$WORK/base.safetensors" \
        --checkpoints "$dir" 2>&1 | tee "$WORK/train.log"
    python3 - "$WORK/train.log" "$(nproc)" "$round" >>"$LINES" <<'PY'
import json, re, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
images = re.search(r"(\d+) training / \d+ validation images", text)
rates = [float(m) for m in re.findall(r"epoch \d+/\d+: .*?\(([\d.]+) images/s\)", text)]
if not rates:
    sys.exit("no 'images/s' epoch lines in the training log")
# The first epoch pays one-off costs (thread pool, allocations); report the later ones.
steady = rates[1:] or rates
ips = sum(steady) / len(steady)
print(json.dumps({"kind": "train_candle", "round": int(sys.argv[3]), "images_per_s": ips,
                  "epochs": rates, "threads": int(sys.argv[2]),
                  "epoch_seconds": int(images.group(1)) / ips if images else None}))
PY
    if [ -z "${SKIP_TORCH:-}" ]; then
        log "training: PyTorch reference, same config, batch 16, float32, $(nproc) threads (round $round)"
        "$VENV/bin/python" bench/diffit_torch.py --steps 30 --batch-size 16 --threads "$(nproc)" \
            | tee "$WORK/torch.json"
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["kind"]="train_torch"; d["round"]=int(sys.argv[2]); print(json.dumps(d))' \
            "$WORK/torch.json" "$round" >>"$LINES"
    fi
done
# The per-phase split (forward, backward, optimizer) of our step.
"$R/examples/bench_train" 20 | tee "$WORK/bench_train.txt"

# --- 2 and 3. Checkpoint I/O and disk ----------------------------------------------------------
log "checkpoint save and listing (bench_store), disk use (bench_disk)"
# Saves are quick: 11 alternating rounds per size.
BENCH_ROUNDS=${SAVE_ROUNDS:-11} "$R/examples/bench_store" "$WORK" | tee -a /dev/stderr | collect
"$R/examples/bench_disk" "$WORK" "$WORK/disk-runs" | tee -a /dev/stderr | collect

# --- 4. Browser sampling ------------------------------------------------------------------------
if [ -z "${SKIP_BROWSER:-}" ]; then
    log "browser sampling (headless Chromium) vs native, $SAMPLE_STEPS steps"
    scripts/browser-env.sh
    scripts/build-app.sh
    # The driver's own speed does not matter (the work runs in the page). `cargo test --workspace
    # --no-run` builds the examples with `make test`'s exact feature set, so nothing is rebuilt;
    # a plain `cargo build --examples` would resolve features differently and rebuild candle.
    cargo test --workspace --no-run
    # Each round: native on every core, native on one thread (as the page runs), then the page.
    for round in $(seq "$ROUNDS"); do
        for threads in "" 1; do
            kind=native_step${threads:+_1t}
            RAYON_NUM_THREADS=${threads:-$(nproc)} \
                "$R/examples/bench_sample" "$WORK/checkpoints" 1 best "$SAMPLE_STEPS" 0 | tee "$WORK/native.json"
            python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["kind"]=sys.argv[2]; d["round"]=int(sys.argv[3]); print(json.dumps(d))' \
                "$WORK/native.json" "$kind" "$round" >>"$LINES"
        done
        target/debug/examples/browser_bench "$R/diffit-server" "$WORK/checkpoints" 1 "$SAMPLE_STEPS" \
            | tee -a /dev/stderr | collect
    done
    # The runs view at 200 and at 10,000 runs (two pages at least), alternating: first rows,
    # search, sort, next page.
    log "browser: the runs view at 200 and 10,000 runs (headless Chromium)"
    cargo build --release -p server --example gen_runs
    "$R/examples/gen_runs" "$WORK/runs-200" 200
    "$R/examples/gen_runs" "$WORK/runs-10000" 10000
    target/debug/examples/runs_table_bench "$R/diffit-server" "$WORK/runs-200" "$WORK/runs-10000" \
        | tee -a /dev/stderr | collect
fi

# --- 5. Server ------------------------------------------------------------------------------------
if [ -z "${SKIP_SERVER:-}" ]; then
    log "server: /api/runs at 10,000 runs vs nginx, 1 GiB stream"
    missing=()
    for tool in wrk curl bc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} from Debian"
        SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
        $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
    fi
    server/benches/serve_bench.sh | tee -a /dev/stderr | collect
fi

# --- 6. Runs in a bucket ----------------------------------------------------------------------
if [ -z "${SKIP_BUCKET:-}" ]; then
    log "bucket: listing 1,000 runs and the bytes of 3 runs x 10 epochs (moto on loopback)"
    scripts/setup-python.sh
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    .venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$WORK/moto.log" 2>&1 &
    moto=$!
    for _ in $(seq 100); do curl -sf -X PUT "http://127.0.0.1:$port/runs" >/dev/null && break; sleep 0.2; done
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
        AWS_ENDPOINT_URL="http://127.0.0.1:$port" \
        "$R/examples/bench_bucket" s3://runs/bench/ "$WORK/disk-runs" 1000 | tee -a /dev/stderr | collect
    log "mirror: diffit train --preset small --mirror s3://… (the longest a save waited vs an epoch)"
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
        AWS_ENDPOINT_URL="http://127.0.0.1:$port" \
        "$R/diffit" train --preset small --epochs 2 --base "$WORK/base.safetensors" \
        --checkpoints "$WORK/mirrored" --mirror s3://runs/bench/mirror 2>&1 | tee "$WORK/mirror.log"
    python3 - "$WORK/mirror.log" >>"$LINES" <<'PY'
import json, re, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
images = int(re.search(r"(\d+) training / \d+ validation images", text).group(1))
rates = [float(m) for m in re.findall(r"epoch \d+/\d+: .*?\(([\d.]+) images/s\)", text)]
waited = float(re.search(r"the longest a save waited: ([\d.]+) ms", text).group(1))
# The training part of the fastest epoch: the shortest epoch, so the largest share.
print(json.dumps({"kind": "mirror_stall", "longest_wait_ms": waited,
                  "epoch_seconds": images / max(rates)}))
PY
    kill "$moto"
fi

python3 bench/report.py "$LINES" "$OUT"
log "wrote $OUT"
