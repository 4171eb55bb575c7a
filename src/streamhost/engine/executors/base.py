"""What the engine needs from an executor, written down once.

The engine (engine.py) drives any executor through this surface: it hands it one packed step of
``Segment`` s (each running sequence's next token plus any prompt chunks, see kv_cache.py) and gets
back the logits each segment asked for; sequences own a row (a KV slot) from admission to exit.
Two executors implement it: ``TorchExecutor`` (transformers, any architecture, CPU or GPU) and
``LlamaCppExecutor`` (llama.cpp, GGUF models, CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from streamhost.engine.kv_cache import Segment
    from streamhost.engine.limits import EngineLimits

EXECUTOR_NAMES = ("torch", "llamacpp")


class SlotStore(Protocol):
    """The rows (KV slots) of live sequences; ``reserve``/``nbytes``/``reset`` manage memory."""

    @property
    def live_rows(self) -> int: ...

    def reserve(self, rows: int, positions: int) -> None: ...

    def nbytes(self) -> int: ...

    def reset(self) -> None: ...


class Executor(Protocol):
    """One loaded model that runs packed steps."""

    name: str  # "torch" | "llamacpp": reported by /info and /metrics
    model_path: Path
    device: "torch.device"
    dtype: Any  # a torch dtype, or a GGUF file type name such as "Q4_1"
    tokenizer: Any  # a Hugging Face tokenizer (detokenizer, chat templates, /tokenize)
    max_positions: int
    store: SlotStore
    supports_beam_search: bool

    def configure(self, limits: "EngineLimits", prefill_chunk: int) -> None:
        """Size the executor for the engine's limits (called once per engine, before any step)."""

    def eos_token_ids(self) -> set[int]: ...

    @property
    def vocab_size(self) -> int: ...

    def forward(self, segments: list["Segment"]) -> list["torch.Tensor | None"]:
        """Per segment the logits it asked for: ``[V]`` (last), ``[n, V]`` (all) or None."""

    def alloc_row(self) -> int: ...

    def free_row(self, row: int) -> None: ...
