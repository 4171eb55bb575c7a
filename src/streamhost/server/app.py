"""The model server's ASGI app: routes, error shapes, metrics, and loading the model in the background.

The HTTP server starts before the model is loaded, so ``/ping`` can say 503 while loading
(docs/architecture.md, pitfall 7); the model loads in a daemon thread and the engine starts when
it is done. A model that fails to load is fatal: ``on_fatal`` is called so the process exits
non-zero, as TGI's launcher does.

Every refusal has the protocol's JSON shape; an unexpected exception is logged with its traceback
and answered ``500 {"error": "internal error: <type>", "error_type": "internal"}``, never with a
traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamhost.engine.errors import EngineError
from streamhost.protocols import tgi
from streamhost.protocols.errors import ProtocolError
from streamhost.server import invocations, openai_routes, tgi_routes
from streamhost.server.bodies import json_answer, protocol_error_answer
from streamhost.server.config import ServerSettings
from streamhost.server.metrics import CLIENT_CLOSED_REQUEST
from streamhost.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from streamhost.server.state import ServerState

log = logging.getLogger("streamhost.server")

EngineLoader = Callable[[ServerSettings], Any]

# After the engine core dies: up to this long for the failed requests to send their error events,
# then this long answering /ping 503 (a health checker sees why) before the process exits.
CORE_EXIT_GRACE_S = 5.0
CORE_EXIT_LINGER_S = 3.0


def load_engine(settings: ServerSettings) -> Any:
    """Resolve and load the model (slow: runs in a worker thread) with the settings' EngineConfig."""
    from streamhost.engine import Engine

    config = settings.engine
    if config.model_id is None:
        config = dataclasses.replace(config, model_id=settings.model_id)
    return Engine.load(settings.model_id, config)


def _in_daemon_thread(fn: Callable[[], Any]) -> asyncio.Future:
    """Run ``fn`` in a daemon thread (a stuck load must not keep the process alive at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def target() -> None:
        try:
            value = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, value)

    threading.Thread(target=target, name="streamhost-load", daemon=True).start()
    return future


async def _load(state: ServerState, loader: EngineLoader, on_fatal: Callable[[str], None]) -> None:
    settings = state.settings
    log.info("loading %s", settings.describe())
    try:
        pending = _in_daemon_thread(lambda: loader(settings))
        engine = await asyncio.wait_for(pending, settings.load_timeout) if settings.load_timeout else await pending
        await engine.start()
    except asyncio.CancelledError:
        raise
    except asyncio.TimeoutError:
        state.load_error = f"the model did not load within option.model_loading_timeout={settings.load_timeout:g} s"
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
    else:
        state.engine = engine
        engine.on_core_exit = lambda why: _core_exited(state, why, on_fatal)
        if state.draining:
            engine.stop_accepting()
        log.info("model ready: %s", settings.model_id)
    finally:
        state.loading = False
    if state.load_error is not None:
        log.error("cannot serve %s: %s", settings.model_id, state.load_error)
        on_fatal(state.load_error)


def _core_exited(state: ServerState, why: str, on_fatal: Callable[[str], None]) -> None:
    """The engine core died: /ping is 503 from now on; exit once the failed requests have answered."""
    log.error("%s: the server exits so its supervisor restarts it", why)
    state.core_error = why

    async def exit_soon() -> None:
        deadline = time.monotonic() + CORE_EXIT_GRACE_S
        while state.active > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(CORE_EXIT_LINGER_S)
        on_fatal(why)

    state.exit_task = asyncio.ensure_future(exit_soon())


# --------------------------------------------------------------------------- error handlers


async def _protocol_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProtocolError)
    return protocol_error_answer(exc)


async def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    status, body = tgi.engine_error(exc)
    return json_answer(body, status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
    message = exc.detail
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return json_answer({"error": message, "error_type": kind}, exc.status_code, headers=dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_answer({"error": f"internal error: {type(exc).__name__}", "error_type": "internal"}, 500)


# --------------------------------------------------------------------------- metrics


async def _openapi(request: Request) -> Response:
    from streamhost.server.openapi import openapi_document

    state: ServerState = request.app.state.server
    return json_answer(openapi_document(state.settings.dialect))


async def _metrics(request: Request) -> Response:
    state: ServerState = request.app.state.server
    return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


class CountRequests:
    """Counts answers by route and status code (raw ASGI: adds one call per message).

    A request whose client went away before the last byte of the answer is counted as ``499``
    (nginx's "client closed request") and in ``streamhost_client_disconnects_total``, whatever
    status line had already gone out: nothing failed on our side, and operators alert on 5xx.
    """

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        answered = False  # the last body message was handed to the server
        client_gone = False

        async def watching_receive() -> dict:
            nonlocal client_gone
            message = await receive()
            if message["type"] == "http.disconnect" and not answered:
                client_gone = True
            return message

        async def counting_send(message: dict) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        try:
            await self.app(scope, watching_receive, counting_send)
        finally:
            metrics = self.state.metrics
            if client_gone:
                metrics.disconnects.inc()
                metrics.count_request(scope.get("path", ""), CLIENT_CLOSED_REQUEST)
            else:
                metrics.count_request(scope.get("path", ""), status or 500)


def create_app(
    settings: ServerSettings,
    *,
    state: ServerState | None = None,
    loader: EngineLoader | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> Any:
    """The ASGI app for one model; the model starts loading when the app's lifespan starts."""
    state = state or ServerState(settings)
    load = loader or load_engine
    fatal = on_fatal or (lambda message: None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        task = asyncio.create_task(_load(state, load, fatal))
        try:
            yield
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if state.engine is not None:
                await state.engine.stop()

    routes = [
        *invocations.ROUTES,
        *tgi_routes.ROUTES,
        *openai_routes.ROUTES,
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/openapi.json", _openapi, methods=["GET"]),
        Route("/api-doc/openapi.json", _openapi, methods=["GET"]),  # where TGI serves it
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ProtocolError: _protocol_error,
            EngineError: _engine_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.server = state
    return CountRequests(app, state)
