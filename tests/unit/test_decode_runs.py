"""How a decode step's rows are split into SDPA calls (kv_cache._decode_runs) and that the split
changes no result: what a user of the engine would see is the same attention, computed faster."""

from __future__ import annotations

import pytest
import torch

from streamhost.engine import kv_cache
from streamhost.engine.kv_cache import KVStore, Segment, StepPlan, _decode_runs, attend


def _pending(lengths: list[int], rows: list[int] | None = None) -> list[tuple[int, int, int]]:
    rows = rows if rows is not None else list(range(len(lengths)))
    return [(q, row, length) for q, (row, length) in enumerate(zip(rows, lengths))]


def test_rows_of_similar_length_share_one_call() -> None:
    assert _decode_runs(_pending([40, 50, 60, 63]), invariant=False) == [(0, 4, 64)]


def test_a_long_row_among_short_ones_gets_its_own_call_when_padding_costs_more() -> None:
    lengths = [50] * 8 + [700] + [50] * 8
    runs = _decode_runs(_pending(lengths), invariant=False)
    assert (8, 9, 704) in runs
    assert sum(j - i for i, j, _ in runs) == len(lengths)
    assert all(bucket == 64 for i, j, bucket in runs if (i, j) != (8, 9))


def test_rows_that_are_not_consecutive_never_share_a_call() -> None:
    runs = _decode_runs(_pending([50, 50, 50], rows=[0, 1, 5]), invariant=False)
    assert runs == [(0, 2, 64), (2, 3, 64)]


def test_the_invariant_mode_splits_wherever_the_bucket_changes() -> None:
    runs = _decode_runs(_pending([50, 60, 100, 120, 50]), invariant=True)
    assert runs == [(0, 2, 64), (2, 4, 128), (4, 5, 64)]


def test_the_split_never_costs_more_than_one_call_by_the_model() -> None:
    lengths = [47, 261, 640, 55, 300, 299, 47, 700, 90, 91, 92, 650]
    runs = _decode_runs(_pending(lengths), invariant=False)
    cost = sum(kv_cache.DECODE_CALL_COST + (j - i) * b for i, j, b in runs)
    assert cost <= kv_cache.DECODE_CALL_COST + len(lengths) * 704


@pytest.mark.parametrize("seed", [0, 1])
def test_split_and_single_call_attention_are_equal(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(seed)
    lengths = [47, 700, 50, 61, 300, 47, 640, 52]
    store = KVStore(max_rows=16, max_positions=1024)
    store.reserve(len(lengths), 1024)
    keys, values = store.layer(0, torch.zeros(1, 2, 1, 16, dtype=torch.bfloat16))
    keys.normal_()
    values.normal_()
    segments = [Segment(row, [0], n - 1) for row, n in enumerate(lengths)]
    query = torch.randn(1, 4, len(lengths), 16, dtype=torch.bfloat16)
    split = StepPlan.build(store, segments, torch.bfloat16, torch.device("cpu"))
    monkeypatch.setattr(kv_cache, "DECODE_CALL_COST", 10**9)
    single = StepPlan.build(store, segments, torch.bfloat16, torch.device("cpu"))
    assert len(single.parts) == 1 and len(split.parts) > 1
    torch.testing.assert_close(attend(split, 0, query, 0.25), attend(single, 0, query, 0.25), atol=0, rtol=0)
