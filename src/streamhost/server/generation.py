"""Running a request on the engine: request ids, whole-answer collection and TGI's timing headers.

Shared by every protocol's routes so that each route only parses, picks a framing and answers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from streamhost.engine.errors import GenerationError
from streamhost.engine.types import GenerationResult, TokenEvent

_ids = itertools.count(1)
_prefix = f"{os.getpid():x}"


def request_id(kind: str) -> str:
    return f"{kind}-{_prefix}-{next(_ids)}"


@dataclass
class Collected:
    """A whole answer and when its parts happened (``time.monotonic`` seconds)."""

    result: GenerationResult
    submitted: float
    admitted: float  # when the engine started its prefill
    finished: float


async def collect(engine, events: AsyncIterator[TokenEvent], rid: str) -> Collected:
    """Drain ``events`` into a GenerationResult (what ``engine.generate_full`` does, plus timings)."""
    submitted = time.monotonic()
    tokens: list[TokenEvent] = []
    async for event in events:
        tokens.append(event)
        if event.details is not None:
            break
    if not tokens or tokens[-1].details is None or tokens[-1].generated_text is None:
        raise GenerationError("the engine ended the request without a final token")
    final = tokens[-1]
    finished = time.monotonic()
    queue_time = final.details.queue_time
    admitted = submitted + queue_time
    result = GenerationResult(
        final.generated_text, tokens, final.details,
        queue_time=queue_time, inference_time=max(0.0, finished - admitted),
    )
    return Collected(result, submitted, admitted, finished)


async def collect_many(engine, streams: list[tuple[AsyncIterator[TokenEvent], str]], metrics=None) -> list[Collected]:
    """Several generations side by side (best_of, LMI input lists); the first error wins.

    ``metrics`` (ServerMetrics) gets each answer's prompt and generated token counts.
    """
    if len(streams) == 1:
        events, rid = streams[0]
        done = [await collect(engine, events, rid)]
    else:
        outcomes = await asyncio.gather(*(collect(engine, e, r) for e, r in streams), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        done = list(outcomes)  # type: ignore[arg-type]
    if metrics is not None:
        for c in done:
            metrics.input_tokens.observe(c.result.details.input_length)
            metrics.output_tokens.observe(c.result.details.generated_tokens)
    return done


def logprob_sum(result: GenerationResult) -> float:
    return sum(t.logprob for t in result.tokens if t.logprob == t.logprob)  # NaN-safe
