#!/usr/bin/env bash
# The end of `make demo`: serve a checkpoint, send real requests with curl (the last one bad),
# print the answers, and stop the server as a process manager would (SIGTERM; Ctrl-C works too).
#   usage: scripts/serve_demo.sh [CHECKPOINT [SERVE_ARGS...]]   (PY=python to use; default .venv/bin/python)
# SERVE_ARGS go to `distdl serve`, e.g. --set gpus_per_replica=1.
set -euo pipefail
PY=${PY:-.venv/bin/python}
CKPT=${1:-runs/cnn_digits/best}
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT

"$PY" -m distdl serve --checkpoint "$CKPT" --port "$PORT" "${@:2}" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER' EXIT
until curl -sf "$URL/readyz" >/dev/null; do
  kill -0 $SERVER 2>/dev/null || { echo "error: the server exited" >&2; exit 1; }
  sleep 1
done

show() { echo; echo "\$ $*"; "$@"; echo; }
MODEL=$(curl -s "$URL/models" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["models"][0]["name"])')
THREES=(data/digits/images/3/*.png) SEVENS=(data/digits/images/7/*.png)
THREE=${THREES[0]} SEVEN=${SEVENS[0]}
show curl -s "$URL/readyz"
show curl -s -H 'Content-Type: application/octet-stream' --data-binary @"$THREE" \
  "$URL/models/$MODEL/classify-image?top_k=3"
show curl -s -F "images=@$THREE" -F "images=@$SEVEN" "$URL/models/$MODEL/classify-image?top_k=2"
show curl -s -w ' (HTTP %{http_code})' -H 'Content-Type: application/json' \
  -d '{"images": ["not base64!"]}' "$URL/models/$MODEL/classify-image"
