"""HF_MODEL_QUANTIZE on a CPU: convert once to GGUF, quantize with llama.cpp, keep the result.

Our counterpart of the precompiled-configuration cache: the first start converts the safetensors
model (gguf_convert.py) and runs llama.cpp's own quantizer (``llama_model_quantize``, the code
behind ``llama-quantize``) with its per-tensor progress on stderr; the file lands in
``$STREAMHOST_CACHE/gguf/`` under a name keyed by (weights hash, type, llama.cpp version,
converter revision), so a second start finds it and loads in seconds. A type or model we cannot produce fails at startup
with a message naming it and what to use instead.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from streamhost.engine.gguf_convert import (
    CONVERTER_REVISION,
    UnsupportedModelError,
    architecture_of,
    convert_to_gguf,
    file_fingerprint,
    read_config,
    weights_fingerprint,
)

log = logging.getLogger(__name__)

# Names accepted in HF_MODEL_QUANTIZE / OPTION_QUANTIZE -> llama.cpp's LLAMA_FTYPE_* constant name.
QUANT_TYPES: dict[str, str] = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "bf16": "LLAMA_FTYPE_MOSTLY_BF16",
}
UNQUANTIZED = "bf16"  # what the converter writes; also what --executor llamacpp uses for a safetensors model


class UnsupportedQuantizationError(ValueError):
    """A quantization we cannot produce; the message names it and the choices."""


def normalize_quant_type(value: str) -> str:
    """``Q4_K_M`` / ``q4_k_m`` -> ``q4_k_m``; anything else (awq, gptq, bitsandbytes, fp8, ...) is refused."""
    name = value.strip().lower().replace("-", "_")
    if name not in QUANT_TYPES:
        raise UnsupportedQuantizationError(
            f"quantization {value!r} is not supported on this server: it quantizes with llama.cpp on CPU; "
            f"use one of {', '.join(QUANT_TYPES)} (HF_MODEL_QUANTIZE / OPTION_QUANTIZE), "
            "or give a model already quantized as a .gguf file"
        )
    return name


def cache_dir(cache: Path | None = None) -> Path:
    from streamhost.engine.loader import cache_root

    return cache_root(cache) / "gguf"


def _progress(message: str) -> None:
    print(f"[streamhost] {message}", file=sys.stderr, flush=True)


def quantize_gguf(
    source: Path, target: Path, quant: str, threads: int | None = None, *, requantize: bool = False
) -> None:
    """llama.cpp's quantizer, ``source`` (BF16 GGUF, or a quantized one with ``requantize``) ->
    ``target``; its per-tensor log is shown."""
    from streamhost.engine.executors.llamacpp import LLAMA_LOG, import_llama_cpp

    llama = import_llama_cpp()
    params = llama.llama_model_quantize_default_params()
    params.ftype = getattr(llama, QUANT_TYPES[quant])
    params.nthread = threads or 0
    params.allow_requantize = requantize
    LLAMA_LOG.verbose = True  # llama.cpp prints one line per tensor: the progress
    try:
        rc = llama.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    finally:
        LLAMA_LOG.verbose = False
    if rc != 0:
        raise RuntimeError(f"llama.cpp failed to quantize {source.name} to {quant} (status {rc})")


def gguf_for(folder: Path, quant: str = UNQUANTIZED, threads: int | None = None, cache: Path | None = None) -> Path:
    """The cached GGUF of ``folder`` at ``quant``, made on first use (convert, then quantize)."""
    from streamhost.engine.executors.llamacpp import llama_cpp_version

    quant = normalize_quant_type(quant)
    folder = Path(folder)
    architecture_of(read_config(folder))  # refuse early, before hashing gigabytes
    version = llama_cpp_version()
    if version is None:
        raise UnsupportedQuantizationError(
            f"quantization {quant} needs llama-cpp-python (install it with `make install`), or unset HF_MODEL_QUANTIZE"
        )
    key = f"{folder.name}-{weights_fingerprint(folder)}-{quant}-llamacpp{version}-conv{CONVERTER_REVISION}"
    target = cache_dir(cache) / f"{key}.gguf"
    if target.is_file():
        _progress(f"using cached {quant} GGUF {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=target.parent) as tmp:
        bf16 = Path(tmp) / "model-bf16.gguf"
        _progress(f"converting {folder} to GGUF (once; cached as {target.name})")
        convert_to_gguf(folder, bf16)
        if quant == UNQUANTIZED:
            result = bf16
        else:
            _progress(f"quantizing to {quant} with llama.cpp")
            result = Path(tmp) / f"model-{quant}.gguf"
            quantize_gguf(bf16, result, quant, threads)
        os.replace(result, target)  # same filesystem: atomic, a crash never leaves half a file
    _progress(f"GGUF {quant} ready in {time.monotonic() - started:.1f} s -> {target}")
    return target


def gguf_file_type(path: Path) -> int | None:
    """``general.file_type`` of a GGUF (a ``LLAMA_FTYPE_*`` value), read from its header only."""
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    return None if field is None else int(field.contents())


def requantized_gguf(source: Path, quant: str, threads: int | None = None, cache: Path | None = None) -> Path:
    """``source`` (a GGUF model) at ``quant``: made once with llama.cpp's quantizer and cached
    under a key of (file contents, type, llama.cpp version); ``source`` itself when it has that
    type already.

    Why: llama.cpp's fast CPU kernels cover some types only. On AVX-512 its repacked Q4_0 and
    tiled Q8_0 GEMMs prefill a 256-token prompt 2.4x / 1.7x faster than its Q4_1 dot products
    (docs/architecture.md, "GGUF weight types and llama.cpp's kernels"). A type quantized from an
    already quantized file cannot win back what the first quantization lost; Q8_0 keeps what is
    left almost exactly, smaller types lose more, so a warning says so."""
    from streamhost.engine.executors.llamacpp import import_llama_cpp, llama_cpp_version

    quant = normalize_quant_type(quant)
    source = Path(source)
    llama = import_llama_cpp()
    have = gguf_file_type(source)
    if have == getattr(llama, QUANT_TYPES[quant]):
        return source
    key = f"{source.stem}-{file_fingerprint(source)}-{quant}-llamacpp{llama_cpp_version()}"
    target = cache_dir(cache) / f"{key}.gguf"
    if target.is_file():
        _progress(f"using cached {quant} GGUF {target}")
        return target
    if have not in (llama.LLAMA_FTYPE_ALL_F32, llama.LLAMA_FTYPE_MOSTLY_F16, llama.LLAMA_FTYPE_MOSTLY_BF16):
        log.warning(
            "requantizing %s (already quantized, file type %s) to %s: what its own quantization lost "
            "does not come back; q8_0 keeps the rest almost exactly, smaller types lose more",
            source.name,
            have,
            quant,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".requantize-", dir=target.parent) as tmp:
        result = Path(tmp) / f"model-{quant}.gguf"
        _progress(f"quantizing {source.name} to {quant} with llama.cpp (once; cached as {target.name})")
        quantize_gguf(source, result, quant, threads, requantize=True)
        os.replace(result, target)
    _progress(f"GGUF {quant} ready in {time.monotonic() - started:.1f} s -> {target}")
    return target


__all__ = [
    "QUANT_TYPES",
    "UNQUANTIZED",
    "UnsupportedModelError",
    "UnsupportedQuantizationError",
    "gguf_for",
    "normalize_quant_type",
    "quantize_gguf",
    "requantized_gguf",
]
