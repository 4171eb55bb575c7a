"""What the routes share: settings, the engine once loaded, health and drain state, metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from streamhost.engine.errors import EngineNotReadyError
from streamhost.server.config import ServerSettings
from streamhost.server.metrics import ServerMetrics


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("streamhost")
    except Exception:
        return "0.0.0"


class ServerState:
    """One model server's live state; routes reach it as ``request.app.state.server``."""

    def __init__(self, settings: ServerSettings, version: str | None = None) -> None:
        self.settings = settings
        self.version = version or package_version()
        self.engine: Any = None  # streamhost.engine.Engine once loaded
        self.loading = True
        self.draining = False
        self.load_error: str | None = None
        self.core_error: str | None = None  # the engine core died: the server is on its way out
        self.exit_task: Any = None
        self.active = 0  # generation requests being answered (drain waits for 0)
        self.created = int(time.time())
        self.metrics = ServerMetrics(lambda: self.engine, lambda: self.ready)

    @property
    def ready(self) -> bool:
        engine = self.engine
        return engine is not None and not self.draining and self.core_error is None and engine.ready

    def require_engine(self) -> Any:
        """The engine, or EngineNotReadyError (503) while loading, after a failed load, or draining."""
        engine = self.engine
        if engine is None:
            raise EngineNotReadyError(
                "the model is still loading" if self.load_error is None else "the model failed to load"
            )
        if self.draining:
            raise EngineNotReadyError("the server is shutting down and admits no new requests")
        return engine

    @property
    def model_id(self) -> str:
        return self.settings.model_id

    @property
    def payload_limit(self) -> int:
        engine = self.engine
        if engine is not None:
            return engine.limits.payload_limit
        return self.settings.payload_limit

    def compute_type(self) -> str:
        if self.settings.compute_type:
            return self.settings.compute_type
        engine = self.engine
        device = engine.executor.device.type if engine is not None else "cpu"
        return "gpu+optimized" if device == "cuda" else f"{device}+optimized"

    @property
    def busy(self) -> bool:
        engine = self.engine
        return self.active > 0 or (engine is not None and engine.in_flight > 0)

    async def drain(self, timeout: float) -> bool:
        """Stop admitting; wait up to ``timeout`` s for in-flight requests. True when all finished."""
        self.draining = True
        engine = self.engine
        if engine is not None:
            engine.stop_accepting()
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not self.busy:
            return True
        if engine is not None:
            # Out of time: stopping the engine ends each open stream with its protocol's error event
            # (rather than a connection cut mid-line); give the responses a moment to send it.
            await engine.stop()
            deadline = time.monotonic() + 2.0
            while self.active > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        return False
