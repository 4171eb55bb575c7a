"""Where a prefill step's time goes in the lean forward: op self-times of one packed prefill step.

The torch executor (lean forward, bf16) is driven directly: each shape (``--shapes``, e.g. one
1,024-token prompt, or four 256-token prompts packed into one step) is warmed up once, timed
``--repeats`` times (median wall), then run once under ``torch.profiler``; the op self-times are
grouped into linear layers (oneDNN prepacked GEMMs), attention (SDPA kernels), KV writes and
element-wise work (norms, rotary, activation, residual adds, copies). Random prompt ids: prefill
cost does not depend on the token values.

Results: bench/results/prefill-profile-<timestamp>.json and a stacked-bar PNG beside it. Usage::

    flock /work/wt/bench.lock nice -n 5 env PYTHONPATH=src GOMP_SPINCOUNT=10000 \\
        .venv/bin/python bench/prefill_profile.py --shapes 1024,4x256
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, plot_path, write_results

GROUPS = {
    "linear": {"mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::linear"},
    "attention": {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"},
    "kv_write": {"aten::index_copy_"},
}


def parse_shapes(text: str) -> list[list[int]]:
    """``"1024,4x256"`` -> ``[[1024], [256, 256, 256, 256]]``."""
    shapes = []
    for item in text.split(","):
        count, _, length = item.strip().rpartition("x")
        shapes.append([int(length)] * int(count or 1))
    return shapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1024,4x256", help="prefill steps: prompt lengths, NxLEN packs N")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    import torch
    import transformers
    from torch.profiler import ProfilerActivity, profile

    from streamhost.engine.executor import TorchExecutor
    from streamhost.engine.kv_cache import Segment
    from streamhost.engine.loader import ensure_default_model

    transformers.logging.set_verbosity_error()
    model_dir = ensure_default_model()
    executor = TorchExecutor(model_dir, dtype="bf16", compile=False, lean=True)
    assert executor.lean is not None
    generator = torch.Generator().manual_seed(0)

    def step(lengths: list[int]) -> float:
        rows = [executor.alloc_row() for _ in lengths]
        segments = [
            Segment(r, torch.randint(100, 40000, (n,), generator=generator).tolist(), 0, "last")
            for r, n in zip(rows, lengths)
        ]
        started = time.perf_counter()
        executor.forward(segments)
        elapsed = time.perf_counter() - started
        for r in rows:
            executor.free_row(r)
        return elapsed

    shapes: dict[str, Any] = {}
    for lengths in parse_shapes(args.shapes):
        label = f"{len(lengths)}x{lengths[0]}"
        step(lengths)
        walls = [step(lengths) for _ in range(args.repeats)]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(lengths)
        by_op = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
        total = sum(by_op.values())
        split = {g: sum(by_op.get(op, 0.0) for op in ops) for g, ops in GROUPS.items()}
        split["elementwise_other"] = total - sum(split.values())
        wall_ms = statistics.median(walls) * 1e3
        tokens = sum(lengths)
        shapes[label] = {
            "tokens": tokens,
            "wall_ms": wall_ms,
            "walls_ms": [w * 1e3 for w in walls],
            "ms_per_token": wall_ms / tokens,
            "profiled_split_ms": split,
            "profiled_share": {g: v / total for g, v in split.items()},
            "top_ops_ms": dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:12]),
        }
        print(label, f"{wall_ms:.0f} ms", {g: f"{v / total:.0%}" for g, v in split.items()})
    results = {
        "benchmark": "prefill-profile",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": str(model_dir),
        "dtype": "bfloat16",
        "machine": {**machine_info(), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")},
        "shapes": shapes,
    }
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    stamped = write_results(results, "prefill-profile")
    plot(results, plot_path(stamped))
    print(f"wrote {stamped}")
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["shapes"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    bottoms = [0.0] * len(labels)
    for group in (*GROUPS, "elementwise_other"):
        values = [results["shapes"][s]["profiled_share"][group] * results["shapes"][s]["wall_ms"] for s in labels]
        ax.bar(labels, values, bottom=bottoms, label=group.replace("_", " "))
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.set_ylabel("ms per prefill step (wall, split by profiled share)")
    ax.set_title(f"Lean forward prefill, {Path(results['model']).name} bf16")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
