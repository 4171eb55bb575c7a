"""Event-stream framing, checked against botocore's own parser (what boto3 users run)."""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
import uuid
import zlib

import botocore.session
import pytest
from botocore.eventstream import EventStream, EventStreamBuffer
from botocore.exceptions import EventStreamError
from botocore.parsers import EventStreamJSONParser
from hypothesis import given, settings
from hypothesis import strategies as st

from streamhost.protocols.eventstream import (
    EventStreamDecodeError,
    EventStreamDecoder,
    decode_all,
    encode_message,
    internal_stream_failure,
    model_stream_error,
    payload_part,
    stream_exception,
)


@pytest.fixture(scope="module")
def response_stream_shape():
    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    op = model.operation_model("InvokeEndpointWithResponseStream")
    return op.get_event_stream_output()


class _Raw:
    """What EventStream reads from: an object with ``stream()`` yielding byte chunks."""

    def __init__(self, chunks):
        self._chunks = chunks

    def stream(self):
        yield from self._chunks

    def close(self):
        pass


def _boto_events(chunks, shape):
    return list(EventStream(_Raw(chunks), shape, EventStreamJSONParser(), "InvokeEndpointWithResponseStream"))


def test_payload_part_exact_bytes():
    frame = payload_part(b"hi")
    headers = (
        b"\x0b:event-type\x07\x00\x0bPayloadPart"
        b"\x0d:content-type\x07\x00\x18application/octet-stream"
        b"\x0d:message-type\x07\x00\x05event"
    )
    total = 12 + len(headers) + 2 + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + headers + b"hi"
    assert frame == body + struct.pack(">I", zlib.crc32(body))


def test_botocore_reads_payload_parts(response_stream_shape):
    chunks = [b'data:{"a":1}\n\n', "é€😀\n".encode(), b""]
    stream = b"".join(payload_part(c) for c in chunks)
    events = _boto_events([stream], response_stream_shape)
    assert events == [{"PayloadPart": {"Bytes": c}} for c in chunks]


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_arbitrary_splits_botocore_and_ours(response_stream_shape, payloads, cuts):
    stream = b"".join(payload_part(p) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]

    events = _boto_events(pieces, response_stream_shape)
    assert [e["PayloadPart"]["Bytes"] for e in events] == payloads

    decoder = EventStreamDecoder()
    ours = [m for piece in pieces for m in decoder.feed(piece)]
    decoder.close()
    assert [m.payload for m in ours] == payloads
    assert all(m.event_type == "PayloadPart" and m.message_type == "event" for m in ours)


def test_exception_event_becomes_event_stream_error(response_stream_shape):
    stream = payload_part(b"first") + model_stream_error("model died", "ModelInvocationTimeExceeded")
    it = iter(EventStream(_Raw([stream]), response_stream_shape, EventStreamJSONParser(), "X"))
    assert next(it) == {"PayloadPart": {"Bytes": b"first"}}
    with pytest.raises(EventStreamError) as info:
        next(it)
    err = info.value.response["Error"]
    assert err["Code"] == "ModelStreamError"
    assert err["Message"] == "model died"
    (_, exc) = decode_all(stream)
    assert json.loads(exc.payload) == {"Message": "model died", "ErrorCode": "ModelInvocationTimeExceeded"}


def test_internal_stream_failure(response_stream_shape):
    with pytest.raises(EventStreamError) as info:
        _boto_events([internal_stream_failure("boom")], response_stream_shape)
    assert info.value.response["Error"]["Code"] == "InternalStreamFailure"
    assert info.value.response["Error"]["Message"] == "boom"


def test_stream_exception_headers_and_payload():
    (msg,) = decode_all(stream_exception("ModelStreamError", {"Message": "x", "ErrorCode": "StreamBroken"}))
    assert msg.headers == {
        ":exception-type": "ModelStreamError",
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    assert msg.payload == b'{"Message":"x","ErrorCode":"StreamBroken"}'


def test_all_header_types_round_trip_through_botocore():
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.timezone.utc)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    headers = {"t": True, "f": False, "i32": -5, "i64": 2**40, "b": b"\x00\x01", "s": "ünï", "ts": when, "u": ident}
    frame = encode_message(headers, b"payload")

    buf = EventStreamBuffer()
    buf.add_data(frame)
    (boto_msg,) = list(buf)
    assert boto_msg.payload == b"payload"
    assert boto_msg.headers["t"] is True and boto_msg.headers["f"] is False
    assert boto_msg.headers["i32"] == -5 and boto_msg.headers["i64"] == 2**40
    assert boto_msg.headers["b"] == b"\x00\x01" and boto_msg.headers["s"] == "ünï"
    assert boto_msg.headers["u"] == ident.bytes

    (ours,) = decode_all(frame)
    assert ours.headers == headers and ours.payload == b"payload"


def test_decoder_rejects_bad_message_crc():
    frame = bytearray(payload_part(b"abc"))
    frame[-5] ^= 0xFF  # flip a payload byte
    with pytest.raises(EventStreamDecodeError, match="message CRC"):
        decode_all(bytes(frame))


def test_decoder_rejects_bad_prelude_crc():
    frame = bytearray(payload_part(b"abc"))
    frame[9] ^= 0xFF
    with pytest.raises(EventStreamDecodeError, match="prelude CRC"):
        EventStreamDecoder().feed(bytes(frame))


def test_decoder_rejects_duplicate_headers():
    block = b"\x01a\x07\x00\x01x" * 2
    total = 12 + len(block) + 4
    prelude = struct.pack(">II", total, len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + block
    frame = body + struct.pack(">I", zlib.crc32(body))
    with pytest.raises(EventStreamDecodeError, match="duplicate"):
        decode_all(frame)


def test_truncated_stream_is_reported():
    frame = payload_part(b"abcdef")
    decoder = EventStreamDecoder()
    assert decoder.feed(frame[:-3]) == []
    assert decoder.pending == len(frame) - 3
    with pytest.raises(EventStreamDecodeError, match="ended inside a message"):
        decoder.close()


def test_encoder_rejects_unsupported_values():
    with pytest.raises(TypeError):
        encode_message({"x": 1.5}, b"")  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        encode_message({"": "x"}, b"")


def test_json_payload_survives_botocore_line_reassembly(response_stream_shape):
    """The SDK samples buffer PayloadPart bytes and split on newlines: the lines must come back whole."""
    lines = [json.dumps({"token": {"text": t}}).encode() + b"\n" for t in ["a", "é", "c"]]
    blob = b"".join(lines)
    parts = [blob[:5], blob[5:23], blob[23:]]
    stream = b"".join(payload_part(p) for p in parts)
    events = _boto_events([stream[:7], stream[7:]], response_stream_shape)
    joined = b"".join(e["PayloadPart"]["Bytes"] for e in events)
    assert joined.split(b"\n")[:-1] == [line[:-1] for line in lines]
    assert io.BytesIO(joined).read() == blob
