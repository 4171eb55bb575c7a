"""Running a request on the engine: request ids and whole answers, shared by every protocol's routes.

A whole answer is the engine's events drained by the output processor's :func:`gather_result`
(the same code as ``Engine.generate_full``), so each route only parses, picks a framing and answers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator

from streamhost.engine.output import gather_result
from streamhost.engine.types import GenerationResult, TokenEvent

_ids = itertools.count(1)
_prefix = f"{os.getpid():x}"


def request_id(kind: str) -> str:
    return f"{kind}-{_prefix}-{next(_ids)}"


async def collect_many(streams: list[AsyncIterator[TokenEvent]], metrics=None) -> list[GenerationResult]:
    """Whole answers of one or more generations run side by side (best_of, LMI input lists); the first error wins.

    ``metrics`` (ServerMetrics) gets each answer's prompt and generated token counts.
    """
    if len(streams) == 1:
        done = [await gather_result(streams[0])]
    else:
        outcomes = await asyncio.gather(*(gather_result(e) for e in streams), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        done = list(outcomes)  # type: ignore[arg-type]
    if metrics is not None:
        for result in done:
            metrics.input_tokens.observe(result.details.input_length)
            metrics.output_tokens.observe(result.details.generated_tokens)
    return done


def logprob_sum(result: GenerationResult) -> float:
    return sum(t.logprob for t in result.tokens if t.logprob == t.logprob)  # NaN-safe
