"""One S3 request as the operation handlers see it, and the ways they answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..asgi import Receive, Send, start_stream
from .chunk_signing import ChunkSignatureChecker
from .routing import S3Request
from .store import ObjectStore


@dataclass
class Context:
    scope: dict[str, Any]
    receive: Receive
    send: Send
    headers: dict[str, str]
    query: dict[str, str]
    request: S3Request
    store: ObjectStore
    region: str
    account: str
    request_id: str
    body: bytes | None = None  # read up front for the operations whose body is a small XML document
    signatures: ChunkSignatureChecker | None = None  # a signed streaming upload's chunk signatures

    @property
    def bucket(self) -> str:
        assert self.request.bucket is not None
        return self.request.bucket

    @property
    def key(self) -> str:
        assert self.request.key is not None
        return self.request.key

    def base_headers(self) -> dict[str, str]:
        return {"x-amz-request-id": self.request_id, "x-amz-id-2": self.request_id, "server": "streamhost"}

    async def start(self, status: int, headers: dict[str, str]) -> None:
        await start_stream(self.send, status, {**self.base_headers(), **headers})

    async def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                    content_type: str | None = "application/xml") -> None:  # fmt: skip
        """A complete answer; ``body`` is dropped for HEAD (its Content-Length is kept unless given)."""
        hdrs = dict(headers or {})
        if content_type and body:
            hdrs.setdefault("content-type", content_type)
        hdrs.setdefault("content-length", str(len(body)))
        await self.start(status, hdrs)
        await self.send({"type": "http.response.body", "body": b"" if self.scope["method"] == "HEAD" else body})
