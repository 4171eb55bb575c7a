"""SSE framing as current TGI, vLLM and OpenAI write it: ``data: `` (with a space) and ``data: [DONE]``.

huggingface_hub's InferenceClient matches the end marker byte for byte (``data: [DONE]``), so a
stream framed ``data:[DONE]`` made ``chat_completion(stream=True)`` raise JSONDecodeError at the
end of every answer. These tests drive the real client against a real model server (the tiny
model) and check the bytes of every SSE route.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from huggingface_hub import InferenceClient

pytestmark = pytest.mark.timeout(180)

EVENT = re.compile(rb"data: (\{.*\}|\[DONE\])")
MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def hub_client(tgi_url: str, monkeypatch: pytest.MonkeyPatch) -> InferenceClient:
    """The real client, talking only to our local server: the session's HF_HUB_OFFLINE=1 (no model
    hub in tests) would make it refuse every request, local ones included."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return InferenceClient(base_url=tgi_url, timeout=60)


def sse_events(raw: bytes) -> list[bytes]:
    """The events of an SSE body, each checked to be ``data: <payload>`` and ``\\n\\n``-terminated."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    events = raw.split(b"\n\n")[:-1]
    for event in events:
        assert EVENT.fullmatch(event), event[:200]
    return [event[len(b"data: ") :] for event in events]


def test_huggingface_hub_chat_completion_streams_to_the_end(hub_client: InferenceClient) -> None:
    client = hub_client
    chunks = list(client.chat_completion(MESSAGES, max_tokens=8, seed=3, stream=True))
    assert chunks, "no chunk arrived"
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    whole = client.chat_completion(MESSAGES, max_tokens=8, seed=3)
    assert streamed == whole.choices[0].message.content
    assert whole.usage.completion_tokens == len(chunks)


def test_huggingface_hub_text_generation_streams_tokens_and_details(hub_client: InferenceClient) -> None:
    client = hub_client
    outputs = list(client.text_generation("Once upon a time", max_new_tokens=6, stream=True, details=True))
    assert len(outputs) == 6
    assert outputs[-1].details is not None and outputs[-1].details.generated_tokens == 6
    texts = "".join(out.token.text for out in outputs if not out.token.special)
    # The client posts to TGI's compat route `/`, which returns the full text for text-generation
    # models unless told otherwise (TGI's default_return_full_text).
    assert outputs[-1].generated_text == "Once upon a time" + texts
    plain = list(client.text_generation("Once upon a time", max_new_tokens=6, stream=True))
    assert "".join(plain) == texts


def test_every_tgi_and_openai_event_has_the_space(tgi_url: str) -> None:
    generate = httpx.post(
        f"{tgi_url}/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 4}}, timeout=60
    )
    events = [json.loads(e) for e in sse_events(generate.content)]
    assert len(events) == 4 and events[-1]["generated_text"] is not None
    compat = httpx.post(
        f"{tgi_url}/", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}, "stream": True}, timeout=60
    )
    assert len(sse_events(compat.content)) == 3
    chat = httpx.post(f"{tgi_url}/v1/chat/completions",
                      json={"messages": MESSAGES, "max_tokens": 3, "stream": True}, timeout=60)  # fmt: skip
    assert chat.content.endswith(b"data: [DONE]\n\n")
    assert sse_events(chat.content)[-1] == b"[DONE]"
    completion = httpx.post(
        f"{tgi_url}/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "stream": True}, timeout=60
    )
    assert completion.content.endswith(b"data: [DONE]\n\n") and len(sse_events(completion.content)) == 4
