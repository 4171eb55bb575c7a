"""Decoding ``Content-Encoding: aws-chunked`` request bodies.

botocore (over TLS), the AWS CLI and the other SDKs wrap upload bodies in S3's own chunk
framing, on top of whatever HTTP transfer encoding carries them::

    <hex size>[;chunk-signature=<sig>]\\r\\n<bytes>\\r\\n ... 0[;chunk-signature=<sig>]\\r\\n
    [<trailer name>:<value>\\r\\n]*\\r\\n

The trailers carry the checksum (``x-amz-checksum-crc32:<base64>``) computed while sending.
``AwsChunkedDecoder`` is fed the raw bytes in whatever pieces they arrive and returns the
decoded bytes; once ``done`` it holds the trailers. Given ``on_chunk``, it hashes each chunk and
reports it with its ``chunk-signature`` (``chunk_signing.py`` checks those).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from .errors import S3Error

_MAX_LINE = 4096
_MAX_TRAILERS = 16


ChunkCallback = Callable[[str | None, str], None]  # (chunk-signature or None, SHA-256 hex of the chunk's bytes)


class AwsChunkedDecoder:
    def __init__(self, on_chunk: ChunkCallback | None = None) -> None:
        self._buffer = bytearray()
        self._remaining = 0  # bytes of chunk data still to come
        self._state = "size"  # size -> data -> crlf -> size ... -> trailers -> done
        self.trailers: dict[str, str] = {}
        self.trailer_lines = ""  # the trailer lines as sent (``name:value\n`` each), signature excluded
        self.decoded_bytes = 0
        self._on_chunk = on_chunk  # given: every chunk is hashed and reported with its signature
        self._signature: str | None = None
        self._hash = hashlib.sha256() if on_chunk else None

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> bytes:
        """Decode what ``data`` completes; returns the payload bytes found (maybe empty)."""
        if self._state == "done":
            if data:
                raise S3Error("InvalidRequest", "aws-chunked body: bytes after the final chunk")
            return b""
        self._buffer += data
        out = bytearray()
        while self._buffer:
            if self._state == "data":
                take = min(self._remaining, len(self._buffer))
                piece = self._buffer[:take]
                out += piece
                if self._hash is not None:
                    self._hash.update(piece)
                del self._buffer[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "crlf"
                continue
            if self._state == "crlf":
                if len(self._buffer) < 2:
                    break
                if self._buffer[:2] != b"\r\n":
                    raise S3Error("InvalidRequest", "aws-chunked body: a chunk is longer than its declared size")
                del self._buffer[:2]
                self._state = "size"
                self._chunk_done()
                continue
            line = self._line()
            if line is None:
                break
            if self._state == "size":
                self._start_chunk(line)
            elif self._state == "trailers":
                self._trailer(line)
            if self._state == "done":
                if self._buffer:
                    raise S3Error("InvalidRequest", "aws-chunked body: bytes after the final chunk")
                break
        self.decoded_bytes += len(out)
        return bytes(out)

    def _line(self) -> str | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_LINE:
                raise S3Error("InvalidRequest", "aws-chunked body: a chunk header or trailer line is too long")
            return None
        line = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 2]
        return line

    def _chunk_done(self) -> None:
        if self._on_chunk is not None and self._hash is not None:
            self._on_chunk(self._signature, self._hash.hexdigest())
            self._hash = hashlib.sha256()

    def _start_chunk(self, line: str) -> None:
        size_text, _, extensions = line.partition(";")
        size_text = size_text.strip()
        self._signature = None
        for extension in extensions.split(";"):
            name, _, value = extension.partition("=")
            if name.strip() == "chunk-signature":
                self._signature = value.strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise S3Error("InvalidRequest", f"aws-chunked body: bad chunk size {size_text[:20]!r}") from None
        if size < 0:
            raise S3Error("InvalidRequest", "aws-chunked body: negative chunk size")
        if size == 0:
            self._state = "trailers"
            self._chunk_done()  # the final chunk is signed too (over no bytes)
        else:
            self._remaining = size
            self._state = "data"

    def _trailer(self, line: str) -> None:
        if line == "":
            self._state = "done"
            return
        name, sep, value = line.partition(":")
        if not sep or len(self.trailers) >= _MAX_TRAILERS:
            raise S3Error("InvalidRequest", f"aws-chunked body: bad trailer line {line[:40]!r}")
        self.trailers[name.strip().lower()] = value.strip()
        if name.strip().lower() != "x-amz-trailer-signature":
            self.trailer_lines += f"{name.strip()}:{value.strip()}\n"
