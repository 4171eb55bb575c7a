"""The llama.cpp KV buffer's memory on demand: resident only where cells are written.

llama.cpp allocates a context's KV cells once, at creation, and clears them with a memset, so
every page is resident from the start: with a KV stream of ``MAX_TOTAL_TOKENS`` cells per sequence
(engine/executors/llamacpp.py says why) SmolLM2-135M at the defaults held 2.9 GB it had not used
(idle RSS 3.6 GB against the torch executor's 1.0 GB, whose cache grows with use). We hand the
buffer's pages back with ``madvise(MADV_DONTNEED)``: the kernel then reads them as zeros, exactly
what the memset left, and a page is resident again only once a cell in it is written. The same
call, while no sequence is live, gives back what a burst of requests used.

llama.cpp does not say where the buffer is, and ``/proc/self/maps`` cannot either (the kernel merges
it with the output and compute buffers allocated next to it into one mapping). So we find it by its
contents: one token is decoded into sequence 0, llama.cpp's own state export of that sequence
(``llama_state_seq_get_data``) gives the bytes of its K row in every layer, and those rows are
searched for in the mappings that context creation made. The buffer holds each layer's K and V
tensors in layer order, the first K tensor at its start, so layer 0's row is the buffer's start,
layer 1's gives the layer stride, and the last layer's row must sit where start and stride put it;
the span is released only when all of that holds and its size is what the cache types and limits
make it. Anything else (another llama.cpp layout, a buffer below ``MIN_BYTES``, not Linux) leaves
the pages resident, as before.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # Linux
MIN_BYTES = 64 * 1024**2  # smaller buffers are not worth a scan at start-up
SCAN_WORDS = 8 * 1024**2  # 64 MiB of memory compared per numpy pass
MAX_HITS = 16  # more first-word matches than this in one pass: not a pattern worth following
SIZE_TOLERANCE = 0.15  # llama.cpp pads each stream's cells and aligns each tensor


@dataclass(frozen=True)
class Span:
    """``[start, end)``: the KV buffer's bytes, every layer's K and V tensors."""

    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def anonymous_writable_mappings() -> set[tuple[int, int]]:
    """This process's anonymous read-write mappings (no file, no ``[heap]``/``[stack]`` name)."""
    spans = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                if len(fields) == 5 and fields[1].startswith("rw"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    spans.add((start, end))
    except OSError:  # not Linux: nothing to find
        return set()
    return spans


def k_rows_from_state(state: bytes, k_type: int, row_bytes: int, layers: int) -> list[bytes] | None:
    """Each layer's K row of a one-cell sequence state: llama.cpp writes, per layer, the type
    (int32), the row size (uint64) and the cells' rows, K for every layer before V."""
    header = struct.pack("<iQ", k_type, row_bytes)
    rows, at = [], 0
    for _ in range(layers):
        at = state.find(header, at)
        if at < 0:
            return None
        rows.append(state[at + len(header) : at + len(header) + row_bytes])
        at += len(header) + row_bytes
    return rows


def _find(patterns: list[bytes], spans: list[tuple[int, int]]) -> list[list[int]]:
    """Addresses where each pattern occurs in these mappings, at 8-byte aligned places (ggml aligns
    tensors to 32 bytes). One pass over the memory in place: numpy compares 8-byte words with each
    pattern's first word, and only those hits are compared whole."""
    import numpy as np

    heads = [np.frombuffer(p[:8], dtype=np.uint64)[0] for p in patterns]
    hits: list[list[int]] = [[] for _ in patterns]
    for start, end in spans:
        base = -(-start // 8) * 8
        words_total = (end - base) // 8
        for first in range(0, words_total, SCAN_WORDS):
            count = min(SCAN_WORDS, words_total - first)
            words = np.ctypeslib.as_array((ctypes.c_uint64 * count).from_address(base + 8 * first))
            for k, (head, pattern) in enumerate(zip(heads, patterns)):
                for index in np.flatnonzero(words == head)[:MAX_HITS]:
                    at = base + 8 * (first + int(index))
                    if at + len(pattern) <= end and ctypes.string_at(at, len(pattern)) == pattern:
                        hits[k].append(at)
    return hits


def locate(rows: list[bytes], new_mappings: set[tuple[int, int]], expected_bytes: int) -> Span | None:
    """The KV buffer from the layers' K rows of cell 0 (see the module docstring), or None.

    Copies of the rows can lie elsewhere too (the state export's own buffers); a place counts only
    where layer 0's row, layer 1's and the last layer's line up into one buffer of the expected
    size inside one mapping, and exactly one place may."""
    if not sys.platform.startswith("linux") or expected_bytes < MIN_BYTES or len(rows) < 3:
        return None
    spans = sorted(s for s in new_mappings if s[1] - s[0] >= expected_bytes)
    firsts, seconds = _find([rows[0], rows[1]], spans)
    found = []
    for start in firsts:
        for second in seconds:
            stride = second - start
            end = start + stride * len(rows)
            if not expected_bytes <= end - start <= expected_bytes * (1 + SIZE_TOLERANCE):
                continue
            if not any(a <= start and end <= b for a, b in spans):
                continue
            if ctypes.string_at(start + stride * (len(rows) - 1), len(rows[-1])) == rows[-1]:
                found.append(Span(start, end))
    if len(found) != 1:
        log.info(
            "llama.cpp KV buffer not found by its contents (%d places; rows seen %d, %d times): its pages stay resident",
            len(found),
            len(firsts),
            len(seconds),
        )
        return None
    return found[0]


def release(span: Span) -> bool:
    """Give back the pages lying wholly inside the span; they read as zeros from now on."""
    page = os.sysconf("SC_PAGE_SIZE")
    start = -(-span.start // page) * page
    end = span.end // page * page
    if end <= start:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.madvise(start, end - start, MADV_DONTNEED) != 0:
        log.warning("madvise of the llama.cpp KV buffer failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def kv_row_elements(llama, model) -> int:
    """Elements of one cell's K (or V) row in one layer: KV heads x head size."""
    heads, kv_heads = int(llama.llama_model_n_head(model)), int(llama.llama_model_n_head_kv(model))
    return kv_heads * (int(llama.llama_model_n_embd(model)) // max(1, heads))
