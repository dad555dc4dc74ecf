#!/usr/bin/env bash
# Fuzzes every parser of bytes a user or a network hands us (the targets in fuzz/fuzz_targets/)
# with libFuzzer through cargo-fuzz, and prints how many inputs each target ran.
#
#   scripts/fuzz.sh smoke [TARGET...]     ~15 s per target from the checked-in seeds (make test)
#   scripts/fuzz.sh campaign [TARGET...]  longer runs (make fuzz), growing a kept corpus in
#                                         fuzz/target/corpus/<target>/
#   scripts/fuzz.sh build                 only build the targets
#   scripts/fuzz.sh list                  the targets
#
# The targets of the trainer's parsers need fuzz/Cargo.toml's `trainer` feature, which links
# candle: a smoke run without named targets leaves them out (an instrumented candle is most of a
# cold fuzz build: minutes, ~2 GB of memory and disk), and their seeds replay in
# trainer/tests/fuzz_regressions.rs; a campaign, `build`, and any run naming one build them.
#
# Environment:
#   FUZZ_SECONDS    seconds per target (smoke 15, campaign 600)
#   FUZZ_RUNS       inputs per target instead of a time (libFuzzer's -runs)
#   FUZZ_RSS_MB     libFuzzer's -rss_limit_mb (default 512): a process over it is a finding
#   FUZZ_MALLOC_MB  the largest single allocation (default 512): the targets' allocator aborts
#                   above it (a crash, saved with its input), and -malloc_limit_mb is passed too
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a hang (default 60)
#   FUZZ_NICE       niceness of the fuzzing processes (default 10: the machine may be shared)
#   FUZZ_TARGET_DIR cargo target dir of the instrumented build (default fuzz/target)
#   DIFFIT_TOOLS_CACHE  the tool cache cargo-fuzz is installed into (scripts/tool-cache.sh)
#
# Stable Rust works: cargo-fuzz needs nightly-only flags, which RUSTC_BOOTSTRAP=1 unlocks, and
# targets are built without a sanitizer (-s none), so no nightly standard library is needed.
# Exits non-zero when a target finds a panic, an input that goes over a cap, or a hang; the input
# is kept in fuzz/artifacts/<target>/; replay it with `fuzz/target/<host>/release/<target> FILE`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/tool-cache.sh
. scripts/tool-cache.sh

CARGO_FUZZ_VERSION=0.13.2
MODE=${1:-smoke}
[ $# -gt 0 ] && shift

log() { printf '\033[1mfuzz:\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The [[bin]] sections of fuzz/Cargo.toml: "NAME FEATURE" per target, FEATURE "-" when none is
# required.
target_table() {
    awk 'function flush() { if (name != "") print name, (feature == "" ? "-" : feature); name = ""; feature = "" }
         /^\[/ { flush() }
         /^\[\[bin\]\]/ { bin = 1; next }
         /^\[/ { bin = 0 }
         bin && /^name = / { gsub(/"/, "", $3); name = $3 }
         bin && /^required-features = / { feature = $0; sub(/^[^"]*"/, "", feature); sub(/".*/, "", feature) }
         END { flush() }' fuzz/Cargo.toml
}
all_targets() { target_table | cut -d ' ' -f 1; }
light_targets() { target_table | awk '$2 == "-" { print $1 }'; }
needs_feature() { target_table | awk -v t="$1" '$1 == t && $2 != "-" { found = 1 } END { exit !found }'; }

case $MODE in
    smoke) SECONDS_PER_TARGET=${FUZZ_SECONDS:-15} ;;
    campaign) SECONDS_PER_TARGET=${FUZZ_SECONDS:-600} ;;
    build) ;;
    list) all_targets; exit 0 ;;
    *) die "unknown mode $MODE (smoke, campaign, build or list)" ;;
esac
RSS_MB=${FUZZ_RSS_MB:-512}
MALLOC_MB=${FUZZ_MALLOC_MB:-512}
TIMEOUT=${FUZZ_TIMEOUT:-60}
NICE=${FUZZ_NICE:-10}
TARGET_DIR=${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}

# --- cargo-fuzz, from the tool cache (installed there once per machine). ---
CARGO_FUZZ_ENTRY=cargo-fuzz-$CARGO_FUZZ_VERSION
CARGO_FUZZ=$DIFFIT_CACHE/$CARGO_FUZZ_ENTRY/bin/cargo-fuzz
cargo_fuzz_ok() { [ -x "$1/bin/cargo-fuzz" ] && [ "$("$1/bin/cargo-fuzz" --version 2>/dev/null)" = "cargo-fuzz $CARGO_FUZZ_VERSION" ]; }
cargo_fuzz_install() {
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $DIFFIT_CACHE/$CARGO_FUZZ_ENTRY (about a minute, once per machine)"
    env -u RUSTC -u RUSTC_BOOTSTRAP -u CARGO_TARGET_DIR \
        cargo install --quiet --locked --force cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --root "$1"
}
command -v cargo >/dev/null || die "cargo (rustup) is required"
cache_install "$CARGO_FUZZ_ENTRY" cargo_fuzz_ok cargo_fuzz_install

# --- Which targets, and so which features. ---
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    if [ "$MODE" = smoke ]; then mapfile -t TARGETS < <(light_targets); else mapfile -t TARGETS < <(all_targets); fi
fi
FEATURES=()
for target in "${TARGETS[@]}"; do
    all_targets | grep -qx "$target" || die "no fuzz target $target (scripts/fuzz.sh list)"
    if needs_feature "$target"; then FEATURES=(--features trainer); fi
done
if [ "$MODE" = smoke ] && [ $# -eq 0 ]; then
    log "smoke: the trainer's targets ($(target_table | awk '$2 != "-" { printf "%s%s", sep, $1; sep = ", " }')) are left out (their seeds replay in cargo test; scripts/fuzz.sh smoke TARGET or make fuzz runs them)"
fi

# --- Build: every target at once, with coverage instrumentation, overflow checks and debug
# assertions (cargo-fuzz's defaults), no sanitizer. ---
rustc --version | grep -q nightly || export RUSTC_BOOTSTRAP=1
HOST=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR=$TARGET_DIR/$HOST/release
# A cold instrumented build writes about 2 GB into the target dir: a disk or memory that runs out
# makes rustc fail with an LLVM error that does not say which, so both are printed then.
mkdir -p "$TARGET_DIR"
free_space() { df -h --output=avail "$TARGET_DIR" | tail -n 1 | tr -d ' '; }
free_memory() { awk '/MemAvailable/ { print int($2 / 1024) " MiB" }' /proc/meminfo; }
# The smoke run of `make test` builds without line tables (a third less to write); a campaign
# keeps them, so its findings' stack traces name lines.
if [ "$MODE" = smoke ]; then export RUSTFLAGS="${RUSTFLAGS:-} -Cdebuginfo=0"; fi
build_start=$(date +%s)
log "building the fuzz targets ($(rustc --version); $(free_space) free in $TARGET_DIR)"
env -u CARGO_TARGET_DIR nice -n "$NICE" "$CARGO_FUZZ" build -s none --fuzz-dir "$ROOT/fuzz" \
    --target-dir "$TARGET_DIR" "${FEATURES[@]}" ||
    die "the instrumented build failed with $(free_space) free in $TARGET_DIR and $(free_memory) of memory available"
log "built in $(($(date +%s) - build_start)) s"
[ "$MODE" = build ] && exit 0

# Scratch space for the targets' files (tmpfs when there is one), removed afterwards.
SCRATCH_PARENT=$TARGET_DIR
[ -d /dev/shm ] && [ -w /dev/shm ] && SCRATCH_PARENT=/dev/shm
SCRATCH=$(mktemp -d "$SCRATCH_PARENT/diffit-fuzz.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

stat_of() { sed -n "s/^stat::$1: *\([0-9]*\).*/\1/p" "$2" | tail -n 1; }

if [ -n "${FUZZ_RUNS:-}" ]; then
    BUDGET=(-runs="$FUZZ_RUNS")
    log "$MODE: ${FUZZ_RUNS} inputs per target; caps: RSS $RSS_MB MB, one allocation $MALLOC_MB MB"
else
    BUDGET=(-max_total_time="$SECONDS_PER_TARGET")
    log "$MODE: $SECONDS_PER_TARGET s per target; caps: RSS $RSS_MB MB, one allocation $MALLOC_MB MB"
fi

total=0
failed=()
rows=()
for target in "${TARGETS[@]}"; do
    bin=$BIN_DIR/$target
    seeds=$ROOT/fuzz/corpus/$target
    [ -x "$bin" ] || die "no fuzz target $target (scripts/fuzz.sh list)"
    [ -d "$seeds" ] || die "no seed corpus $seeds"
    if [ "$MODE" = campaign ]; then
        work=$TARGET_DIR/corpus/$target
    else
        work=$SCRATCH/corpus-$target
    fi
    artifacts=$ROOT/fuzz/artifacts/$target
    mkdir -p "$work" "$artifacts" "$SCRATCH/tmp-$target"
    out=$SCRATCH/$target.log
    rc=0
    # New inputs go to the first directory only: the checked-in seeds are read, never written.
    TMPDIR=$SCRATCH/tmp-$target DIFFIT_FUZZ_MALLOC_LIMIT_MB=$MALLOC_MB \
        nice -n "$NICE" "$bin" "${BUDGET[@]}" -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$MALLOC_MB" \
        -timeout="$TIMEOUT" -print_final_stats=1 -artifact_prefix="$artifacts/" \
        "$work" "$seeds" >"$out" 2>&1 || rc=$?
    execs=$(stat_of number_of_executed_units "$out")
    # A run cut short by a finding may end before libFuzzer prints its stats.
    [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$out" | tail -n 1)
    execs=${execs:-0}
    speed=$(stat_of average_exec_per_sec "$out")
    rss=$(stat_of peak_rss_mb "$out")
    total=$((total + execs))
    status=ok
    if [ "$rc" != 0 ]; then
        status="FAILED (exit $rc)"
        failed+=("$target")
        log "$target failed; the end of its log:"
        grep -v '^#[0-9]' "$out" | tail -n 40 >&2
    fi
    rows+=("$(printf '%-16s %12s %9s %8s  %s' "$target" "$execs" "${speed:-?}" "${rss:-?}" "$status")")
    log "$target: $execs inputs ($status)"
done

printf '%-16s %12s %9s %8s  %s\n' target inputs 'inputs/s' 'rss MB' result
printf '%s\n' "${rows[@]}"
printf '%-16s %12s\n' total "$total"
if [ ${#failed[@]} -gt 0 ]; then
    die "findings in: ${failed[*]} (inputs kept in fuzz/artifacts/)"
fi
