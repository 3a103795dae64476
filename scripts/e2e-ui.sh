#!/usr/bin/env bash
# Browser check of the web UI (make e2e; needs Debian's chromium, not run in CI):
# starts standalone mode, enqueues a scheduled message, loads /ui/ in headless
# Chromium and saves a screenshot to bin/ui.png. Fails if the page does not render.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || { echo "e2e: chromium not found (apt-get install chromium)"; exit 1; }
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
api=$(port); admin=$(port)
mkdir -p bin
go build -o bin/worker ./cmd/worker
WXPUSH_HTTP_ADDR=127.0.0.1:$api WXPUSH_ADMIN_ADDR=127.0.0.1:$admin WXPUSH_LOG_LEVEL=warn bin/worker >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$api/healthz" && break; sleep 0.1; done
send_at=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
curl -fs -X POST "http://127.0.0.1:$api/v1/messages" -H 'Content-Type: application/json' \
  -d '{"touser":"oia2TjuEGTNoeX76QEjQNrcURxG8","template_id":"ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY","send_at":"'"$send_at"'","data":{"User":{"value":"黄先生"},"Date":{"value":"06月07日"},"CardNumber":{"value":"0426"},"Type":{"value":"消费"},"Money":{"value":"260.00元"},"DeadTime":{"value":"06月07日"},"Left":{"value":"6504.09"}}}' >/dev/null
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1280,800 --virtual-time-budget=5000 \
  --screenshot="$PWD/bin/ui.png" "http://127.0.0.1:$api/ui/queues/normal?status=scheduled" 2>/dev/null
dom=$(chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --virtual-time-budget=5000 --dump-dom "http://127.0.0.1:$api/ui/" 2>/dev/null)
rm -rf "$profile"
[ -s bin/ui.png ] || { echo "e2e: no screenshot"; exit 1; }
case $dom in *normal*) ;; *) echo "e2e: the UI did not list the queues"; exit 1;; esac
echo "e2e: ok (screenshot bin/ui.png)"
