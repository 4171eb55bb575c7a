"""The seam between the engine and whatever runs the model (PyTorch or llama.cpp).

The engine owns requests, scheduling, sampling and output processing; an executor owns weights,
the tokenizer and the KV cache, and runs one step's batch. Per step the engine hands over a list
of :class:`~streamhost.engine.kv_cache.Segment` (a row, its new token ids, the position they start
at, and which logits it wants back: ``"last"``, ``"all"`` or ``"none"``) and gets back, per
segment, ``[V]`` logits, ``[n, V]`` logits or ``None``. KV rows are allocated by the engine when a
sequence is admitted and freed when it finishes; ``reserve`` lets it make room for a step's
newcomers at once. A finished sequence's row may keep its KV (``free_row(row, tokens)``) for a
later prompt that shares its prefix (``claim_row``; engine/prefix_cache.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from streamhost.engine.kv_cache import Segment
from streamhost.engine.limits import EngineLimits
from streamhost.engine.prefix_cache import MIN_MATCH_TOKENS, Claim


class Executor(Protocol):
    """What :class:`streamhost.engine.engine.Engine` needs from an executor.

    Two implement it: ``TorchExecutor`` (executor.py: transformers, any architecture, CPU or GPU)
    and ``LlamaCppExecutor`` (executors/llamacpp.py: GGUF models on CPU); executors/__init__.py
    picks one per model."""

    name: str  # "torch" | "llamacpp": reported by /info and /metrics
    supports_beam_search: bool
    model_path: Path
    tokenizer: Any  # a transformers tokenizer (encode, decode, chat template)
    device: torch.device
    dtype: Any  # a torch.dtype, or a GGUF file type name such as "Q4_1"
    max_positions: int  # the model's context length

    def describe(self) -> dict:
        """What this executor reports in /info under its ``name`` (threads, kernels, KV layout)."""
        ...

    def configure(self, limits: EngineLimits, prefill_chunk: int) -> None:
        """Size the executor for the engine's limits (once per engine, before any step)."""
        ...

    def eos_token_ids(self) -> set[int]: ...

    def forward(self, segments: list[Segment]) -> list[torch.Tensor | None]:
        """Run one packed step; per segment the logits it asked for."""
        ...

    def alloc_row(self) -> int:
        """The lowest free row, nothing reused."""
        ...

    def claim_row(self, prompt_ids: Sequence[int], min_match: int = MIN_MATCH_TOKENS) -> Claim:
        """A row for a new prompt whose first ``Claim.reused`` tokens' KV it already holds (the
        free row sharing the longest prefix, else the lowest; engine/prefix_cache.py)."""
        ...

    def free_row(self, row: int, tokens: Sequence[int] | None = None) -> None:
        """Give ``row`` back; ``tokens`` are the ids whose KV it holds, kept for reuse (None: nothing kept)."""
        ...

    def reserve(self, rows: int, positions: int) -> None: ...

    @property
    def live_rows(self) -> int: ...

    def release_idle_memory(self, keep_bytes: int) -> None: ...
