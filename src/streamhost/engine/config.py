"""How to run one model: everything the engine is told, in one object passed to ``Engine``.

The model server resolves it once (``server/config.py``: flags > SageMaker/TGI variables >
serving.properties > LMI ``OPTION_*`` variables > defaults) and hands it down; nothing below the
server reads the process environment, so a test builds an engine from an ``EngineConfig`` and
patches nothing. This module
imports no torch: the server builds the config before it loads the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamhost.engine.limits import EngineLimits


@dataclass(frozen=True)
class LimitSettings:
    """The limits as set by the operator, before the model's context length shapes the defaults.

    ``names`` holds TGI/LMI setting names (``MAX_TOTAL_TOKENS``, ``OPTION_MAX_ROLLING_BATCH_SIZE``,
    ...) and their values, already merged in precedence order by whoever built it; ``overrides``
    holds ``EngineLimits`` field names that win over them. Resolving needs the model's context
    length, which only exists once the weights are loaded.
    """

    names: Mapping[str, str] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self, model_max_positions: int | None = None) -> EngineLimits:
        """The limits for a model with ``model_max_positions`` (ValueError names a bad setting)."""
        return EngineLimits.from_env(self.names, model_max_positions=model_max_positions, overrides=self.overrides)


@dataclass(frozen=True)
class EngineConfig:
    """How to run the model; ``None`` fields are chosen from the hardware (device, dtype, step budget)."""

    dtype: str | None = None  # bf16 | fp16 | fp32 | auto
    device: str | None = None  # cpu | cuda | cuda:N | auto
    trust_remote_code: bool = False
    revision: str | None = None
    limits: EngineLimits | None = None  # explicit limits; otherwise ``limit_settings`` resolved at load
    limit_settings: LimitSettings = field(default_factory=LimitSettings)
    prefill_chunk: int | None = None  # prompt tokens per step, all sequences together (CPU 1024, GPU 2048)
    idle_kv_bytes: int = 512 * 1024**2  # KV cache kept allocated while idle; a larger one is released
    model_id: str | None = None  # the name reported by /info (defaults to the reference given to load)
    tensor_parallel_degree: int | None = None  # asked for; this executor runs on one device and says so
    batch_invariant: bool = False  # attention groups rows by length bucket only (kv_cache.py)
    compile: bool | None = None  # torch.compile small steps (compiled_step.py); None: the device's default
    compile_buckets: tuple[int, ...] | None = None  # step sizes (tokens) compiled; None: compiled_step.BUCKETS
    lean_forward: bool | None = None  # torch: our Llama-family forward (lean_llama.py); None: where supported
    compile_lean: bool | None = None  # torch: compile the lean forward's layer (lean_compiled.py); None: per device
    tokenizer_workers: int = 2  # threads that tokenize prompts off the event loop
    # Longer prompts go to those threads; shorter ones (<~1k tokens, ~1 ms) are tokenized inline,
    # in arrival order: the hop to a worker and back made a burst's requests reach the scheduler
    # later and out of order (bench/ttft_trace.py), which cost TTFT at 16 streams.
    inline_tokenize_chars: int = 4096
    hub_token: str | None = field(default=None, repr=False)  # for hub downloads; never logged
    cache_dir: Path | None = None  # converted/downloaded models (the server always sets it)
    executor: str | None = None  # torch | llamacpp | None (auto: see engine/executors/__init__.py)
    quantize: str | None = None  # HF_MODEL_QUANTIZE / OPTION_QUANTIZE: a llama.cpp type (q8_0, q4_k_m, ...)
    threads: int | None = None  # llama.cpp compute threads (default: every core this process may use)
    # The engine core (scheduler, KV cache, forward, sampler) in its own process (engine/core_proc.py);
    # False runs it in a thread of the server process (--no-engine-process / STREAMHOST_ENGINE_PROCESS=0).
    engine_process: bool = True
    engine_cores: str | None = None  # --engine-cores / STREAMHOST_ENGINE_CORES: a count or a CPU list (0-1)
    # --omp-spin / STREAMHOST_OMP_SPIN: barrier spins of the core's OpenMP threads before they sleep
    # (0: sleep at once); None: core_client.DEFAULT_OMP_SPIN.
    omp_spin: int | None = None
    # --prefix-cache / STREAMHOST_PREFIX_CACHE: a finished request's KV row keeps its contents for the
    # next prompt that shares its prefix (engine/prefix_cache.py).
    prefix_cache: bool = True
    # --decode-threads / STREAMHOST_DECODE_THREADS: llama.cpp threads for steps of up to 16 tokens (the
    # rest use ``threads``); None: ``threads`` too (engine/executors/llamacpp_threads.py).
    decode_threads: int | None = None
    # llama.cpp KV cells (engine/executors/llamacpp_kv.py): --cache-type-k / --cache-type-v
    # (STREAMHOST_CACHE_TYPE_K / _V; None: f16) and --flash-attn auto|on|off (STREAMHOST_LLAMACPP_FLASH_ATTN).
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    flash_attn: str | None = None
