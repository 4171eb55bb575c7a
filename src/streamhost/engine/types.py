"""The engine's public data: what a request asks for and what comes back, token by token.

These types are shared by the engine, the protocol modules and the servers, so they carry no
behaviour beyond defaults. Field names follow TGI's ``parameters`` object (and LMI's extras).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass
class GenerationParameters:
    """Per-request generation settings; ``None`` means "use the default"."""

    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    seed: int | None = None
    max_new_tokens: int | None = None
    max_length: int | None = None  # LMI/JumpStart: prompt + generated tokens
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    return_full_text: bool = False
    truncate: int | None = None
    details: bool = False
    decoder_input_details: bool = False
    top_n_tokens: int | None = None
    best_of: int | None = None
    num_beams: int | None = None
    early_stopping: bool | None = None


class FinishReason(str, enum.Enum):
    LENGTH = "length"
    EOS_TOKEN = "eos_token"
    STOP_SEQUENCE = "stop_sequence"
    ABORTED = "aborted"  # the client went away or the request was cancelled
    ERROR = "error"


@dataclass
class TopToken:
    id: int
    text: str
    logprob: float
    special: bool


@dataclass
class PrefillToken:
    id: int
    text: str
    logprob: float | None


@dataclass
class GenerationDetails:
    """Sent with the final event: why it stopped, how many tokens, which seed."""

    finish_reason: FinishReason
    generated_tokens: int
    input_length: int
    seed: int | None
    prefill: list[PrefillToken] = field(default_factory=list)
    queue_time: float = 0.0  # seconds from submission until its prefill started (TGI's x-queue-time)
    cached_tokens: int = 0  # prompt tokens whose KV was reused from an earlier request (prefix cache)


@dataclass
class TokenEvent:
    """One generated token, as soon as it exists.

    ``text`` is the part of the output this token completes: it may be ``""`` while a multi-byte
    character or a possible stop string is held back, and it never contains any part of a stop
    string. The concatenated ``text`` of all non-special events equals ``generated_text``.
    """

    index: int
    token_id: int
    text: str
    logprob: float
    special: bool
    top_tokens: list[TopToken] | None = None
    # Set on the last event of a request only.
    generated_text: str | None = None
    details: GenerationDetails | None = None

    @property
    def is_final(self) -> bool:
        return self.details is not None


@dataclass
class GenerationResult:
    """A whole non-streamed answer (also what beam search returns)."""

    generated_text: str
    tokens: list[TokenEvent]
    details: GenerationDetails
    queue_time: float = 0.0
    inference_time: float = 0.0
