#!/usr/bin/env bash
# Installs what the browser end-to-end tests need, once: Debian's Chromium and chromedriver,
# and the TLS headers fantoccini's WebDriver client builds against.
set -euo pipefail
cd "$(dirname "$0")"
./apt-packages.sh browser-env chromium chromium-driver libssl-dev pkg-config
