"""Request validation: TGI's rules and exact messages, plus the LMI fields."""

from __future__ import annotations

import pytest

from streamhost.engine.errors import ValidationError
from streamhost.engine.limits import EngineLimits
from streamhost.engine.types import GenerationParameters
from streamhost.engine.validation import validate_request

LIMITS = EngineLimits(
    max_input_tokens=100,
    max_total_tokens=128,
    max_batch_prefill_tokens=150,
    max_batch_total_tokens=1024,
    max_batch_size=8,
)
PROMPT = list(range(10))


def check(stream: bool = False, ids=PROMPT, limits=LIMITS, **params):
    return validate_request(ids, GenerationParameters(**params), limits, stream=stream)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperature": 0.0}, "`temperature` must be strictly positive"),
        ({"temperature": -1}, "`temperature` must be strictly positive"),
        ({"repetition_penalty": 0.0}, "`repetition_penalty` must be strictly positive"),
        ({"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        ({"frequency_penalty": -2.01}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_p": 0.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"typical_p": 1.0}, "`typical_p` must be > 0.0 and < 1.0"),
        ({"typical_p": -0.5}, "`typical_p` must be > 0.0 and < 1.0"),
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"top_k": -3}, "`top_k` must be strictly positive"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
        ({"truncate": 0}, "`truncate` must be strictly positive and less than 100. Given: 0"),
        ({"truncate": 101}, "`truncate` must be strictly positive and less than 100. Given: 101"),
        (
            {"max_new_tokens": 119},
            "`inputs` tokens + `max_new_tokens` must be <= 128. Given: 10 `inputs` tokens and 119 `max_new_tokens`",
        ),
        ({"best_of": 3, "do_sample": True}, "`best_of` must be > 0 and <= 2. Given: 3"),
        ({"best_of": 0}, "`best_of` must be > 0 and <= 2. Given: 0"),
        ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
        ({"best_of": 2, "do_sample": True, "seed": 4}, "`seed` must not be set when `best_of` > 1"),
        ({"seed": -1}, "`seed` must be >= 0 and <= 18446744073709551615. Given: -1"),
        ({"seed": 2**64}, "`seed` must be >= 0 and <= 18446744073709551615. Given: 18446744073709551616"),
        ({"stop": ["ok", ""]}, "`stop` sequences must not be empty strings"),
        ({"no_repeat_ngram_size": -1}, "`no_repeat_ngram_size` must be >= 0. Given: -1"),
        ({"num_beams": 0}, "`num_beams` must be strictly positive. Given: 0"),
        (
            {"num_beams": 2, "do_sample": True},
            "`num_beams` > 1 is not supported with `do_sample` = true: only greedy beam search is supported",
        ),
        ({"num_beams": 9}, "`num_beams` must be <= 8. Given: 9"),
        (
            {"max_length": 10},
            "`max_length` must be greater than the number of `inputs` tokens. Given: 10 `max_length` and 10 `inputs` tokens",
        ),
        ({"temperature": "hot"}, "`temperature` must be a number. Given: 'hot'"),
        ({"temperature": float("nan")}, "`temperature` must be a finite number. Given: nan"),
        ({"top_k": 2.5}, "`top_k` must be an integer. Given: 2.5"),
        ({"do_sample": "yes"}, "`do_sample` must be a boolean. Given: 'yes'"),
    ],
)
def test_tgi_messages(params, message):
    with pytest.raises(ValidationError) as info:
        check(**params)
    assert str(info.value) == message
    assert info.value.error_type == "validation"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"best_of": 2, "do_sample": True}, "`best_of` != 1 is not supported when streaming tokens"),
        ({"decoder_input_details": True}, "`decoder_input_details` == true is not supported when streaming tokens"),
        ({"num_beams": 2}, "`num_beams` > 1 is not supported when streaming tokens"),
    ],
)
def test_streaming_only_rules(params, message):
    with pytest.raises(ValidationError, match="streaming") as info:
        check(stream=True, **params)
    assert str(info.value) == message
    check(stream=False, **params)  # the same request is fine without streaming


def test_empty_and_too_long_inputs():
    with pytest.raises(ValidationError) as info:
        check(ids=[])
    assert str(info.value) == "`inputs` cannot be empty"
    # 101 tokens with 1 new token fits the total (128) but not the input limit (100).
    with pytest.raises(ValidationError) as info:
        check(ids=list(range(101)), max_new_tokens=1)
    assert str(info.value) == "`inputs` must have less than 100 tokens. Given: 101"
    # Without max_new_tokens, a prompt over the total budget fails on the total first, like TGI.
    with pytest.raises(ValidationError) as info:
        check(ids=list(range(130)))
    assert str(info.value) == (
        "`inputs` tokens + `max_new_tokens` must be <= 128. Given: 130 `inputs` tokens and 0 `max_new_tokens`"
    )


def test_best_of_disabled_when_limit_is_one():
    limits = EngineLimits(100, 128, 150, 1024, 8, max_best_of=1)
    with pytest.raises(ValidationError) as info:
        check(limits=limits, best_of=2, do_sample=True)
    assert str(info.value) == "`best_of` != 1 is not allowed for this endpoint"


def test_truncate_keeps_the_last_tokens():
    v = check(ids=list(range(150)), truncate=20, max_new_tokens=5)
    assert v.input_ids == list(range(130, 150))
    assert v.input_length == 20
    short = check(ids=[1, 2, 3], truncate=20)
    assert short.input_ids == [1, 2, 3]


def test_default_max_new_tokens_is_what_the_total_budget_leaves():
    v = check()
    assert v.max_new_tokens == 128 - 10 == v.params.max_new_tokens


def test_max_length_becomes_max_new_tokens_and_max_new_tokens_wins():
    v = check(max_length=30)
    assert v.max_new_tokens == 20 and v.params.max_length is None
    assert check(max_length=30, max_new_tokens=7).max_new_tokens == 7
    with pytest.raises(ValidationError, match="must be <= 128"):
        check(max_length=200)


def test_defaults_are_resolved_and_caller_object_untouched():
    params = GenerationParameters(top_k=5.0, stop=["x"])
    v = validate_request(PROMPT, params, LIMITS, stream=True)
    p = v.params
    assert (p.temperature, p.repetition_penalty, p.frequency_penalty) == (1.0, 1.0, 0.0)
    assert (p.top_n_tokens, p.best_of, p.num_beams, p.no_repeat_ngram_size) == (0, 1, 1, 0)
    assert p.top_k == 5 and isinstance(p.top_k, int)
    assert p.top_p is None and p.typical_p is None
    assert params.top_k == 5.0 and params.max_new_tokens is None  # the caller's copy is unchanged
    assert p.stop == ["x"] and p.stop is not params.stop


def test_sampling_turns_on_with_any_warper_like_tgi():
    assert check().params.do_sample is False
    assert check(temperature=1.0).params.do_sample is False
    assert check(temperature=0.7).params.do_sample is True
    assert check(top_k=10).params.do_sample is True
    assert check(top_p=0.9).params.do_sample is True
    assert check(typical_p=0.9).params.do_sample is True
    assert check(repetition_penalty=1.2).params.do_sample is False
    hf = validate_request(PROMPT, GenerationParameters(temperature=0.7), LIMITS, stream=False, implicit_sampling=False)
    assert hf.params.do_sample is False
    beams = check(num_beams=3, temperature=0.7)
    assert beams.params.do_sample is False and beams.params.num_beams == 3


def test_a_valid_request_passes_unchanged_in_substance():
    v = check(
        stream=True,
        do_sample=True,
        temperature=0.5,
        top_k=40,
        top_p=0.9,
        typical_p=0.95,
        repetition_penalty=1.1,
        frequency_penalty=-0.5,
        max_new_tokens=20,
        stop=["</s>"],
        seed=2**64 - 1,
        top_n_tokens=5,
        no_repeat_ngram_size=3,
    )
    assert v.input_ids == PROMPT and v.input_length == 10 and v.max_new_tokens == 20
    assert v.params.seed == 2**64 - 1 and v.params.top_n_tokens == 5
