"""How many threads llama.cpp computes a step with, chosen by measuring the steps themselves.

A one-token decode step of a small model is hundreds of short parallel regions, each ending in a
barrier that waits for its slowest thread. On a quiet 2-core machine two threads decode twice as
fast as one (SmolLM2-135M Q4_1: ~220 against ~110 tok/s in our engine core); when anything else
wants a core (our own front end detokenizing and streaming, a client, another process), a barrier
of two threads waits for the preempted one's next time slice and one thread was 3-10x faster
(bench/results/llamacpp-*.json; docs/architecture.md, "llama.cpp threads per step"). Neither
count wins everywhere, so for small steps :class:`StepThreads` keeps a short record of
``llama_decode`` wall times per thread count and uses the faster, trying the other one for a few
steps every so often. Big steps (prompt chunks, many streams) are compute-bound and run on every
thread. Thread count does not change results: ggml gives each output row to one thread whole.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# Steps of up to this many tokens are tuned (decode of up to this many streams); larger ones use
# every thread. Buckets: steps of similar size share a record.
TUNED_STEP_TOKENS = 16
BUCKETS = (1, 4, TUNED_STEP_TOKENS)  # upper bounds: 1 token, 2-4, 5-16
EXPLORE_EVERY = 64  # steps between two tries of the other thread count
PROBE_STEPS = 3  # steps per try
WINDOW = 5  # timings kept per thread count: the median decides


@dataclass
class _Bucket:
    """The timings of one step-size bucket and the thread count it currently uses."""

    choices: tuple[int, ...]
    current: int
    timings: dict[int, deque[float]] = field(default_factory=dict)
    steps: int = 0
    probe: int | None = None
    probe_left: int = 0

    def __post_init__(self) -> None:
        self.timings = {n: deque(maxlen=WINDOW) for n in self.choices}

    def pick(self) -> int:
        if self.probe_left > 0:
            self.probe_left -= 1
            assert self.probe is not None
            return self.probe
        self.steps += 1
        if self.steps % EXPLORE_EVERY == 1:  # the first step, then every EXPLORE_EVERY
            others = [n for n in self.choices if n != self.current]
            if others:
                self.probe = others[(self.steps // EXPLORE_EVERY) % len(others)]
                self.probe_left = PROBE_STEPS - 1
                return self.probe
        return self.current

    def record(self, threads: int, seconds: float) -> None:
        record = self.timings.get(threads)
        if record is None:
            return
        record.append(seconds)
        if self.probe_left == 0:
            self.current = min(
                (n for n in self.choices if self.timings[n]), key=lambda n: (_median(self.timings[n]), -n)
            )


def _median(values: deque[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


class StepThreads:
    """Threads per step: ``fixed`` for small steps when given, else the faster of ``threads`` and
    ``threads - 1`` as measured (:class:`_Bucket`); ``threads`` for every step above
    :data:`TUNED_STEP_TOKENS` tokens."""

    def __init__(self, threads: int, fixed: int | None = None) -> None:
        self.threads = max(1, threads)
        self.fixed = None if fixed is None else max(1, min(self.threads, fixed))
        choices = tuple(sorted({self.threads, max(1, self.threads - 1)}, reverse=True))
        self._buckets = [_Bucket(choices, self.threads) for _ in BUCKETS]

    @property
    def tuned(self) -> bool:
        return self.fixed is None and self.threads > 1

    def _bucket(self, tokens: int) -> _Bucket | None:
        for limit, bucket in zip(BUCKETS, self._buckets):
            if tokens <= limit:
                return bucket
        return None

    def for_step(self, tokens: int) -> int:
        """The thread count to run a step of ``tokens`` with."""
        if tokens > TUNED_STEP_TOKENS:
            return self.threads
        if self.fixed is not None:
            return self.fixed
        bucket = self._bucket(tokens)
        return bucket.pick() if bucket is not None and self.tuned else self.threads

    def record(self, tokens: int, threads: int, seconds: float) -> None:
        """How long a step of ``tokens`` took on ``threads`` threads (``llama_decode`` wall time)."""
        if self.tuned:
            bucket = self._bucket(tokens)
            if bucket is not None:
                bucket.record(threads, seconds)

    def describe(self) -> dict[str, object]:
        """For /info: the rule, and the count each small-step bucket uses now."""
        if not self.tuned:
            return {"small_steps": self.fixed or self.threads, "large_steps": self.threads, "tuned": False}
        now = {f"up_to_{limit}_tokens": bucket.current for limit, bucket in zip(BUCKETS, self._buckets)}
        return {"small_steps": now, "large_steps": self.threads, "tuned": True}
