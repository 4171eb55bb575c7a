"""The output processor on its own: token ids in, the client's events out, with the real SmolLM2 tokenizer.

No engine and no model: this is the half that a front-end process would run on the ids an engine
core sends, so it must give the same answer however the ids arrive (one per step or all at once).
"""

from __future__ import annotations

import asyncio

import pytest

from streamhost.engine.errors import GenerationError
from streamhost.engine.output import OutputProcessor, gather_result
from streamhost.engine.types import FinishReason, GenerationParameters, TokenEvent

TEXT = "Hello there, café 😀 and 日本語: the end of it all."


@pytest.fixture(scope="module")
def processor(smollm2_tokenizer) -> OutputProcessor:
    return OutputProcessor(smollm2_tokenizer, {smollm2_tokenizer.eos_token_id})


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def run(processor, token_ids, params=None, max_new_tokens=100, *, one_by_one=True, prompt="Say it:"):
    params = params or GenerationParameters()
    state = processor.new_request("r", ids(processor.tokenizer, prompt), params, max_new_tokens)
    if one_by_one:
        events = [e for tok in token_ids for e in processor.process(state, [tok], [-0.5])]
    else:
        events = processor.process(state, token_ids, [-0.5] * len(token_ids))
    return state, events


def visible(events: list[TokenEvent]) -> str:
    return "".join(e.text for e in events if not e.special)


def test_per_step_and_all_at_once_give_the_same_events(processor):
    tokens = ids(processor.tokenizer, TEXT)
    _, stepwise = run(processor, tokens, max_new_tokens=len(tokens))
    _, batch = run(processor, tokens, max_new_tokens=len(tokens), one_by_one=False)
    assert [(e.token_id, e.text, e.special) for e in stepwise] == [(e.token_id, e.text, e.special) for e in batch]
    assert stepwise[-1].generated_text == batch[-1].generated_text == TEXT
    assert stepwise[-1].details.finish_reason is FinishReason.LENGTH
    assert visible(stepwise) == TEXT
    assert all(e.details is None for e in stepwise[:-1])


def test_stop_string_split_across_tokens_ends_the_request_and_is_never_emitted(processor):
    tokens = ids(processor.tokenizer, TEXT)
    state, events = run(processor, tokens, GenerationParameters(stop=["end of"]))
    final = events[-1]
    assert (
        state.finish_reason is FinishReason.STOP_SEQUENCE and final.details.finish_reason is FinishReason.STOP_SEQUENCE
    )
    assert final.generated_text == TEXT[: TEXT.index("end of")]
    assert visible(events) == final.generated_text
    assert len(events) < len(tokens), "tokens after the finishing one are ignored"


def test_eos_finishes_and_releases_held_back_text(processor):
    tok = processor.tokenizer
    tokens = ids(tok, "one two thr") + [tok.eos_token_id, *ids(tok, " never shown")]
    _, events = run(processor, tokens, GenerationParameters(stop=["three"]))
    final = events[-1]
    assert final.details.finish_reason is FinishReason.EOS_TOKEN
    assert final.token_id == tok.eos_token_id
    assert final.generated_text == "one two thr"  # "thr" was held (it could start "three"), then released
    assert visible(events) == "one two thr"
    assert final.details.generated_tokens == len(events)


def test_ignore_eos_keeps_going_until_the_length(processor):
    tok = processor.tokenizer
    tokens = [tok.eos_token_id] * 3 + ids(tok, " after")
    _, events = run(processor, tokens, GenerationParameters(ignore_eos=True), max_new_tokens=4)
    assert [e.special for e in events[:3]] == [True, True, True]
    assert events[0].text == tok.eos_token  # a special token shows its own text, outside generated_text
    assert events[-1].details.finish_reason is FinishReason.LENGTH and len(events) == 4


def test_full_text_top_tokens_and_prompt_logprobs(processor):
    tok = processor.tokenizer
    prompt = ids(tok, "Say it:")
    state = processor.new_request("r", prompt, GenerationParameters(return_full_text=True), 2, seed=42)
    processor.add_prompt_logprobs(state, 0, [-1.0] * (len(prompt) - 1))
    first = processor.process(
        state, [ids(tok, " yes")[0]], [-0.1], [[(ids(tok, " yes")[0], -0.1), (tok.eos_token_id, -3.0)]]
    )
    (last,) = processor.process(state, [tok.eos_token_id], [-0.2])
    assert first[0].top_tokens[0].text == " yes" and first[0].top_tokens[1].special
    assert last.generated_text == "Say it: yes"
    assert last.details.seed == 42 and last.details.input_length == len(prompt)
    assert [p.id for p in last.details.prefill] == prompt and last.details.prefill[0].logprob is None


def test_finish_puts_the_held_tail_on_the_last_event(processor):
    tok = processor.tokenizer
    tokens = ids(tok, "one two thr")
    state, events = run(processor, tokens, GenerationParameters(stop=["three"]), max_new_tokens=50)
    assert not state.finished and visible(events) == "one two "
    assert processor.finish(state, FinishReason.LENGTH, events[-1]) is None
    assert events[-1].details.finish_reason is FinishReason.LENGTH
    assert visible(events) == events[-1].generated_text == "one two thr"


def test_gather_result_needs_a_final_event(processor):
    tokens = ids(processor.tokenizer, "a b c")
    _, events = run(processor, tokens, max_new_tokens=len(tokens))

    async def stream(items):
        for item in items:
            yield item

    result = asyncio.run(gather_result(stream(events)))
    assert result.generated_text == "a b c" and result.tokens == events
    with pytest.raises(GenerationError, match="without a final token"):
        asyncio.run(gather_result(stream(events[:-1])))
