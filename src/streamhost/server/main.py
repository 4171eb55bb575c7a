"""``streamhost container``: serve one model over HTTP until told to stop, then drain.

SIGTERM (or Ctrl+C) starts a drain: ``/ping`` and new requests answer 503 at once, requests in
flight run to their end for up to the drain timeout, then the server closes and the process exits
0. A second signal stops at once. uvicorn's own signal handling would close the listening socket
first (so ``/ping`` could not say 503) and re-raise SIGTERM at exit (a non-zero status), so the
server below replaces it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from streamhost.log_setup import configure_logging
from streamhost.server.config import ServerSettings, SettingsError, load_settings
from streamhost.server.config import add_arguments as _add_config_arguments

log = logging.getLogger("streamhost.server")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_arguments(parser)


def _server_class() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn.Server whose first SIGTERM/SIGINT drains instead of closing the socket."""

        def __init__(self, config: Any, state: Any, drain_timeout: float) -> None:
            super().__init__(config)
            self.state = state
            self.drain_timeout = drain_timeout
            self._draining = False
            self._loop: asyncio.AbstractEventLoop | None = None

        async def startup(self, sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().startup(sockets=sockets)
            for server in getattr(self, "servers", []):
                for sock in server.sockets or []:
                    host, port = sock.getsockname()[:2]
                    log.info("listening on http://%s:%d", host, port)

        def handle_exit(self, sig: int, frame: Any) -> None:  # signal handler: keep it tiny
            if self._draining or self._loop is None:
                self.should_exit = True
                self.force_exit = self._draining
                return
            self._draining = True
            self._loop.call_soon_threadsafe(self._start_drain, sig)

        def _start_drain(self, sig: int) -> None:
            asyncio.ensure_future(self._drain(sig))

        async def _drain(self, sig: int) -> None:
            log.info(
                "signal %d: draining (%d request(s) in flight, up to %g s)", sig, self.state.active, self.drain_timeout
            )
            finished = await self.state.drain(self.drain_timeout)
            if not finished:
                log.warning(
                    "drain timeout after %g s: the requests still in flight were ended with an error event",
                    self.drain_timeout,
                )
            self.should_exit = True

    return DrainingServer


def serve(settings: ServerSettings) -> int:
    """Run the server in this process until it is stopped; returns the exit status."""
    import uvicorn

    from streamhost.server.app import create_app
    from streamhost.server.state import ServerState

    state = ServerState(settings)
    outcome = {"code": EXIT_OK}
    holder: dict[str, Any] = {}

    def fatal(message: str) -> None:
        outcome["code"] = EXIT_FAILED
        server = holder.get("server")
        if server is not None:
            server.should_exit = True

    app = create_app(settings, state=state, on_fatal=fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
        timeout_keep_alive=30,
        server_header=False,
    )
    server = _server_class()(config, state, settings.drain_timeout)
    holder["server"] = server
    server.run()
    if not server.started and outcome["code"] == EXIT_OK:
        return EXIT_FAILED  # could not bind, for instance
    return outcome["code"]


def run(args: argparse.Namespace) -> int:
    """Entry point of ``streamhost container``."""
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"streamhost container: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level)
    return serve(settings)
