"""Small raw-ASGI helpers: the platform speaks ASGI directly so the streaming path stays thin."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    """The client disconnected while we were reading its request."""


def header_map(scope: Scope) -> dict[str, str]:
    """Request headers, lowercase names (repeated headers joined with ``,``, as HTTP allows)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; raises BodyTooLarge past ``limit`` bytes, ClientGone on disconnect."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _encode_headers(headers: Iterable[tuple[str, str]] | dict[str, str]) -> list[tuple[bytes, bytes]]:
    items = headers.items() if isinstance(headers, dict) else headers
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in items]


async def respond(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """A complete response with a Content-Length."""
    hdrs = dict(headers or {})
    hdrs["content-length"] = str(len(body))
    await send({"type": "http.response.start", "status": status, "headers": _encode_headers(hdrs)})
    await send({"type": "http.response.body", "body": body})


async def respond_json(
    send: Send, status: int, payload: Any, headers: dict[str, str] | None = None, content_type: str = "application/json"
) -> None:
    hdrs = {"content-type": content_type, **(headers or {})}
    await respond(send, status, json.dumps(payload, separators=(",", ":"), default=str).encode(), hdrs)


async def start_stream(send: Send, status: int, headers: dict[str, str]) -> None:
    """Response headers without Content-Length: the server uses chunked encoding."""
    await send({"type": "http.response.start", "status": status, "headers": _encode_headers(headers)})
