#!/usr/bin/env bash
# bench/serve.py with this checkout's model server beside another commit's, in one interleaved run
# (the "no regression" check of a refactor), repeated REPEATS times so that a difference can be told
# from the shared machine's noise: the other commit's server stays up, this checkout's is launched
# afresh by every repeat, levels alternate A B / B A inside a repeat, and each repeat takes the
# machine-wide bench lock on its own (BENCH_LOCK, default /work/wt/bench.lock; empty for none).
# Usage: [REPEATS=N] bench/serve_vs_commit.sh COMMIT [serve.py args]
# Results: one bench/results/serve-vs-<commit>-<timestamp>.json/.png per repeat, then
# bench/serve_repeats.py's medians and spread over them in serve-vs-<commit>-repeats-<timestamp>.json/.png.
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT=${1:?usage: [REPEATS=N] bench/serve_vs_commit.sh COMMIT [serve.py args]}; shift
REPEATS=${REPEATS:-1}
BENCH_LOCK=${BENCH_LOCK-/work/wt/bench.lock}
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
LOCK=()
[ -n "$BENCH_LOCK" ] && LOCK=(flock "$BENCH_LOCK")
FILES=()
for i in $(seq 1 "$REPEATS"); do
  echo "repeat $i/$REPEATS"
  MARK=$(mktemp)
  # PYTHONPATH: the launched candidate runs this checkout's src/, not whatever the venv has installed.
  PYTHONPATH="$PWD/src" OMP_WAIT_POLICY=PASSIVE "${LOCK[@]}" nice -n 5 .venv/bin/python bench/serve.py --launch streamhost \
    --target "ref-$COMMIT=http://127.0.0.1:$PORT,api=openai" \
    --candidate streamhost --baseline "ref-$COMMIT" --concurrency 1,4,16 --requests-per-level 4x --max-new-tokens 64 \
    --omp-wait-policy passive --name "serve-vs-$COMMIT" "$@"
  FILES+=($(find bench/results -name "serve-vs-$COMMIT-*.json" ! -name "*-repeats-*" -newer "$MARK"))
  rm -f "$MARK"
done
if [ "$REPEATS" -gt 1 ]; then
  .venv/bin/python bench/serve_repeats.py --candidate streamhost --baseline "ref-$COMMIT" \
    --name "serve-vs-$COMMIT-repeats" "${FILES[@]}"
fi
