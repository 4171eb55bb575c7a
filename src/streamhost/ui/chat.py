"""The chat page: static files the platform serves at ``/chat`` (no CDN, works offline).

The page is plain HTML/CSS/JS in ``static/`` (package data). It talks to the platform it came
from: ``ListEndpoints`` on the control plane and ``InvokeEndpointWithResponseStream`` on the
runtime, unsigned, so it works while SigV4 auth is off (the default on a loopback address).

Only the files named in ``ASSETS`` are served (no path from the URL reaches the filesystem), with
a Content-Security-Policy that allows same-origin scripts, styles and requests only: defence in
depth behind the page's own rule of never putting model text into HTML.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

PREFIX = "/chat"

ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "chatstream.js": "text/javascript; charset=utf-8",
    "eventstream.js": "text/javascript; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "compare.html": "text/html; charset=utf-8",  # two endpoints side by side (base vs tuned)
    "compare.css": "text/css; charset=utf-8",
    "compare.js": "text/javascript; charset=utf-8",
}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def is_chat_path(path: str) -> bool:
    """True for ``/chat`` and anything under ``/chat/``."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def asset_name(path: str) -> str | None:
    """The static file a chat path names, or None when there is no such file."""
    if path in (PREFIX, PREFIX + "/"):
        return "index.html"
    name = path[len(PREFIX) + 1 :]
    return name if name in ASSETS else None


def read_asset(name: str) -> bytes:
    return (resources.files("streamhost.ui") / "static" / name).read_bytes()


async def serve_chat(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI handler for ``GET``/``HEAD`` ``/chat`` and its assets."""
    method = scope["method"]
    if method not in ("GET", "HEAD"):
        await _respond(send, 405, b"Use GET for the chat page.\n", "text/plain; charset=utf-8", {"allow": "GET, HEAD"})
        return
    name = asset_name(scope["path"])
    if name is None:
        await _respond(send, 404, f"No chat asset at {scope['path']}\n".encode(), "text/plain; charset=utf-8")
        return
    body = read_asset(name)
    await _respond(send, 200, body, ASSETS[name], head=method == "HEAD")


async def _respond(send: Send, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None,
                   head: bool = False) -> None:  # fmt: skip
    headers = {
        "content-type": content_type,
        "content-length": str(len(body)),
        "cache-control": "no-cache",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "content-security-policy": CONTENT_SECURITY_POLICY,
        **(extra or {}),
    }
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head else body})
