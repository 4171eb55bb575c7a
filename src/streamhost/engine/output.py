"""Output processing: sampled token ids in, the client's events out (vLLM v1's OutputProcessor).

This is the one place that turns token ids into what a client sees: the incremental detokenizer,
stop strings, the finish decision (stop string, EOS, length) and the :class:`TokenEvent` objects,
the last of which carries ``generated_text`` and ``details``. The streaming path, ``generate_full``,
beam search and the model server's whole-answer collection all go through it, so they cannot
disagree on where a text ends or why.

It knows nothing of the engine's batch, rows or KV cache: it takes a request's
:class:`RequestOutput` and the request's new token ids (with their log-probabilities) and returns
events. Today the engine thread calls it right after sampling; once the engine core runs in its own
process, the core sends sampled ids per step and the front end calls the same methods, turning a
finish it decides (a stop string) into an abort sent back to the core, as vLLM does.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamhost.engine.detokenizer import IncrementalDetokenizer, token_text
from streamhost.engine.errors import GenerationError
from streamhost.engine.stops import StopSequenceMatcher
from streamhost.engine.types import (
    FinishReason,
    GenerationDetails,
    GenerationParameters,
    GenerationResult,
    PrefillToken,
    TokenEvent,
    TopToken,
)

TopPicks = Sequence[tuple[int, float]]  # (token id, log-probability), best first


@dataclass(eq=False)
class RequestOutput:
    """The output side of one request: its text so far and whether it has finished.

    Built by :meth:`OutputProcessor.new_request`; only the output processor changes it (the caller
    sets ``queue_time`` and ``cached_tokens`` once the request is admitted).
    """

    request_id: str
    prompt_ids: list[int]
    params: GenerationParameters
    max_new_tokens: int
    detokenizer: IncrementalDetokenizer
    stops: StopSequenceMatcher | None
    seed: int | None = None
    queue_time: float = 0.0  # seconds from submission until its prefill started (TGI's x-queue-time)
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (OpenAI's usage.prompt_tokens_details)
    generated: int = 0  # tokens processed so far
    texts: list[str] = field(default_factory=list)  # emitted non-special text pieces
    prefill: list[PrefillToken] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class OutputProcessor:
    """Turns one model's sampled token ids into client events; shared by every request of the model."""

    def __init__(
        self, tokenizer: Any, eos_ids: frozenset[int] | set[int], special_ids: frozenset[int] | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)
        self.special_ids = (
            frozenset(getattr(tokenizer, "all_special_ids", []) or [])
            if special_ids is None
            else frozenset(special_ids)
        )

    def new_request(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        params: GenerationParameters,
        max_new_tokens: int,
        seed: int | None = None,
    ) -> RequestOutput:
        return RequestOutput(
            request_id=request_id,
            prompt_ids=list(prompt_ids),
            params=params,
            max_new_tokens=max_new_tokens,
            detokenizer=IncrementalDetokenizer(self.tokenizer, prompt_ids, skip_special_tokens=True),
            stops=StopSequenceMatcher(params.stop) if params.stop else None,
            seed=seed,
        )

    # -- the per-step call ---------------------------------------------------------------------
    def process(
        self,
        state: RequestOutput,
        token_ids: Sequence[int],
        logprobs: Sequence[float] | None = None,
        top: Sequence[TopPicks | None] | None = None,
    ) -> list[TokenEvent]:
        """Take the request's new tokens; return one event per token, the last one final if it finished.

        Tokens after a finishing one are ignored (a core may have sampled one more before it heard of
        the finish).
        """
        events: list[TokenEvent] = []
        for i, tok in enumerate(token_ids):
            if state.finish_reason is not None:
                break
            logprob = float(logprobs[i]) if logprobs is not None else math.nan
            events.append(self._advance(state, int(tok), logprob, top[i] if top is not None else None))
        return events

    def _advance(self, state: RequestOutput, tok: int, logprob: float, top: TopPicks | None) -> TokenEvent:
        state.generated += 1
        special = tok in self.special_ids
        piece = state.detokenizer.add(tok)
        stopped = False
        if state.stops is not None and piece:
            piece, stopped = state.stops.push(piece)
        finish: FinishReason | None = None
        if stopped:
            finish = FinishReason.STOP_SEQUENCE
        elif tok in self.eos_ids and not state.params.ignore_eos:
            finish = FinishReason.EOS_TOKEN
        elif state.generated >= state.max_new_tokens:
            finish = FinishReason.LENGTH
        if finish is not None and finish is not FinishReason.STOP_SEQUENCE:
            piece += self._drain_pending(state)
        if special and not piece:
            text = token_text(self.tokenizer, tok)
        else:
            special = special and not piece  # held-back text released on EOS rides on its event
            text = piece
        if not special and text:
            state.texts.append(text)
        top_tokens = None
        if top is not None:
            top_tokens = [TopToken(t, token_text(self.tokenizer, t), lp, t in self.special_ids) for t, lp in top]
        event = TokenEvent(state.generated - 1, tok, text, logprob, special, top_tokens)
        if finish is not None:
            self._finalize(state, event, finish)
        return event

    def finish(self, state: RequestOutput, reason: FinishReason, last: TokenEvent | None = None) -> TokenEvent | None:
        """End a request whose tokens ran out before a finish of its own (beam search's ending).

        Held-back text rides on ``last`` (the request's last event), which becomes the final one;
        with no ``last`` a final event with no token of its own (``special``, id 0) is returned.
        """
        if state.finish_reason is not None:
            return None
        tail = self._drain_pending(state)
        if tail:
            state.texts.append(tail)
        if last is None:
            event = TokenEvent(state.generated, 0, tail, 0.0, not tail)
            self._finalize(state, event, reason)
            return event
        if tail:
            last.text = tail if last.special else last.text + tail
            last.special = False
        self._finalize(state, last, reason)
        return None

    def _finalize(self, state: RequestOutput, event: TokenEvent, reason: FinishReason) -> None:
        state.finish_reason = reason
        event.generated_text = self._full_text(state, "".join(state.texts))
        event.details = GenerationDetails(
            finish_reason=reason,
            generated_tokens=state.generated,
            input_length=len(state.prompt_ids),
            seed=state.seed,
            prefill=state.prefill,
            queue_time=state.queue_time,
            cached_tokens=state.cached_tokens,
        )

    def _drain_pending(self, state: RequestOutput) -> str:
        tail = state.detokenizer.flush()
        if state.stops is None:
            return tail
        held, stopped = state.stops.push(tail) if tail else ("", False)
        return held if stopped else held + state.stops.flush()

    def _full_text(self, state: RequestOutput, generated: str) -> str:
        if not state.params.return_full_text:
            return generated
        return self.tokenizer.decode(state.prompt_ids, skip_special_tokens=False) + generated

    # -- prompt details (decoder_input_details) -------------------------------------------------
    def add_prompt_logprobs(self, state: RequestOutput, start: int, logprobs: Sequence[float]) -> None:
        """Record the log-probabilities of prompt tokens ``start + 1 ...`` (from a chunk starting at ``start``).

        The first prompt token has no log-probability (TGI reports ``null``).
        """
        ids = state.prompt_ids
        if start == 0 and ids:
            state.prefill.append(PrefillToken(ids[0], token_text(self.tokenizer, ids[0]), None))
        for i, value in enumerate(logprobs):
            tok = ids[start + i + 1]
            state.prefill.append(PrefillToken(tok, token_text(self.tokenizer, tok), float(value)))


async def gather_result(events: AsyncIterator[TokenEvent]) -> GenerationResult:
    """Drain a request's events into a whole answer; the clock starts at the call.

    ``inference_time`` is the time after the request's prefill started (TGI's x-inference-time).
    """
    submitted = time.monotonic()
    tokens: list[TokenEvent] = []
    async for event in events:
        tokens.append(event)
        if event.is_final:
            break
    final = tokens[-1] if tokens else None
    if final is None or final.details is None or final.generated_text is None:
        raise GenerationError("the engine ended the request without a final token")
    queue_time = final.details.queue_time
    inference_time = max(0.0, time.monotonic() - submitted - queue_time)
    return GenerationResult(
        final.generated_text, tokens, final.details, queue_time=queue_time, inference_time=inference_time
    )
