"""Continuous-batching generation engine.

``Engine`` is imported lazily: the protocol layer and the server's settings import
``streamhost.engine.types``, ``errors`` and ``config`` and must not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamhost.engine.config import EngineConfig, LimitSettings
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
    from streamhost.engine.engine import Engine, EngineStats

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineStats",
    "EngineError",
    "EngineNotReadyError",
    "GenerationError",
    "OverloadedError",
    "ValidationError",
    "FinishReason",
    "GenerationDetails",
    "GenerationParameters",
    "GenerationResult",
    "TokenEvent",
    "LimitSettings",
]


def __getattr__(name: str) -> Any:
    if name in ("Engine", "EngineStats"):
        from streamhost.engine import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'streamhost.engine' has no attribute {name!r}")
