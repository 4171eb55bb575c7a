"""How many threads llama.cpp computes a step with.

llama.cpp's own rule is ``n_threads`` for a one-token micro-batch and ``n_threads_batch`` above. Ours
is by step size: small steps (up to :data:`SMALL_STEP_TOKENS` tokens: up to 16 streams decoding)
run on ``decode`` threads, bigger ones (prompt chunks) on every thread, set per step with
``llama_set_n_threads``. By default both are every engine core: through our server on this 2-core
machine, with the front end and the client on the same cores, two decode threads beat one at 1, 4
and 16 streams (96.9 / 125.8 / 190.1 against 64.5 / 83.3 / 125.6 output tok/s, bench/results/
llamacpp-threads-20261203-230047.json; docs/architecture.md, "llama.cpp threads per step"). One
decode thread wins only where other processes keep the cores busy (a two-thread barrier then waits
for a preempted thread's next time slice): ``--decode-threads 1`` there. Thread count does not
change results: ggml gives each output row to one thread whole.
"""

from __future__ import annotations

SMALL_STEP_TOKENS = 16  # steps of up to this many tokens run on the decode threads


class StepThreads:
    """Threads per step: ``decode`` (default: ``threads``) for steps of up to
    :data:`SMALL_STEP_TOKENS` tokens, ``threads`` above."""

    def __init__(self, threads: int, decode: int | None = None) -> None:
        self.threads = max(1, threads)
        self.decode = self.threads if decode is None else max(1, min(self.threads, decode))

    def for_step(self, tokens: int) -> int:
        """The thread count to run a step of ``tokens`` with."""
        return self.decode if tokens <= SMALL_STEP_TOKENS else self.threads

    def describe(self) -> dict[str, int]:
        """For the executor's report: threads of small and of large steps."""
        return {"small_steps": self.decode, "small_step_tokens": SMALL_STEP_TOKENS, "large_steps": self.threads}
