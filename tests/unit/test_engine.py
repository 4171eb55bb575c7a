"""Engine behaviour on a tiny random Llama (real tokenizer): batching, abort, limits, fairness."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from streamhost.engine import Engine, EngineConfig, GenerationParameters
from streamhost.engine.errors import EngineNotReadyError, GenerationError, OverloadedError, ValidationError
from streamhost.engine.executor_api import Executor
from streamhost.engine.limits import EngineLimits
from streamhost.engine.types import FinishReason

PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away,",
    "日本語のテキストと絵文字 😀",
    "def fibonacci(n):",
    "Café au lait and naïve résumés",
    "List three colours:",
]


@pytest.fixture(scope="module", params=["torch", "llamacpp"])
def executor(request, make_tiny_executor) -> Executor:
    """Every engine test runs on both executors: same scheduler, sampling, stops and limits."""
    return make_tiny_executor(request.param)


def make_limits(**overrides) -> EngineLimits:
    base = dict(
        max_input_tokens=1000,
        max_total_tokens=1200,
        max_batch_prefill_tokens=1200,
        max_batch_total_tokens=20000,
        max_batch_size=32,
        waiting_served_ratio=0.0,
    )
    base.update(overrides)
    return EngineLimits(**base)


def run(executor: Executor, body, *, prefill_chunk: int = 256, prefix_cache: bool = True, **limit_overrides):
    """Run ``body(engine)`` on a fresh engine (fresh scheduler) over the shared executor."""

    async def main():
        config = EngineConfig(
            limits=make_limits(**limit_overrides), prefill_chunk=prefill_chunk, prefix_cache=prefix_cache
        )
        engine = Engine(executor, config)
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.stop()
            assert executor.live_rows == 0, "every row must be freed when requests end"

    return asyncio.run(main())


async def collect(engine: Engine, prompt, params: GenerationParameters, stream: bool = True):
    return [event async for event in engine.generate(prompt, params, stream=stream)]


def ids_of(events):
    return [e.token_id for e in events]


PARAM_SETS = [
    GenerationParameters(max_new_tokens=24),
    GenerationParameters(max_new_tokens=17, do_sample=True, seed=7, temperature=0.8, top_k=50),
    GenerationParameters(max_new_tokens=30, do_sample=True, seed=11, top_p=0.9, repetition_penalty=1.3),
    GenerationParameters(max_new_tokens=12, frequency_penalty=0.5, no_repeat_ngram_size=2),
    GenerationParameters(max_new_tokens=20, do_sample=True, seed=3, typical_p=0.8, temperature=1.3),
    GenerationParameters(max_new_tokens=28, top_n_tokens=3, details=True),
]


def test_concurrent_requests_match_each_alone(executor):
    async def alone(engine):
        return [await collect(engine, p, params) for p, params in zip(PROMPTS, PARAM_SETS)]

    async def together(engine):
        return await asyncio.gather(*[collect(engine, p, params) for p, params in zip(PROMPTS, PARAM_SETS)])

    # What is compared is batching: with the prefix cache on, "together" would be served from the
    # rows "alone" left behind (its own tests: test_prefix_cache.py).
    solo = run(executor, alone, prefix_cache=False)
    mixed = run(executor, together, prefix_cache=False)
    for one, many, params in zip(solo, mixed, PARAM_SETS):
        if executor.name == "llamacpp" and params.do_sample:
            # llama.cpp's kernels are not batch-invariant: a sequence's logits move by ~1e-6 with its
            # neighbours, which can flip a draw from the tiny model's near-uniform distribution. Its
            # greedy answers must still match; seeded draws are checked alone (test below).
            agree = 0
            while agree < len(one) and one[agree].token_id == many[agree].token_id:
                agree += 1
            assert agree >= 1 and len(one) == len(many)
        else:
            assert ids_of(one) == ids_of(many)
            assert one[-1].generated_text == many[-1].generated_text
        assert len(one) == params.max_new_tokens  # random weights: no EOS expected, ignore_eos not needed
        if params.seed is not None:
            assert one[-1].details.seed == params.seed


def test_seeded_sampling_is_reproducible(executor):
    """The same seed gives the same tokens on every run; another seed gives others."""
    params = GenerationParameters(max_new_tokens=24, do_sample=True, seed=42, temperature=1.3, top_p=0.95)

    async def body(engine):
        first = await collect(engine, PROMPTS[4], params)
        again = await collect(engine, PROMPTS[4], params)
        other = await collect(engine, PROMPTS[4], dataclasses.replace(params, seed=43))
        return first, again, other

    first, again, other = run(executor, body)
    assert ids_of(first) == ids_of(again)
    assert first[-1].details.seed == 42
    assert ids_of(first) != ids_of(other)


def test_staggered_arrivals_match_alone(executor):
    """Requests joining a running batch at different steps still get their solo tokens."""
    params = GenerationParameters(max_new_tokens=40)

    async def alone(engine):
        return [await collect(engine, p, params) for p in PROMPTS[:4]]

    async def staggered(engine):
        async def later(i, p):
            await asyncio.sleep(0.03 * i)
            return await collect(engine, p, params)

        return await asyncio.gather(*[later(i, p) for i, p in enumerate(PROMPTS[:4])])

    assert [ids_of(x) for x in run(executor, alone)] == [ids_of(x) for x in run(executor, staggered)]


def test_stream_text_adds_up_and_details(executor):
    params = GenerationParameters(max_new_tokens=40, details=True, decoder_input_details=True, top_n_tokens=2)

    async def body(engine):
        return await collect(engine, PROMPTS[2], params, stream=False)  # TGI: prefill details only unstreamed

    events = run(executor, body)
    final = events[-1]
    assert "".join(e.text for e in events if not e.special) == final.generated_text
    assert final.details.finish_reason is FinishReason.LENGTH
    assert final.details.generated_tokens == 40
    assert final.details.input_length == len(executor.tokenizer(PROMPTS[2]).input_ids)
    assert [e.index for e in events] == list(range(40))
    assert all(e.logprob <= 0 for e in events)
    assert all(e.top_tokens is not None and 1 <= len(e.top_tokens) <= 2 for e in events)
    prefill = final.details.prefill
    assert len(prefill) == final.details.input_length
    assert prefill[0].logprob is None and all(p.logprob <= 0 for p in prefill[1:])


def test_stop_sequence_is_never_emitted(executor):
    params = GenerationParameters(max_new_tokens=40)

    async def free(engine):
        return await collect(engine, PROMPTS[1], params)

    text = run(executor, free)[-1].generated_text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"need a visible stop string from {text!r}"

    async def stopped(engine):
        return await collect(engine, PROMPTS[1], dataclasses.replace(params, stop=[stop]))

    events = run(executor, stopped)
    final = events[-1]
    assert final.details.finish_reason is FinishReason.STOP_SEQUENCE
    assert final.generated_text == text[: text.index(stop)]
    assert stop not in "".join(e.text for e in events)
    assert "".join(e.text for e in events if not e.special) == final.generated_text


def test_return_full_text_prepends_prompt(executor):
    async def body(engine):
        return await collect(engine, PROMPTS[0], GenerationParameters(max_new_tokens=5, return_full_text=True))

    final = run(executor, body)[-1]
    assert final.generated_text.startswith(PROMPTS[0])


def test_abort_mid_stream_frees_capacity(executor):
    """With room for one sequence, a second request only runs if the first one's abort freed it."""

    async def body(engine):
        seen = 0
        async for _ in engine.generate(PROMPTS[0], GenerationParameters(max_new_tokens=500)):
            seen += 1
            if seen == 3:
                break  # the client goes away
        for _ in range(200):
            if engine.stats.aborted:
                break
            await asyncio.sleep(0.01)
        assert engine.stats.aborted == 1
        assert not engine.scheduler.running and executor.live_rows == 0
        second = await asyncio.wait_for(collect(engine, PROMPTS[1], GenerationParameters(max_new_tokens=5)), 30)
        return second

    events = run(executor, body, max_batch_size=1, max_batch_total_tokens=1200)
    assert len(events) == 5


def test_abort_by_id_during_prefill(executor):
    long_prompt = " ".join(["token"] * 600)

    async def body(engine):
        task = asyncio.create_task(collect(engine, long_prompt, GenerationParameters(max_new_tokens=5)))
        await asyncio.sleep(0)
        while not engine._by_id:
            await asyncio.sleep(0.001)
        (request_id,) = list(engine._by_id)
        assert engine.abort(request_id)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(300):
            if engine.stats.aborted and executor.live_rows == 0:
                break
            await asyncio.sleep(0.01)
        return engine.stats.aborted, executor.live_rows

    aborted, live = run(executor, body, prefill_chunk=16)
    assert aborted == 1 and live == 0


def test_budget_errors_name_the_limit_and_the_request(executor):
    async def body(engine):
        with pytest.raises(ValidationError) as total:
            await collect(engine, PROMPTS[0], GenerationParameters(max_new_tokens=1198))
        with pytest.raises(ValidationError) as inputs:
            await collect(engine, " ".join(["word"] * 1100), GenerationParameters(max_new_tokens=5))
        with pytest.raises(ValidationError) as temp:
            await collect(engine, PROMPTS[0], GenerationParameters(temperature=0.0, do_sample=True))
        with pytest.raises(ValidationError, match="beam"):
            await collect(engine, PROMPTS[0], GenerationParameters(num_beams=2, max_new_tokens=4))
        return str(total.value), str(inputs.value), str(temp.value)

    total, inputs, temp = run(executor, body)
    n = len(executor.tokenizer(PROMPTS[0]).input_ids)
    assert "1200" in total and f"{n} `inputs` tokens" in total and "1198 `max_new_tokens`" in total
    assert "1000" in inputs
    assert "temperature" in temp


def test_overloaded_past_max_concurrent_requests(executor):
    async def body(engine):
        first = engine.generate(PROMPTS[0], GenerationParameters(max_new_tokens=50))
        await first.__anext__()
        with pytest.raises(OverloadedError):
            await collect(engine, PROMPTS[1], GenerationParameters(max_new_tokens=5))
        await first.aclose()

    run(executor, body, max_concurrent_requests=1)


def test_streams_keep_advancing_while_long_prompt_prefills(executor):
    """A long prompt is prefilled in chunks; a running stream gets tokens between those chunks."""
    long_prompt = " ".join(f"w{i}" for i in range(200))

    async def body(engine):
        times: list[float] = []
        long_first: list[float] = []

        async def runner():
            async for _ in engine.generate(PROMPTS[0], GenerationParameters(max_new_tokens=150)):
                times.append(time.monotonic())

        async def long_request():
            submitted = time.monotonic()
            async for event in engine.generate(long_prompt, GenerationParameters(max_new_tokens=2)):
                if event.index == 0:
                    long_first.append(time.monotonic())
            return submitted

        task = asyncio.create_task(runner())
        while len(times) < 3:
            await asyncio.sleep(0.001)
        submitted = await long_request()
        await task
        during = [t for t in times if submitted <= t <= long_first[0]]
        return len(during), engine.scheduler.prefill_chunk

    during, chunk = run(executor, body, prefill_chunk=32)
    prompt_tokens = len(executor.tokenizer(long_prompt).input_ids)
    chunks = -(-prompt_tokens // chunk)
    assert chunks >= 10
    assert during >= chunks - 1  # one running-stream token per prefill chunk


def test_beam_search_non_streaming(executor):
    async def body(engine):
        return await engine.generate_full(PROMPTS[0], GenerationParameters(num_beams=3, max_new_tokens=8))

    if not executor.supports_beam_search:
        with pytest.raises(ValidationError, match="num_beams.*not supported by the llamacpp executor"):
            run(executor, body)
        return
    result = run(executor, body)
    assert result.details.generated_tokens == len(result.tokens) <= 8
    assert result.generated_text == "".join(t.text for t in result.tokens if not t.special)


def test_failed_step_fails_only_its_requests(executor, monkeypatch):
    """A forward that raises fails the requests it carried with a clear error; the engine keeps serving."""
    poison = executor.tokenizer("zebra").input_ids[-1]
    real_forward = executor.forward

    def flaky_forward(segments):
        if any(poison in s.ids for s in segments):
            raise RuntimeError("simulated kernel failure")
        return real_forward(segments)

    monkeypatch.setattr(executor, "forward", flaky_forward)

    async def body(engine):
        with pytest.raises(GenerationError, match="simulated kernel failure"):
            await collect(engine, "zebra", GenerationParameters(max_new_tokens=3))
        return await collect(engine, PROMPTS[0], GenerationParameters(max_new_tokens=4))

    assert len(run(executor, body)) == 4


def test_open_stream_keeps_receiving_tokens_while_a_burst_of_long_prompts_is_tokenized(executor):
    """Long prompts are tokenized in a worker pool: an open stream advances while every tokenization is held.

    Each burst prompt's tokenization is held at a gate until the open stream has received five more
    tokens. Were prompts tokenized on the event loop, the gate would block the loop itself, the
    stream could not advance and the gate would time out.
    """
    import threading

    words = ["international", "understanding", "communication", "responsibility", "organizations"]
    burst = [f"burst {i}: " + " ".join(words[(i + j) % 5] for j in range(330)) for i in range(4)]  # ~330 tokens
    assert min(len(p) for p in burst) > EngineConfig().inline_tokenize_chars, "long enough to leave the loop"
    gate = threading.Event()
    started: list[str] = []

    async def body(engine):
        real_tokenize = engine.tokenize

        def gated_tokenize(text: str) -> list[int]:
            if text in burst:
                started.append(text)
                if not gate.wait(30):
                    raise TimeoutError("the gate never opened: the open stream did not advance")
            return real_tokenize(text)

        engine.tokenize = gated_tokenize
        received: list[int] = []

        async def open_stream():
            async for event in engine.generate(PROMPTS[0], GenerationParameters(max_new_tokens=400)):
                received.append(event.index)

        stream = asyncio.create_task(open_stream())
        while len(received) < 2:
            await asyncio.sleep(0.001)
        burst_tasks = [asyncio.create_task(collect(engine, p, GenerationParameters(max_new_tokens=2))) for p in burst]
        while not started:
            await asyncio.sleep(0.001)
        at_hold = len(received)
        while len(received) < at_hold + 5 and not stream.done():
            await asyncio.sleep(0.001)
        progress = len(received) - at_hold
        burst_done_while_held = sum(t.done() for t in burst_tasks)
        gate.set()
        burst_events = await asyncio.gather(*burst_tasks)
        await stream
        return progress, burst_done_while_held, burst_events, received

    progress, burst_done_while_held, burst_events, received = run(executor, body)
    assert progress >= 5, "the open stream got tokens while the burst's tokenization was held"
    assert burst_done_while_held == 0
    assert all(events[-1].details.input_length > 300 for events in burst_events)
    assert received == list(range(400))


def test_short_prompts_reach_the_scheduler_in_arrival_order(executor):
    """Short prompts are tokenized as they arrive, so a burst is served first come, first served.

    With one batch slot the requests run one after another; the order they finish in is the order
    the scheduler got them. (Through the tokenizer pool a burst could overtake itself.)
    """
    words = ["international", "understanding", "communication", "responsibility", "organizations"]
    # The first takes the longest to tokenize (still under inline_tokenize_chars): a worker pool
    # would hand the short ones behind it to the scheduler first.
    prompts = [" ".join(words[j % 5] for j in range(240))] + [f"{p} (request {i})" for i, p in enumerate(PROMPTS[:5])]
    assert len(prompts[0]) < EngineConfig().inline_tokenize_chars
    finished: list[int] = []

    async def body(engine):
        async def one(i: int) -> None:
            await collect(engine, prompts[i], GenerationParameters(max_new_tokens=2))
            finished.append(i)

        await asyncio.gather(*(one(i) for i in range(len(prompts))))

    run(executor, body, max_batch_size=1)
    assert finished == list(range(len(prompts)))


def test_engine_limits_come_from_its_config_not_the_environment(executor, monkeypatch):
    from streamhost.engine import LimitSettings

    monkeypatch.setenv("MAX_BATCH_SIZE", "1")  # ignored: the engine reads only its config

    async def main():
        engine = Engine(
            executor, EngineConfig(limit_settings=LimitSettings({"MAX_BATCH_SIZE": "3", "MAX_TOTAL_TOKENS": "900"}))
        )
        return engine.limits

    limits = asyncio.run(main())
    assert (limits.max_batch_size, limits.max_total_tokens, limits.max_input_tokens) == (3, 900, 899)
    assert Engine(executor, EngineConfig()).limits.max_batch_size == 32


def test_a_request_still_being_tokenized_when_the_engine_stops_is_refused_not_left_hanging(executor):
    import threading

    gate = threading.Event()

    async def main():
        # Every prompt to the tokenizer pool (short ones are otherwise tokenized on the loop).
        engine = Engine(executor, EngineConfig(limits=make_limits(), inline_tokenize_chars=0))
        await engine.start()
        real_tokenize = engine.tokenize

        def gated_tokenize(text: str) -> list[int]:
            gate.wait(30)
            return real_tokenize(text)

        engine.tokenize = gated_tokenize
        pending = asyncio.create_task(collect(engine, PROMPTS[0], GenerationParameters(max_new_tokens=3)))
        while engine.in_flight == 0:
            await asyncio.sleep(0.001)
        await engine.stop()
        gate.set()
        with pytest.raises(EngineNotReadyError, match="shutting down"):
            await asyncio.wait_for(pending, 30)
        return engine.in_flight

    assert asyncio.run(main()) == 0
