"""The llama.cpp executor: GGUF models at CPU speed, continuously batched.

One llama context hosts up to ``n_seq_max`` sequences in one unified KV cache of
``MAX_BATCH_TOTAL_TOKENS`` cells (the budget the scheduler already enforces, so a step never finds
the cache full). Each engine step becomes one ``llama_batch``: every running sequence's next
token and any prompt chunks, each token tagged with its sequence id (= the engine's row) and
position, with logits asked only where a token will be sampled (or where prompt log-probs were
requested). A sequence's cells are removed (``llama_memory_seq_rm``) when it finishes or is
aborted. Sampling stays ours (sampling.py on the returned logits), so every sampling parameter
behaves the same on both executors.

Through ctypes the GIL is released while llama.cpp computes, so the event loop keeps serving.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamhost.engine.kv_cache import Segment

log = logging.getLogger(__name__)

_backend_lock = threading.Lock()
_backend_ready = False
MAX_UBATCH = 512
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


def use_extra_buffers() -> bool:
    """llama.cpp's extra CPU weight layouts (AMX tiles, AVX repacking): off on CPUs with AMX, where
    llama.cpp 0.3.36's AMX path crashed (SIGSEGV in the first decode of Q4_1 and Q8_0 models on this
    project's Xeon); on elsewhere. STREAMHOST_LLAMACPP_EXTRA_BUFFERS=1/0 overrides."""
    forced = os.environ.get("STREAMHOST_LLAMACPP_EXTRA_BUFFERS", "").strip().lower()
    if forced in ("1", "true", "yes", "0", "false", "no"):
        return forced in ("1", "true", "yes")
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "amx_tile" not in flags


class SequenceSlots:
    """Sequence ids of the llama context in use (the engine's rows); lowest free id first.

    llama.cpp allocates its KV cache once, at context creation: there is nothing to grow per step
    or to give back while idle, unlike the torch executor's KVStore."""

    def __init__(self) -> None:
        self._free: list[int] = []
        self._next = 0

    def alloc(self) -> int:
        if self._free:
            self._free.sort()
            return self._free.pop(0)
        self._next += 1
        return self._next - 1

    def free(self, row: int) -> None:
        self._free.append(row)

    @property
    def live_rows(self) -> int:
        return self._next - len(self._free)


class LlamaCppExecutor:
    """Owns a llama.cpp model and context, and the Hugging Face tokenizer that matches its vocab."""

    name = "llamacpp"
    supports_beam_search = False

    def __init__(self, gguf_path: str | os.PathLike, tokenizer, *, threads: int | None = None) -> None:
        self.llama = import_llama_cpp()
        self.model_path = Path(gguf_path)
        self.tokenizer = tokenizer
        self.device = torch.device("cpu")
        self.threads = threads or default_threads()
        params = self.llama.llama_model_default_params()
        params.use_extra_bufts = use_extra_buffers()
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
            "gguf": str(self.model_path),
            "weights_bytes": int(self.llama.llama_model_size(self.model)),
            "n_seq_max": self._shape[1] if self._shape else None,
            "n_ctx": self._shape[0] if self._shape else None,
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
        n_ctx = int(limits.max_batch_total_tokens)
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
        params.kv_unified = True  # one pool of cells shared by all sequences, as the token budget counts them
        params.no_perf = True
        ctx = self.llama.llama_init_from_model(self.model, params)
        if not ctx:
            raise RuntimeError(
                f"llama.cpp could not create a context (n_ctx={n_ctx}, n_seq_max={n_seq}, n_batch={n_batch})"
            )
        self.ctx = ctx
        self._memory = self.llama.llama_get_memory(ctx)
        self._batch = self.llama.llama_batch_init(n_batch, 0, 1)
        self._n_batch = n_batch
        self._tokens = np.ctypeslib.as_array(self._batch.token, shape=(n_batch,))
        self._positions = np.ctypeslib.as_array(self._batch.pos, shape=(n_batch,))
        self._want = np.ctypeslib.as_array(self._batch.logits, shape=(n_batch,))
        np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n_batch,))[:] = 1
        self._seq_ids = [self._batch.seq_id[i] for i in range(n_batch)]
        self._shape = shape
        self.store = SequenceSlots()
        log.info(
            "llama.cpp context: %d KV cells, %d sequences, batch %d, %d threads", n_ctx, n_seq, n_batch, self.threads
        )

    def _free_context(self) -> None:
        if self._batch is not None:
            self.llama.llama_batch_free(self._batch)
            self._batch = None
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
        return self.store.alloc()

    def free_row(self, row: int) -> None:
        if self.ctx:
            self.llama.llama_memory_seq_rm(self._memory, row, -1, -1)
        self.store.free(row)

    @property
    def live_rows(self) -> int:
        return self.store.live_rows

    def reserve(self, rows: int, positions: int) -> None:
        """Nothing to do: the context's KV cells were allocated by ``configure``."""

    def release_idle_memory(self, keep_bytes: int) -> None:
        """Nothing to do: the KV cells stay allocated for the context's life (sized by the limits)."""

    def forward(self, segments: list[Segment]) -> list[torch.Tensor | None]:
        """One ``llama_decode`` over the packed step; the logits each segment asked for."""
        if self.ctx is None:
            raise RuntimeError("the llama.cpp executor was not configured (Engine calls configure())")
        total = sum(len(s.ids) for s in segments)
        if total > self._n_batch:
            raise RuntimeError(f"a step of {total} tokens exceeds the context's batch of {self._n_batch}")
        want = self._want
        want[:total] = 0
        outputs: list[tuple[int, int]] = []  # per segment: (first output index, count)
        out_index: list[int] = []  # batch index of each output row
        i = 0
        for s in segments:
            n = len(s.ids)
            self._tokens[i : i + n] = s.ids
            self._positions[i : i + n] = np.arange(s.start, s.start + n, dtype=np.int32)
            for j in range(i, i + n):
                self._seq_ids[j][0] = s.row
            first = len(out_index)
            if s.logits == "all":
                want[i : i + n] = 1
                out_index.extend(range(i, i + n))
            elif s.logits == "last":
                want[i + n - 1] = 1
                out_index.append(i + n - 1)
            outputs.append((first, len(out_index) - first))
            i += n
        self._batch.n_tokens = total
        rc = self.llama.llama_decode(self.ctx, self._batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc}" + (" (no free KV cells)" if rc == 1 else ""))
        logits = np.empty((len(out_index), self.n_vocab), dtype=np.float32)
        for k, b in enumerate(out_index):
            ptr = self.llama.llama_get_logits_ith(self.ctx, b)
            ctypes.memmove(logits[k].ctypes.data, ptr, self.n_vocab * 4)
        table = torch.from_numpy(logits)
        results: list[torch.Tensor | None] = []
        for s, (first, count) in zip(segments, outputs):
            if s.logits == "all":
                results.append(table[first : first + count])
            elif s.logits == "last":
                results.append(table[first])
            else:
                results.append(None)
        return results
