"""Receive a request body into a temporary file, decoding and verifying it on the way.

Nothing is held in memory beyond one ASGI message: a 500 MB upload streams to disk. What is
checked, all before the caller records anything:
- the byte count against ``Content-Length`` / ``X-Amz-Decoded-Content-Length`` (IncompleteBody);
- the SHA-256 of the payload against a signed ``X-Amz-Content-SHA256`` (XAmzContentSHA256Mismatch);
- ``Content-MD5`` and ``x-amz-checksum-*`` values, from headers or from an aws-chunked trailer
  (BadDigest).
On any failure, or when the client goes away, the temporary file is removed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from ..asgi import ClientGone, Receive
from .checksums import BodyDigests, content_md5, declared_checksums, trailer_algorithm
from .chunk_signing import ChunkSignatureChecker
from .chunked import AwsChunkedDecoder
from .errors import S3Error

MAX_OBJECT_BYTES = 5 * 1024**3  # S3's limit for one PUT (and for one part)
_UNSIGNED = {"UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"}
_SIGNED_STREAMING = {"STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"}
_FLUSH_BYTES = 4 * 1024 * 1024  # buffer this much before one write + hash pass


@dataclass(frozen=True)
class ReceivedBody:
    path: Path
    size: int
    md5_hex: str
    checksums: dict[str, str]  # verified {algorithm: base64}


def _is_aws_chunked(headers: dict[str, str]) -> bool:
    encodings = [e.strip().lower() for e in headers.get("content-encoding", "").split(",")]
    return "aws-chunked" in encodings or headers.get("x-amz-content-sha256", "").startswith("STREAMING-")


def stored_content_encoding(headers: dict[str, str]) -> str | None:
    """The Content-Encoding to keep with the object: the client's, less S3's transport ``aws-chunked``."""
    kept = [
        e.strip()
        for e in headers.get("content-encoding", "").split(",")
        if e.strip() and e.strip().lower() != "aws-chunked"
    ]
    return ",".join(kept) or None


def _expected_size(headers: dict[str, str], chunked: bool) -> int | None:
    name = "x-amz-decoded-content-length" if chunked else "content-length"
    value = headers.get(name)
    if value is None:
        return None
    try:
        size = int(value)
    except ValueError:
        raise S3Error("InvalidArgument", f"{name} must be a number of bytes") from None
    if size < 0:
        raise S3Error("InvalidArgument", f"{name} must not be negative")
    if size > MAX_OBJECT_BYTES:
        raise S3Error("EntityTooLarge", ProposedSize=str(size), MaxSizeAllowed=str(MAX_OBJECT_BYTES))
    return size


async def receive_body(receive: Receive, headers: dict[str, str], target: Path,
                       signatures: ChunkSignatureChecker | None = None) -> ReceivedBody:  # fmt: skip
    """Stream the body into ``target``; raises S3Error (or ClientGone) after removing it.

    ``signatures``: check the chunk signatures of a signed streaming (aws-chunked) upload.
    """
    chunked = _is_aws_chunked(headers)
    expected = _expected_size(headers, chunked)
    if not chunked and expected is None and "transfer-encoding" not in headers:
        expected = 0  # no Content-Length and not chunked: HTTP says the body is empty
    payload_hash = headers.get("x-amz-content-sha256", "")
    check_sha = bool(payload_hash) and payload_hash not in _UNSIGNED and payload_hash not in _SIGNED_STREAMING
    if check_sha and (chunked or len(payload_hash) != 64):
        raise S3Error("InvalidArgument", "x-amz-content-sha256 must be a hex SHA-256, UNSIGNED-PAYLOAD or STREAMING-*")
    declared = declared_checksums(headers)
    trailer = trailer_algorithm(headers) if chunked else None
    md5 = content_md5(headers)
    digests = BodyDigests(sha256=check_sha, algorithms=[*declared, *([trailer] if trailer else [])])
    decoder = AwsChunkedDecoder(signatures.chunk if signatures else None) if chunked else None
    try:
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        out = await asyncio.to_thread(open, target, "wb")
        try:
            pending: list[bytes] = []  # handed to a worker thread as is (joining or growing a buffer copies)
            pending_size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                data = message.get("body", b"")
                if decoder is not None:
                    data = decoder.feed(data)
                if data:
                    pending.append(data)
                    pending_size += len(data)
                    if digests.size + pending_size > MAX_OBJECT_BYTES:
                        raise S3Error("EntityTooLarge", MaxSizeAllowed=str(MAX_OBJECT_BYTES))
                    if pending_size >= _FLUSH_BYTES:
                        await asyncio.to_thread(_consume, pending, out, digests)
                        pending, pending_size = [], 0
                if not message.get("more_body", False):
                    break
            if pending:
                await asyncio.to_thread(_consume, pending, out, digests)
        finally:
            out.close()
        if decoder is not None and not decoder.done:
            raise S3Error("IncompleteBody", "The aws-chunked body ended before its final chunk")
        if decoder is not None and signatures is not None and payload_hash.endswith("-TRAILER"):
            signatures.trailer(decoder.trailers.get("x-amz-trailer-signature"), decoder.trailer_lines)
        if expected is not None and digests.size != expected:
            raise S3Error("IncompleteBody", f"Expected {expected} bytes, received {digests.size}")
        if check_sha and digests.sha256 is not None and digests.sha256.hexdigest() != payload_hash:
            raise S3Error("XAmzContentSHA256Mismatch", ClientComputedContentSHA256=payload_hash,
                          S3ComputedContentSHA256=digests.sha256.hexdigest())  # fmt: skip
        if trailer:
            value = decoder.trailers.get(f"x-amz-checksum-{trailer}") if decoder else None
            if not value:
                raise S3Error(
                    "InvalidRequest", f"The aws-chunked body did not carry its x-amz-checksum-{trailer} trailer"
                )
            declared[trailer] = value
        verified = digests.verify(declared, md5)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return ReceivedBody(target, digests.size, digests.md5.hexdigest(), verified)


def _consume(pieces: list[bytes], out, digests: BodyDigests) -> None:
    """Write and hash buffered pieces (in a worker thread: hashlib and file writes release the GIL)."""
    for piece in pieces:
        out.write(piece)
        digests.update(piece)
