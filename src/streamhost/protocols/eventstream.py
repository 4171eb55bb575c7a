"""AWS event-stream binary framing (``application/vnd.amazon.eventstream``).

What InvokeEndpointWithResponseStream answers with: each model chunk travels as a ``PayloadPart``
event, and a failure after the stream has started becomes an exception event, because a stream
that is simply cut off ends silently in boto3 (docs/protocols.md §1). The decoder serves our own SDK
and the tests; it checks both CRCs, the lengths and duplicate header names, as botocore does.

Frame layout (big-endian)::

    u32 total_len | u32 headers_len | u32 crc32(first 8 bytes)
    headers | payload | u32 crc32(everything before)
"""

from __future__ import annotations

import datetime as _dt
import json
import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import Union

HeaderValue = Union[str, bytes, bool, int, _dt.datetime, uuid.UUID]

_PRELUDE = struct.Struct(">II")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_crc32 = zlib.crc32

# Header value type codes.
TRUE, FALSE, INT8, INT16, INT32, INT64, BYTES, STRING, TIMESTAMP, UUID = range(10)

PRELUDE_LENGTH = 12
MIN_MESSAGE_LENGTH = 16  # prelude + message CRC, nothing else
MAX_HEADERS_LENGTH = 128 * 1024  # botocore's limits
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


class EventStreamDecodeError(ValueError):
    """The bytes are not a valid event stream (bad CRC, bad length, duplicate header, ...)."""


# --------------------------------------------------------------------------- encoding


def _encode_value(value: HeaderValue) -> bytes:
    if value is True:
        return bytes((TRUE,))
    if value is False:
        return bytes((FALSE,))
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return bytes((INT32,)) + _I32.pack(value)
        return bytes((INT64,)) + _I64.pack(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) > 0xFFFF:
            raise ValueError("event-stream bytes header value longer than 65535 bytes")
        return bytes((BYTES,)) + _U16.pack(len(raw)) + raw
    if isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError("event-stream string header value longer than 65535 bytes")
        return bytes((STRING,)) + _U16.pack(len(raw)) + raw
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        millis = (value - _EPOCH) // _dt.timedelta(milliseconds=1)
        return bytes((TIMESTAMP,)) + _I64.pack(millis)
    if isinstance(value, uuid.UUID):
        return bytes((UUID,)) + value.bytes
    raise TypeError(f"unsupported event-stream header value type: {type(value).__name__}")


def encode_headers(headers: dict[str, HeaderValue]) -> bytes:
    """The header block: ``u8 name_len, name, u8 type, value`` for each header, in dict order."""
    parts = []
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        if not 0 < len(raw_name) < 256:
            raise ValueError(f"event-stream header name must be 1..255 bytes: {name!r}")
        parts.append(bytes((len(raw_name),)) + raw_name + _encode_value(value))
    return b"".join(parts)


def _frame(header_block: bytes, payload: bytes) -> bytes:
    total = PRELUDE_LENGTH + len(header_block) + len(payload) + 4
    prelude = _PRELUDE.pack(total, len(header_block))
    prelude += _U32.pack(_crc32(prelude))
    crc = _crc32(payload, _crc32(header_block, _crc32(prelude)))
    return b"".join((prelude, header_block, payload, _U32.pack(crc)))


def encode_message(headers: dict[str, HeaderValue], payload: bytes) -> bytes:
    """One complete event-stream message.

    ``bool`` encodes as true/false, ``int`` as int32 (int64 when it does not fit), ``bytes`` as
    bytes, ``str`` as string, ``datetime`` as timestamp (naive means UTC), ``UUID`` as uuid.
    """
    header_block = encode_headers(headers)
    if len(header_block) > MAX_HEADERS_LENGTH:
        raise ValueError(f"event-stream headers exceed {MAX_HEADERS_LENGTH} bytes")
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValueError(f"event-stream payload exceeds {MAX_PAYLOAD_LENGTH} bytes")
    return _frame(header_block, bytes(payload))


_PAYLOAD_PART_HEADERS = encode_headers(
    {
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        ":message-type": "event",
    }
)


def payload_part(data: bytes) -> bytes:
    """A ``PayloadPart`` event carrying ``data``; boto3 yields ``{'PayloadPart': {'Bytes': data}}``.

    The header block is precomputed: this runs once per streamed chunk.
    """
    if len(data) > MAX_PAYLOAD_LENGTH:
        raise ValueError(f"event-stream payload exceeds {MAX_PAYLOAD_LENGTH} bytes")
    return _frame(_PAYLOAD_PART_HEADERS, bytes(data))


def stream_exception(exception_type: str, payload: dict) -> bytes:
    """An exception event (``:message-type=exception``) that boto3 raises as ``EventStreamError``.

    ``exception_type`` is ``ModelStreamError`` (payload ``{"Message", "ErrorCode"}``) or
    ``InternalStreamFailure`` (payload ``{"Message"}``).
    """
    headers: dict[str, HeaderValue] = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return encode_message(headers, body)


def model_stream_error(message: str, error_code: str = "StreamBroken") -> bytes:
    """``ModelStreamError``; ``error_code`` is ``StreamBroken`` or ``ModelInvocationTimeExceeded``."""
    return stream_exception("ModelStreamError", {"Message": message, "ErrorCode": error_code})


def internal_stream_failure(message: str) -> bytes:
    """``InternalStreamFailure``: the platform itself failed mid-stream."""
    return stream_exception("InternalStreamFailure", {"Message": message})


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class EventStreamMessage:
    headers: dict[str, HeaderValue]
    payload: bytes

    @property
    def message_type(self) -> str | None:
        return self.headers.get(":message-type")  # type: ignore[return-value]

    @property
    def event_type(self) -> str | None:
        return self.headers.get(":event-type")  # type: ignore[return-value]

    @property
    def exception_type(self) -> str | None:
        return self.headers.get(":exception-type")  # type: ignore[return-value]


def _decode_headers(block: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    pos, end = 0, len(block)
    try:
        while pos < end:
            name_len = block[pos]
            name = block[pos + 1 : pos + 1 + name_len].decode("utf-8")
            pos += 1 + name_len
            kind = block[pos]
            pos += 1
            value: HeaderValue
            if kind == TRUE:
                value = True
            elif kind == FALSE:
                value = False
            elif kind == INT8:
                (value,) = _I8.unpack_from(block, pos)
                pos += 1
            elif kind == INT16:
                (value,) = _I16.unpack_from(block, pos)
                pos += 2
            elif kind == INT32:
                (value,) = _I32.unpack_from(block, pos)
                pos += 4
            elif kind in (INT64, TIMESTAMP):
                (raw,) = _I64.unpack_from(block, pos)
                pos += 8
                value = raw if kind == INT64 else _EPOCH + _dt.timedelta(milliseconds=raw)
            elif kind in (BYTES, STRING):
                (length,) = _U16.unpack_from(block, pos)
                pos += 2
                chunk = block[pos : pos + length]
                if len(chunk) != length:
                    raise EventStreamDecodeError("event-stream header value runs past the header block")
                pos += length
                value = chunk.decode("utf-8") if kind == STRING else bytes(chunk)
            elif kind == UUID:
                chunk = block[pos : pos + 16]
                if len(chunk) != 16:
                    raise EventStreamDecodeError("event-stream uuid header runs past the header block")
                pos += 16
                value = uuid.UUID(bytes=bytes(chunk))
            else:
                raise EventStreamDecodeError(f"unknown event-stream header type {kind}")
            if name in headers:
                raise EventStreamDecodeError(f"duplicate event-stream header {name!r}")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise EventStreamDecodeError(f"malformed event-stream header block: {exc}") from exc
    if pos != end:
        raise EventStreamDecodeError("event-stream header block length mismatch")
    return headers


class EventStreamDecoder:
    """Incremental decoder: ``feed`` any split of the byte stream, get whole messages back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message still buffered."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        self._buffer += data
        messages: list[EventStreamMessage] = []
        while True:
            message = self._next()
            if message is None:
                return messages
            messages.append(message)

    def close(self) -> None:
        """Call at end of input: raises if the stream stopped in the middle of a message."""
        if self._buffer:
            raise EventStreamDecodeError(f"event stream ended inside a message ({len(self._buffer)} bytes left over)")

    def _next(self) -> EventStreamMessage | None:
        buf = self._buffer
        if len(buf) < PRELUDE_LENGTH:
            return None
        total, headers_len = _PRELUDE.unpack_from(buf, 0)
        (prelude_crc,) = _U32.unpack_from(buf, 8)
        if _crc32(bytes(buf[:8])) != prelude_crc:
            raise EventStreamDecodeError("event-stream prelude CRC mismatch")
        if headers_len > MAX_HEADERS_LENGTH:
            raise EventStreamDecodeError(f"event-stream headers longer than {MAX_HEADERS_LENGTH} bytes")
        payload_len = total - MIN_MESSAGE_LENGTH - headers_len
        if payload_len < 0:
            raise EventStreamDecodeError("event-stream total length shorter than its headers")
        if payload_len > MAX_PAYLOAD_LENGTH:
            raise EventStreamDecodeError(f"event-stream payload longer than {MAX_PAYLOAD_LENGTH} bytes")
        if len(buf) < total:
            return None
        frame = bytes(buf[:total])
        del buf[:total]
        (message_crc,) = _U32.unpack_from(frame, total - 4)
        if _crc32(frame[: total - 4]) != message_crc:
            raise EventStreamDecodeError("event-stream message CRC mismatch")
        headers_end = PRELUDE_LENGTH + headers_len
        headers = _decode_headers(frame[PRELUDE_LENGTH:headers_end])
        return EventStreamMessage(headers=headers, payload=frame[headers_end : total - 4])


def decode_all(data: bytes) -> list[EventStreamMessage]:
    """Decode a complete byte string; raises if it ends inside a message."""
    decoder = EventStreamDecoder()
    messages = decoder.feed(data)
    decoder.close()
    return messages
