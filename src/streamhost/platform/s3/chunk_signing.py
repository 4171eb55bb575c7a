"""Chunk signatures of ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`` uploads.

SDKs that sign their payload while streaming it (the Java, Go and JavaScript SDKs, MinIO's
clients) send each aws-chunked chunk with ``;chunk-signature=<hex>``: an HMAC, with the request's
SigV4 signing key, over the previous signature (the Authorization header's for the first chunk)
and the SHA-256 of the chunk's bytes. Checking each one means the bytes stored are the bytes the
key holder sent, not only the headers. The ``-TRAILER`` variant also signs its trailer lines.
"""

from __future__ import annotations

import hashlib
import hmac

from .errors import S3Error

SIGNED_STREAMING = ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class ChunkSignatureChecker:
    def __init__(self, signing_key: bytes, amz_date: str, scope: str, seed_signature: str) -> None:
        self._key = signing_key
        self._date = amz_date
        self._scope = scope  # DATE/REGION/SERVICE/aws4_request
        self._previous = seed_signature

    def _expect(self, kind: str, body_hash: str, with_empty: bool = True) -> str:
        parts = [kind, self._date, self._scope, self._previous]
        if with_empty:
            parts.append(_EMPTY_SHA256)
        parts.append(body_hash)
        return hmac.new(self._key, "\n".join(parts).encode(), hashlib.sha256).hexdigest()

    def chunk(self, signature: str | None, data_sha256: str) -> None:
        """Check one chunk's signature (the final, empty chunk too); SignatureDoesNotMatch otherwise."""
        expected = self._expect("AWS4-HMAC-SHA256-PAYLOAD", data_sha256)
        if signature is None or not hmac.compare_digest(expected, signature):
            raise S3Error(
                "SignatureDoesNotMatch", "A chunk signature of this aws-chunked upload does not match its bytes"
            )
        self._previous = expected

    def trailer(self, signature: str | None, trailer_lines: str) -> None:
        """Check ``x-amz-trailer-signature`` over the trailer lines (``name:value\\n`` each)."""
        expected = self._expect("AWS4-HMAC-SHA256-TRAILER", hashlib.sha256(trailer_lines.encode()).hexdigest(), False)
        if signature is None or not hmac.compare_digest(expected, signature):
            raise S3Error("SignatureDoesNotMatch", "The trailer signature of this aws-chunked upload does not match")
