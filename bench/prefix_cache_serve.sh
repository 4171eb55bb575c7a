#!/usr/bin/env bash
# bench/serve.py's streaming load (mixed prompts, closed loop) against two model servers of this
# checkout in one interleaved run: the prefix cache on (launched by serve.py) and off (started here
# with --no-prefix-cache). The mixed prompts share only SmolLM2's chat-template prefix (its default
# system prompt, ~25-33 tokens of ~183), so this is what prefix reuse does to the standard load.
# Usage: bench/prefix_cache_serve.sh [serve.py args]   (default: --concurrency 1,4,16, 64 new tokens)
# Results: bench/results/serve-prefix-<timestamp>.json/.png; takes the bench lock (BENCH_LOCK).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_LOCK=${BENCH_LOCK-/work/wt/bench.lock}
LOG=$(mktemp -d)
PORT=$(.venv/bin/python -c "from streamhost.launcher import free_port; print(free_port())")
env PYTHONPATH="$PWD/src" HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE \
  .venv/bin/python -m streamhost.cli container --model-id smollm2 --host 127.0.0.1 --port "$PORT" --dtype bf16 \
  --no-prefix-cache > "$LOG/nocache.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$LOG"' EXIT
until curl -sf "localhost:$PORT/ping" >/dev/null; do kill -0 $SERVER || { tail -20 "$LOG/nocache.log"; exit 1; }; sleep 1; done
LOCK=()
[ -n "$BENCH_LOCK" ] && LOCK=(flock "$BENCH_LOCK")
PYTHONPATH="$PWD/src" OMP_WAIT_POLICY=PASSIVE "${LOCK[@]}" nice -n 5 .venv/bin/python bench/serve.py --launch streamhost \
  --target "nocache=http://127.0.0.1:$PORT,api=openai" --candidate streamhost --baseline nocache \
  --concurrency 1,4,16 --max-new-tokens 64 --omp-wait-policy passive --name serve-prefix "$@"
