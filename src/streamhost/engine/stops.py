"""Stop strings over streamed text: never emit any part of one, and hold back as little as possible.

A stop string can arrive split across tokens ("<|user" + "|>"), so text that could still be the
start of one is held until the next chunk decides. Only the longest suffix of the pending text that
is a proper prefix of some stop string is held; everything before it is safe.

Which stop wins: the stream stops at the first character where some stop string is complete;
if several end at that character, the longest (earliest-starting) one is cut. This is what a
reader going character by character would do, so the result does not depend on how the text was
split into chunks (tokens). For stop strings that do not overlap it is simply the earliest match.

Empty stop strings are ignored (they would match everywhere); protocol layers that want to
reject them should do so before building the matcher.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopSequenceMatcher:
    """Holds back text that could still be the start of a stop string."""

    __slots__ = ("_stops", "_prefixes", "_max_hold", "_held", "_stopped", "_matched")

    def __init__(self, stop_sequences: Sequence[str]) -> None:
        if isinstance(stop_sequences, str):
            raise TypeError("stop_sequences must be a list of strings, not a single string")
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stop_sequences if s))
        # Every proper prefix of every stop string: a suffix of pending text found here is held.
        self._prefixes: frozenset[str] = frozenset(s[:k] for s in self._stops for k in range(1, len(s)))
        self._max_hold = max((len(s) - 1 for s in self._stops), default=0)
        self._held = ""
        self._stopped = False
        self._matched: str | None = None

    def push(self, text: str) -> tuple[str, bool]:
        """Add newly decoded text; return (text safe to emit now, stopped?).

        When stopped, the emitted text is everything before the stop string; the stop string and
        anything after it are dropped, and later pushes return ``("", True)``.
        """
        if self._stopped:
            return "", True
        if not self._stops:
            return text, False
        if not text:
            return "", False
        pending = self._held + text
        best_end = best_start = -1
        for stop in self._stops:
            # Anything before the held text was already checked, so a new match must start inside
            # ``pending``; its first occurrence is also the one that ends first.
            start = pending.find(stop)
            if start >= 0:
                end = start + len(stop)
                if best_end < 0 or end < best_end or (end == best_end and start < best_start):
                    best_end, best_start, self._matched = end, start, stop
        if best_end >= 0:
            self._stopped = True
            self._held = ""
            return pending[:best_start], True
        hold = self._hold_length(pending)
        if hold:
            self._held = pending[-hold:]
            return pending[:-hold], False
        self._held = ""
        return pending, False

    def flush(self) -> str:
        """End of generation without a stop: release what was held back."""
        held, self._held = self._held, ""
        return "" if self._stopped else held

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def matched(self) -> str | None:
        """The stop string that ended the stream (vLLM/OpenAI report it as ``stop_reason``)."""
        return self._matched

    @property
    def held(self) -> str:
        """Text currently held back because it could begin a stop string."""
        return self._held

    def _hold_length(self, pending: str) -> int:
        """Length of the longest suffix of ``pending`` that is a proper prefix of a stop string."""
        prefixes = self._prefixes
        for k in range(min(len(pending), self._max_hold), 0, -1):
            if pending[-k:] in prefixes:
                return k
        return 0
