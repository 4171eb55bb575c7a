"""One request's scheduling state inside the engine: its prompt, its row in the KV store, its token ids.

What the client sees (text, stop strings, finish) is the output processor's (``output.py``); a
``Sequence`` holds only what the scheduler, the executor and the sampler need.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from streamhost.engine.sampling import RequestSampler


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
    max_new_tokens: int
    sampler: RequestSampler
    prompt_logprobs: bool = False  # decoder_input_details: the prompt's logits are kept for the output
    arrival: float = field(default_factory=time.monotonic)
    status: Status = Status.WAITING
    row: int | None = None
    prefilled: int = 0  # prompt tokens already written to the KV store
    reused_tokens: int = 0  # leading prompt tokens whose KV its row already held (prefix reuse)
    generated: list[int] = field(default_factory=list)
    aborted: bool = False
    admitted_at: float | None = None
    key: int = 0  # the front end's key for the request (engine/core_messages.py)

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

    def kv_token_ids(self) -> list[int]:
        """The ids whose keys/values its row holds, in position order (what prefix reuse matches)."""
        return self.prompt_ids[: self.prefilled] + self.generated[: max(len(self.generated) - 1, 0)]
