#!/usr/bin/env bash
# Measures diffit-server on loopback: requests/s of GET /api/runs with $RUNS runs (wrk), next to
# nginx serving the same JSON from a file, and peak RSS while streaming a $LARGE_BYTES checkpoint.
# Only 127.0.0.1 is used; every process started here is stopped on exit.
#   server/benches/serve_bench.sh   (env: RUNS DURATION CONNS THREADS LARGE_BYTES PROFILE SKIP_BUILD
#   BENCH_ROUNDS: alternating rounds of the two servers, default 5)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${RUNS:-10000}
DURATION=${DURATION:-5s}
ROUNDS=${BENCH_ROUNDS:-5}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
LARGE_BYTES=${LARGE_BYTES:-1073741824}
PROFILE=${PROFILE:-release}
SERVER_PORT=${SERVER_PORT:-18180}
NGINX_PORT=${NGINX_PORT:-18181}

for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "missing $tool (apt-get install wrk nginx-light curl)"; exit 1; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

WORK=$(mktemp -d /tmp/diffit-bench.XXXXXX)
SERVER_PID=""
NGINX_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cd "$ROOT"
[ -n "${SKIP_BUILD:-}" ] || cargo build --profile "$PROFILE" -p server --bin diffit-server --example gen_runs
OUT_DIR=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
"$OUT_DIR/examples/gen_runs" "$WORK/checkpoints" "$RUNS" --large-bytes "$LARGE_BYTES"

"$OUT_DIR/diffit-server" --checkpoints "$WORK/checkpoints" --port "$SERVER_PORT" --app-dir "$WORK/no-app" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$SERVER_PORT/api/runs" -o /dev/null && break; sleep 0.1; done

rss() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$SERVER_PID/status"; }
echo "== streaming a $((LARGE_BYTES >> 20)) MiB checkpoint"
echo "server VmRSS before: $(rss VmRSS) KiB (VmHWM $(rss VmHWM) KiB)"
start=$(date +%s.%N)
curl -sf "http://127.0.0.1:$SERVER_PORT/api/runs/1/checkpoints/epoch_001" -o /dev/null
end=$(date +%s.%N)
echo "server VmRSS after: $(rss VmRSS) KiB, peak VmHWM: $(rss VmHWM) KiB, took $(echo "$end - $start" | bc) s"
STREAM_HWM_KIB=$(rss VmHWM)

mkdir -p "$WORK/www/api" "$WORK/nginx"
# nginx workers run unprivileged: let them read the served copy.
chmod 755 "$WORK" "$WORK/www" "$WORK/www/api"
curl -sf "http://127.0.0.1:$SERVER_PORT/api/runs" -o "$WORK/www/api/runs.json"
chmod 644 "$WORK/www/api/runs.json"
echo "== /api/runs body: $(stat -c %s "$WORK/www/api/runs.json") bytes for $RUNS runs"
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $WORK/www;
    location = /api/runs { default_type application/json; try_files /api/runs.json =404; }
  }
}
CONF
"$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
NGINX_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$NGINX_PORT/api/runs" -o /dev/null && break; sleep 0.1; done

rps() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
# ROUNDS alternating rounds of both servers; each round's pair gives one ratio in the report.
server_rps=() nginx_rps=()
for round in $(seq "$ROUNDS"); do
  echo "== round $round/$ROUNDS: diffit-server GET /api/runs ($THREADS threads, $CONNS connections, $DURATION)"
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$SERVER_PORT/api/runs" | tee "$WORK/wrk-server.txt"
  echo "== round $round/$ROUNDS: nginx, same JSON from a file"
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$NGINX_PORT/api/runs" | tee "$WORK/wrk-nginx.txt"
  server_rps+=("$(rps "$WORK/wrk-server.txt")") nginx_rps+=("$(rps "$WORK/wrk-nginx.txt")")
done
echo "server VmHWM after the load: $(rss VmHWM) KiB"
list() { local IFS=,; echo "[$*]"; }
echo "BENCH {\"kind\": \"server\", \"runs\": $RUNS, \"body_bytes\": $(stat -c %s "$WORK/www/api/runs.json"), \"server_rps_rounds\": $(list "${server_rps[@]}"), \"nginx_rps_rounds\": $(list "${nginx_rps[@]}"), \"stream_bytes\": $LARGE_BYTES, \"stream_peak_rss_kib\": $STREAM_HWM_KIB}"
