#!/usr/bin/env bash
# Installs what the browser end-to-end tests need, once: Debian's Chromium and chromedriver,
# and the TLS headers fantoccini's WebDriver client builds against. Idempotent and quiet when
# everything is present.
set -euo pipefail

PACKAGES=(chromium chromium-driver libssl-dev pkg-config)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
command -v apt-get >/dev/null || { echo "browser-env: missing ${missing[*]} and no apt-get" >&2; exit 1; }
SUDO=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "browser-env: need root to install ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
fi
echo "browser-env: installing ${missing[*]}" >&2
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
/usr/bin/chromium --version >&2
