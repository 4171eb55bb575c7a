"""Prefix reuse: a finished request's KV row serves the next prompt that shares its prefix.

The row pool's choices are checked on their own; the engine tests run on both executors (the
tiny random Llama, torch and llama.cpp) and compare every answer with the same request served
without the prefix cache: reuse must change nothing but the work done.
"""

from __future__ import annotations

import asyncio

import pytest

from streamhost.engine import Engine, EngineConfig, GenerationParameters
from streamhost.engine.executor_api import Executor
from streamhost.engine.limits import EngineLimits
from streamhost.engine.prefix_cache import MIN_MATCH_TOKENS, RowPool, common_prefix_length

# -- the row pool ---------------------------------------------------------------------------


def test_pool_hands_out_the_lowest_row_when_nothing_matches() -> None:
    pool = RowPool()
    rows = [pool.alloc() for _ in range(3)]
    assert rows == [0, 1, 2]
    pool.free(2, list(range(100)))
    pool.free(0, list(range(50, 150)))
    pool.free(1)  # holds nothing
    claim = pool.claim([7] * 40)
    assert (claim.row, claim.reused, claim.held) == (1, 0, 0), "no match: the lowest row holding nothing"
    claim = pool.claim([7] * 40)
    assert (claim.row, claim.reused, claim.held) == (2, 0, 100), "then the held row freed longest ago"
    assert pool.live_rows == 2


def test_an_unrelated_prompt_takes_a_spare_row_rather_than_evict_a_conversation() -> None:
    """Two users taking turns: each one's next turn finds its conversation still held."""
    pool = RowPool()
    pool.spare_rows = 4  # the executor holds memory for 4 rows already
    alice, bob = [1] * 20 + list(range(100, 140)), [2] * 20 + list(range(200, 240))
    first = pool.claim(alice)
    pool.free(first.row, alice + [9, 9])
    second = pool.claim(bob)
    assert second.row != first.row and second.reused == 0
    pool.free(second.row, bob + [8, 8])
    assert pool.claim(alice + [9, 9, 5]).reused == len(alice) + 2
    assert pool.claim(bob + [8, 8, 5]).reused == len(bob) + 2


def test_without_spare_rows_the_least_recently_freed_row_is_evicted() -> None:
    pool = RowPool()
    for _ in range(3):
        pool.alloc()
    pool.free(1, [1] * 30)
    pool.free(0, [2] * 30)
    pool.free(2, [3] * 30)
    assert pool.claim([4] * 30).row == 1
    assert pool.claim([4] * 30).row == 0
    assert pool.claim([3] * 31).reused == 30, "the most recent conversation survived both"


def test_pool_picks_the_longest_shared_prefix_and_never_the_last_prompt_token() -> None:
    pool = RowPool()
    for _ in range(3):
        pool.alloc()
    pool.free(0, list(range(20)))  # shares 20
    pool.free(1, list(range(60)))  # shares 40 with the prompt below
    pool.free(2, list(range(30)) + [999] * 10)  # shares 30
    prompt = list(range(40)) + [5, 6, 7]
    claim = pool.claim(prompt)
    assert (claim.row, claim.reused, claim.held) == (1, 40, 60)
    again = pool.claim(list(range(30)))  # a prompt the row holds entirely: its last token is still computed
    assert (again.row, again.reused) == (2, 29)


def test_a_match_below_the_minimum_does_not_choose_the_row_but_is_still_reused() -> None:
    pool = RowPool()
    pool.alloc(), pool.alloc()
    pool.free(0, [0, 1, 2, 3, 99])
    pool.free(1, list(range(MIN_MATCH_TOKENS - 1)))  # a short match is not worth choosing row 1 for
    claim = pool.claim(list(range(40)))
    assert (claim.row, claim.reused) == (0, 4), "the least recently freed row, with the 4 tokens it does share"


def test_pool_forgets_what_rows_held() -> None:
    pool = RowPool()
    pool.alloc(), pool.alloc()
    pool.free(0, list(range(40)))
    pool.free(1)  # freed without tokens: holds nothing
    assert pool.retained_tokens == 40
    pool.forget_all()
    assert pool.retained_tokens == 0 and pool.claim(list(range(41))).reused == 0
    assert pool.claim(None).reused == 0 and pool.live_rows == 2


def test_common_prefix_length() -> None:
    import numpy as np

    a = np.array([1, 2, 3, 4])
    assert common_prefix_length(a, np.array([1, 2, 9])) == 2
    assert common_prefix_length(a, np.array([1, 2, 3, 4, 5])) == 4
    assert common_prefix_length(a, np.array([], dtype=np.int64)) == 0


# -- the engine, both executors -------------------------------------------------------------

SYSTEM = (
    "You are a careful assistant for a small bakery. Answer questions about bread, opening hours and "
    "prices in one short sentence, and never invent products that are not on the menu."
)


@pytest.fixture(scope="module", params=["torch", "llamacpp"])
def executor(request, make_tiny_executor) -> Executor:
    return make_tiny_executor(request.param)


@pytest.fixture(scope="module")
def system_ids(executor) -> list[int]:
    ids = list(executor.tokenizer(SYSTEM, add_special_tokens=True)["input_ids"])
    assert len(ids) > 2 * MIN_MATCH_TOKENS
    return ids


def limits() -> EngineLimits:
    return EngineLimits(
        max_input_tokens=1000,
        max_total_tokens=1200,
        max_batch_prefill_tokens=1200,
        max_batch_total_tokens=20000,
        max_batch_size=8,
        waiting_served_ratio=0.0,
    )


def run(executor: Executor, body, *, prefix_cache: bool = True, idle_kv_bytes: int = 512 * 1024**2):
    async def main():
        config = EngineConfig(
            limits=limits(), prefill_chunk=256, prefix_cache=prefix_cache, idle_kv_bytes=idle_kv_bytes
        )
        engine = Engine(executor, config)
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.stop()
            assert executor.live_rows == 0

    return asyncio.run(main())


async def answer(engine: Engine, prompt: list[int], params: GenerationParameters) -> tuple[list[int], int]:
    """Generated ids and the prompt tokens the engine took from the cache."""
    events = [e async for e in engine.generate(prompt, params)]
    details = events[-1].details
    assert details is not None
    return [e.token_id for e in events], details.cached_tokens


def fresh(executor: Executor, prompt: list[int], params: GenerationParameters) -> list[int]:
    """The answer with the prefix cache off (every prompt token computed)."""

    async def body(engine):
        return (await answer(engine, prompt, params))[0]

    return run(executor, body, prefix_cache=False)


GREEDY = GenerationParameters(max_new_tokens=12, ignore_eos=True)


def test_second_turn_reuses_the_first_and_answers_the_same(executor, system_ids) -> None:
    """A chat's turn 2 re-sends turn 1 and its answer: all of it but the answer's last token (whose KV
    was never written) comes from the cache, and the answer equals a full prefill's."""
    turn1 = system_ids + executor.tokenizer(" When do you open?", add_special_tokens=False)["input_ids"]
    follow = executor.tokenizer(" And on Sundays?", add_special_tokens=False)["input_ids"]

    async def chat(engine):
        first, cached1 = await answer(engine, turn1, GREEDY)
        second, cached2 = await answer(engine, turn1 + first + follow, GREEDY)
        return first, cached1, second, cached2

    first, _, second, cached2 = run(executor, chat)
    assert cached2 == len(turn1) + len(first) - 1
    assert second == fresh(executor, turn1 + first + follow, GREEDY)
    assert first == fresh(executor, turn1, GREEDY)


def test_a_shorter_prompt_on_a_trimmed_row_sees_nothing_of_the_longer_one(executor, system_ids) -> None:
    """A row holding a long sequence is cut back to the shared prefix: the new prompt's answer is the
    one it gets alone, both for a strict prefix and for a prompt that diverges half-way."""
    long_prompt = (
        system_ids + executor.tokenizer(" Tell me about rye bread and spelt.", add_special_tokens=False)["input_ids"]
    )
    half = len(system_ids) // 2
    diverging = system_ids[:half] + executor.tokenizer(" Prices?", add_special_tokens=False)["input_ids"]
    strict_prefix = system_ids[: half + 3]

    async def body(engine):
        results = []
        for prompt in (diverging, strict_prefix):
            await answer(engine, long_prompt, GREEDY)  # leaves the row full of the long sequence
            results.append(await answer(engine, prompt, GREEDY))
        return results

    (ids_a, cached_a), (ids_b, cached_b) = run(executor, body)
    assert cached_a == half and cached_b == half + 2  # the strict prefix's last token is computed
    assert ids_a == fresh(executor, diverging, GREEDY)
    assert ids_b == fresh(executor, strict_prefix, GREEDY)


def test_sampling_stops_and_aborts_are_unaffected_by_reuse(executor, system_ids) -> None:
    """Seeded sampling and stop strings give what they give without the cache; an aborted stream's row
    (prompt and the tokens it had) is reused by the next request without changing its answer."""
    question = executor.tokenizer(" Is the rye bread vegan?", add_special_tokens=False)["input_ids"]
    prompt = system_ids + question
    sampled = GenerationParameters(max_new_tokens=10, do_sample=True, seed=5, temperature=0.9, top_k=40)

    async def body(engine):
        stream = engine.generate(prompt, GenerationParameters(max_new_tokens=50, ignore_eos=True))
        got = 0
        async for _ in stream:
            got += 1
            if got == 5:
                break
        await stream.aclose()  # the client went away: the row keeps the prompt and 4 decoded tokens
        ids, cached = await answer(engine, prompt, sampled)
        text_events = [e async for e in engine.generate(prompt, GenerationParameters(max_new_tokens=12, stop=["e"]))]
        return ids, cached, text_events

    ids, cached, stop_events = run(executor, body)
    assert cached == len(prompt) - 1
    assert ids == fresh(executor, prompt, sampled)

    async def alone(engine):
        return [e async for e in engine.generate(prompt, GenerationParameters(max_new_tokens=12, stop=["e"]))]

    expected = run(executor, alone, prefix_cache=False)
    assert [e.text for e in stop_events] == [e.text for e in expected]
    assert stop_events[-1].details.finish_reason == expected[-1].details.finish_reason
    assert stop_events[-1].details.cached_tokens == len(prompt) - 1


def test_prompt_logprobs_and_a_switched_off_cache_reuse_nothing(executor, system_ids) -> None:
    prompt = system_ids + [42, 43, 44]
    with_prefill = GenerationParameters(max_new_tokens=3, decoder_input_details=True, details=True)

    async def body(engine):
        await answer(engine, prompt, GREEDY)
        events = [e async for e in engine.generate(prompt, with_prefill, stream=False)]
        return events[-1].details

    details = run(executor, body)
    assert details.cached_tokens == 0, "prompt log-probs need every prompt position computed"
    assert len(details.prefill) == len(prompt) and all(p.logprob is not None for p in details.prefill[1:])

    async def off(engine):
        await answer(engine, prompt, GREEDY)
        return (await answer(engine, prompt, GREEDY))[1]

    assert run(executor, off, prefix_cache=False) == 0


def test_released_kv_memory_is_never_reused(executor, system_ids) -> None:
    """An idle torch executor gives its KV buffers back (``release_idle_memory``) and what the rows
    held goes with them; llama.cpp keeps its cells for the context's life, so its rows stay reusable."""
    prompt = system_ids + [7, 8, 9]

    async def once(engine):
        return await answer(engine, prompt, GREEDY)

    run(executor, once)
    executor.release_idle_memory(0)
    ids, cached = run(executor, once)
    assert cached == (0 if executor.name == "torch" else len(prompt) - 1)
    assert ids == fresh(executor, prompt, GREEDY)


def test_a_unified_llama_cpp_kv_pool_keeps_nothing_for_reuse(make_tiny_executor, monkeypatch) -> None:
    """One KV pool shared by all sequences is their token budget: a finished row must give its cells back."""
    monkeypatch.setenv("STREAMHOST_LLAMACPP_KV_UNIFIED", "1")
    executor = make_tiny_executor("llamacpp")
    prompt = list(range(100, 160))

    async def twice(engine):
        await answer(engine, prompt, GREEDY)
        return await answer(engine, prompt, GREEDY)

    try:
        assert run(executor, twice)[1] == 0
    finally:
        executor.close()
