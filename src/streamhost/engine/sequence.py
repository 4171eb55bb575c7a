"""One request's life inside the engine: its prompt, its row in the KV store, its output so far."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable

from streamhost.engine.detokenizer import IncrementalDetokenizer
from streamhost.engine.sampling import RequestSampler
from streamhost.engine.stops import StopSequenceMatcher
from streamhost.engine.types import GenerationParameters, PrefillToken

EventSink = Callable[[list], None]


class Status(enum.Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """Engine-side state of a request. Only the engine thread mutates it (``aborted`` excepted)."""

    request_id: str
    prompt_ids: list[int]
    params: GenerationParameters
    max_new_tokens: int
    sampler: RequestSampler
    detokenizer: IncrementalDetokenizer
    stops: StopSequenceMatcher | None
    sink: EventSink
    arrival: float = field(default_factory=time.monotonic)
    status: Status = Status.WAITING
    row: int | None = None
    prefilled: int = 0  # prompt tokens already written to the KV store
    generated: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # emitted non-special text pieces
    prefill_tokens: list[PrefillToken] = field(default_factory=list)
    aborted: bool = False
    first_token_at: float | None = None
    admitted_at: float | None = None

    @property
    def input_length(self) -> int:
        return len(self.prompt_ids)

    @property
    def reserved_tokens(self) -> int:
        """Tokens this request may occupy at most (what the batch token budget counts)."""
        return len(self.prompt_ids) + self.max_new_tokens

    @property
    def remaining_prompt(self) -> int:
        return len(self.prompt_ids) - self.prefilled

    @property
    def cached_tokens(self) -> int:
        """Tokens already in the KV store: the prompt plus every generated token but the last."""
        return self.prefilled + max(len(self.generated) - 1, 0)

    @property
    def wants_prefill_details(self) -> bool:
        return bool(self.params.decoder_input_details)
