"""Decides, each step, which sequences decode and which prompt tokens are prefilled.

Rules (TGI's router semantics, adapted to chunked prefill):
- every running sequence decodes one token every step;
- prompt tokens prefilled per step, over all sequences together, are bounded by ``prefill_chunk``
  (and MAX_BATCH_PREFILL_TOKENS), first come first served: the sequence part-way through its
  prompt continues, then waiting prompts are admitted, the last one taking what is left of the
  budget and continuing next step. So no step is longer than one chunk's prefill whatever arrives:
  a burst of prompts reaches its first tokens one chunk at a time, in arrival order, while running
  streams keep getting a token every step (with TGI's whole-batch prefill, a burst of 15 mixed
  prompts here was one 2.4 s step in which every stream stalled and every newcomer waited for the
  last). The budget's size trades newcomers' TTFT and the running streams' inter-token gaps
  against per-step overhead; the defaults and their measurements are in engine.py;
- a new request is admitted FIFO while the batch has room: batch size (MAX_BATCH_SIZE) and the
  token budget (sum of prompt + max_new_tokens <= MAX_BATCH_TOTAL_TOKENS);
- while a batch is running, new requests are admitted only once ``WAITING_SERVED_RATIO`` x batch
  size requests wait, or after MAX_WAITING_TOKENS decode steps without admission, so a trickle of
  arrivals cannot slow running streams on every step;
- an admitted sequence gets its KV row at once (``on_admit``, the core's): when the row already
  holds a prefix of its prompt (engine/prefix_cache.py) its prefill starts past that prefix, and
  only the rest counts against the step's prompt budget.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from streamhost.engine.limits import EngineLimits
from streamhost.engine.sequence import Sequence, Status


@dataclass
class PrefillWork:
    seq: Sequence
    start: int
    length: int

    @property
    def completes_prompt(self) -> bool:
        return self.start + self.length == len(self.seq.prompt_ids)


@dataclass
class StepWork:
    decode: list[Sequence] = field(default_factory=list)
    prefill: list[PrefillWork] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.decode or self.prefill)


class Scheduler:
    """Holds the waiting queue, the sequences being prefilled and the running batch."""

    def __init__(
        self, limits: EngineLimits, prefill_chunk: int, on_admit: Callable[[Sequence], None] | None = None
    ) -> None:
        self.limits = limits
        self.on_admit: Callable[[Sequence], None] = on_admit or (lambda seq: None)
        self.prefill_chunk = max(1, min(prefill_chunk, limits.max_batch_prefill_tokens))
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.running: list[Sequence] = []
        self.steps_since_admission = 0

    # -- bookkeeping ---------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    @property
    def in_flight(self) -> int:
        return len(self.waiting) + len(self.prefilling) + len(self.running)

    def reserved_tokens(self) -> int:
        return sum(s.reserved_tokens for s in self.prefilling) + sum(s.reserved_tokens for s in self.running)

    def remove(self, seq: Sequence) -> None:
        for group in (self.running, self.prefilling):
            if seq in group:
                group.remove(seq)
                return
        try:
            self.waiting.remove(seq)
        except ValueError:
            pass

    def promote(self, seq: Sequence) -> None:
        """A sequence whose prompt is fully prefilled joins the running batch."""
        if seq in self.prefilling:
            self.prefilling.remove(seq)
        seq.status = Status.RUNNING
        self.running.append(seq)

    # -- the decision --------------------------------------------------------------------------
    def _may_admit(self) -> bool:
        if not self.waiting:
            return False
        if not self.running:
            return True
        if self.steps_since_admission >= self.limits.max_waiting_tokens:
            return True
        min_waiting = int(len(self.running) * self.limits.waiting_served_ratio)
        return len(self.waiting) >= min_waiting

    def schedule(self) -> StepWork:
        work = StepWork(decode=[s for s in self.running if s.generated])
        budget = self.prefill_chunk
        # Sequences already part-way through their prompt go first (they were admitted first).
        for seq in self.prefilling:
            if budget <= 0:
                break
            length = min(budget, seq.remaining_prompt)
            work.prefill.append(PrefillWork(seq, seq.prefilled, length))
            budget -= length
        admitted = False
        if self._may_admit():
            reserved = self.reserved_tokens()
            batch = len(self.running) + len(self.prefilling)
            while self.waiting and budget > 0:
                seq = self.waiting[0]
                if batch + 1 > self.limits.max_batch_size:
                    break
                if reserved + seq.reserved_tokens > self.limits.max_batch_total_tokens:
                    break
                self.waiting.popleft()
                self.on_admit(seq)  # takes a KV row; a reused prefix moves ``prefilled`` past it
                length = min(budget, seq.remaining_prompt)
                seq.status = Status.PREFILLING
                self.prefilling.append(seq)
                work.prefill.append(PrefillWork(seq, seq.prefilled, length))
                reserved += seq.reserved_tokens
                batch += 1
                budget -= length
                admitted = True
        self.steps_since_admission = 0 if admitted or not self.running else self.steps_since_admission + 1
        return work
