#!/usr/bin/env bash
# A newcomer's first run, from the README only: `make run` in one shell and
# `make test` in another, both on this checkout with a fresh home directory
# (no keys, no data), then the example page served by the gateway connects
# in headless Chromium and shows a push. The test suite therefore runs while
# a default gateway holds every default port (7100, 7101, 7102, 7180, 4222),
# which proves the tests never collide with one.
#
# Usage: .ci/newcomer.sh   (from any directory; CI calls it from .ci/run;
# NEWCOMER_SKIP_TEST=1 skips make test, for a quick check of the rest)
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep Go's caches where they are: only the project's own state is "fresh".
export GOPATH=$(go env GOPATH) GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE)
fresh=$(mktemp -d)
export HOME=$fresh
runlog=$fresh/make-run.log
run_pid=""
cleanup() {
  if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
    kill -TERM -- "-$run_pid" 2>/dev/null || kill -TERM "$run_pid" 2>/dev/null || true
    for _ in $(seq 1 80); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$run_pid" 2>/dev/null || true
  fi
  rm -rf "$fresh"
}
trap cleanup EXIT

echo "newcomer: make run (HOME=$fresh)"
set -m   # its own process group, so the cleanup stops make and the gateway together
make run >"$runlog" 2>&1 &
run_pid=$!
set +m
ready=0
for _ in $(seq 1 240); do   # the first build can take a while
  if curl -fsS -m 2 http://127.0.0.1:7101/readyz >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 0.5
done
if [ $ready != 1 ]; then
  echo "newcomer: make run did not become ready"; tail -40 "$runlog"; exit 1
fi
echo "newcomer: gateway ready; make test while it runs"

if [ -z "${NEWCOMER_SKIP_TEST:-}" ]; then make test; fi   # NEWCOMER_SKIP_TEST=1: only the page check

echo "newcomer: the example page, served by the gateway, shows a push"
if command -v chromium >/dev/null; then
  token=$(bin/longlink token --uid 42)
  pin=$(bin/longlink keys | head -1)   # make run requires encryption: the page pins the server key
  # The page posts each line of its log to ?report= (a listener here), so
  # the check waits for real events, not for a fixed time.
  python3 - "$fresh/page.log" >"$fresh/report.port" 2>/dev/null <<'PY' &
import http.server, sys
out = open(sys.argv[1], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        out.write(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode() + "\n")
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.timeout = 90
while True: srv.handle_request()
PY
  report_pid=$!
  for _ in $(seq 1 50); do [ -s "$fresh/report.port" ] && break; sleep 0.1; done
  url="http://127.0.0.1:7180/example/?token=$token&key=$pin&auto=1&report=http://127.0.0.1:$(cat "$fresh/report.port")/"
  timeout 60 chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --user-data-dir="$fresh/chromium" "$url" >/dev/null 2>&1 &
  browser_pid=$!
  ok=0
  for _ in $(seq 1 300); do
    if grep -Eq 'push: type [0-9]+ reached version [0-9]+' "$fresh/page.log" 2>/dev/null; then ok=1; break; fi
    sleep 0.1
  done
  kill "$browser_pid" "$report_pid" 2>/dev/null || true
  wait "$browser_pid" "$report_pid" 2>/dev/null || true
  if [ $ok != 1 ]; then
    echo "newcomer: the example page showed no push within 30 s; its log:"; cat "$fresh/page.log" 2>/dev/null
    tail -20 "$runlog"; exit 1
  fi
  grep -E 'authenticated as user|push: type' "$fresh/page.log" | head -3
elif [ -n "${CI:-}" ]; then
  echo "newcomer: CI must install chromium"; exit 1
else
  echo "newcomer: chromium not installed, page check skipped"
fi

# Ctrl-C in the first shell: the gateway drains and exits.
kill -INT -- "-$run_pid"
for _ in $(seq 1 80); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$run_pid" 2>/dev/null; then echo "newcomer: make run did not stop on Ctrl-C"; exit 1; fi
run_pid=""
echo "newcomer: ok"
