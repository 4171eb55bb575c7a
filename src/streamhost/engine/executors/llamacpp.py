"""The llama.cpp executor: GGUF models at CPU speed, continuously batched.

One llama context hosts up to ``n_seq_max`` sequences (``MAX_BATCH_SIZE``), each in a KV stream of
its own of ``MAX_TOTAL_TOKENS`` cells: llama.cpp attends over every cell up to the highest one in
use, so in one shared (unified) pool each token of 16 streams read the cells of all 16 (and a
prompt chunk mixed into a decode step takes flash attention's tiled path, which skips a 64-cell
tile only when every query of a 64-query tile is masked: a 16-stream step with a 256-token chunk
took 1.74x longer unified, bench/README.md "llama.cpp at 16 streams"). The cells of every stream
are allocated up front (SmolLM2-135M at the defaults, 32 x 4096 cells: 2.8 GiB of f16 KV), but only
the pages of cells written stay resident (llamacpp_pages.py); ``STREAMHOST_LLAMACPP_KV_UNIFIED=1``
goes back to one pool of ``MAX_BATCH_TOTAL_TOKENS`` cells.
With per-sequence streams llama.cpp puts only *consecutive* sequence ids in one micro-batch
(``split_equal(sequential=true)``), each micro-batch a pass over all weights: so a step is laid out
in sequence-id order, rows are handed out lowest first, and an empty row in the middle gets a
filler token for the step (``_filler_rows``) rather than split it. Threads per step size:
llamacpp_threads.py. Each engine step becomes one ``llama_batch``: every running sequence's next token
and any prompt chunks, each token tagged with its sequence id (= the engine's row) and position,
with logits asked only where a token will be sampled (or where prompt log-probs were requested). A
sequence's cells are removed (``llama_memory_seq_rm``) when it finishes or is aborted. Sampling
stays ours (sampling.py on the returned logits), so every sampling parameter behaves the same on
both executors.

Through ctypes the GIL is released while llama.cpp computes, so the event loop keeps serving.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamhost.engine.cpu_features import has_amx
from streamhost.engine.executors import llamacpp_pages
from streamhost.engine.executors.llamacpp_kv import (
    BYTES_PER_ELEMENT,
    CACHE_TYPES,
    FLASH_ATTN,
    check_combination,
    default_cache_type,
)
from streamhost.engine.executors.llamacpp_threads import StepThreads
from streamhost.engine.kv_cache import Segment
from streamhost.engine.prefix_cache import MIN_MATCH_TOKENS, Claim, RowPool

log = logging.getLogger(__name__)

_backend_lock = threading.Lock()
_backend_ready = False
MAX_UBATCH = 512
FILLER_TOKEN = 0  # what a filler row decodes (any id: its logits are not asked for, its cell removed)
# enum ggml_log_level of the llama.cpp this version of llama-cpp-python vendors (ggml.h)
GGML_LOG_DEBUG, GGML_LOG_INFO, GGML_LOG_WARN, GGML_LOG_ERROR, GGML_LOG_CONT = (
    1,
    2,
    3,
    4,
    5,
)  # llama.cpp splits a bigger batch into micro-batches of this many tokens


class LlamaCppUnavailableError(RuntimeError):
    """llama-cpp-python is not installed (or failed to load its library)."""


class _LlamaLog:
    """llama.cpp's log: warnings and errors go to our logger; its info lines (hundreds per model
    load) only while ``verbose`` is set, which the quantizer uses as its progress display."""

    def __init__(self) -> None:
        self.verbose = False
        self._last = GGML_LOG_INFO
        self._open = False
        self.callback = None

    def __call__(self, level: int, text: bytes, _user_data) -> None:
        message = text.decode("utf-8", "replace")
        if level == GGML_LOG_CONT:  # the previous line's level while that line is open, else info
            level = self._last if self._open else GGML_LOG_INFO
        self._last, self._open = level, not message.endswith("\n")
        if level in (GGML_LOG_WARN, GGML_LOG_ERROR):
            log.warning("llama.cpp: %s", message.rstrip())
        elif self.verbose and level == GGML_LOG_INFO:
            sys.stderr.write(message)
            sys.stderr.flush()


LLAMA_LOG = _LlamaLog()


def import_llama_cpp():
    """The llama_cpp module, initialised once, its log routed through ``LLAMA_LOG``."""
    global _backend_ready
    try:
        import llama_cpp
    except Exception as exc:  # ImportError, or OSError from a broken shared library
        raise LlamaCppUnavailableError(
            f"the llama.cpp executor needs llama-cpp-python ({type(exc).__name__}: {exc}); "
            "install it with `make install` (builds it for this CPU) or use --executor torch"
        ) from exc
    with _backend_lock:
        if not _backend_ready:
            LLAMA_LOG.callback = llama_cpp.llama_log_callback(LLAMA_LOG)  # kept referenced: C holds it
            llama_cpp.llama_log_set(LLAMA_LOG.callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


def llama_cpp_version() -> str | None:
    try:
        import llama_cpp
    except Exception:
        return None
    return str(llama_cpp.__version__)


def default_threads() -> int:
    """Every core this process may run on (llama.cpp's matmuls scale with cores; one engine thread)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def use_extra_buffers(gguf: str | os.PathLike | None = None) -> bool:
    """llama.cpp's extra CPU weight layouts (AMX tiles, AVX-512 repacking) for ``gguf``.

    On CPUs without AMX: on. With AMX: on when a child process has decoded a batch of ``gguf``'s
    weight type with them on this llama.cpp build (``amx_works``); llama.cpp built by GCC < 14
    without scripts/llama-cpp-amx-fix.h dies there with SIGSEGV. STREAMHOST_LLAMACPP_EXTRA_BUFFERS=1/0
    overrides."""
    forced = os.environ.get("STREAMHOST_LLAMACPP_EXTRA_BUFFERS", "").strip().lower()
    if forced in ("1", "true", "yes", "0", "false", "no"):
        return forced in ("1", "true", "yes")
    if not has_amx():
        return True
    return gguf is not None and amx_works(Path(gguf))


_PROBE = """
import sys
import llama_cpp as llama
quiet = llama.llama_log_callback(lambda *_: None)  # kept referenced: C calls it
llama.llama_log_set(quiet, None)
llama.llama_backend_init()
params = llama.llama_model_default_params()
params.use_extra_bufts = True
model = llama.llama_model_load_from_file(sys.argv[1].encode(), params)
cparams = llama.llama_context_default_params()
cparams.n_ctx, cparams.n_batch, cparams.n_ubatch, cparams.n_threads = 256, 64, 64, 1
ctx = llama.llama_init_from_model(model, cparams)
batch = llama.llama_batch_init(32, 0, 1)
for i in range(32):
    batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = 1 + i, i, 1, i == 31
    batch.seq_id[i][0] = 0
batch.n_tokens = 32
sys.exit(llama.llama_decode(ctx, batch))
"""


def amx_works(gguf: Path) -> bool:
    """Whether a batched decode with the AMX layouts survives, asked once per (llama.cpp library
    build, weight type) in a child process (a crash there costs nothing) and remembered under the
    cache folder: the first start of a model type pays a few seconds."""
    import hashlib
    import json
    import subprocess

    from streamhost.engine.loader import cache_root

    llama = import_llama_cpp()
    libs = sorted((Path(llama.__file__).parent / "lib").glob("libggml-cpu*.so*"))
    digest = hashlib.sha256(b"".join(lib.read_bytes() for lib in libs[:1])).hexdigest()[:16]
    ftype = _gguf_file_type(gguf)
    marker = cache_root() / "llamacpp" / f"amx-probe-{digest}-{ftype}.json"
    try:
        return bool(json.loads(marker.read_text())["ok"])
    except (OSError, ValueError, KeyError):
        pass
    try:
        status: int | str = subprocess.run(
            [sys.executable, "-c", _PROBE, str(gguf)], capture_output=True, timeout=300, check=False
        ).returncode
    except subprocess.TimeoutExpired:
        status = "timeout"
    ok = status == 0
    if not ok:
        log.warning(
            "llama.cpp's AMX weight layouts fail on this build (exit %s); running without them "
            "(scripts/install-llama-cpp.sh builds llama.cpp with the AMX fix)",
            status,
        )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"ok": ok, "gguf": str(gguf), "libs": [str(lib) for lib in libs]}))
    return ok


def _gguf_file_type(gguf: Path) -> str:
    """The GGUF's ``general.file_type`` (the weight type; a probe's answer holds per type)."""
    from streamhost.engine.gguf_quantize import gguf_file_type

    try:
        value = gguf_file_type(gguf)
    except Exception:
        return "unknown"
    return "unknown" if value is None else str(value)


def kv_unified() -> bool:
    """One KV pool for all sequences (STREAMHOST_LLAMACPP_KV_UNIFIED=1) or, by default, a stream of
    cells per sequence: llama.cpp attends over every cell up to the highest one in use of the
    streams in a micro-batch, so with a unified pool each token of 16 streams reads the cells of
    all 16 (measured: 16 streams made 14 tok/s unified)."""
    return os.environ.get("STREAMHOST_LLAMACPP_KV_UNIFIED", "").strip().lower() in ("1", "true", "yes")


class SequenceSlots(RowPool):
    """Sequence ids of the llama context in use (the engine's rows); lowest free id first. A free
    id keeps its cells, and the tokens they hold, for prefix reuse (engine/prefix_cache.py).

    llama.cpp allocates its KV cache once, at context creation: nothing grows per step; the
    executor gives the pages of written cells back while idle (``release_idle_memory``)."""


class LlamaCppExecutor:
    """Owns a llama.cpp model and context, and the Hugging Face tokenizer that matches its vocab."""

    name = "llamacpp"
    supports_beam_search = False

    def __init__(
        self,
        gguf_path: str | os.PathLike,
        tokenizer,
        *,
        threads: int | None = None,
        decode_threads: int | None = None,
        cache_type_k: str | None = None,
        cache_type_v: str | None = None,
        flash_attn: str | None = None,
    ) -> None:
        check_combination(cache_type_v, flash_attn)
        self.cache_types = (cache_type_k or default_cache_type(), cache_type_v or default_cache_type())
        self.flash_attn = flash_attn or "auto"
        self.llama = import_llama_cpp()
        self.model_path = Path(gguf_path)
        self.tokenizer = tokenizer
        self.device = torch.device("cpu")
        self.threads = threads or default_threads()
        self.step_threads = StepThreads(self.threads, decode_threads)
        self._threads_now = self.threads
        params = self.llama.llama_model_default_params()
        params.use_extra_bufts = self.extra_buffers = use_extra_buffers(self.model_path)
        self.model = self.llama.llama_model_load_from_file(str(self.model_path).encode(), params)
        if not self.model:
            raise ValueError(f"llama.cpp could not load {self.model_path} (not a GGUF model it supports)")
        self._vocab = self.llama.llama_model_get_vocab(self.model)
        self.n_vocab = int(self.llama.llama_vocab_n_tokens(self._vocab))
        self.max_positions = int(self.llama.llama_model_n_ctx_train(self.model)) or 4096
        self.dtype = self._file_type()
        self.store = SequenceSlots()
        self.ctx = None
        self._batch: Any = None  # a llama_batch (ctypes structure) once configured
        self._shape: tuple[int, int, int] | None = None
        self._unified = kv_unified()
        self._kv_span: llamacpp_pages.Span | None = None  # the KV buffer, once found (pages on demand)
        self._kv_bytes = 0
        self._cell_bytes = 0.0
        self._cells_written = 0

    # -- description ------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self.llama.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def _file_type(self) -> str:
        raw = self._meta("general.file_type")
        if raw is None or not raw.isdigit():
            return "gguf"
        name = self.llama.llama_ftype_name(int(raw))
        return name.decode() if name else f"ftype{raw}"

    def describe(self) -> dict:
        return {
            "executor": self.name,
            "llama_cpp_version": llama_cpp_version(),
            "threads": self.threads,
            "step_threads": self.step_threads.describe(),
            "gguf": str(self.model_path),
            "weights_bytes": int(self.llama.llama_model_size(self.model)),
            "extra_buffers": self.extra_buffers,
            "kv_unified": self._unified,
            "n_seq_max": self._shape[1] if self._shape else None,
            "n_ctx": self._shape[0] if self._shape else None,
            "kv_bytes": self._kv_bytes,
            "kv_pages_on_demand": self._kv_span is not None,
            "cache_type_k": self.cache_types[0],
            "cache_type_v": self.cache_types[1],
            "flash_attn": self.flash_attn,
        }

    @property
    def weights_bytes(self) -> int:
        return int(self.llama.llama_model_size(self.model))

    # -- sizing -----------------------------------------------------------------------------
    def configure(self, limits, prefill_chunk: int) -> None:
        """Create (or re-create, when the sizes change) the context for these limits."""
        n_seq = max(1, min(int(limits.max_batch_size), int(self.llama.llama_max_parallel_sequences())))
        if n_seq < limits.max_batch_size:
            raise ValueError(
                f"MAX_BATCH_SIZE {limits.max_batch_size} is more than llama.cpp's {n_seq} sequences "
                "per context; lower it or use --executor torch"
            )
        n_batch = int(prefill_chunk) + n_seq  # a step: at most one prompt chunk budget plus one token per sequence
        unified = self._unified
        per_seq = int(limits.max_total_tokens)
        # Unified: one pool of cells that the scheduler's token budget counts. Per sequence: every
        # sequence its own stream of max_total_tokens cells, so attention reads that sequence's
        # cells only (a unified cache makes every token attend over the cells of *all* sequences).
        n_ctx = int(limits.max_batch_total_tokens) if unified else n_seq * per_seq
        shape = (n_ctx, n_seq, n_batch)
        if shape == self._shape:
            return
        if self.store.live_rows:
            raise RuntimeError("cannot resize the llama.cpp context while sequences are live")
        self._free_context()
        params = self.llama.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, MAX_UBATCH)
        params.n_outputs_max = n_batch
        params.n_outputs_max_per_seq = 0  # = n_outputs_max: prompt log-probs need every position's logits
        params.n_seq_max = n_seq
        params.n_threads = self.threads
        params.n_threads_batch = self.threads
        params.kv_unified = unified
        params.flash_attn_type = FLASH_ATTN[self.flash_attn]
        params.type_k, params.type_v = (CACHE_TYPES[name] for name in self.cache_types)
        params.no_perf = True
        mappings_before = llamacpp_pages.anonymous_writable_mappings()
        ctx = self.llama.llama_init_from_model(self.model, params)
        if not ctx:
            raise RuntimeError(
                f"llama.cpp could not create a context (n_ctx={n_ctx}, n_seq_max={n_seq}, n_batch={n_batch}, "
                f"KV cells K {self.cache_types[0]}, V {self.cache_types[1]}, flash attention {self.flash_attn}): "
                "llama.cpp's log line above says why (a quantized cache type needs a head size its blocks divide)"
            )
        self.ctx = ctx
        self._memory = self.llama.llama_get_memory(ctx)
        self._batch = _Batch(self.llama, n_batch)
        self._threads_now = self.threads
        self._n_batch = n_batch
        self._shape = shape
        self.store = SequenceSlots()
        self.store.spare_rows = n_seq  # every sequence has its cells already (resident once written)
        self._kv_span = self._find_kv_buffer(mappings_before, n_ctx)
        self._cells_written = 0
        log.info(
            "llama.cpp context: %d KV cells (%s, K %s, V %s), %d sequences, batch %d, %d threads (small steps: %s), "
            "flash attention %s",
            n_ctx,
            "unified" if unified else f"{per_seq} per sequence",
            *self.cache_types,
            n_seq,
            n_batch,
            self.threads,
            self.step_threads.decode,
            self.flash_attn,
        )

    def _find_kv_buffer(self, mappings_before: set[tuple[int, int]], n_ctx: int) -> llamacpp_pages.Span | None:
        """Locate the KV buffer by one token's cells (llamacpp_pages.py) and give its pages back."""
        bytes_k, bytes_v = (BYTES_PER_ELEMENT[name] for name in self.cache_types)
        layers = int(self.llama.llama_model_n_layer(self.model))
        elements = llamacpp_pages.kv_row_elements(self.llama, self.model)
        self._cell_bytes = layers * elements * (bytes_k + bytes_v)  # one cell, K and V, every layer
        self._kv_bytes = int(n_ctx * self._cell_bytes)
        if self._kv_bytes < llamacpp_pages.MIN_BYTES or self._batch is None:
            return None
        row_bytes = int(elements * bytes_k)
        self._batch.fill([Segment(0, [FILLER_TOKEN], 0, "none")])
        if self.llama.llama_decode(self.ctx, self._batch.struct) != 0:
            return None
        size = int(self.llama.llama_state_seq_get_size(self.ctx, 0))
        state = (ctypes.c_uint8 * size)()
        written = int(self.llama.llama_state_seq_get_data(self.ctx, state, size, 0))
        self.llama.llama_memory_seq_rm(self._memory, 0, -1, -1)
        rows = llamacpp_pages.k_rows_from_state(
            bytes(state)[:written], CACHE_TYPES[self.cache_types[0]], row_bytes, layers
        )
        if rows is None:
            log.info("llama.cpp KV buffer: the state export has no K rows we know; its pages stay resident")
            return None
        new = llamacpp_pages.anonymous_writable_mappings() - mappings_before
        span = llamacpp_pages.locate(rows, new, self._kv_bytes)
        if span is None or not llamacpp_pages.release(span):
            return None
        log.info("llama.cpp KV buffer: %d MiB, resident only where cells are written", span.nbytes >> 20)
        return span

    def _free_context(self) -> None:
        self._batch = None
        self._kv_span = None
        if self.ctx:
            self.llama.llama_free(self.ctx)
            self.ctx = None
        self._shape = None

    def close(self) -> None:
        self._free_context()
        if getattr(self, "model", None):
            self.llama.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        with contextlib.suppress(Exception):
            self.close()

    # -- the executor verbs -----------------------------------------------------------------
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        eos = int(self.llama.llama_vocab_eos(self._vocab))
        if eos >= 0:
            ids.add(eos)
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    @property
    def vocab_size(self) -> int:
        return self.n_vocab

    def alloc_row(self) -> int:
        return self.claim_row(None).row

    def claim_row(self, prompt_ids: Sequence[int] | None, min_match: int = MIN_MATCH_TOKENS) -> Claim:
        """A sequence id for a new prompt, keeping the cells of the longest prefix a free id holds
        and removing the rest (``llama_memory_seq_rm(row, reused, -1)``)."""
        claim = self.store.claim(prompt_ids, min_match)
        if claim.held > claim.reused and self.ctx:
            if not self.llama.llama_memory_seq_rm(self._memory, claim.row, claim.reused, -1):
                # A memory that cannot drop a tail (recurrent state): start the row afresh.
                self.llama.llama_memory_seq_rm(self._memory, claim.row, -1, -1)
                claim = Claim(claim.row, 0, claim.held)
        return claim

    def free_row(self, row: int, tokens: Sequence[int] | None = None) -> None:
        """``tokens``: the ids whose cells the sequence holds, kept for reuse; None removes the cells.

        A unified KV pool keeps nothing: its cells are the live sequences' token budget
        (MAX_BATCH_TOTAL_TOKENS), which cells held for reuse would eat into."""
        if self._unified:
            tokens = None
        if self.ctx and not tokens:
            self.llama.llama_memory_seq_rm(self._memory, row, -1, -1)
        self.store.free(row, tokens)

    @property
    def live_rows(self) -> int:
        return self.store.live_rows

    def reserve(self, rows: int, positions: int) -> None:
        """Nothing to do: the context's KV cells were allocated by ``configure``."""

    def release_idle_memory(self, keep_bytes: int) -> None:
        """With no live sequence: when the cells written since the last release may hold more than
        ``keep_bytes``, forget every cell (and with them what free rows kept for prefix reuse) and
        give the KV buffer's pages back (llamacpp_pages.py). Cells written bound the resident pages
        from above: llama.cpp moves on through a stream's cells as sequences come and go, so pages
        stay resident after their sequence is removed."""
        if self._kv_span is None or self.store.live_rows or self._cells_written * self._cell_bytes <= keep_bytes:
            return
        self.llama.llama_memory_clear(self._memory, False)  # True would memset: every page resident again
        self.store.forget_all()
        llamacpp_pages.release(self._kv_span)
        self._cells_written = 0

    def _filler_rows(self, segments: list[Segment]) -> list[tuple[int, int]]:
        """Rows between the step's lowest and highest row that are not in it, each with the position
        its one filler token takes (no logits; that cell is removed after the step), so the step
        stays one run of consecutive sequence ids, one micro-batch. A gap cut a 16-stream decode
        step in two, each part a pass over all weights (a one-token step costs ~11 ms here, a
        filler ~1/16 of a 56 ms 16-token step); the ends of a burst, as streams finish one by one,
        were full of them. A row holding cells (kept for prefix reuse, or a live sequence outside
        this step) gets its filler after its last cell, which attends to them but changes none."""
        if len(segments) < 2 or not self.ctx:
            return []
        low, high, rows = _step_rows(segments)
        if high - low + 1 == len(rows):
            return []
        return [
            (row, int(self.llama.llama_memory_seq_pos_max(self._memory, row)) + 1)
            for row in range(low + 1, high)
            if row not in rows
        ]

    def forward(self, segments: list[Segment]) -> list[torch.Tensor | None]:
        """One ``llama_decode`` over the packed step; the logits each segment asked for.

        The batch is laid out in sequence-id order (decode tokens and prompt chunks together):
        with per-sequence KV streams llama.cpp puts only sequences of consecutive ids in one
        micro-batch (``split_equal(sequential=true)``), each micro-batch a pass over all weights, so
        the engine's order (decoders, then prompts) cut one step into several.

        The tensors returned are views of llama.cpp's own logits buffer (no copy: a copy of the
        table and the torch ops around it were a quarter of the engine's per-step cost at one
        stream), valid until the next ``forward``; the engine samples from them before that."""
        if self.ctx is None or self._batch is None:
            raise RuntimeError("the llama.cpp executor was not configured (Engine calls configure())")
        batch = self._batch
        fillers = [] if self._unified else self._filler_rows(segments)
        if not fillers and _decode_only(segments):
            total = outputs = batch.fill_decode(segments)
        else:
            total, outputs = batch.fill(segments + [Segment(row, [FILLER_TOKEN], at, "none") for row, at in fillers])
        if total > self._n_batch:
            raise RuntimeError(f"a step of {total} tokens exceeds the context's batch of {self._n_batch}")
        threads = self.step_threads.for_step(total)
        if threads != self._threads_now:
            self.llama.llama_set_n_threads(self.ctx, threads, threads)
            self._threads_now = threads
        rc = self.llama.llama_decode(self.ctx, batch.struct)
        self._cells_written += total
        for row, at in fillers:  # the filler's cell goes: the row holds what it held before
            self.llama.llama_memory_seq_rm(self._memory, row, at, -1)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc}" + (" (no free KV cells)" if rc == 1 else ""))
        if not outputs:
            return [None] * len(segments)
        # llama.cpp keeps the outputs contiguous, in batch order
        table = torch.from_numpy(
            np.ctypeslib.as_array(self.llama.llama_get_logits(self.ctx), shape=(outputs, self.n_vocab))
        )
        results: list[torch.Tensor | None] = []
        for s, (first, count) in zip(segments, batch.spans):  # (the fillers' spans come last)
            if s.logits == "all":
                results.append(table[first : first + count])
            elif s.logits == "last":
                results.append(table[first])
            else:
                results.append(None)
        return results


def _step_rows(segments: list[Segment]) -> tuple[int, int, set[int]]:
    rows = {s.row for s in segments}
    return min(rows), max(rows), rows


def _decode_only(segments: list[Segment]) -> bool:
    """Every segment one token whose logits are wanted, rows rising: the steady state of decoding,
    filled without sorting or per-segment slicing."""
    last = -1
    for s in segments:
        if len(s.ids) != 1 or s.logits != "last" or s.row <= last:
            return False
        last = s.row
    return True


class _Batch:
    """A ``llama_batch`` over numpy arrays we own, so a step fills it with slice assignments (no
    per-token Python): every token belongs to one sequence, so ``seq_id[i]`` points at element
    ``i`` of one contiguous id array. ``spans`` says, per segment of the last fill, where its
    logits start in llama.cpp's output table and how many rows it has."""

    def __init__(self, llama, n: int) -> None:
        self.tokens = np.zeros(n, dtype=np.int32)
        self.positions = np.zeros(n, dtype=np.int32)
        self.n_seq_id = np.ones(n, dtype=np.int32)
        self.seq_ids = np.zeros(n, dtype=np.int32)
        self.want = np.zeros(n, dtype=np.int8)
        self.spans: list[tuple[int, int]] = []
        self._want_set = 0  # entries of ``want`` a decode-only fill left at 1
        int_p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq_ids.ctypes.data
        self._seq_ptrs = (int_p * n)(*[ctypes.cast(base + 4 * k, int_p) for k in range(n)])
        self.struct = llama.llama_batch(
            n_tokens=0,
            token=self.tokens.ctypes.data_as(int_p),
            embd=None,
            pos=self.positions.ctypes.data_as(int_p),
            n_seq_id=self.n_seq_id.ctypes.data_as(int_p),
            seq_id=ctypes.cast(self._seq_ptrs, ctypes.POINTER(int_p)),
            logits=self.want.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )

    def fill_decode(self, segments: list[Segment]) -> int:
        """One token per segment, rows already rising, logits for each: three list assignments."""
        n = len(segments)
        if n > len(self.tokens):
            return n  # the caller refuses the step
        self.tokens[:n] = [s.ids[0] for s in segments]
        self.positions[:n] = [s.start for s in segments]
        self.seq_ids[:n] = [s.row for s in segments]
        if self._want_set < n:
            self.want[self._want_set : n] = 1
            self._want_set = n
        self.spans = [(k, 1) for k in range(n)]
        self.struct.n_tokens = n
        return n

    def fill(self, segments: list[Segment]) -> tuple[int, int]:
        """Any mix of decode tokens and prompt chunks, laid out in row order; (tokens, outputs)."""
        total = sum(len(s.ids) for s in segments)
        self.spans = [(0, 0)] * len(segments)
        if total > len(self.tokens):
            return total, 0  # the caller refuses the step
        order = sorted(range(len(segments)), key=lambda k: segments[k].row)
        self.want[: max(total, self._want_set)] = 0
        self._want_set = 0
        outputs = 0
        i = 0
        for k in order:
            s = segments[k]
            n = len(s.ids)
            self.tokens[i : i + n] = s.ids
            self.positions[i : i + n] = np.arange(s.start, s.start + n, dtype=np.int32)
            self.seq_ids[i : i + n] = s.row
            if s.logits == "all":
                self.want[i : i + n] = 1
                self.spans[k] = (outputs, n)
                outputs += n
            elif s.logits == "last":
                self.want[i + n - 1] = 1
                self.spans[k] = (outputs, 1)
                outputs += 1
            i += n
        self.struct.n_tokens = total
        return total, outputs
