"""The seam between the engine and whatever runs the model (PyTorch today, llama.cpp next).

The engine owns requests, scheduling, sampling and output processing; an executor owns weights,
the tokenizer and the KV cache, and runs one step's batch. Per step the engine hands over a list
of :class:`~streamhost.engine.kv_cache.Segment` (a row, its new token ids, the position they start
at, and which logits it wants back: ``"last"``, ``"all"`` or ``"none"``) and gets back, per
segment, ``[V]`` logits, ``[n, V]`` logits or ``None``. KV rows are allocated by the engine when a
sequence is admitted and freed when it finishes; ``reserve`` lets it make room for a step's
newcomers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from streamhost.engine.kv_cache import Segment


class Executor(Protocol):
    """What :class:`streamhost.engine.engine.Engine` needs from an executor."""

    model_path: Path
    tokenizer: Any  # a transformers tokenizer (encode, decode, chat template)
    device: torch.device
    dtype: torch.dtype
    max_positions: int  # the model's context length

    def eos_token_ids(self) -> set[int]: ...

    def forward(self, segments: list[Segment]) -> list[torch.Tensor | None]:
        """Run one packed step; per segment the logits it asked for."""
        ...

    def alloc_row(self) -> int: ...

    def free_row(self, row: int) -> None: ...

    def reserve(self, rows: int, positions: int) -> None: ...

    @property
    def live_rows(self) -> int: ...

    def release_idle_memory(self, keep_bytes: int) -> None: ...
