"""OpenAI protocol: request mapping and chunk bytes, checked with the openai client's own decoder and types."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest
from openai._streaming import SSEDecoder
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from streamhost.engine import errors as engine_errors
from streamhost.engine.types import FinishReason, GenerationDetails, GenerationResult, TokenEvent, TopToken
from streamhost.protocols import openai as oa
from streamhost.protocols.errors import ProtocolError


def _tok(i, text, special=False, **kw):
    return TokenEvent(index=i, token_id=100 + i, text=text, logprob=-0.5, special=special, **kw)


def _final(i=2, reason=FinishReason.EOS_TOKEN):
    return _tok(
        i,
        "</s>",
        special=True,
        generated_text="Hi there",
        details=GenerationDetails(finish_reason=reason, generated_tokens=3, input_length=7, seed=None),
    )


def _sse_response(blob: bytes) -> httpx2.Response:
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=blob)


def _client(handler) -> openai.OpenAI:
    """The real openai client, answered by ``handler`` instead of a network."""
    return openai.OpenAI(
        api_key="x",
        base_url="http://test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def _sse_events(blob: bytes):
    return list(SSEDecoder().iter_bytes(iter([blob[:17], blob[17:]])))


# --------------------------------------------------------------------------- requests


def test_chat_request_mapping():
    body = {
        "model": "tgi",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
        ],
        "max_completion_tokens": 20,
        "temperature": 0.7,
        "top_p": 1.0,
        "stop": "\n\n",
        "seed": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "top_logprobs": 2,
        "frequency_penalty": 0.5,
        "presence_penalty": 0,
        "response_format": {"type": "text"},
    }
    chat = oa.parse_chat_request(json.dumps(body).encode())
    assert chat.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    p = chat.parameters
    assert (p.do_sample, p.temperature, p.top_p, p.max_new_tokens, p.stop, p.seed) == (True, 0.7, None, 20, ["\n\n"], 3)
    assert (p.top_n_tokens, p.frequency_penalty, p.details) == (2, 0.5, True)
    assert chat.stream and chat.include_usage and chat.logprobs and chat.model == "tgi"


def test_temperature_zero_is_greedy_and_max_tokens_alias():
    chat = oa.parse_chat_request({"messages": [{"role": "user", "content": "x"}], "temperature": 0, "max_tokens": 5})
    assert chat.parameters.do_sample is False and chat.parameters.temperature is None
    assert chat.parameters.max_new_tokens == 5 and chat.stream is False and chat.include_usage is False


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"n": 2}, "`n` must be 1"),
        ({"presence_penalty": 0.5}, "`presence_penalty` is not supported"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "`tools` are not supported"),
        ({"response_format": {"type": "json_object"}}, "`response_format`"),
        ({"top_logprobs": 2}, "requires `logprobs`"),
        ({"logit_bias": {"1": 5}}, "`logit_bias` is not supported"),
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "image_url"),
        ({"temperature": "hot"}, "temperature"),
        ({"messages": "hi"}, "messages"),
    ],
)
def test_chat_rejections_are_clear(extra, fragment):
    body = {"messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(ProtocolError) as info:
        oa.parse_chat_request(body)
    assert info.value.status == 422 and fragment in info.value.message
    assert set(info.value.body) == {"error", "error_type"}


def test_chat_bad_json_is_400():
    with pytest.raises(ProtocolError) as info:
        oa.parse_chat_request(b'{"messages": [')
    assert info.value.status == 400


def test_completion_request_mapping_and_rejections():
    c = oa.parse_completion_request({"prompt": ["Once"], "max_tokens": 8, "echo": True, "stop": ["."]})
    assert c.prompt == "Once" and c.echo and c.parameters.return_full_text
    assert c.parameters.max_new_tokens == 8 and c.parameters.stop == ["."]
    with pytest.raises(ProtocolError, match="exactly one"):
        oa.parse_completion_request({"prompt": ["a", "b"]})
    with pytest.raises(ProtocolError) as info:
        oa.parse_completion_request({"prompt": "a", "suffix": "z"})
    assert info.value.body == {
        "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
        "error_type": "suffix not supported",
    }
    with pytest.raises(ProtocolError, match="logprobs"):
        oa.parse_completion_request({"prompt": "a", "logprobs": 2})


# --------------------------------------------------------------------------- chat streaming


def test_chat_chunk_exact_bytes():
    s = oa.ChatStream(model="m", created=1700000000, id="chatcmpl-1", system_fingerprint="3.0.0-native")
    assert s.chunk(_tok(0, "Hi")) == (
        b'data: {"object":"chat.completion.chunk","id":"chatcmpl-1","created":1700000000,"model":"m",'
        b'"system_fingerprint":"3.0.0-native","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},'
        b'"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    )


def test_chat_final_chunk_usage_and_done():
    s = oa.ChatStream(model="m", created=1, include_usage=True)
    out = s.chunk(_final())
    assert out == (
        b'data: {"object":"chat.completion.chunk","id":"","created":1,"model":"m","system_fingerprint":"",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":"stop"}],'
        b'"usage":null}\n\n'
        b'data: {"object":"chat.completion.chunk","id":"","created":1,"model":"m","system_fingerprint":"",'
        b'"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,'
        b'"prompt_tokens_details":{"cached_tokens":0}}}\n\n'
    )
    assert s.done() == b"data: [DONE]\n\n"


def test_chat_stream_parses_with_openai_types():
    s = oa.ChatStream(model="m", created=5, id="x", system_fingerprint="fp", logprobs=True, include_usage=True)
    tops = [
        TopToken(id=1, text="Hi", logprob=-0.5, special=False),
        TopToken(id=2, text="Yo", logprob=-2.0, special=False),
    ]
    blob = (
        s.chunk(_tok(0, "Hi", top_tokens=tops))
        + s.chunk(_tok(1, " thé"))
        + s.chunk(_final(reason=FinishReason.LENGTH))
        + s.done()
    )
    events = _sse_events(blob)
    assert events[-1].data == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(e.data)) for e in events[:-1]]
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "Hi thé"
    assert chunks[0].choices[0].logprobs.content[0].top_logprobs[1].token == "Yo"
    assert chunks[2].choices[0].finish_reason == "length"
    assert chunks[3].choices == [] and chunks[3].usage.total_tokens == 10


def test_real_client_streams_chat():
    s = oa.ChatStream(model="m", created=5, include_usage=True)
    blob = s.chunk(_tok(0, "Hé")) + s.chunk(_tok(1, "llo")) + s.chunk(_final()) + s.done()
    client = _client(lambda request: _sse_response(blob))
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "Héllo"
    assert chunks[-1].usage.completion_tokens == 3


def test_stream_error_is_raised_by_openai_client():
    s = oa.ChatStream(model="m", created=5)
    err = engine_errors.GenerationError("out of memory")
    blob = s.chunk(_tok(0, "Hi")) + s.error(err) + s.done()
    assert s.error(err) == (
        b'data: {"error":{"message":"Request failed during generation: out of memory","http_status_code":424}}\n\n'
    )
    client = _client(lambda request: _sse_response(blob))
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    got = []
    with pytest.raises(openai.APIError, match="out of memory"):
        for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got == ["Hi"]


def test_real_client_reads_pre_stream_error_body():
    status, body = oa.error_response(engine_errors.ValidationError("`temperature` must be strictly positive"))
    client = _client(lambda request: httpx2.Response(status, json=body))
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    # TGI's body shape: the openai client exposes the message string as ``.body``.
    assert info.value.body == "Input validation error: `temperature` must be strictly positive"


def test_stop_sequence_maps_to_stop():
    assert oa.finish_reason(FinishReason.STOP_SEQUENCE) == "stop"
    assert oa.finish_reason(FinishReason.EOS_TOKEN) == "stop"
    assert oa.finish_reason(FinishReason.LENGTH) == "length"


# --------------------------------------------------------------------------- non-streaming and completions


def _result(reason=FinishReason.STOP_SEQUENCE):
    return GenerationResult(
        generated_text="Hello",
        tokens=[_tok(0, "Hello")],
        details=GenerationDetails(finish_reason=reason, generated_tokens=1, input_length=4, seed=1),
    )


def test_chat_completion_object():
    body = oa.chat_completion(_result(), model="m", created=9, id="c1", system_fingerprint="fp", logprobs=True)
    parsed = ChatCompletion.model_validate(body)
    via_client = _client(lambda request: httpx2.Response(200, json=body)).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}]
    )
    assert via_client.choices[0].message.content == "Hello"
    assert parsed.choices[0].message.content == "Hello" and parsed.choices[0].finish_reason == "stop"
    assert parsed.usage.total_tokens == 5 and parsed.choices[0].logprobs.content[0].logprob == -0.5
    assert list(body) == ["object", "id", "created", "model", "system_fingerprint", "choices", "usage"]
    json.dumps(body, allow_nan=False)


def test_completion_stream_and_object_parse_with_openai_types():
    s = oa.CompletionStream(model="m", created=2, id="cmpl", system_fingerprint="fp", echo="Say:")
    first = s.chunk(_tok(0, " hi"))
    assert first == (
        b'data: {"object":"text_completion","id":"cmpl","created":2,"choices":[{"index":0,"text":"Say: hi",'
        b'"logprobs":null,"finish_reason":null}],"model":"m","system_fingerprint":"fp"}\n\n'
    )
    blob = first + s.chunk(_tok(1, "!")) + s.chunk(_final()) + s.done()
    client = _client(lambda request: _sse_response(blob))
    objs = list(client.completions.create(model="m", prompt="Say:", stream=True, echo=True))
    assert "".join(o.choices[0].text for o in objs) == "Say: hi!"
    assert objs[-1].choices[0].finish_reason == "stop" and objs[-1].usage.prompt_tokens == 7
    Completion.model_validate(json.loads(_sse_events(blob)[-2].data))  # the final chunk is a full Completion

    body = oa.text_completion(_result(FinishReason.LENGTH), model="m", created=3, echo="P ")
    parsed = Completion.model_validate(body)
    assert parsed.choices[0].text == "P Hello" and parsed.choices[0].finish_reason == "length"


def test_models_response_and_fingerprint():
    assert oa.models_response("m") == {
        "object": "list",
        "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "m"}],
    }
    assert oa.system_fingerprint("3.0.0") == "3.0.0-native"


def test_pre_stream_errors_keep_tgi_shape():
    assert oa.error_response(engine_errors.OverloadedError()) == (
        429,
        {"error": "Model is overloaded", "error_type": "overloaded"},
    )


def test_temperature_zero_is_greedy_even_with_top_p_and_top_k():
    from streamhost.engine.limits import EngineLimits
    from streamhost.engine.validation import validate_request

    parsed = oa.parse_chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "top_p": 0.9, "top_k": 40}
    )
    limits = EngineLimits(
        max_input_tokens=100,
        max_total_tokens=200,
        max_batch_prefill_tokens=200,
        max_batch_total_tokens=400,
        max_batch_size=4,
    )
    validated = validate_request([1, 2, 3], parsed.parameters, limits, stream=True)
    assert validated.params.do_sample is False


def test_ignore_eos_reaches_the_engine():
    parsed = oa.parse_chat_request({"messages": [{"role": "user", "content": "hi"}], "ignore_eos": True})
    assert parsed.parameters.ignore_eos is True
    assert oa.parse_chat_request({"messages": [{"role": "user", "content": "hi"}]}).parameters.ignore_eos is False
