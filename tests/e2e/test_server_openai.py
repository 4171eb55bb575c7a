"""The OpenAI-compatible routes of ``streamhost container`` driven by the ``openai`` client and raw httpx."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

SSE_EVENT = re.compile(rb"data: (\{.*\}|\[DONE\])\n\n")
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello in French."}]


@pytest.fixture(scope="module")
def client(tgi_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tgi_url}/v1", api_key="unused", max_retries=0)


def sse_chunks(body: bytes) -> list[bytes]:
    assert body.endswith(b"data: [DONE]\n\n")
    events = [e + b"\n\n" for e in body.split(b"\n\n")[:-1]]
    for event in events:
        assert SSE_EVENT.fullmatch(event), event[:200]
    return [e[len(b"data: ") : -2] for e in events]


def test_openai_client_streams_a_chat_answer(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="anything",
        messages=MESSAGES,
        max_tokens=10,
        stream=True,
        temperature=0,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == 10 and usage.usage.prompt_tokens > 5
    answer = chunks[:-1]
    assert len(answer) == 10
    assert all(c.choices[0].delta.role == "assistant" for c in answer)
    assert [c.choices[0].finish_reason for c in answer] == [None] * 9 + ["length"]
    text = "".join(c.choices[0].delta.content or "" for c in answer)

    whole = client.chat.completions.create(model="anything", messages=MESSAGES, max_tokens=10, temperature=0)
    assert whole.choices[0].message.content == text, "greedy streaming and non-streaming answers agree"
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 10


def test_openai_client_streams_completions_with_echo(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(model="m", prompt="Once upon", max_tokens=5, stream=True, echo=True, temperature=0)
    )
    text = "".join(c.choices[0].text for c in chunks)
    assert text.startswith("Once upon")
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 5
    whole = client.completions.create(model="m", prompt="Once upon", max_tokens=5, temperature=0, echo=True)
    assert whole.choices[0].text == text


def test_openai_client_lists_the_model(client: openai.OpenAI, tgi_url: str) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [httpx.get(tgi_url + "/info").json()["model_id"]]


def test_openai_client_sees_validation_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=10, top_p=1.5)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3, n=2)
    assert "`n` must be 1" in str(refused.value.body)  # TGI's {"error", "error_type"} body


def test_chat_stream_bytes_and_done(tgi_url: str) -> None:
    body = {"messages": MESSAGES, "max_tokens": 6, "stream": True, "logprobs": True, "top_logprobs": 2}
    with httpx.stream("POST", tgi_url + "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["x-accel-buffering"] == "no"
        raw = response.read()
    payloads = sse_chunks(raw)
    assert payloads[-1] == b"[DONE]"
    objects = [json.loads(p) for p in payloads[:-1]]
    assert len(objects) == 6
    first = objects[0]
    assert list(first)[:5] == ["object", "id", "created", "model", "system_fingerprint"]
    assert first["object"] == "chat.completion.chunk" and first["usage"] is None
    assert len({o["id"] for o in objects}) == 1
    assert all(len(o["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2 for o in objects)


def test_invocations_routes_messages_and_prompt(tgi_url: str) -> None:
    chat = httpx.post(tgi_url + "/invocations", json={"messages": MESSAGES, "max_tokens": 3})
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    completion = httpx.post(tgi_url + "/invocations", json={"prompt": "Hi", "max_tokens": 3})
    assert completion.status_code == 200 and completion.json()["object"] == "text_completion"
    streamed = httpx.post(tgi_url + "/invocations", json={"messages": MESSAGES, "max_tokens": 3, "stream": True})
    assert sse_chunks(streamed.content)[-1] == b"[DONE]"


def test_chat_template_refusal_is_422(tgi_url: str) -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    response = httpx.post(tgi_url + "/v1/chat/completions", json=body)
    assert response.status_code == 422 and "error" in response.json()


TUTOR = (
    "You are a patient grammar tutor for children. Explain each idea in one or two short sentences, "
    "give one example, and never use words a ten-year-old would not know."
)


def cached_prompt_tokens_counter(url: str) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        if family.name == "streamhost_prompt_tokens_cached":
            return family.samples[0].value
    raise AssertionError("streamhost_prompt_tokens_cached is not exported")


def test_a_chat_turn_reuses_the_conversation_so_far(client: openai.OpenAI, tgi_url: str) -> None:
    """Turn 2 re-sends turn 1: its usage says how many prompt tokens came from the prefix cache
    (at least the whole system prompt), streaming or not, and /metrics counts them."""
    assert httpx.get(tgi_url + "/info").json()["prefix_cache"]["enabled"] is True
    system_tokens = len(httpx.post(tgi_url + "/tokenize", json={"inputs": TUTOR}).json())
    before = cached_prompt_tokens_counter(tgi_url)
    messages = [{"role": "system", "content": TUTOR}, {"role": "user", "content": "What is a noun?"}]
    first = client.chat.completions.create(model="m", messages=messages, max_tokens=8, temperature=0)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And a verb?"},
    ]
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = chunks[-1].usage
    assert streamed.prompt_tokens_details.cached_tokens >= system_tokens
    assert streamed.prompt_tokens_details.cached_tokens < streamed.prompt_tokens
    assert first.usage.prompt_tokens_details.cached_tokens < system_tokens  # turn 1 had nothing to reuse

    again = client.chat.completions.create(model="m", messages=messages, max_tokens=8, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1  # all but the last
    assert again.choices[0].message.content == "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    counted = cached_prompt_tokens_counter(tgi_url) - before
    assert counted >= streamed.prompt_tokens_details.cached_tokens + again.usage.prompt_tokens_details.cached_tokens


def test_completions_report_cached_prompt_tokens(client: openai.OpenAI) -> None:
    prompt = TUTOR + " Question: what is an adjective? Answer:"
    whole = client.completions.create(model="m", prompt=prompt, max_tokens=4, temperature=0)
    chunks = list(client.completions.create(model="m", prompt=prompt, max_tokens=4, temperature=0, stream=True))
    usage = chunks[-1].usage
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
