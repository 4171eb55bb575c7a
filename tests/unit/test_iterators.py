"""The SDK's stream iterators: any split of the bytes gives the same lines and the same text."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamhost.client.iterators import LineIterator, StreamError, TokenIterator, iter_events

PIECES = ["Hello", ",", " wörld", " 🦙", " 日本語", "の", "テキスト", " 👩‍💻", "\n", ' "quoted"', "!"]


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def tgi_sse(pieces: list[str], eos: str = "</s>", prefix: bytes = b"data: ") -> bytes:
    """TGI /generate_stream framing: data: <json>\\n\\n, EOS as a special token, then generated_text.

    TGI 2.1+ writes ``data: `` (a space); the 0.8-1.x images in the posts wrote ``data:``.
    """
    out = []
    for i, text in enumerate(pieces):
        token = {"id": i, "text": text, "logprob": -0.5, "special": False}
        out.append({"index": i + 1, "token": token, "generated_text": None, "details": None})
    final = {"id": 2, "text": eos, "logprob": -0.1, "special": True}
    out.append({"index": len(pieces) + 1, "token": final, "generated_text": "".join(pieces), "details": None})
    return b"".join(prefix + _dumps(e).encode() + b"\n\n" for e in out)


def lmi_jsonlines(pieces: list[str]) -> bytes:
    lines = [{"token": {"id": i, "text": t, "log_prob": -0.3}} for i, t in enumerate(pieces)]
    lines[-1]["generated_text"] = "".join(pieces)
    lines[-1]["details"] = {"finish_reason": "length", "generated_tokens": len(pieces), "inputs": "q"}
    return b"".join(_dumps(line).encode() + b"\n" for line in lines)


def lmi_old(pieces: list[str]) -> bytes:
    return b"".join(_dumps({"outputs": [t]}).encode() + b"\n" for t in pieces)


def lmi_sse(pieces: list[str]) -> bytes:
    body = lmi_jsonlines(pieces).decode().split("\n")[:-1]  # not splitlines(): U+2028 is not a break
    return "".join(f"data: {line}\n\n" for line in body).encode()


def openai_chat(pieces: list[str], prefix: bytes = b"data: ") -> bytes:
    def chunk(delta, finish=None, choices=True):
        c = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []
        return {"object": "chat.completion.chunk", "id": "x", "created": 1, "model": "m", "choices": c}

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"role": "assistant", "content": t}) for t in pieces]
    events.append(chunk({}, finish="stop"))
    events.append(chunk({}, choices=False) | {"usage": {"prompt_tokens": 3, "completion_tokens": len(pieces)}})
    return b"".join(prefix + _dumps(e).encode() + b"\n\n" for e in events) + prefix + b"[DONE]\n\n"


def openai_completion(pieces: list[str]) -> bytes:
    events = [
        {"object": "text_completion", "choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in pieces
    ]
    return b"".join(b"data: " + _dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


FORMATS = {
    "tgi_sse": tgi_sse,
    "tgi_sse_no_space": lambda pieces: tgi_sse(pieces, prefix=b"data:"),
    "lmi_jsonlines": lmi_jsonlines,
    "lmi_old": lmi_old,
    "lmi_sse": lmi_sse,
    "openai_chat": openai_chat,
    "openai_chat_no_space": lambda pieces: openai_chat(pieces, prefix=b"data:"),
    "openai_completion": openai_completion,
}


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:])]


def payload_parts(chunks: list[bytes]) -> list[dict]:
    return [{"PayloadPart": {"Bytes": c}} for c in chunks]


# --- LineIterator -----------------------------------------------------------------------------


def test_lines_reassembled_from_payload_parts():
    parts = payload_parts([b'{"a": 1}\n{"b"', b": 2}\n\n", b"data:[DONE]\n"])
    assert list(LineIterator(parts)) == [b'{"a": 1}', b'{"b": 2}', b"", b"data:[DONE]"]


def test_final_line_without_newline_is_not_lost():
    assert list(LineIterator([b"one\ntw", b"o"])) == [b"one", b"two"]
    assert list(LineIterator([b"only"])) == [b"only"]
    assert list(LineIterator([b"a\n"])) == [b"a"]  # no phantom empty line at the end
    assert list(LineIterator([])) == []


def test_multibyte_character_split_inside_its_bytes():
    data = "🦙 日本\n".encode()
    for cut in range(1, len(data)):
        lines = list(LineIterator(payload_parts([data[:cut], data[cut:]])))
        assert [line.decode() for line in lines] == ["🦙 日本"]


def test_accepts_boto3_response_dict_and_empty_parts():
    response = {"Body": payload_parts([b"", b"x\n", b"", b"y"]), "ContentType": "application/jsonlines"}
    assert list(LineIterator(response)) == [b"x", b"y"]


def test_rejects_things_that_are_not_a_stream():
    with pytest.raises(TypeError, match="PayloadPart"):
        list(LineIterator([123]))


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=["Cs"])), max_size=8),
    trailing_newline=st.booleans(),
    data=st.data(),
)
def test_lines_identical_under_any_split(lines, trailing_newline, data):
    raw = "\n".join(lines).encode() + (b"\n" if trailing_newline and lines else b"")
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    expected = raw.split(b"\n")
    if expected[-1] == b"":  # a terminating newline ends the last line; it does not start one
        expected.pop()
    assert list(LineIterator(payload_parts(split_at(raw, cuts)))) == expected
    assert list(LineIterator([raw])) == expected


# --- TokenIterator / iter_events ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_yields_exactly_the_generated_pieces(fmt):
    raw = FORMATS[fmt](PIECES)
    assert list(TokenIterator(payload_parts([raw]))) == PIECES


def test_tgi_special_eos_and_generated_text_are_not_repeated():
    raw = tgi_sse(["Hi", " there"])
    assert "".join(TokenIterator([raw])) == "Hi there"
    events = list(iter_events([raw]))
    assert events[-1]["generated_text"] == "Hi there" and events[-1]["token"]["special"] is True


@settings(max_examples=120, deadline=None)
@given(
    fmt=st.sampled_from(sorted(FORMATS)),
    pieces=st.lists(st.text(min_size=1, alphabet=st.characters(blacklist_categories=["Cs"])), min_size=1, max_size=6),
    data=st.data(),
)
def test_tokens_identical_under_any_split(fmt, pieces, data):
    raw = FORMATS[fmt](pieces + ["🦙日本"])
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=16))
    assert list(TokenIterator(payload_parts(split_at(raw, cuts)))) == pieces + ["🦙日本"]


def test_stream_without_final_newline_still_yields_last_token():
    raw = lmi_jsonlines(["a", "b", "c"]).rstrip(b"\n")
    assert list(TokenIterator(payload_parts([raw[:7], raw[7:]]))) == ["a", "b", "c"]


def test_comments_fields_crlf_and_done_are_ignored():
    raw = (
        b": keep-alive\r\n\r\nevent: message\r\nid: 1\r\nretry: 100\r\n"
        b'data:{"token":{"text":"ok","special":false}}\r\n\r\ndata:[DONE]\r\n'
    )
    assert list(TokenIterator([raw])) == ["ok"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b'data:{"token":{"text":"a","special":false}}\n\ndata:{"error":"CUDA OOM","error_type":"generation"}\n\n',
            "CUDA OOM",
        ),
        (
            b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
            b'data: {"error": {"message": "context too long", "type": "invalid_request_error"}}\n\n',
            "context too long",
        ),
        (
            b'{"token": {"text": "a"}}\n{"token": {"id": -1, "text": "", "log_prob": -1, "special_token": true}, '
            b'"generated_text": "", "details": {"finish_reason": "error", "generated_tokens": null, "inputs": null}}\n',
            "finish_reason 'error'",
        ),
    ],
    ids=["tgi", "openai", "lmi"],
)
def test_error_events_raise_stream_error_after_earlier_tokens(raw, message):
    tokens = TokenIterator([raw])
    assert next(tokens) == "a"
    with pytest.raises(StreamError, match=message):
        list(tokens)


def test_error_events_can_be_received_as_dicts():
    raw = b'data:{"error":"boom","error_type":"generation"}\n\n'
    assert list(iter_events([raw], raise_on_error=False)) == [{"error": "boom", "error_type": "generation"}]
    with pytest.raises(StreamError) as info:
        list(iter_events([raw]))
    assert info.value.message == "boom" and info.value.error_type == "generation"


def test_malformed_line_names_the_problem():
    with pytest.raises(StreamError, match="not JSON"):
        list(TokenIterator([b"data:{half\n"]))
    with pytest.raises(StreamError, match="not a JSON object"):
        list(TokenIterator([b"[1, 2]\n"]))


# --- against botocore's own event-stream parser -------------------------------------------------


def _header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v


def _message(headers: dict[str, str], payload: bytes) -> bytes:
    head = b"".join(_header(k, v) for k, v in headers.items())
    prelude = struct.pack(">II", 12 + len(head) + len(payload) + 4, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack(">I", zlib.crc32(body))


def _payload_part(data: bytes) -> bytes:
    headers = {":event-type": "PayloadPart", ":content-type": "application/octet-stream", ":message-type": "event"}
    return _message(headers, data)


def _botocore_body(wire: bytes, read_size: int):
    import botocore.session
    from botocore.eventstream import EventStream
    from botocore.parsers import EventStreamJSONParser

    class Raw:
        def stream(self):
            for i in range(0, len(wire), read_size):
                yield wire[i : i + read_size]

        def close(self):
            pass

    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    shape = model.operation_model("InvokeEndpointWithResponseStream").output_shape.members["Body"]
    return EventStream(Raw(), shape, EventStreamJSONParser(), "InvokeEndpointWithResponseStream")


def test_real_botocore_event_stream_split_mid_character():
    raw = tgi_sse(PIECES)
    parts = [raw[i : i + 5] for i in range(0, len(raw), 5)]  # 5-byte parts split most characters
    wire = b"".join(_payload_part(p) for p in parts)
    assert list(TokenIterator(_botocore_body(wire, read_size=7))) == PIECES


def test_botocore_exception_event_propagates_unchanged():
    from botocore.exceptions import EventStreamError

    wire = _payload_part(b'{"token": {"text": "first"}}\n') + _message(
        {":message-type": "exception", ":exception-type": "ModelStreamError", ":content-type": "application/json"},
        b'{"Message": "model crashed", "ErrorCode": "StreamBroken"}',
    )
    tokens = TokenIterator({"Body": _botocore_body(wire, read_size=11)})
    assert next(tokens) == "first"
    with pytest.raises(EventStreamError) as info:
        next(tokens)
    assert info.value.response["Error"]["Code"] == "ModelStreamError"
