"""Decode attention over rows of mixed lengths: one padded SDPA call, or runs split by length.

A decode step's attention (engine/kv_cache.py) covers consecutive KV rows with one SDPA call padded
to the longest row's 64-token bucket; with the server's mixed prompts (about 47, 214 and 635 tokens
plus up to 128 generated) a short row then reads as many keys as the longest. ``_decode_runs``
splits the rows where the padding would cost more than another call (``DECODE_CALL_COST``, in
row-keys). This script measures, for one layer of SmolLM2-135M's shape (9 query heads, 3 KV heads,
head size 64, bf16) on the engine's threads:

* the cost model's two constants: the time per row-key, fitted over SDPA calls of 4-32 rows of
  256-1024 keys, and what one more call costs inside ``attend`` (slicing, the call, the copy out),
  from each batch's two plans: (split - one call + saved row-keys * per row-key) / extra calls;
* the attention of one layer for batches of 4, 16 and 32 rows with the server mix's lengths, as
  one padded call (the old plan) against the split plan; medians of interleaved repeats.

Results: bench/results/attention-runs-<timestamp>.json and a PNG beside it. Usage::

    flock /work/wt/bench.lock nice -n 5 env PYTHONPATH=src GOMP_SPINCOUNT=10000 .venv/bin/python bench/attention_runs.py
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, plot_path, write_results

HEADS, KV_HEADS, DIM = 9, 3, 64
PROMPT_MIX = (47, 47, 47, 47, 214, 214, 214, 635)  # serve.py's mixed pool: 4 short, 3 medium, 1 long per 8


def _median_time(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved old/new rounds per batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch
    import torch.nn.functional as F

    from streamhost.engine import kv_cache
    from streamhost.engine.kv_cache import KVStore, Segment, StepPlan, attend

    dtype = torch.bfloat16
    # -- the cost model's constants ------------------------------------------------------------
    fit = []
    for rows in (4, 16, 32):
        for keys in (256, 1024):
            q = torch.randn(rows, HEADS, 1, DIM, dtype=dtype)
            k = torch.randn(rows, KV_HEADS, keys, DIM, dtype=dtype)
            v = torch.randn(rows, KV_HEADS, keys, DIM, dtype=dtype)
            mask = torch.zeros(rows, 1, 1, keys, dtype=dtype)
            t = _median_time(
                lambda q=q, k=k, v=v, mask=mask: F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, enable_gqa=True
                ),
                args.repeats,
            )
            fit.append({"rows": rows, "keys": keys, "us": t * 1e6})
    xs = [f["rows"] * f["keys"] for f in fit]
    ys = [f["us"] for f in fit]
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    intercept = mean_y - slope * mean_x
    print(f"SDPA: {slope * 1e3:.1f} ns per row-key (fit intercept {intercept:.1f} us)")

    # -- old plan (one padded call per run of rows) against the split plan ---------------------
    rng = random.Random(args.seed)
    batches: dict[str, Any] = {}
    for n in (4, 16, 32):
        lengths = [rng.choice(PROMPT_MIX) + rng.randrange(0, 128) for _ in range(n)]
        store = KVStore(max_rows=64, max_positions=1024)
        store.reserve(n, 1024)
        store.layer(0, torch.zeros(1, KV_HEADS, 1, DIM, dtype=dtype))
        assert store.keys[0] is not None and store.values[0] is not None
        store.keys[0].normal_()
        store.values[0].normal_()
        segments = [Segment(row, [0], length - 1) for row, length in enumerate(lengths)]
        query = torch.randn(1, HEADS, n, DIM, dtype=dtype)
        plans = {}
        saved = kv_cache.DECODE_CALL_COST
        for label, cost in (("one_call", 10**9), ("split", saved)):
            kv_cache.DECODE_CALL_COST = cost
            plans[label] = StepPlan.build(store, segments, dtype, torch.device("cpu"))
        kv_cache.DECODE_CALL_COST = saved
        times: dict[str, list[float]] = {label: [] for label in plans}
        for r in range(args.rounds):
            for label in list(plans) if r % 2 == 0 else list(plans)[::-1]:
                plan = plans[label]
                times[label].append(
                    _median_time(lambda plan=plan, query=query: attend(plan, 0, query, DIM**-0.5), args.repeats)
                )
        out_one = attend(plans["one_call"], 0, query, DIM**-0.5)
        out_split = attend(plans["split"], 0, query, DIM**-0.5)
        entry = {
            "lengths": lengths,
            "calls": {label: len(plan.parts) for label, plan in plans.items()},
            "row_keys": {label: sum((p.row1 - p.row0) * p.kv_len for p in plan.parts) for label, plan in plans.items()},
            "us": {label: statistics.median(v) * 1e6 for label, v in times.items()},
            "us_runs": {label: [t * 1e6 for t in v] for label, v in times.items()},
            "max_abs_diff": float((out_one.float() - out_split.float()).abs().max()),
        }
        entry["speedup"] = entry["us"]["one_call"] / entry["us"]["split"]
        extra_calls = entry["calls"]["split"] - entry["calls"]["one_call"]
        if extra_calls:
            saved = entry["row_keys"]["one_call"] - entry["row_keys"]["split"]
            entry["call_us"] = (entry["us"]["split"] - entry["us"]["one_call"] + saved * slope) / extra_calls
        batches[str(n)] = entry
        print(
            f"{n:>2} rows: one call {entry['us']['one_call']:7.0f} us ({entry['row_keys']['one_call']} row-keys), "
            f"split {entry['us']['split']:7.0f} us ({entry['calls']['split']} calls, "
            f"{entry['row_keys']['split']} row-keys): {entry['speedup']:.2f}x, max |diff| {entry['max_abs_diff']:.2g}",
            flush=True,
        )
    call_us = statistics.median([b["call_us"] for b in batches.values() if "call_us" in b] or [float("nan")])
    print(
        f"one more call in attend: {call_us:.1f} us = {call_us / slope:.0f} row-keys (used: {kv_cache.DECODE_CALL_COST})"
    )
    results = {
        "benchmark": "attention-runs",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "shape": {"heads": HEADS, "kv_heads": KV_HEADS, "head_dim": DIM, "dtype": "bfloat16"},
        "torch_threads": torch.get_num_threads(),
        "machine": {**machine_info(), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")},
        "cost_model": {
            "call_us": call_us,
            "row_key_ns": slope * 1e3,
            "call_in_row_keys": call_us / slope,
            "used": kv_cache.DECODE_CALL_COST,
        },
        "fit": fit,
        "batches": batches,
    }
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    stamped = write_results(results, "attention-runs")
    plot(results, plot_path(stamped))
    print(f"wrote {stamped}")
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["batches"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    width = 0.38
    for offset, label in ((-width / 2, "one_call"), (width / 2, "split")):
        values = [results["batches"][n]["us"][label] for n in labels]
        ax.bar([i + offset for i in range(len(labels))], values, width, label=label.replace("_", " "))
    ax.set_xticks(range(len(labels)), [f"{n} rows" for n in labels])
    ax.set_ylabel("us per layer (decode attention, median)")
    ax.set_title("Decode attention, mixed row lengths: one padded call vs split runs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
