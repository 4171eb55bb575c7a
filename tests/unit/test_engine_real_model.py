"""The embedded default model (SmolLM2-135M-Instruct, bf16) answers a simple question coherently."""

from __future__ import annotations

import asyncio

import pytest

from streamhost.engine import Engine, EngineConfig, GenerationParameters
from streamhost.engine.types import FinishReason

pytestmark = pytest.mark.slow


def test_default_model_answers_a_simple_question(smollm2_dir):
    async def main():
        engine = Engine.load(str(smollm2_dir), EngineConfig(dtype="bf16", model_id="smollm2"))
        await engine.start()
        try:
            prompt = engine.tokenizer.apply_chat_template(
                [{"role": "user", "content": "What is the capital of France?"}],
                tokenize=False,
                add_generation_prompt=True,
            )
            events = [e async for e in engine.generate(prompt, GenerationParameters(max_new_tokens=40))]
        finally:
            await engine.stop()
        return engine, events

    engine, events = asyncio.run(main())
    final = events[-1]
    assert "Paris" in final.generated_text
    assert final.details.finish_reason is FinishReason.EOS_TOKEN
    assert events[-1].special and events[-1].text == "<|im_end|>"
    assert "".join(e.text for e in events if not e.special) == final.generated_text
    assert engine.info()["dtype"] == "bfloat16"
    assert "{% for message in messages %}" in engine.chat_template
