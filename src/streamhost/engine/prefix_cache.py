"""Prefix reuse: a finished sequence's KV row keeps its contents for the next prompt that shares them.

Chat clients re-send the whole conversation every turn and apps send the same system prompt with
every request, so most of a new prompt is often already in a row that an earlier request left
behind. :class:`RowPool` is the free list of KV rows (both executors hand rows out through it: the
torch ``KVStore`` and llama.cpp's ``SequenceSlots``) plus, for each free row, the token ids whose
keys/values it still holds. On admission :meth:`RowPool.claim` picks the free row whose tokens
share the longest prefix with the new prompt (llama.cpp server's slot reuse by prompt similarity,
done per row rather than per block as vLLM and SGLang do), and the prompt's prefill starts there.

Rules that keep reuse exact:
- a row is reused only up to the first token that differs and never for the prompt's last token
  (the first sampled token needs that token's logits);
- a prompt without a match of at least ``min_match`` tokens takes, in this order, the lowest free
  row holding nothing, a row never used yet while the executor has room for it without allocating
  (``spare_rows``), and only then the held row freed longest ago (least recently used); a shorter
  match on the row it gets is still reused. Taking the lowest free row instead evicted the last
  conversation on every unrelated prompt: two users taking turns never hit the cache;
- whatever frees or reallocates KV memory calls :meth:`RowPool.forget_all`, and a row whose step
  failed is freed without tokens, so a retained row never claims contents it does not hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Shortest shared prefix worth choosing a row for (rather than the lowest free row): shorter
# matches are chat-template boilerplate (``<|im_start|>system\n``) that every prompt shares.
MIN_MATCH_TOKENS = 16


def common_prefix_length(held: np.ndarray, prompt: np.ndarray) -> int:
    """How many leading tokens ``held`` and ``prompt`` share (one vectorised compare, no Python loop)."""
    n = min(held.shape[0], prompt.shape[0])
    if n == 0:
        return 0
    differ = np.flatnonzero(held[:n] != prompt[:n])
    return int(differ[0]) if differ.size else n


@dataclass(frozen=True)
class Claim:
    """A row handed to a new sequence: ``reused`` of its leading tokens are valid for the prompt;
    ``held`` is how many tokens it held before (the executor drops positions ``reused .. held``)."""

    row: int
    reused: int = 0
    held: int = 0


class RowPool:
    """KV row ids in use and free, lowest free first; free rows remember the tokens they hold."""

    def __init__(self) -> None:
        self._free: list[int] = []
        self._next = 0
        self._held: dict[int, np.ndarray] = {}  # free row -> token ids whose KV it still holds
        self._freed_at: dict[int, int] = {}  # free row -> when it was freed (a counter), for LRU eviction
        self._clock = 0
        # rows the executor holds memory for already (llama.cpp: its sequences; torch: the KV buffer's
        # rows): a prompt without a match takes a new one of these before evicting a held row
        self.spare_rows = 0

    # -- allocation --------------------------------------------------------------------------
    def alloc(self) -> int:
        """The lowest free row, its contents forgotten (no reuse)."""
        return self.claim(None).row

    def claim(self, prompt_ids: Sequence[int] | None, min_match: int = MIN_MATCH_TOKENS) -> Claim:
        """A row for a new prompt: the free row sharing the longest prefix with it (at least
        ``min_match`` tokens), else the lowest free row; ``None`` asks for no reuse."""
        shared: dict[int, int] = {}
        if prompt_ids is not None and len(prompt_ids) > 1 and self._held:
            prompt = np.asarray(prompt_ids, dtype=np.int64)
            shared = {r: common_prefix_length(h, prompt) for r in self._free if (h := self._held.get(r)) is not None}
        best = max(shared, key=lambda r: (shared[r], -r), default=None)  # ties: the lowest row
        row = best if best is not None and shared[best] >= min_match else self._unmatched_row()
        if row is None:
            self._next += 1
            return Claim(self._next - 1)
        self._free.remove(row)
        self._freed_at.pop(row, None)
        reused = min(shared.get(row, 0), len(prompt_ids) - 1) if prompt_ids else 0  # the last token is computed
        held_tokens = self._held.pop(row, None)
        return Claim(row, reused, 0 if held_tokens is None else int(held_tokens.shape[0]))

    def _unmatched_row(self) -> int | None:
        """The row for a prompt nothing matches (module docstring); None: a new row."""
        empty = [r for r in self._free if r not in self._held]
        if empty:
            return min(empty)
        if not self._free or self._next < self.spare_rows:
            return None
        return min(self._free, key=lambda r: self._freed_at.get(r, -1))

    def free(self, row: int, tokens: Sequence[int] | None = None) -> None:
        """Return ``row``; ``tokens`` are the ids whose KV it holds (kept for reuse), ``None`` if none."""
        self._free.append(row)
        self._clock += 1
        self._freed_at[row] = self._clock
        if tokens is not None and len(tokens) > 0:
            self._held[row] = np.asarray(tokens, dtype=np.int64)
        else:
            self._held.pop(row, None)

    def forget_all(self) -> None:
        """The KV memory was freed or reallocated: no free row holds anything any more."""
        self._held.clear()

    # -- state -------------------------------------------------------------------------------
    def held(self, row: int) -> int:
        """Tokens a free row holds (0 for a live row or an empty one)."""
        tokens = self._held.get(row)
        return 0 if tokens is None else int(tokens.shape[0])

    @property
    def retained_tokens(self) -> int:
        """Tokens held by free rows, all together."""
        return sum(int(t.shape[0]) for t in self._held.values())

    @property
    def live_rows(self) -> int:
        return self._next - len(self._free)
