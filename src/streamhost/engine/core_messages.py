"""The messages between the front end and the engine core: one per step each way.

In: :class:`CoreInput` (new requests, beam-search requests, aborts, stop-string finishes).
Out: :class:`CoreOutput` (every sequence's sampled token of the step, admissions with their queue
time, prompt log-probabilities, per-request failures, beam results, the core's counters).

Plain dataclasses of ints, floats, strings and tuples: they cross a process boundary pickled
(engine/core_client.py) or are handed over as they are when the core runs in a thread. This
module imports no torch, so the front end does not need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamhost.engine.limits import EngineLimits
from streamhost.engine.types import GenerationParameters

TopPicks = list[tuple[int, float]]  # (token id, log-probability), best first
RequestKey = int  # the front end's short key for a request (client request ids may repeat)


@dataclass
class CoreRequest:
    """A validated request as the core needs it: ids, budget, sampling parameters (seed fixed)."""

    request_id: RequestKey
    prompt_ids: list[int]
    max_new_tokens: int
    params: GenerationParameters
    arrival: float  # time.monotonic() at submission: CLOCK_MONOTONIC is shared by the processes
    prompt_logprobs: bool = False


@dataclass
class CoreInput:
    """What the front end has for the core since its last message."""

    new: list[CoreRequest] = field(default_factory=list)
    beams: list[CoreRequest] = field(default_factory=list)
    aborted: list[RequestKey] = field(default_factory=list)  # the client went away: counted as aborted
    finished: list[RequestKey] = field(default_factory=list)  # the front end found a stop string
    shutdown: bool = False

    def __bool__(self) -> bool:
        return bool(self.new or self.beams or self.aborted or self.finished or self.shutdown)


@dataclass
class CoreStats:
    """The core's counters, sent with every output (the front end's /metrics reads the last one)."""

    waiting: int = 0
    running: int = 0
    steps: int = 0
    prompt_tokens: int = 0  # prompt tokens computed (prefilled)
    prompt_tokens_cached: int = 0  # prompt tokens whose KV a row already held (prefix reuse)
    prefix_cache_hits: int = 0  # requests that reused at least one prompt token
    generated_tokens: int = 0
    aborted: int = 0
    failed: int = 0
    last_batch_size: int = 0
    live_rows: int = 0  # KV rows held: 0 once every finished or aborted sequence is freed


# (request id, token id, logprob, top picks or None, finish reason decided by the core or None)
SampledToken = tuple[RequestKey, int, float, "TopPicks | None", "str | None"]


@dataclass
class CoreOutput:
    """One step's results for every sequence, in the order they were sampled."""

    tokens: list[SampledToken] = field(default_factory=list)
    # (request id, queue time s, prompt tokens reused from the prefix cache)
    admitted: list[tuple[RequestKey, float, int]] = field(default_factory=list)
    prompt_logprobs: list[tuple[RequestKey, int, list[float]]] = field(
        default_factory=list
    )  # (id, chunk start, values)
    failed: list[tuple[RequestKey, str]] = field(default_factory=list)  # (request id, message)
    beams: list[tuple[RequestKey, list[int]]] = field(default_factory=list)  # (request id, generated ids)
    stats: CoreStats = field(default_factory=CoreStats)


@dataclass
class CoreInfo:
    """What the front end learns from the core once its model is loaded."""

    model_path: Path
    executor_name: str
    dtype: str
    device_type: str
    max_positions: int
    prefill_chunk: int
    limits: EngineLimits
    eos_ids: frozenset[int]
    supports_beam_search: bool
    describe: dict[str, Any] | None = None  # the executor's own report (/info, under its name)
    tokenizer: Any = None  # the executor's tokenizer (pickled across: the very same vocabulary)
    pid: int | None = None  # the core process, when it runs in one
    cpus: list[int] | None = None  # the cores it is pinned to
    threads: int | None = None  # torch threads in the core


@dataclass(frozen=True)
class ExecutorSummary:
    """What the front end knows of the executor: its name and device (``executor.device.type``)."""

    name: str
    device: Any  # an object with ``.type`` ("cpu", "cuda"), as torch.device has
