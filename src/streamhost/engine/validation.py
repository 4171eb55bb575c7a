"""Request validation with TGI's rules, order and messages (``router/src/validation.rs``).

Contract with the protocol layer: :func:`validate_request` raises
:class:`~streamhost.engine.errors.ValidationError` whose message is TGI's bare text, e.g.
``"`temperature` must be strictly positive"``. The TGI protocol adds the ``"Input validation
error: "`` prefix and answers 422 ``{"error": ..., "error_type": "validation"}``; other protocols
wrap the same text in their own shape. Messages never include a traceback.

What TGI does and we copy:

- parameter checks in TGI's order: ``best_of`` (streaming, bounds, sampling, seed), temperature,
  repetition_penalty, frequency_penalty, top_p, typical_p, top_k, max_new_tokens, stop,
  top_n_tokens, empty inputs, truncate, then the token budget (total before input length);
- ``top_p`` and ``typical_p`` must be strictly inside (0, 1): TGI rejects 1.0 (the OpenAI and
  LMI layers should map a 1.0 meaning "disabled" to ``None`` before calling);
- ``truncate`` keeps the *last* ``truncate`` tokens;
- unset ``max_new_tokens`` defaults to everything left: ``max_total_tokens - input_length``
  (TGI 2.x/3.x; the router re-queues every 1024 tokens internally, which callers never see);
- sampling is on when ``do_sample`` is true *or* any of temperature != 1, top_k, top_p < 1,
  typical_p < 1 is set (TGI's server does this); ``implicit_sampling=False`` gives
  transformers' ``generate`` semantics instead, where only ``do_sample`` turns it on.

Our additions, for the LMI/JumpStart fields TGI does not have: ``max_length`` (prompt + new
tokens) becomes ``max_new_tokens = max_length - input_length`` when ``max_new_tokens`` is unset;
``num_beams > 1`` is greedy beam search only (no streaming, no ``do_sample``, no ``best_of``,
at most ``max_batch_size`` beams); ``no_repeat_ngram_size >= 0``; stop strings must be non-empty;
``seed`` must fit in a u64; numbers must be numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamhost.engine.errors import ValidationError
from streamhost.engine.limits import EngineLimits
from streamhost.engine.types import GenerationParameters

U64_MAX = 2**64 - 1


@dataclass
class ValidatedRequest:
    """A request that passed validation, with every default resolved.

    ``params`` is a copy of the request's parameters where ``do_sample`` is the effective choice,
    ``max_new_tokens`` is set (``max_length`` consumed), and the neutral defaults are filled in:
    temperature 1.0, repetition_penalty 1.0, frequency_penalty 0.0, no_repeat_ngram_size 0,
    top_n_tokens 0, best_of 1, num_beams 1. ``top_k``/``top_p``/``typical_p`` stay ``None`` when
    unset. ``seed`` is left as given (the sampler draws one when sampling without a seed).
    """

    input_ids: list[int]  # after truncation
    params: GenerationParameters
    input_length: int
    max_new_tokens: int


def validate_request(
    input_ids: Sequence[int],
    params: GenerationParameters,
    limits: EngineLimits,
    *,
    stream: bool,
    implicit_sampling: bool = True,
) -> ValidatedRequest:
    """Check ``params`` and the tokenized prompt against ``limits``; resolve the defaults.

    Raises :class:`ValidationError` with TGI's message (no "Input validation error: " prefix;
    the protocol layer adds it).
    """
    p = _check_types(params)

    best_of = 1 if p.best_of is None else p.best_of
    num_beams = 1 if p.num_beams is None else p.num_beams

    # server.rs: checked before the router's validate().
    if stream and best_of != 1:
        raise ValidationError("`best_of` != 1 is not supported when streaming tokens")
    if stream and p.decoder_input_details:
        raise ValidationError("`decoder_input_details` == true is not supported when streaming tokens")
    if best_of != 1:
        if limits.max_best_of == 1:
            raise ValidationError("`best_of` != 1 is not allowed for this endpoint")
        if best_of < 1 or best_of > limits.max_best_of:
            raise ValidationError(f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {best_of}")

    warpers_set = p.temperature is not None or p.top_k is not None or p.top_p is not None or p.typical_p is not None
    if best_of > 1 and not (p.do_sample or warpers_set):
        raise ValidationError("you must use sampling when `best_of` is > 1")

    temperature = 1.0 if p.temperature is None else float(p.temperature)
    if not temperature > 0.0:
        raise ValidationError("`temperature` must be strictly positive")
    repetition_penalty = 1.0 if p.repetition_penalty is None else float(p.repetition_penalty)
    if not repetition_penalty > 0.0:
        raise ValidationError("`repetition_penalty` must be strictly positive")
    frequency_penalty = 0.0 if p.frequency_penalty is None else float(p.frequency_penalty)
    if not -2.0 <= frequency_penalty <= 2.0:
        raise ValidationError("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if p.top_p is not None and not 0.0 < p.top_p < 1.0:
        raise ValidationError("`top_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None and not 0.0 < p.typical_p < 1.0:
        raise ValidationError("`typical_p` must be > 0.0 and < 1.0")
    if p.top_k is not None and p.top_k <= 0:
        raise ValidationError("`top_k` must be strictly positive")
    if p.max_new_tokens is not None and p.max_new_tokens <= 0:
        raise ValidationError("`max_new_tokens` must be strictly positive")
    if len(p.stop) > limits.max_stop_sequences:
        raise ValidationError(f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(p.stop)}")
    if any(s == "" for s in p.stop):
        raise ValidationError("`stop` sequences must not be empty strings")
    if p.seed is not None:
        if best_of > 1:
            raise ValidationError("`seed` must not be set when `best_of` > 1")
        if not 0 <= p.seed <= U64_MAX:
            raise ValidationError(f"`seed` must be >= 0 and <= {U64_MAX}. Given: {p.seed}")
    top_n_tokens = 0 if p.top_n_tokens is None else p.top_n_tokens
    if not 0 <= top_n_tokens <= limits.max_top_n_tokens:
        raise ValidationError(f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {top_n_tokens}")
    no_repeat_ngram_size = 0 if p.no_repeat_ngram_size is None else p.no_repeat_ngram_size
    if no_repeat_ngram_size < 0:
        raise ValidationError(f"`no_repeat_ngram_size` must be >= 0. Given: {no_repeat_ngram_size}")

    if num_beams < 1:
        raise ValidationError(f"`num_beams` must be strictly positive. Given: {num_beams}")
    if num_beams > 1:
        if stream:
            raise ValidationError("`num_beams` > 1 is not supported when streaming tokens")
        if p.do_sample:
            raise ValidationError(
                "`num_beams` > 1 is not supported with `do_sample` = true: only greedy beam search is supported"
            )
        if best_of > 1:
            raise ValidationError("`num_beams` > 1 cannot be combined with `best_of` > 1")
        if num_beams > limits.max_batch_size:
            raise ValidationError(f"`num_beams` must be <= {limits.max_batch_size}. Given: {num_beams}")

    if len(input_ids) == 0:
        raise ValidationError("`inputs` cannot be empty")
    if p.truncate is not None and (p.truncate <= 0 or p.truncate > limits.max_input_tokens):
        raise ValidationError(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {p.truncate}"
        )

    ids = list(input_ids)
    if p.truncate is not None and len(ids) > p.truncate:
        ids = ids[-p.truncate :]
    input_length = len(ids)

    if p.max_new_tokens is not None:
        max_new_tokens = p.max_new_tokens
    elif p.max_length is not None:
        max_new_tokens = p.max_length - input_length
        if max_new_tokens <= 0:
            raise ValidationError(
                "`max_length` must be greater than the number of `inputs` tokens. "
                f"Given: {p.max_length} `max_length` and {input_length} `inputs` tokens"
            )
    else:
        max_new_tokens = max(limits.max_total_tokens - input_length, 0)

    if input_length + max_new_tokens > limits.max_total_tokens:
        raise ValidationError(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
    if input_length > limits.max_input_tokens:
        raise ValidationError(f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}")

    if num_beams > 1:
        do_sample = False  # greedy beam search; warpers are ignored as in transformers
    elif implicit_sampling:
        do_sample = bool(
            p.do_sample or temperature != 1.0 or p.top_k is not None or p.top_p is not None or p.typical_p is not None
        )
    else:
        do_sample = bool(p.do_sample)

    resolved = dataclasses.replace(
        p,
        do_sample=do_sample,
        temperature=temperature,
        repetition_penalty=repetition_penalty,
        frequency_penalty=frequency_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        max_new_tokens=max_new_tokens,
        max_length=None,
        stop=list(p.stop),
        top_n_tokens=top_n_tokens,
        best_of=best_of,
        num_beams=num_beams,
    )
    return ValidatedRequest(input_ids=ids, params=resolved, input_length=input_length, max_new_tokens=max_new_tokens)


# Field -> kind, for the checks a JSON decoder would do in TGI (serde rejects wrong types).
_FLOATS = ("temperature", "top_p", "typical_p", "repetition_penalty", "frequency_penalty")
_INTS = (
    "top_k",
    "no_repeat_ngram_size",
    "seed",
    "max_new_tokens",
    "max_length",
    "truncate",
    "top_n_tokens",
    "best_of",
    "num_beams",
)
_BOOLS = ("do_sample", "ignore_eos", "return_full_text", "details", "decoder_input_details")


def _check_types(p: GenerationParameters) -> GenerationParameters:
    """Reject values of the wrong type with a clear message instead of a later TypeError.

    Returns a copy where integral floats in integer fields (``"top_k": 5.0``) became ints.
    """
    fixed: dict[str, Any] = {}
    for name in _FLOATS:
        value = getattr(p, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError(f"`{name}` must be a number. Given: {value!r}")
        if not math.isfinite(value):
            raise ValidationError(f"`{name}` must be a finite number. Given: {value!r}")
    for name in _INTS:
        value = getattr(p, name)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            continue
        if isinstance(value, float) and value.is_integer():
            fixed[name] = int(value)
            continue
        raise ValidationError(f"`{name}` must be an integer. Given: {value!r}")
    for name in _BOOLS:
        value = getattr(p, name)
        if not isinstance(value, bool):
            raise ValidationError(f"`{name}` must be a boolean. Given: {value!r}")
    if p.early_stopping is not None and not isinstance(p.early_stopping, (bool, str)):
        raise ValidationError(f"`early_stopping` must be a boolean. Given: {p.early_stopping!r}")
    if not isinstance(p.stop, (list, tuple)) or not all(isinstance(s, str) for s in p.stop):
        raise ValidationError("`stop` must be a list of strings")
    return dataclasses.replace(p, **fixed) if fixed else p
