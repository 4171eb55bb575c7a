"""What this CPU can do, read once from ``/proc/cpuinfo``.

Several defaults depend on it (the torch dtype, llama.cpp's weight layouts and KV cell types), so
they all ask here instead of each parsing the file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The first processor's ``flags`` (empty where /proc/cpuinfo cannot be read: not Linux)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def has_fast_bf16() -> bool:
    """bf16 dot products in hardware (AVX512-BF16 or AMX), where bf16 beats fp32/f16 arithmetic."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_amx() -> bool:
    """AMX tiles: llama.cpp's AMX weight layouts apply (and need the build probe, see llamacpp.py)."""
    return "amx_tile" in cpu_flags()
