"""Errors the engine raises; each protocol turns them into its own shape and status code."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: the message is safe and meant for the client."""

    error_type = "generation"


class ValidationError(EngineError):
    """The request breaks a rule or a limit (HTTP 422 in TGI). The message says which and by how much."""

    error_type = "validation"


class OverloadedError(EngineError):
    """More requests than MAX_CONCURRENT_REQUESTS are in flight (HTTP 429)."""

    error_type = "overloaded"

    def __init__(self, message: str = "Model is overloaded") -> None:
        super().__init__(message)


class GenerationError(EngineError):
    """Generation failed for this request (HTTP 424 before the stream starts, an error event after)."""

    error_type = "generation"


class EngineNotReadyError(EngineError):
    """The model is still loading or the engine is draining (HTTP 503)."""

    error_type = "healthcheck"
