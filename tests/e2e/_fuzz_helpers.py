"""What every fuzz suite shares: reproducible settings, a request budget, and a stream that must not notice.

``AlongsideStream`` runs one greedy stream once alone (the reference), then over and over while
the fuzzing runs; every run must produce the same text, so no generated request may corrupt or
disturb another request's stream. ``Budget`` counts the requests sent so a suite can assert that
it sent at least the number it promises.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, settings

from streamhost.fuzzing import REQUIRED

REQUESTS_PER_API = 1000

# Narrowing of the model server's request schemas for the "valid" bodies: few new tokens, short texts,
# and values TGI's rules accept, so a valid request is cheap and most of them are answered.
SHRINK = {
    "max_new_tokens": {"maximum": 3}, "max_tokens": {"maximum": 3}, "max_completion_tokens": {"maximum": 3},
    "inputs": {"minLength": 1, "maxLength": 40, "minItems": 1, "maxItems": 2},
    "prompt": {"minLength": 1, "maxLength": 40, "minItems": 1, "maxItems": 2},
    "content": {"minLength": 1, "maxLength": 40, "minItems": 1, "maxItems": 2},
    "messages": {"minItems": 1, "maxItems": 3}, "role": {"enum": ["system", "user", "assistant"]}, "stop": {"maxItems": 5},
    # values TGI's rules accept (the schema cannot say "> 0 and < 1"); mutations still send the rest
    "temperature": {"minimum": 0.05, "maximum": 2}, "top_p": {"minimum": 0.05, "maximum": 0.95},
    "typical_p": {"minimum": 0.05, "maximum": 0.95}, "repetition_penalty": {"minimum": 0.5, "maximum": 2},
    "frequency_penalty": {"minimum": -2, "maximum": 2}, "top_k": {"minimum": 1, "maximum": 50},
    REQUIRED: ["parameters", "max_new_tokens", "max_tokens"],  # a valid body never runs to the token limit
}  # fmt: skip


def fuzz_settings(examples: int) -> settings:
    """Derandomized (the same requests on every run and machine), no example database, no deadlines."""
    return settings(
        max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture],
    )  # fmt: skip


class Budget:
    def __init__(self) -> None:
        self.sent = 0
        self.statuses: dict[int, int] = {}

    def count(self, status: int) -> None:
        self.sent += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1


class AlongsideStream:
    """``run`` (one complete greedy stream, returning its text) repeated in a thread during fuzzing."""

    def __init__(self, run: Callable[[], str], pause: float = 0.2) -> None:
        self.run = run
        self.pause = pause  # between runs: the stream overlaps the fuzzing without halving its pace
        self.expected = run()  # alone, before any fuzzing
        assert self.expected, "the reference stream produced no text"
        self.results: list[str] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.results.append(self.run())
            except BaseException as exc:
                self.errors.append(exc)
                return
            self._stop.wait(self.pause)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def check(self) -> None:
        assert not self.errors, f"the stream alongside the fuzzing failed: {self.errors[0]!r}"
        assert self.results, "the stream alongside never completed"
        changed = [text for text in self.results if text != self.expected]
        assert not changed, f"{len(changed)}/{len(self.results)} streams changed: {changed[0]!r} != {self.expected!r}"


def assert_no_traceback(*logs: Path | str) -> None:
    for log in logs:
        text = Path(log).read_text(errors="replace") if isinstance(log, Path) else log
        assert "Traceback" not in text, text[text.index("Traceback") - 500 : text.index("Traceback") + 3000]
