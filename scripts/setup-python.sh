#!/usr/bin/env bash
# Makes .venv at the repo root a Python venv with the readers used by the interoperability tests
# (the tests run .venv/bin/python). Idempotent: does nothing when it already has them.
#
# The venv itself lives in the machine-wide tool cache (scripts/tool-cache.sh), keyed by the
# package list below and the Python interpreter: $DIFFIT_CACHE/venv-<key>, made once per machine
# and shared by every clone, whose .venv is a symlink to it. A .venv that is a real directory
# (made by hand, or by an older version of this script) is left alone while it has the packages.
#   PYTHON  the interpreter to make the venv from (default python3)
set -euo pipefail

# pip requirement specifiers. Adding one (or changing one) makes a new venv, under a new key.
PACKAGES=(safetensors numpy tensorboard mlflow==3.17.2 "moto[server]==5.2.5")

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/tool-cache.sh
. scripts/tool-cache.sh
PYTHON=${PYTHON:-python3}

# Succeeds when the venv at $1 has every distribution in PACKAGES installed and each of the
# modules they provide imports (the import names of e.g. PyYAML are not its requirement name).
venv_ready() {
    [ -x "$1/bin/python" ] || return 1
    "$1/bin/python" - "${PACKAGES[@]}" >/dev/null 2>&1 <<'PY'
import importlib, importlib.metadata as md, re, sys
names = {re.split(r"[\s<>=!~;\[@]", spec, maxsplit=1)[0] for spec in sys.argv[1:]}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
for name in names:
    md.version(name)  # raises when not installed
provided = getattr(md, "packages_distributions", dict)()
wanted = {norm(n) for n in names}
modules = {m for m, dists in provided.items()
           if m.isidentifier() and not m.startswith("_") and any(norm(d) in wanted for d in dists)}
for module in sorted(modules) or sorted(n.replace("-", "_") for n in names):
    importlib.import_module(module)
PY
}

install_venv() {
    log "creating a venv with ${PACKAGES[*]} in $1"
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
}

log() { printf 'setup-python: %s\n' "$*" >&2; }

# A real .venv directory that already works is the user's: leave it.
if [ -d .venv ] && [ ! -L .venv ] && venv_ready .venv; then
    exit 0
fi

# The key: the sorted package list and the interpreter (implementation, version, platform and
# where it lives, since a venv links to it).
command -v "$PYTHON" >/dev/null || { log "error: no $PYTHON"; exit 1; }
INTERPRETER=$("$PYTHON" -c 'import os, platform, sys; print(sys.implementation.name, platform.python_version(), sys.platform, platform.machine(), os.path.realpath(sys.executable))')
KEY=$( { printf '%s\n' "${PACKAGES[@]}" | LC_ALL=C sort -u; printf '%s\n' "$INTERPRETER"; } | sha256sum | cut -c1-12)
VENV=$DIFFIT_CACHE/venv-$KEY

if [ -L .venv ] && [ "$(readlink .venv)" = "$VENV" ] && venv_ready "$VENV"; then
    exit 0
fi
cache_install_pinned "venv-$KEY" venv_ready install_venv

if [ -d .venv ] && [ ! -L .venv ]; then
    # A directory without the packages: a venv this script made before the cache. Replace it.
    [ -f .venv/pyvenv.cfg ] || { log "error: $ROOT/.venv is a directory but not a venv; move it away"; exit 1; }
    log "replacing the incomplete venv $ROOT/.venv"
    rm -rf .venv
elif [ -e .venv ] && [ ! -L .venv ]; then
    log "error: $ROOT/.venv exists and is not a directory; move it away"
    exit 1
fi
# Point .venv at the cached venv in one rename, so a concurrent reader never finds it missing.
ln -sfn "$VENV" ".venv.link.$$.tmp"
mv -T ".venv.link.$$.tmp" .venv
log ".venv -> $VENV ($("$VENV/bin/python" --version 2>&1); ${PACKAGES[*]})"
