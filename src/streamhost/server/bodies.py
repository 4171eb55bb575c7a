"""Reading request bodies safely and writing small JSON answers.

A body is read in chunks and refused with 413 as soon as it passes PAYLOAD_LIMIT, so an oversized
upload never sits in memory whole. JSON goes out compact with UTF-8 unescaped (serde's style).
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from streamhost.protocols import tgi
from streamhost.protocols.errors import ProtocolError
from streamhost.server.streaming import dumps

JSON = "application/json"


class JsonAnswer(Response):
    media_type = JSON

    def render(self, content: Any) -> bytes:
        return dumps(content)


def json_answer(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JsonAnswer(content, status_code=status, headers=headers)


def protocol_error_answer(err: ProtocolError) -> Response:
    return JsonAnswer(err.body, status_code=err.status, headers=err.headers or None)


def check_content_type(request: Request, *, lenient: bool = False) -> None:
    """415 unless the body is declared JSON; ``lenient`` (/invocations) also takes no type or octet-stream.

    SageMaker passes the caller's ContentType through to /invocations, and boto3 callers often omit it.
    """
    content_type = request.headers.get("content-type")
    if lenient:
        mime = (content_type or "").split(";", 1)[0].strip().lower()
        if mime in ("", "application/octet-stream", "text/plain", "application/jsonlines", "application/x-ndjson"):
            return
    tgi.check_json_content_type(content_type)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or ProtocolError 413 once it is larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise tgi.payload_too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise tgi.payload_too_large(size, limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ProtocolError(
            400, "the client closed the connection before sending the whole body", "validation"
        ) from None
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """Decode JSON (400 on bad syntax, bad UTF-8 or absurd nesting), for routing by shape."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(400, f"Failed to parse the request body as JSON: {exc}", "validation") from None


def now() -> float:
    return time.perf_counter()


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def server_state(request: Request):
    """The ServerState the app was built with."""
    return request.app.state.server


async def json_request_body(request: Request) -> bytes:
    """A route's body: JSON content type checked, size bounded by PAYLOAD_LIMIT."""
    check_content_type(request)
    return await read_body(request, server_state(request).payload_limit)
