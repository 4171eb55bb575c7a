"""Our CPU kernels (csrc/): the decode-attention kernel and the lean layer's fused ops, built once,
loaded as torch ops.

Why: in a 16-sequence decode step the attention's fixed costs (a mask and an SDPA call per run of
rows, padding every row of a run to its longest) cost more than its arithmetic; the kernel serves
every one-token query of a layer in one call, each reading only its own row's length
(docs/architecture.md, "Decode attention kernel"). Built with torch's C++ extension tooling (the
compiler inductor uses too) for this machine's instruction set, into torch's extensions folder
under a name that hashes the source, the torch version and the CPU, so a change rebuilds and a
second start loads it in well under a second. ``make install`` builds it; where no compiler
works the torch executor keeps SDPA and torch's ops and logs why. ``STREAMHOST_DECODE_KERNEL=0``
turns the attention kernel off, ``STREAMHOST_LAYER_OPS=0`` the fused layer ops (csrc/layer_ops.cpp,
docs/architecture.md "Fused layer ops").
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from functools import lru_cache
from pathlib import Path

import torch

from streamhost.engine.cpu_features import cpu_flags

CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "decode_attention.cpp", CSRC / "layer_ops.cpp", CSRC / "small_gemm.cpp")  # one library
HEADERS = (CSRC / "vec16.h",)
ENV = "STREAMHOST_DECODE_KERNEL"
LAYER_OPS_ENV = "STREAMHOST_LAYER_OPS"

log = logging.getLogger(__name__)


def switched_on(name: str) -> bool:
    """An on-by-default switch from the environment (0/false/no/off turn it off)."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def enabled_by_environment() -> bool:
    """The decode-attention kernel's switch (the library still builds for the layer ops)."""
    return switched_on(ENV)


def layer_ops_enabled_by_environment() -> bool:
    return switched_on(LAYER_OPS_ENV)


def extension_name() -> str:
    """Unique per source, torch version and CPU features (the build uses ``-march=native``)."""
    digest = hashlib.sha256()
    for source in SOURCES + HEADERS:
        digest.update(source.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(" ".join(sorted(cpu_flags())).encode())
    return f"streamhost_decode_attention_{digest.hexdigest()[:12]}"


@lru_cache(maxsize=1)
def load_kernel() -> bool:
    """Build (first time only) and load the decode kernel; False, with the reason logged, where it cannot be."""
    if not enabled_by_environment():
        log.info("decode attention kernel off (%s=0): SDPA per run of rows", ENV)
        return False
    return load_library()


def load_layer_ops() -> bool:
    """Build (first time only) and load the fused layer ops; False where off or unbuildable."""
    if not layer_ops_enabled_by_environment():
        log.info("fused layer ops off (%s=0): torch's ops", LAYER_OPS_ENV)
        return False
    return load_library()


@lru_cache(maxsize=1)
def load_library() -> bool:
    """Build (first time only) and load csrc/'s library; False, with the reason logged, where it cannot be."""
    if hasattr(torch.ops, "streamhost_kernels") and hasattr(torch.ops.streamhost_kernels, "decode_attention"):
        return True
    from torch.utils.cpp_extension import load

    started = time.monotonic()
    name = extension_name()
    try:
        load(
            name=name,
            sources=[str(source) for source in SOURCES],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # a missing compiler, headers or ninja: keep SDPA
        log.warning("CPU kernels unavailable (%s): SDPA and torch's ops", str(exc).splitlines()[0][:300])
        return False
    log.info("CPU kernels %s ready in %.1f s", name, time.monotonic() - started)
    return True


def decode_attention(
    out: torch.Tensor,
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tokens: torch.Tensor,
    rows: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
) -> None:
    """``out[tokens[i]] = attention(query[tokens[i]], first lengths[i] keys/values of row rows[i])``;
    ``out``/``query`` ``[T, H, D]``, ``keys``/``values`` ``[rows, KV, capacity, D]``."""
    torch.ops.streamhost_kernels.decode_attention(out, query, keys, values, tokens, rows, lengths, scale)


if __name__ == "__main__":  # `python -m streamhost.engine.decode_attention`: build now (make install)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("CPU kernels:", "ready" if load_library() else "unavailable (SDPA and torch's ops will be used)")
