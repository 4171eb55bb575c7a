"""Continuous-batching generation engine.

``Engine`` and ``EngineConfig`` are imported lazily: the protocol layer imports
``streamhost.engine.types`` and ``errors`` and must not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamhost.engine.errors import (
    EngineError,
    EngineNotReadyError,
    GenerationError,
    OverloadedError,
    ValidationError,
)
from streamhost.engine.types import (
    FinishReason,
    GenerationDetails,
    GenerationParameters,
    GenerationResult,
    TokenEvent,
)

if TYPE_CHECKING:  # pragma: no cover
    from streamhost.engine.engine import Engine, EngineConfig, EngineStats

__all__ = [
    "Engine", "EngineConfig", "EngineStats", "EngineError", "EngineNotReadyError", "GenerationError",
    "OverloadedError", "ValidationError", "FinishReason", "GenerationDetails", "GenerationParameters",
    "GenerationResult", "TokenEvent",
]


def __getattr__(name: str) -> Any:
    if name in ("Engine", "EngineConfig", "EngineStats"):
        from streamhost.engine import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'streamhost.engine' has no attribute {name!r}")
