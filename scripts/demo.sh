#!/usr/bin/env bash
# `make demo`: the server is built and started first (it needs no tensor library, so it builds
# in a fraction of the trainer's time), so the dashboard answers early: its page says the app is
# still being built and reloads itself until it is. Then the app is built, then the trainer,
# and the demo run trains while the dashboard shows it appear and grow.
# The server stays in the foreground when the run is done (Ctrl-C stops it; an interrupted run
# resumes with `diffit train --resume --run-number N`).
#   CHECKPOINTS (default checkpoints), PORT (default 8080), DEMO_EPOCHS (default 12),
#   DEMO_PRESET (default small-labels: the hybrid with the tree species, guided sampling)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CHECKPOINTS=${CHECKPOINTS:-checkpoints}
PORT=${PORT:-8080}
DEMO_EPOCHS=${DEMO_EPOCHS:-12}
DEMO_PRESET=${DEMO_PRESET:-small-labels}
R=target/release
log() { printf '\033[1mdemo:\033[0m %s (%ds)\n' "$*" "$SECONDS" >&2; }

CARGO=${CARGO:-cargo}
# Each cargo uses every core itself (not make's two job slots).
build() { env -u MAKEFLAGS -u MFLAGS -u CARGO_MAKEFLAGS "$CARGO" build --release "$@"; }

log "building the server"
build -p server --bin diffit-server
mkdir -p "$CHECKPOINTS"
"$R/diffit-server" --checkpoints "$CHECKPOINTS" --port "$PORT" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM
# A port already taken ends the server at once: say so rather than train for nothing.
for _ in $(seq 50); do
    kill -0 "$server" 2>/dev/null || { wait "$server" || true; log "error: diffit-server did not start (is port $PORT taken? PORT=…)"; exit 1; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.1
done
log "dashboard up at http://127.0.0.1:$PORT/ (the app is built next, then the run trains)"

scripts/build-app.sh
log "app built (an open dashboard page reloads into it); building the trainer"
build -p trainer --bin diffit
"$R/diffit" train --preset "$DEMO_PRESET" --epochs "$DEMO_EPOCHS" --checkpoints "$CHECKPOINTS"
"$R/diffit" train --list-runs --checkpoints "$CHECKPOINTS"
log "the demo run is done; serving http://127.0.0.1:$PORT/ until Ctrl-C"
wait "$server"
