"""The real default model (SmolLM2-135M-Instruct) served by ``streamhost container``, chatted with by the openai client."""

from __future__ import annotations

import openai
import pytest


@pytest.mark.slow
def test_openai_client_streams_a_real_chat_answer(smollm2_dir, containers) -> None:
    server = containers.start(["--model-id", str(smollm2_dir)])
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "Paris" in text, text
    assert "\ufffd" not in text and "<|im_end|>" not in text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert sum(1 for c in chunks if c.choices[0].delta.content) > 1, "the answer arrived token by token"
