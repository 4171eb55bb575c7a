#!/usr/bin/env bash
# The engine-core placements side by side with another commit's model server, in one interleaved
# bench/serve.py run: this checkout with the core on every core (the front end shares them) and with
# the core on the last core (the front end pinned to the rest), beside COMMIT (main: the core in a
# thread of the server process). Usage: bench/serve_core_placement.sh COMMIT [serve.py args]
# This checkout's servers run with OMP_WAIT_POLICY unset (the core process then defaults to PASSIVE),
# and once more on every core with ACTIVE (spinning); COMMIT's with PASSIVE, as it needs.
# Results: bench/results/serve-core-placement-<timestamp>.json and .png.
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT=${1:?usage: bench/serve_core_placement.sh COMMIT [serve.py args]}; shift
REF=$(mktemp -d)
git archive "$COMMIT" src | tar -x -C "$REF"
SERVERS=()
cleanup() { for pid in "${SERVERS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; rm -rf "$REF"; }
trap cleanup EXIT
port() { .venv/bin/python -c "from streamhost.launcher import free_port; print(free_port())"; }
start() {  # NAME SRC OMP PORT [container args]
  local name=$1 src=$2 omp=$3 port=$4; shift 4
  env -u OMP_WAIT_POLICY ${omp:+OMP_WAIT_POLICY=$omp} PYTHONPATH="$src" HF_HUB_OFFLINE=1 \
    .venv/bin/python -m streamhost.cli container --model-id smollm2 --host 127.0.0.1 --port "$port" --dtype bf16 "$@" \
    > "$REF/$name.log" 2>&1 &
  SERVERS+=($!)
  echo "waiting for $name on port $port (log: $REF/$name.log)"
  until curl -sf "localhost:$port/ping" >/dev/null; do kill -0 "${SERVERS[-1]}" || { tail -20 "$REF/$name.log"; exit 1; }; sleep 1; done
}
P_REF=$(port); start "ref" "$REF/src" PASSIVE "$P_REF"
P_ALL=$(port); start "core-all-active" "$PWD/src" ACTIVE "$P_ALL" --engine-cores 0-1
P_ONE=$(port); start "core-1" "$PWD/src" "" "$P_ONE" --engine-cores 1
P_PAS=$(port); start "core-all-passive" "$PWD/src" "" "$P_PAS" --engine-cores 0-1
.venv/bin/python bench/serve.py \
  --target "ref-$COMMIT=http://127.0.0.1:$P_REF,api=openai" \
  --target "streamhost-core-0-1-active=http://127.0.0.1:$P_ALL,api=openai" \
  --target "streamhost-core-1=http://127.0.0.1:$P_ONE,api=openai" \
  --target "streamhost-core-0-1-passive=http://127.0.0.1:$P_PAS,api=openai" \
  --candidate streamhost-core-0-1-passive --baseline "ref-$COMMIT" --concurrency 1,16 --requests-per-level 4x \
  --max-new-tokens 64 --name "serve-core-placement" "$@"
