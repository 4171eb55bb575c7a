"""Which executor runs a model, and loading it.

Rules (``choose_executor``): an explicit choice (``--executor`` / ``STREAMHOST_EXECUTOR``, reaching
here as ``EngineConfig.executor``) wins; otherwise a GPU gets torch, a quantization request
(``HF_MODEL_QUANTIZE`` / ``OPTION_QUANTIZE``) gets llama.cpp (convert + quantize, or requantize
a GGUF model; cached), and a
GGUF model (the default model, which ships as a Q4_1 GGUF, a ``.gguf`` file, or a folder holding
only one) gets llama.cpp when llama-cpp-python is installed. Everything else runs on torch.

The default model runs on llama.cpp (issue 17): in one run (2026-12-04,
bench/results/serve-peers-20261204-054118.json, output tok/s at 1 / 4 / 16 / 32 streams) llama.cpp
with its default bf16 KV cells made 195 / 282 / 309 / 368 against torch's 42 / 131 / 312 / 429,
so one user, the common case, gets 4.6x; it also idles in less memory (754 against 1,049 MB
RSS). ``--executor torch`` is even at 16 streams, 1.2x at 32, and has beam search.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from streamhost.engine.config import EngineConfig
    from streamhost.engine.executor_api import Executor

EXECUTOR_NAMES = ("torch", "llamacpp")

# GGUF types without llama.cpp's repacked or tiled CPU GEMMs, measured: the shipped Q4_1 prefilled
# 256 tokens 1.7x slower than its Q8_0 requantization (bench/llamacpp_types.py).
SLOW_BATCH_TYPES = ("Q4_1",)

log = logging.getLogger(__name__)

__all__ = ["EXECUTOR_NAMES", "choose_executor", "find_gguf", "gguf_tokenizer", "load_executor"]


def parse_executor(value: str | None, source: str = "--executor") -> str | None:
    """``torch`` / ``llamacpp`` / ``auto`` (None); anything else is a clear error."""
    if value is None or value.strip().lower() in ("", "auto"):
        return None
    name = value.strip().lower().replace("-", "").replace("_", "").replace(".", "")
    if name not in EXECUTOR_NAMES:
        raise ValueError(f"{source} {value!r} is not valid: expected one of {', '.join(EXECUTOR_NAMES)} or auto")
    return name


def find_gguf(model: str) -> Path | None:
    """The GGUF file ``model`` names, if it names one: the default model, a .gguf, or a folder of one."""
    from streamhost.engine.loader import (
        DEFAULT_MODEL_ALIAS,
        DEFAULT_MODEL_NAME,
        default_gguf_path,
    )

    if model in (DEFAULT_MODEL_ALIAS, "default", f"HuggingFaceTB/{DEFAULT_MODEL_NAME}") and not Path(model).exists():
        return default_gguf_path()
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if found:
            return found[0]
    return None


def _llama_cpp_installed() -> bool:
    from streamhost.engine.executors.llamacpp import (
        LlamaCppUnavailableError,
        import_llama_cpp,
    )

    try:
        import_llama_cpp()
    except LlamaCppUnavailableError as exc:
        log.warning("%s", exc)
        return False
    return True


def _wants_gpu(device: str | None) -> bool:
    if device and device not in ("auto",):
        return device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


def choose_executor(model: str, config: EngineConfig) -> str:
    """``torch`` or ``llamacpp`` for this model and configuration (see the module docstring)."""
    requested = parse_executor(config.executor)
    if requested is not None:
        return requested
    if _wants_gpu(config.device):
        return "torch"
    if config.quantize:
        return "llamacpp"
    if find_gguf(model) is not None and _llama_cpp_installed():
        return "llamacpp"
    return "torch"


def gguf_tokenizer(gguf_path: Path, cache: Path | None = None):
    """The Hugging Face tokenizer stored in a GGUF, extracted once into the cache.

    Extraction is slow (transformers parses every vocab entry in Python: ~10-60 s for a 49k
    vocab), hence the cache; the torch executor's conversion of the same file holds the same
    tokenizer, so it is reused when present."""
    from transformers import AutoTokenizer

    from streamhost.engine.loader import (
        DEFAULT_MODEL_NAME,
        _fingerprint,
        _is_complete,
        _publish,
        cache_root,
    )

    fingerprint = _fingerprint(gguf_path)
    converted = cache_root(cache) / "models" / f"{DEFAULT_MODEL_NAME}-bfloat16-{fingerprint}"
    if _is_complete(converted):
        return AutoTokenizer.from_pretrained(converted)
    target = cache_root(cache) / "tokenizers" / f"{gguf_path.stem}-{fingerprint}"
    if not _is_complete(target):
        log.info("extracting the tokenizer of %s (once)", gguf_path.name)
        import shutil
        import tempfile

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=target.parent))
        try:
            AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _publish(tmp, target)
    return AutoTokenizer.from_pretrained(target)


def load_executor(model: str, config: EngineConfig) -> Executor:
    """Resolve ``model`` and load it on the executor ``choose_executor`` picks."""
    from streamhost.engine.loader import cache_root, resolve_model

    kind = choose_executor(model, config)
    if kind == "torch":
        from streamhost.engine.executor import TorchExecutor

        if config.quantize:
            log.warning("quantize=%s is ignored by the torch executor: serving unquantised weights", config.quantize)
        for setting, value in (
            ("--cache-type-k", config.cache_type_k),
            ("--cache-type-v", config.cache_type_v),
            ("--flash-attn", config.flash_attn),
        ):
            if value:
                log.warning("%s %s is a llama.cpp setting, ignored by the torch executor", setting, value)
        path = resolve_model(model, revision=config.revision, token=config.hub_token, cache=config.cache_dir)
        return TorchExecutor(
            path,
            dtype=config.dtype,
            device=config.device,
            trust_remote_code=config.trust_remote_code,
            batch_invariant=config.batch_invariant,
            compile=config.compile,
            compile_cache_dir=cache_root(config.cache_dir),
            compile_buckets=config.compile_buckets,
            lean=config.lean_forward,
            compile_lean=config.compile_lean,
        )

    from transformers import AutoTokenizer

    from streamhost.engine.executors.llamacpp import LlamaCppExecutor, import_llama_cpp
    from streamhost.engine.gguf_quantize import (
        UNQUANTIZED,
        gguf_for,
        normalize_quant_type,
        requantized_gguf,
    )

    if _wants_gpu(config.device) and config.device not in (None, "auto"):
        raise ValueError(f"the llama.cpp executor runs on CPU; device {config.device!r} needs --executor torch")
    import_llama_cpp()  # a clear error now if it is missing
    quant = normalize_quant_type(config.quantize) if config.quantize else None
    gguf = find_gguf(model)
    if gguf is not None:
        tokenizer = gguf_tokenizer(gguf, config.cache_dir)
        if quant:
            gguf = requantized_gguf(gguf, quant, threads=config.threads, cache=config.cache_dir)
    else:
        folder = resolve_model(model, revision=config.revision, token=config.hub_token, cache=config.cache_dir)
        gguf = gguf_for(folder, quant or UNQUANTIZED, threads=config.threads, cache=config.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=config.trust_remote_code)
    log.info("llama.cpp executor: %s (%d threads)", gguf, config.threads or os.cpu_count() or 1)
    executor = LlamaCppExecutor(
        gguf,
        tokenizer,
        threads=config.threads,
        decode_threads=config.decode_threads,
        cache_type_k=config.cache_type_k,
        cache_type_v=config.cache_type_v,
        flash_attn=config.flash_attn,
    )
    if executor.dtype in SLOW_BATCH_TYPES:
        log.info(
            "%s weights take llama.cpp's one-row CPU kernels, slow for prompts and batches: under load "
            'HF_MODEL_QUANTIZE=q8_0 (requantized once, cached) is faster (docs/architecture.md, "GGUF weight types")',
            executor.dtype,
        )
    return executor
