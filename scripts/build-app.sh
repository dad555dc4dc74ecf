#!/usr/bin/env bash
# Builds the dashboard (the Leptos client-side app in app/) for wasm32-unknown-unknown and writes
# the static site diffit-server serves by default: target/site/{index.html,style.css,pkg/}.
#
# Idempotent: tools it needs and does not find are installed once, into the machine-wide tool
# cache that every clone shares (scripts/tool-cache.sh: wasm-bindgen CLI pinned to Cargo.lock in
# wasm-bindgen-cli-<version>/, wasm-opt from npm's binaryen in binaryen-<version>/), or from
# Debian (rustc-web and friends when rustup has no wasm32 standard library). Environment:
#   SITE_DIR     where to write the site (default target/site)
#   APP_PROFILE  cargo profile (default release)
#   SKIP_WASM_OPT=1  skip the wasm-opt pass (faster rebuilds while iterating)
#   DIFFIT_TOOLS_CACHE  the tool cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/diffit-lora)
#   BUILD_APP_TOOLS_ONLY=1  only install (or check) the cached tools, print them and exit: no
#                compiler set-up, no build
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TARGET=wasm32-unknown-unknown
PROFILE=${APP_PROFILE:-release}
SITE=${SITE_DIR:-$ROOT/target/site}
# shellcheck source=scripts/tool-cache.sh
. scripts/tool-cache.sh
BINARYEN_VERSION=132.0.0

log() { printf '\033[1mbuild-app:\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root to run: $*"
    fi
}

# Installs the Debian packages given that are not installed yet.
apt_ensure() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# --- The tools the site is made with, kept in the tool cache. ---
# wasm-bindgen CLI, exactly the version of the wasm-bindgen crate in Cargo.lock.
BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, "", $3); print $3; exit }' Cargo.lock)
[ -n "$BINDGEN_VERSION" ] || die "no wasm-bindgen in Cargo.lock"
BINDGEN_ENTRY=wasm-bindgen-cli-$BINDGEN_VERSION
BINDGEN=$DIFFIT_CACHE/$BINDGEN_ENTRY/bin/wasm-bindgen
bindgen_ok() { [ -x "$1/bin/wasm-bindgen" ] && [ "$("$1/bin/wasm-bindgen" --version 2>/dev/null)" = "wasm-bindgen $BINDGEN_VERSION" ]; }
bindgen_install() {
    [ -n "$HOST_CARGO" ] || die "no cargo to install wasm-bindgen-cli with"
    log "installing wasm-bindgen-cli $BINDGEN_VERSION into $DIFFIT_CACHE/$BINDGEN_ENTRY (a few minutes, once per machine)"
    # No --locked: its lock file pins a crate version the registry no longer serves.
    env -u RUSTC -u RUSTC_BOOTSTRAP -u CARGO_TARGET_DIR \
        "$HOST_CARGO" install --quiet --force wasm-bindgen-cli --version "=$BINDGEN_VERSION" --root "$1"
}

# wasm-opt from npm's binaryen (Debian's 108 emits tables Chromium rejects).
BINARYEN_ENTRY=binaryen-$BINARYEN_VERSION
WASM_OPT=$DIFFIT_CACHE/$BINARYEN_ENTRY/node_modules/.bin/wasm-opt
binaryen_ok() { [ -x "$1/node_modules/.bin/wasm-opt" ] && "$1/node_modules/.bin/wasm-opt" --version 2>/dev/null | grep -q "version ${BINARYEN_VERSION%%.*}"; }
binaryen_install() {
    command -v npm >/dev/null || apt_ensure nodejs npm
    log "installing binaryen $BINARYEN_VERSION from npm into $DIFFIT_CACHE/$BINARYEN_ENTRY (once per machine)"
    npm install --silent --no-audit --no-fund --prefix "$1" "binaryen@$BINARYEN_VERSION" >/dev/null
}

ensure_tools() {
    cache_install "$BINDGEN_ENTRY" bindgen_ok bindgen_install
    if [ "${SKIP_WASM_OPT:-0}" != 1 ]; then
        cache_install "$BINARYEN_ENTRY" binaryen_ok binaryen_install
    fi
}

# --- 1. The compiler: rustup's wasm32 std if it has one, else Debian's rustc-web + build-std. ---
HOST_CARGO=$(command -v cargo || true)
if [ "${BUILD_APP_TOOLS_ONLY:-0}" = 1 ]; then
    ensure_tools
    log "wasm-bindgen: $BINDGEN ($("$BINDGEN" --version))"
    [ "${SKIP_WASM_OPT:-0}" = 1 ] || log "wasm-opt: $WASM_OPT ($("$WASM_OPT" --version))"
    exit 0
fi
rustup_has_wasm_std() {
    command -v rustc >/dev/null || return 1
    local libdir
    libdir=$(rustc --print target-libdir --target "$TARGET" 2>/dev/null) || return 1
    compgen -G "$libdir/libstd-*" >/dev/null
}

# The native build's target dir (./target, or the one CARGO_TARGET_DIR names, e.g. CI's build
# cache); the site itself always goes to $SITE.
NATIVE_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WASM_TARGET_DIR=$NATIVE_TARGET_DIR
BUILD_ARGS=(--target "$TARGET" -p app)
if [ "$PROFILE" = release ]; then BUILD_ARGS+=(--release); else BUILD_ARGS+=(--profile "$PROFILE"); fi
# The app samples on a pool of Web Workers sharing one memory (wasm threads), so std itself is
# rebuilt with atomics: -Zbuild-std, which needs rust-src (nightly, or RUSTC_BOOTSTRAP on a
# stable one).
rustup_has_wasm_src() {
    rustup_has_wasm_std || return 1
    [ -d "$(rustc --print sysroot 2>/dev/null)/lib/rustlib/src/rust/library/std" ]
}
if rustup_has_wasm_src; then
    log "compiler: $(rustc --version) with its wasm32 standard library, building std with atomics"
    WASM_CARGO=cargo
    export RUSTC_BOOTSTRAP=1
    # shellcheck disable=SC2054 # one flag: the commas are cargo's
    BUILD_ARGS+=(-Zbuild-std=std,panic_abort)
else
    apt_ensure rustc-web cargo-web rust-web-src rust-web-llvm lld-22
    log "compiler: $(/usr/bin/rustc --version) (Debian), building std for wasm32"
    WASM_CARGO=/usr/bin/cargo
    export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
    # A separate target dir: two compilers sharing one would rebuild each other's artefacts.
    WASM_TARGET_DIR=$NATIVE_TARGET_DIR/wasm
    # shellcheck disable=SC2054 # one flag: the commas are cargo's
    BUILD_ARGS+=(-Zbuild-std=std,panic_abort)
fi
[ -n "$HOST_CARGO" ] || HOST_CARGO=/usr/bin/cargo

export CARGO_TARGET_DIR=$WASM_TARGET_DIR
# atomics + bulk-memory: a shared memory for the worker pool. The linker is asked for it
# outright (an imported, shared memory, and the TLS symbols wasm-bindgen's thread support calls
# on each worker): without those flags this rustc links a private memory, and the page fails
# with "not a shared typed array".
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296 -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base ${CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS:-}"
log "cargo build ${BUILD_ARGS[*]}"
"$WASM_CARGO" build "${BUILD_ARGS[@]}"
PROFILE_DIR=$PROFILE
[ "$PROFILE" = dev ] && PROFILE_DIR=debug
WASM=$WASM_TARGET_DIR/$TARGET/$PROFILE_DIR/app.wasm
[ -f "$WASM" ] || die "cargo did not produce $WASM"

# --- 2 and 3. wasm-bindgen and wasm-opt, from the tool cache (installed there if missing). ---
ensure_tools

# --- 4. The site, built aside and swapped in so a running server never sees half of it. ---
STAGE=$SITE.tmp-build
rm -rf "$STAGE"
mkdir -p "$STAGE/pkg"
"$BINDGEN" --target web --no-typescript --remove-name-section --remove-producers-section \
    --out-dir "$STAGE/pkg" --out-name app "$WASM"
BG=$STAGE/pkg/app_bg.wasm
BINDGEN_SIZE=$(stat -c %s "$BG")
if [ "${SKIP_WASM_OPT:-0}" != 1 ]; then
    # -O3, not -Oz: sampling speed matters more here than a few hundred KB.
    "$WASM_OPT" -O3 --enable-simd --enable-threads --enable-bulk-memory --enable-nontrapping-float-to-int \
        --enable-reference-types --enable-multivalue --enable-sign-ext --enable-mutable-globals \
        "$BG" -o "$BG.opt"
    mv "$BG.opt" "$BG"
fi
cat style/*.css >"$STAGE/style.css"
# The content hash in the URLs makes browsers fetch a rebuilt app instead of a cached one.
VERSION=$(cat "$BG" "$STAGE/pkg/app.js" "$STAGE/style.css" | sha256sum | cut -c1-12)
sed "s/{{VERSION}}/$VERSION/g" app/index.html >"$STAGE/index.html"
rm -rf "$SITE"
mv "$STAGE" "$SITE"

RAW=$(stat -c %s "$WASM")
OPT=$(stat -c %s "$SITE/pkg/app_bg.wasm")
GZ=$(gzip -9 -c "$SITE/pkg/app_bg.wasm" | wc -c)
log "wasm: raw $((RAW / 1024)) KiB, after wasm-bindgen $((BINDGEN_SIZE / 1024)) KiB, after wasm-opt $((OPT / 1024)) KiB, gzipped $((GZ / 1024)) KiB"
log "site written to $SITE"
