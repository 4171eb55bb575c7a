"""llama.cpp KV cache settings: the cell types reach llama.cpp (a sequence's saved state shrinks
with q8_0 V cells), greedy answers stay those of f16 cells, and impossible combinations fail
before a context is made."""

from __future__ import annotations

import ctypes
import os
import struct

import pytest

from streamhost.engine.executors.llamacpp_kv import (
    check_combination,
    default_cache_type,
    parse_cache_type,
    parse_flash_attn,
)
from streamhost.engine.executors.llamacpp_pages import k_rows_from_state, locate
from streamhost.engine.kv_cache import Segment
from streamhost.engine.limits import EngineLimits


def test_names_are_llamacpps_and_bad_ones_name_the_setting() -> None:
    assert parse_cache_type(" Q8_0 ", "--cache-type-v") == "q8_0"
    assert [parse_flash_attn(v, "x") for v in ("1", "off", "AUTO", "true")] == ["on", "off", "auto", "on"]
    with pytest.raises(ValueError, match="--cache-type-k 'fp8' is not a KV cache type: expected one of f32, f16"):
        parse_cache_type("fp8", "--cache-type-k")
    with pytest.raises(ValueError, match="STREAMHOST_LLAMACPP_FLASH_ATTN 'sometimes'"):
        parse_flash_attn("sometimes", "STREAMHOST_LLAMACPP_FLASH_ATTN")
    with pytest.raises(ValueError, match="needs flash attention"):
        check_combination("q8_0", "off")
    check_combination("q8_0", "auto")  # auto is on for llama.cpp's CPU backend
    check_combination("bf16", "off")


LIMITS = EngineLimits(
    max_input_tokens=200,
    max_total_tokens=256,
    max_batch_prefill_tokens=256,
    max_batch_total_tokens=512,
    max_batch_size=2,
)


@pytest.fixture(scope="module")
def make():
    """Executors of the shipped SmolLM2 GGUF (head size 64: q8_0's 32-element blocks fit)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make install`")
    from streamhost.engine.executors.llamacpp import LlamaCppExecutor
    from streamhost.engine.loader import default_gguf_path

    def build(**kv):
        executor = LlamaCppExecutor(default_gguf_path(), None, threads=2, **kv)
        executor.configure(LIMITS, 256)
        return executor

    return build


@pytest.fixture
def make_sized():
    """An executor of the shipped GGUF with 8 sequences of 4096 cells: 720 MiB of f16 KV."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make install`")
    from streamhost.engine.executors.llamacpp import LlamaCppExecutor
    from streamhost.engine.loader import default_gguf_path

    made = []

    def build() -> tuple:
        """(the executor, this process's RSS just before its context was made)"""
        executor = LlamaCppExecutor(default_gguf_path(), None, threads=2)
        limits = EngineLimits(
            max_input_tokens=1000,
            max_total_tokens=4096,
            max_batch_prefill_tokens=1024,
            max_batch_total_tokens=8192,
            max_batch_size=8,
        )
        before = _rss_bytes()
        executor.configure(limits, 1024)
        made.append(executor)
        return executor, before

    yield build
    for executor in made:
        executor._free_context()


def greedy_and_state_bytes(executor, prompt: list[int], steps: int) -> tuple[list[int], int]:
    row = executor.alloc_row()
    (logits,) = executor.forward([Segment(row, prompt, 0, "last")])
    tokens = [int(logits.argmax())]
    for step in range(steps - 1):
        (logits,) = executor.forward([Segment(row, tokens[-1:], len(prompt) + step, "last")])
        tokens.append(int(logits.argmax()))
    size = executor.llama.llama_state_seq_get_size(executor.ctx, ctypes.c_int32(row))
    executor.free_row(row)
    return tokens, int(size)


def test_q8_0_v_cells_take_less_state_and_keep_the_greedy_answer(make) -> None:
    prompt = list(range(5, 105))
    plain = make(cache_type_k="f16", cache_type_v="f16")
    quantized = make(cache_type_k="f16", cache_type_v="q8_0", flash_attn="on")
    no_flash = make(cache_type_k="f16", cache_type_v="f16", flash_attn="off")
    default = make()
    assert (plain.describe()["cache_type_v"], plain.describe()["flash_attn"]) == ("f16", "auto")
    assert (quantized.describe()["cache_type_k"], quantized.describe()["cache_type_v"]) == ("f16", "q8_0")
    assert (default.describe()["cache_type_k"], default.describe()["cache_type_v"]) == (default_cache_type(),) * 2
    tokens, plain_bytes = greedy_and_state_bytes(plain, prompt, 12)
    q_tokens, q_bytes = greedy_and_state_bytes(quantized, prompt, 12)
    nf_tokens, nf_bytes = greedy_and_state_bytes(no_flash, prompt, 12)
    d_tokens, d_bytes = greedy_and_state_bytes(default, prompt, 12)
    # f16 V cells take 2 bytes an element, q8_0 34 bytes a 32-element block; the state holds K and V
    assert q_bytes < 0.8 * plain_bytes
    assert nf_bytes == plain_bytes == d_bytes  # bf16 cells are 2 bytes too
    # arithmetic differs a little per path and cell type
    assert q_tokens[:4] == tokens[:4] and nf_tokens[:4] == tokens[:4] and d_tokens[:4] == tokens[:4]


def test_a_type_the_model_cannot_hold_fails_at_configure_naming_it(tiny_llama_gguf, tiny_llama_dir) -> None:
    """The tiny model's heads are 16 wide: q8_0 blocks of 32 do not fit, and the error says so."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make install`")
    from streamhost.engine.executors.llamacpp import LlamaCppExecutor

    executor = LlamaCppExecutor(tiny_llama_gguf, None, threads=2, cache_type_v="q8_0")
    with pytest.raises(RuntimeError, match=f"K {default_cache_type()}, V q8_0"):
        executor.configure(LIMITS, 256)


def test_quantized_v_without_flash_attention_fails_before_a_context(tiny_llama_gguf) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make install`")
    from streamhost.engine.executors.llamacpp import LlamaCppExecutor

    with pytest.raises(ValueError, match="--cache-type-v q4_0 needs flash attention"):
        LlamaCppExecutor(tiny_llama_gguf, None, cache_type_v="q4_0", flash_attn="off")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_kv_pages_are_resident_only_once_written_and_go_back_when_idle(make_sized) -> None:
    """Making the context leaves its 720 MiB of cells unresident (llama.cpp's memset had made all
    of them resident), a request makes resident only what it wrote, and an idle release gives that
    back without changing the next answer: released pages read as the zeros llama.cpp wrote."""
    executor, before = make_sized()
    described = executor.describe()
    assert described["kv_bytes"] == 720 * 1024**2 and described["kv_pages_on_demand"]
    assert _rss_bytes() - before < described["kv_bytes"] / 4
    prompt = list(range(5, 405))
    first, _ = greedy_and_state_bytes(executor, prompt, 8)
    row = executor.alloc_row()
    executor.forward([Segment(row, prompt, 0, "none")])
    executor.free_row(row, prompt)  # kept for prefix reuse
    executor.release_idle_memory(512 * 1024**2)  # ~800 cells written, 18 MiB: under the limit, kept
    assert executor.store.held(row) == len(prompt)
    executor.release_idle_memory(0)
    assert executor.store.held(row) == 0  # what the row kept went with the cells
    again, _ = greedy_and_state_bytes(executor, prompt, 8)
    assert again == first
    assert _rss_bytes() - before < described["kv_bytes"] / 4


def test_state_rows_and_a_buffer_not_found_leave_the_pages_alone() -> None:
    """K rows come out of llama.cpp's per-layer records; rows found nowhere give no span."""
    rows = [bytes([layer + 1]) * 8 for layer in range(3)]
    state = b"cells" + b"".join(struct.pack("<iQ", 1, 8) + row for row in rows) + struct.pack("<iQ", 1, 8) + b"V" * 8
    assert k_rows_from_state(state, 1, 8, 3) == rows
    assert k_rows_from_state(state, 8, 8, 3) is None  # another cache type: no such records
    assert locate(rows, set(), 1 << 30) is None
