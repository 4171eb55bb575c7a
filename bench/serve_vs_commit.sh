#!/usr/bin/env bash
# bench/serve.py with this checkout's model server beside another commit's, in one interleaved run
# (the "no regression" check of a refactor). Usage: bench/serve_vs_commit.sh COMMIT [serve.py args]
# Results: bench/results/serve-vs-<commit>-<timestamp>.json and .png.
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT=${1:?usage: bench/serve_vs_commit.sh COMMIT [serve.py args]}; shift
REF=$(mktemp -d)
git archive "$COMMIT" src | tar -x -C "$REF"
PORT=$(.venv/bin/python -c "from streamhost.launcher import free_port; print(free_port())")
env PYTHONPATH="$REF/src" HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE \
  .venv/bin/python -m streamhost.cli container --model-id smollm2 --host 127.0.0.1 --port "$PORT" --dtype bf16 \
  > "$REF/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$REF"' EXIT
echo "waiting for $COMMIT's model server on port $PORT (log: $REF/server.log)"
until curl -sf "localhost:$PORT/ping" >/dev/null; do kill -0 $SERVER || { tail -20 "$REF/server.log"; exit 1; }; sleep 1; done
OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/serve.py --launch streamhost --target "ref-$COMMIT=http://127.0.0.1:$PORT,api=openai" \
  --candidate streamhost --baseline "ref-$COMMIT" --concurrency 1,4,16 --requests-per-level 4x --max-new-tokens 64 \
  --omp-wait-policy passive --name "serve-vs-$COMMIT" "$@"
