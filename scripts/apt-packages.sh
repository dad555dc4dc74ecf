#!/usr/bin/env bash
# Installs Debian packages that are missing, once: `apt-packages.sh LABEL PACKAGE…`. Idempotent
# and quiet when every package is present; LABEL names the caller in its messages.
set -euo pipefail

label=$1
shift
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
command -v apt-get >/dev/null || { echo "$label: missing ${missing[*]} and no apt-get" >&2; exit 1; }
SUDO=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "$label: need root to install ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
fi
echo "$label: installing ${missing[*]}" >&2
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
