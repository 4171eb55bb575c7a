#!/usr/bin/env bash
# Install llama-cpp-python into a venv, built from source for THIS machine's CPU (PyPI has no wheel
# for it). The first run compiles llama.cpp, showing ninja's [n/N] progress (measured: 335 s on
# this project's 2-core machine when quiet, 52 min while seven other agents loaded it; 665 s for
# the 140-step build with these CMake arguments while three other agents worked); the wheel
# is kept in a cache folder keyed by version and CPU features, so later installs (a new venv,
# `make clean && make run`) take seconds (measured: 2 s).
# Usage: scripts/install-llama-cpp.sh <pip> [version]
set -euo pipefail
PIP=${1:?usage: install-llama-cpp.sh <pip> [version]}
VERSION=${2:-0.3.36}
CACHE=${STREAMHOST_CACHE:-$HOME/.cache/streamhost}
CPU_KEY=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | sha256sum | cut -c1-12)
# The build recipe is part of the key: a wheel built before the AMX fix below is not reused.
RECIPE=amxfix1
WHEELS="$CACHE/wheels/llama-cpp-python-$VERSION-$CPU_KEY-$RECIPE"
# GCC < 14 miscompiles llama.cpp's AMX tile set-up (SIGSEGV in the first batched decode on CPUs
# with AMX); the force-included header corrects the intrinsic (see the header for the why).
AMX_FIX="$(cd "$(dirname "$0")" && pwd)/llama-cpp-amx-fix.h"

if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "[streamhost] building llama-cpp-python $VERSION for this CPU (once: 5.5 min on an idle 2-core machine, far longer on a busy one)"
  start=$(date +%s)
  mkdir -p "$WHEELS.tmp"
  : > "$WHEELS.log"  # exists before tail follows it (else tail gives up and no progress shows)
  # GGML_NATIVE: this CPU's instructions (AVX-512, AMX, ...); no tests, examples, tools, server or
  # llava/mtmd. --no-cache-dir: pip's own wheel cache does not know which CPU a wheel was built for;
  # ours does. (No comment may sit inside the continued command below: before, one did, which
  # ended the command there and the build ran without any of these CMake arguments.)
  CMAKE_ARGS="-DGGML_NATIVE=ON '-DCMAKE_CXX_FLAGS=-include $AMX_FIX' -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  nice -n 10 "$PIP" wheel -v --no-cache-dir --no-deps --no-binary llama-cpp-python -w "$WHEELS.tmp" \
      "llama-cpp-python==$VERSION" > "$WHEELS.log" 2>&1 &
  build=$!
  # ninja's "[n/N] compiling ..." lines, one per step, cut to a screen line (awk flushes each).
  tail -n +1 -f "$WHEELS.log" --pid=$build | awk '/^ *\[[0-9]+\/[0-9]+\]/ { print substr($0, 1, 100); fflush() }' || true
  if ! wait $build; then
    tail -n 40 "$WHEELS.log"
    echo "[streamhost] building llama-cpp-python failed (full log: $WHEELS.log)" >&2
    exit 1
  fi
  rm -rf "$WHEELS" && mv "$WHEELS.tmp" "$WHEELS"
  echo "[streamhost] llama-cpp-python built in $(( $(date +%s) - start )) s -> $WHEELS"
fi
"$PIP" install -q --find-links "$WHEELS" "llama-cpp-python==$VERSION"
