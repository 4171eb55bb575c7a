"""llama.cpp KV cache settings: the cells' element types and flash attention.

The names are llama.cpp's own (``llama-server --cache-type-k/--cache-type-v/--flash-attn``), so a
user who knows llama.cpp sets them the same way here. They trade cold-prompt speed against decode
speed and memory; measured on this project's 2-core AMX machine (SmolLM2-135M Q4_1, 2 threads, one
``llama_decode`` per shape, docs/architecture.md "llama.cpp KV cache types"):

- f16 K and V with flash attention (llama.cpp's own default): the fastest prompt prefill (512 tokens
  310 ms), the slowest decode once rows hold a few hundred tokens (16 streams at 300 cached tokens
  66 ms): ggml's one-query flash path accumulates f16 V in f16;
- ``--cache-type-v q8_0`` (flash attention on): decode 2x faster (33 ms), V cells half the memory,
  prefill 2.1x slower (667 ms) since llama.cpp's tiled flash path takes f16 K and V only;
- bf16 K and V: decode as fast as q8_0 V (3.9 ms at 1 stream, 31.5 ms at 16) with prefill a little
  less slow (582 ms), unquantized (no block size the head size must divide, so every model can use
  it), greedy answers as close to f16's as q8_0 V's; through the server 1.0-1.6x the output tok/s
  of q8_0 V (bench/results/kv-default-20261204-042135.json). **Our default where the CPU has bf16
  dot products in hardware** (AVX512-BF16 / AMX); f16 elsewhere, where ggml would emulate bf16;
- ``--flash-attn off``: in between (decode 44 ms, prefill 517 ms), exact f16 cells.

Kept in a module of its own without llama.cpp imports so the server's settings can check values
before a model loads.
"""

from __future__ import annotations

from streamhost.engine.cpu_features import has_fast_bf16

# enum ggml_type values for the types llama.cpp's CPU backend stores KV cells in
CACHE_TYPES: dict[str, int] = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "bf16": 30,
}
# bytes per element of each type (ggml's block bytes over its block size)
BYTES_PER_ELEMENT: dict[str, float] = {
    "f32": 4,
    "f16": 2,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
    "q8_0": 34 / 32,
    "bf16": 2,
}
# llama_flash_attn_type: auto lets llama.cpp decide (on for the CPU backend)
FLASH_ATTN: dict[str, int] = {"auto": -1, "off": 0, "on": 1}
_FLASH_ALIASES = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}
_UNQUANTIZED = ("f32", "f16", "bf16")


def default_cache_type() -> str:
    """The KV cell type when none is set: bf16 with hardware bf16 dot products, else f16 (see above)."""
    return "bf16" if has_fast_bf16() else "f16"


def parse_cache_type(value: str, source: str) -> str:
    """A KV cell type by llama.cpp's name; ValueError naming ``source`` and the choices otherwise."""
    name = value.strip().lower()
    if name not in CACHE_TYPES:
        raise ValueError(f"{source} {value!r} is not a KV cache type: expected one of {', '.join(CACHE_TYPES)}")
    return name


def parse_flash_attn(value: str, source: str) -> str:
    """auto | on | off (also 1/0, true/false); ValueError naming ``source`` otherwise."""
    name = value.strip().lower()
    name = _FLASH_ALIASES.get(name, name)
    if name not in FLASH_ATTN:
        raise ValueError(f"{source} {value!r} is not valid: expected auto, on or off")
    return name


def check_combination(type_v: str | None, flash_attn: str | None) -> None:
    """llama.cpp stores V transposed without flash attention, which a quantized type cannot be."""
    if type_v and type_v not in _UNQUANTIZED and flash_attn == "off":
        raise ValueError(
            f"--cache-type-v {type_v} needs flash attention (llama.cpp quantizes V cells only on its flash path): "
            "drop --flash-attn off or use --cache-type-v f16"
        )
