"""The engine with its core in a process of its own answers exactly as with the core in a thread.

Same model (the tiny random Llama, fp32), same requests: greedy, seeded sampling, a stop string
(found by the front end, which sends the request back to the core), prompt log-probabilities, top
tokens and beam search. A real ``streamhost.engine.core_proc`` process, a real ZeroMQ channel.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streamhost.engine import Engine, EngineConfig, GenerationParameters
from streamhost.engine.errors import GenerationError
from streamhost.engine.types import FinishReason

REQUESTS = [
    ("The quick brown fox", GenerationParameters(max_new_tokens=20)),
    ("Once upon a time", GenerationParameters(max_new_tokens=16, do_sample=True, seed=5, top_k=20)),
    ("def fibonacci(n):", GenerationParameters(max_new_tokens=12, top_n_tokens=2, decoder_input_details=True)),
    ("List three colours:", GenerationParameters(max_new_tokens=6, num_beams=2)),
]


def answers(model: Path, *, engine_process: bool, stop: str | None = None) -> tuple[list, dict]:
    async def main():
        engine = Engine.load(str(model), EngineConfig(dtype="fp32", engine_process=engine_process, prefill_chunk=16))
        await engine.start()
        try:
            results = []
            for prompt, params in REQUESTS:
                result = await engine.generate_full(prompt, params)
                prefill = [(p.id, None if p.logprob is None else round(p.logprob, 4)) for p in result.details.prefill]
                tops = [[t.id for t in e.top_tokens or []] for e in result.tokens]
                results.append(([e.token_id for e in result.tokens], result.generated_text, prefill, tops))
            streamed = results[0][1]
            cut = streamed[len(streamed) // 2 : len(streamed) // 2 + 3]
            params = GenerationParameters(max_new_tokens=20, stop=[cut])
            events = [e async for e in engine.generate(REQUESTS[0][0], params)]
            for _ in range(100):  # the core hears of the stop string with its next message
                if engine.stats.live_rows == 0:
                    break
                await asyncio.sleep(0.02)
            results.append((events[-1].generated_text, events[-1].details.finish_reason, cut))
            state = {"live_rows": engine.stats.live_rows, "info": engine.info()["engine_core"]}
            state["aborted_in_prefill"] = await abort_during_prefill(engine)
            return results, state
        finally:
            await engine.stop()

    return asyncio.run(main())


async def abort_during_prefill(engine: Engine) -> tuple[int, int]:
    """A 600-token prompt prefilled 16 tokens a step, aborted by id once it is in: (aborted, KV rows)."""
    long_prompt = " ".join(["token"] * 600)
    task = asyncio.create_task(
        asyncio.wait_for(engine.generate_full(long_prompt, GenerationParameters(max_new_tokens=5)), 60)
    )
    while not engine._by_id:
        await asyncio.sleep(0.001)
    (request_id,) = list(engine._by_id)
    assert engine.abort(request_id)
    with pytest.raises(GenerationError, match="aborted"):
        await task
    for _ in range(300):
        if engine.stats.aborted and engine.stats.live_rows == 0:
            break
        await asyncio.sleep(0.01)
    return engine.stats.aborted, engine.stats.live_rows


def test_a_core_process_answers_as_the_core_thread(tiny_llama_dir):
    in_thread, thread_state = answers(tiny_llama_dir, engine_process=False)
    in_process, process_state = answers(tiny_llama_dir, engine_process=True)
    assert in_process == in_thread
    text, reason, cut = in_process[-1]
    assert reason is FinishReason.STOP_SEQUENCE and cut not in text
    assert process_state["live_rows"] == 0, "the stop string freed the row in the core"
    assert process_state["info"]["process"] and process_state["info"]["pid"]
    assert not thread_state["info"]["process"]
    assert process_state["aborted_in_prefill"] == thread_state["aborted_in_prefill"] == (1, 0)
