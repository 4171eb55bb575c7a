"""ASGI responses that run one generation while watching for the client to leave.

Starlette's StreamingResponse notices a vanished client only when a write fails, which never
happens while a long prompt is prefilling or a non-streaming answer is being computed. These
responses race the work against the ASGI ``http.disconnect`` message instead: when the client goes
away the work is cancelled, which closes the engine's ``generate()`` iterator and so frees the
request's batch slot at the engine's next step (docs/architecture.md, pitfall 4).

:class:`TokenStream` waits for the first token before sending headers, so every error the engine
raises up front (429 overloaded, 422 validation, 503 draining) keeps its status code; after that
each token is one ``send`` (one chunk, flushed), framed by the protocol's per-event function. A
failure after the first byte ends the stream with the protocol's error event.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from streamhost.disconnect import race_disconnect
from streamhost.engine.errors import EngineError
from streamhost.engine.types import TokenEvent

log = logging.getLogger("streamhost.server")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Headers = list[tuple[bytes, bytes]]

_START = "http.response.start"
_BODY = "http.response.body"
_JSON = b"application/json"
_perf = time.perf_counter


def encode_headers(headers: dict[str, str] | None, content_type: str | bytes | None = None) -> Headers:
    out: Headers = []
    if content_type is not None:
        out.append(
            (b"content-type", content_type if isinstance(content_type, bytes) else content_type.encode("latin-1"))
        )
    for name, value in (headers or {}).items():
        if name.lower() == "content-type" and content_type is not None:
            continue
        out.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return out


def dumps(obj: Any) -> bytes:
    """Compact JSON with UTF-8 text unescaped, as serde_json (TGI) writes it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


async def send_whole(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send({"type": _START, "status": status, "headers": headers + [(b"content-length", b"%d" % len(body))]})
    await send({"type": _BODY, "body": body, "more_body": False})


class Observer:
    """Per-request bookkeeping shared by the response classes (metrics and drain accounting)."""

    __slots__ = ("state", "started")

    def __init__(self, state: Any, started: float) -> None:
        self.state = state
        self.started = started  # perf_counter() when the request arrived


class GuardedResponse:
    """Runs ``produce(send)`` and cancels it when the client disconnects first.

    Subclasses implement :meth:`produce` and :meth:`close` (release the engine iterator).
    """

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.completed = False  # the last byte was handed to the server

    async def produce(self, send: Send) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def close(self) -> None:
        return None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        state = self.observer.state
        metrics = state.metrics
        metrics.in_flight.inc()
        state.active += 1
        try:
            # A client that left is counted as 499 by the app's CountRequests; the producer has
            # unwound (its engine iterator is no longer suspended) by the time this returns.
            await race_disconnect(receive, self.produce(send), finished=lambda: self.completed)
        finally:
            try:
                await self.close()
            except Exception:
                log.exception("closing a generation failed")
            metrics.in_flight.dec()
            state.active -= 1


ErrorBody = Callable[[EngineError], tuple[int, Any]]


class TokenStream(GuardedResponse):
    """A streamed generation: headers after the first token, then one flushed chunk per event.

    ``frame(event) -> bytes`` is the protocol's per-token framing (``b""`` sends nothing);
    ``tail`` follows the final event (``data: [DONE]``); ``early_error`` gives the status and
    JSON body for an engine error before the first byte, ``stream_error`` the in-stream event.
    """

    def __init__(
        self,
        observer: Observer,
        events: AsyncGenerator[TokenEvent, None],
        frame: Callable[[TokenEvent], bytes],
        *,
        content_type: str,
        headers: dict[str, str],
        early_error: ErrorBody,
        stream_error: Callable[[EngineError], bytes],
        tail: bytes = b"",
    ) -> None:
        super().__init__(observer)
        self.events = events
        self.frame = frame
        self.headers = encode_headers(headers, content_type)
        self.early_error = early_error
        self.stream_error = stream_error
        self.tail = tail

    async def close(self) -> None:
        await self.events.aclose()

    async def produce(self, send: Send) -> None:
        events = self.events
        metrics = self.observer.state.metrics
        try:
            first = await events.__anext__()
        except EngineError as err:
            status, body = self.early_error(err)
            await send_whole(send, status, dumps(body), [(b"content-type", _JSON)])
            self.completed = True
            return
        except StopAsyncIteration:  # the engine always ends with a final event; be safe anyway
            first = None
        now = _perf()
        metrics.ttft.observe(now - self.observer.started)
        await send({"type": _START, "status": 200, "headers": self.headers})
        frame = self.frame
        final = first if first is not None and first.details is not None else None
        try:
            if first is not None and final is None:
                chunk = frame(first)
                if chunk:
                    await send({"type": _BODY, "body": chunk, "more_body": True})
                observe = metrics.itl.observe
                last = now
                async for event in events:
                    now = _perf()
                    observe(now - last)
                    last = now
                    if event.details is not None:
                        final = event
                        break
                    chunk = frame(event)
                    if chunk:
                        await send({"type": _BODY, "body": chunk, "more_body": True})
            body = (frame(final) if final is not None else b"") + self.tail
        except EngineError as err:
            metrics.stream_errors.inc()
            body = self.stream_error(err)
        except Exception as exc:  # a bug must not leave the client hanging on a half stream
            log.exception("stream failed")
            metrics.stream_errors.inc()
            from streamhost.engine.errors import GenerationError

            body = self.stream_error(GenerationError(f"internal error: {type(exc).__name__}"))
        self.completed = True
        await send({"type": _BODY, "body": body, "more_body": False})
        metrics.e2e.observe(_perf() - self.observer.started)
        if final is not None and final.details is not None:
            metrics.input_tokens.observe(final.details.input_length)
            metrics.output_tokens.observe(final.details.generated_tokens)


class WholeAnswer(GuardedResponse):
    """A non-streamed generation: ``compute()`` returns ``(status, headers, body)`` once it is done."""

    def __init__(
        self,
        observer: Observer,
        compute: Callable[[], Awaitable[tuple[int, Headers, bytes]]],
        *,
        early_error: ErrorBody,
        closers: list[AsyncGenerator[TokenEvent, None]] | None = None,
    ) -> None:
        super().__init__(observer)
        self.compute = compute
        self.early_error = early_error
        self.closers = closers if closers is not None else []

    async def close(self) -> None:
        for events in self.closers:
            await events.aclose()

    async def produce(self, send: Send) -> None:
        try:
            status, headers, body = await self.compute()
        except EngineError as err:
            status, obj = self.early_error(err)
            headers, body = [(b"content-type", _JSON)], dumps(obj)
        self.completed = True
        await send_whole(send, status, body, headers)
        self.observer.state.metrics.e2e.observe(_perf() - self.observer.started)
