"""A timed ``llama_decode`` of hand-laid batches, shared by the raw llama.cpp step benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


def decode_timer(llama: Any, ctx: Any, batch: Any, rng: Any) -> Callable[[list[tuple[int, int, int]]], float]:
    """``run([(seq, pos, wants_logits), ...])`` fills ``batch`` with random token ids at those
    sequences and positions, decodes it on ``ctx`` and returns the wall seconds of the decode."""

    def run(tokens: list[tuple[int, int, int]]) -> float:
        for i, (seq, pos, logits) in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = (
                int(rng.integers(100, 40000)), pos, 1, logits,
            )  # fmt: skip
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(tokens)
        started = time.perf_counter()
        assert llama.llama_decode(ctx, batch) == 0
        return time.perf_counter() - started

    return run


def step_bars(
    ax: Any, shapes: Sequence[str], series: dict[str, Sequence[float]], title: str, rotate: bool = False
) -> None:
    """One group of bars per step shape, one bar per configuration: the step benchmarks' plot."""
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(shapes))], values, width, label=label)
    ticks = [i + 0.4 - width / 2 for i in range(len(shapes))]
    if rotate:
        ax.set_xticks(ticks, shapes, rotation=30, ha="right", fontsize=8)
    else:
        ax.set_xticks(ticks, shapes)
    ax.set_ylabel("llama_decode wall ms (median)")
    ax.set_title(title)
    ax.legend(fontsize=8)
