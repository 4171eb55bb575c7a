"""Where a prefill step's time goes in the lean forward: op self-times of one packed prefill step.

The torch executor (lean forward, bf16) is driven directly: each shape (``--shapes``, e.g. one
1,024-token prompt, or four 256-token prompts packed into one step) is warmed up once, timed
``--repeats`` times (median wall, and median CPU seconds of the process: on a shared machine the
CPU time moves far less with other tenants' load than the wall time), then run once under
``torch.profiler``; the op self-times are grouped into linear layers (oneDNN prepacked GEMMs),
attention (SDPA kernels), KV writes and element-wise work (norms, rotary, activation, residual
adds, copies; for the compiled layer, inductor's fused kernels). Random prompt ids: prefill cost
does not depend on the token values.

``--systems lean,lean-compiled`` measures the eager lean forward and its compiled decoder layer
(engine/lean_compiled.py) in one process on one executor, the two taking turns repeat by repeat so
drifting load falls on both alike. ``lean-bf16-prompt`` is the eager forward with its prompt work
kept in bf16 (executor.prompt_float32 off, where the machine would turn it on), ``lean-torch-ops``
with torch's element-wise ops instead of our fused ones (csrc/layer_ops.cpp).

Results: bench/results/prefill-profile-<timestamp>.json and a stacked-bar PNG beside it. Usage::

    flock /work/wt/bench.lock nice -n 5 env PYTHONPATH=src GOMP_SPINCOUNT=10000 \\
        .venv/bin/python bench/prefill_profile.py --shapes 1024,4x256 --systems lean,lean-compiled
    PYTHONPATH=src .venv/bin/python bench/prefill_profile.py --shapes 1024,4x256,6x47-214 \
        --systems lean,lean-bf16-prompt,lean-torch-ops
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
    "linear": {"mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::linear", "streamhost_gemm::small_gemm"},
    "attention": {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"},
    "kv_write": {"aten::index_copy_", "streamhost_layer::write_kv"},
}


SYSTEMS = ("lean", "lean-compiled", "lean-bf16-prompt", "lean-torch-ops")


def parse_shapes(text: str) -> list[list[int]]:
    """``"1024,4x256,6x47-214"`` -> ``[[1024], [256] * 4, [47, 214, 47, 214, 47, 214]]`` (a
    hyphenated length list repeats in turn)."""
    shapes = []
    for item in text.split(","):
        count, _, lengths = item.strip().rpartition("x")
        cycle = [int(n) for n in lengths.split("-")]
        shapes.append([cycle[i % len(cycle)] for i in range(int(count or 1))])
    return shapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1024,4x256", help="prefill steps: prompt lengths, NxLEN packs N")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--systems", default="lean", help=f"comma-separated, of: {', '.join(SYSTEMS)}")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if set(systems) - set(SYSTEMS):
        parser.error(f"--systems: unknown {sorted(set(systems) - set(SYSTEMS))}")
    import torch
    import transformers
    from torch.profiler import ProfilerActivity, profile

    from streamhost.engine.executor import TorchExecutor
    from streamhost.engine.kv_cache import Segment
    from streamhost.engine.loader import cache_root, ensure_default_model

    transformers.logging.set_verbosity_error()
    model_dir = ensure_default_model()
    want_compiled = "lean-compiled" in systems
    executor = TorchExecutor(
        model_dir, dtype="bf16", compile=False, lean=True, compile_lean=want_compiled, compile_cache_dir=cache_root()
    )
    assert executor.lean is not None
    compiled = executor.lean.compiled
    generator = torch.Generator().manual_seed(0)

    from streamhost.engine.lean_llama import TorchLayerOps

    lean, defaults = executor.lean, (executor.lean.ops, executor.layer_ops, executor.prompt_float32)

    def use(system: str) -> None:
        lean.compiled = compiled if system == "lean-compiled" else None
        lean.ops, executor.layer_ops, executor.prompt_float32 = defaults
        if system == "lean-torch-ops":
            lean.ops, executor.layer_ops = TorchLayerOps, False
        if system == "lean-bf16-prompt":
            executor.prompt_float32 = False
        lean.wide_gemm_float32 = executor.prompt_float32

    def step(lengths: list[int]) -> tuple[float, float]:
        rows = [executor.alloc_row() for _ in lengths]
        segments = [
            Segment(r, torch.randint(100, 40000, (n,), generator=generator).tolist(), 0, "last")
            for r, n in zip(rows, lengths)
        ]
        started, cpu_started = time.perf_counter(), time.process_time()
        executor.forward(segments)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        for r in rows:
            executor.free_row(r)
        return elapsed, cpu

    shapes: dict[str, Any] = {}
    for lengths in parse_shapes(args.shapes):
        shape = f"{len(lengths)}x{'-'.join(str(n) for n in dict.fromkeys(lengths))}"
        runs: dict[str, list[tuple[float, float]]] = {system: [] for system in systems}
        for system in systems:
            use(system)
            step(lengths)
        for i in range(args.repeats):  # take turns, the order flipped every repeat
            for system in systems if i % 2 == 0 else systems[::-1]:
                use(system)
                runs[system].append(step(lengths))
        for system in systems:
            use(system)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(lengths)
            by_op = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
            # Inductor's fused kernels run inside the compiled graph's call: its self time is theirs.
            fused = sum(v for k, v in by_op.items() if k.startswith("## Call CompiledFxGraph"))
            total = sum(by_op.values())  # self times: nothing counted twice
            split = {g: sum(by_op.get(op, 0.0) for op in ops) for g, ops in GROUPS.items()}
            split["elementwise_other"] = total - sum(split.values())
            walls = [w for w, _ in runs[system]]
            cpus = [c for _, c in runs[system]]
            wall_ms = statistics.median(walls) * 1e3
            tokens = sum(lengths)
            label = shape if system == "lean" else f"{shape} {system}"
            shapes[label] = {
                "system": system,
                "tokens": tokens,
                "wall_ms": wall_ms,
                "walls_ms": [w * 1e3 for w in walls],
                "cpu_ms": statistics.median(cpus) * 1e3,
                "cpus_ms": [c * 1e3 for c in cpus],
                "ms_per_token": wall_ms / tokens,
                "profiled_split_ms": split,
                "profiled_share": {g: v / total for g, v in split.items()},
                "fused_kernels_ms": fused,
                "top_ops_ms": dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:12]),
            }
            print(
                f"{label:24s} wall {wall_ms:6.0f} ms  cpu {statistics.median(cpus) * 1e3:6.0f} ms ",
                {g: f"{v / total:.0%}" for g, v in split.items()},
                flush=True,
            )
    results = {
        "benchmark": "prefill-profile",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": str(model_dir),
        "dtype": "bfloat16",
        "machine": {**machine_info(), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")},
        "executor_defaults": executor.describe(),
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
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4.5))
    bottoms = [0.0] * len(labels)
    for group in (*GROUPS, "elementwise_other"):
        values = [results["shapes"][s]["profiled_share"][group] * results["shapes"][s]["wall_ms"] for s in labels]
        ax.bar(labels, values, bottom=bottoms, label=group.replace("_", " "))
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.set_ylabel("ms per prefill step (wall, split by profiled share)")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(f"Lean forward prefill, {Path(results['model']).name} bf16")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
