"""Where a decode step's time goes: transformers' forward, our lean forward (and torch.compile), in one run.

The torch executor is driven directly (no server, no engine thread): each sequence's prompt is
prefilled, then ``--steps`` decode steps run, each one ``executor.forward`` plus ``sample_batch``
(greedy), exactly the engine's step minus its bookkeeping. Two measurements per configuration:

* wall time per step (medians over the steps, no profiler attached), split into forward and sampling;
* one ``torch.profiler`` pass over ``--profile-steps`` steps, whose op self-times split the forward
  into matmul kernels (the linear layers and LM head), attention (our packed attention and its KV
  writes, Python included), other kernels (norms, rotary, activations, copies, inductor's fused
  kernels) and the rest, which is Python and dispatch overhead (forward wall - everything above,
  scaled to the unprofiled wall time).

Results: bench/results/step-profile-<timestamp>.json and a stacked-bar PNG beside it. Usage::

    flock /work/wt/bench.lock nice -n 5 .venv/bin/python bench/step_profile.py      # transformers' forward + lean
    .venv/bin/python bench/step_profile.py --systems transformers,lean,compiled --seqs 1,16  # + torch.compile
    .venv/bin/python bench/step_profile.py --systems lean,lean-compiled --seqs 1,16 --prompts mixed  # lean_compiled.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import chat_prompts, machine_info, plot_path, write_results

MATMUL_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::matmul",
    "aten::linear",
    "mkldnn::_linear_pointwise",
    "streamhost_gemm::small_gemm",
}
ATTENTION_LABEL = "streamhost::attention"
# lean-sdpa: without our decode kernel; lean-torch-ops: torch's element-wise ops, not csrc/layer_ops.cpp's;
# lean-onednn: oneDNN's GEMMs where csrc/small_gemm.cpp would run; lean-session8: none of the three
SYSTEMS = (
    "transformers",
    "lean",
    "lean-sdpa",
    "lean-torch-ops",
    "lean-onednn",
    "lean-session8",
    "lean-compiled",
    "compiled",
)
CATEGORIES = ("matmul", "attention", "other_kernels", "python_dispatch", "sampling")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqs", default="1,4,16", help="concurrent sequences (default 1,4,16)")
    parser.add_argument("--steps", type=int, default=40, help="timed decode steps per configuration")
    parser.add_argument("--profile-steps", type=int, default=10, help="decode steps under the profiler")
    parser.add_argument(
        "--prompts",
        choices=("short", "mixed"),
        default="short",
        help="short: chat questions (~47 tokens); mixed: bench/serve.py's prompt lengths (4 of ~47, 3 of ~214, "
        "1 of ~635 tokens per 8), so the KV rows differ in length as through the server",
    )
    parser.add_argument(
        "--systems",
        default="transformers,lean",
        help="comma list of: transformers (eager, transformers' forward), lean (eager, lean_llama.py), "
        "lean-compiled (lean_compiled.py: the lean layer through torch.compile), compiled (torch.compile "
        "of transformers' forward); default transformers,lean",
    )
    parser.add_argument("--no-compiled", action="store_true", help=argparse.SUPPRESS)  # the old default's opt-out
    parser.add_argument("--buckets", default=None, help="compiled token buckets (default: the executor's)")
    parser.add_argument("--model", default=None, help="model folder (default: the converted smollm2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure both in this process (default: each in a fresh one; the thread pools and compile "
        "workers one leaves behind slow the other)",
    )
    parser.add_argument("--only", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--partial-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.seq_counts = sorted({int(s) for s in args.seqs.split(",") if s.strip()})
    args.system_list = [
        s.strip()
        for s in args.systems.split(",")
        if s.strip() and s.strip() != "compiled" or (s.strip() == "compiled" and not args.no_compiled)
    ]
    unknown = set(args.system_list) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; use {', '.join(SYSTEMS)}")
    return args


def _instrument_attention() -> None:
    """Label every packed-attention call (eager and compiled paths share ``kv_cache.attend``)."""
    import torch

    from streamhost.engine import kv_cache

    plain_attend, plain_write = kv_cache.attend, kv_cache.write_step_keys

    def attend(*a, **k):
        with torch.profiler.record_function(ATTENTION_LABEL):
            return plain_attend(*a, **k)

    def write_step_keys(*a, **k):
        with torch.profiler.record_function(ATTENTION_LABEL):
            return plain_write(*a, **k)

    kv_cache.attend = attend
    kv_cache.write_step_keys = write_step_keys
    # the lean forward imported them by name
    from streamhost.engine import lean_llama

    plain_write_tokens = lean_llama.write_token_keys

    def write_token_keys(*a, **k):
        with torch.profiler.record_function(ATTENTION_LABEL):
            return plain_write_tokens(*a, **k)

    lean_llama.attend = attend
    lean_llama.write_token_keys = write_token_keys
    try:
        from streamhost.engine import lean_compiled  # its attention op reads them by name too
    except ImportError:  # an older checkout (PYTHONPATH=<its src>) has no compiled lean layer
        return
    lean_compiled.attend = attend
    lean_compiled.write_token_keys = write_token_keys


class Decoder:
    """``n`` sequences prefilled on ``executor``; ``step()`` runs one greedy decode step."""

    def __init__(self, executor: Any, prompts: list[list[int]]) -> None:
        from streamhost.engine.kv_cache import Segment

        self.executor = executor
        self.rows = [executor.alloc_row() for _ in prompts]
        self.lengths = [len(p) for p in prompts]
        logits = executor.forward([Segment(r, p, 0, "last") for r, p in zip(self.rows, prompts)])
        self.tokens = [int(x.argmax()) for x in logits]  # type: ignore[union-attr]
        self.generated: list[list[int]] = [[t] for t in self.tokens]

    def step(self) -> tuple[float, float]:
        """(forward seconds, sampling seconds) of one decode step."""
        import torch

        from streamhost.engine.kv_cache import Segment
        from streamhost.engine.sampling import RequestSampler, sample_batch
        from streamhost.engine.types import GenerationParameters

        segments = [Segment(r, [t], n) for r, t, n in zip(self.rows, self.tokens, self.lengths)]
        t0 = time.perf_counter()
        logits = self.executor.forward(segments)
        t1 = time.perf_counter()
        with torch.profiler.record_function("streamhost::sampling"):
            samplers = [RequestSampler(GenerationParameters(), [0]) for _ in self.rows]
            picked = sample_batch(torch.stack(logits), samplers).token_ids  # type: ignore[arg-type]
        t2 = time.perf_counter()
        self.tokens = [int(t) for t in picked]
        for i, t in enumerate(self.tokens):
            self.generated[i].append(t)
            self.lengths[i] += 1
        return t1 - t0, t2 - t1

    def close(self) -> None:
        for r in self.rows:
            self.executor.free_row(r)


def profile_split(decoder: Decoder, steps: int) -> dict[str, float]:
    """Seconds per step by category from one profiler pass (see the module docstring)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    forward_wall = sampling_wall = 0.0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            f, s = decoder.step()
            forward_wall += f
            sampling_wall += s
    events = prof.events()
    attention = sum(e.cpu_time_total for e in events if e.name == ATTENTION_LABEL) / 1e6
    inside_attention: set[int] = set()
    for e in events:
        if e.name == ATTENTION_LABEL:
            inside_attention.update(id(c) for c in _descendants(e))
    sampling_ids: set[int] = set()
    for e in events:
        if e.name == "streamhost::sampling":
            sampling_ids.update(id(c) for c in _descendants(e))
    matmul = other = 0.0
    for e in events:
        if id(e) in inside_attention or id(e) in sampling_ids or e.name.startswith("streamhost::"):
            continue
        if not e.name.startswith(
            ("aten::", "mkldnn::", "streamhost_gemm::", "streamhost_layer::", "cpp_fused", "## Call CompiledFxGraph")
        ):
            continue  # inductor's fused kernels run inside the compiled graph's call: its self time is theirs
        if e.name in MATMUL_OPS:
            matmul += e.self_cpu_time_total / 1e6
        else:
            other += e.self_cpu_time_total / 1e6
    del torch
    python = max(0.0, forward_wall - matmul - attention - other)
    return {
        "matmul": matmul / steps,
        "attention": attention / steps,
        "other_kernels": other / steps,
        "python_dispatch": python / steps,
        "sampling": sampling_wall / steps,
        "profiled_forward_s": forward_wall / steps,
    }


def _descendants(event: Any) -> list[Any]:
    out, todo = [], list(event.cpu_children)
    while todo:
        e = todo.pop()
        out.append(e)
        todo.extend(e.cpu_children)
    return out


def measure(executor: Any, prompts: list[list[int]], args: argparse.Namespace, label: str) -> dict[str, Any]:
    by_seqs: dict[int, Any] = {}
    for n in args.seq_counts:
        decoder = Decoder(executor, prompts[:n])
        for _ in range(3):  # warm-up (first steps grow the KV store)
            decoder.step()
        forward, sampling = [], []
        for _ in range(args.steps):
            f, s = decoder.step()
            forward.append(f)
            sampling.append(s)
        split = profile_split(decoder, args.profile_steps)
        fwd = statistics.median(forward)
        # The profiler slows what it watches; scale its split to the unprofiled forward time.
        scale = fwd / split["profiled_forward_s"] if split["profiled_forward_s"] else 1.0
        parts = {k: split[k] * scale for k in ("matmul", "attention", "other_kernels", "python_dispatch")}
        parts["sampling"] = statistics.median(sampling)
        step = fwd + parts["sampling"]
        by_seqs[n] = {
            "step_ms": step * 1e3,
            "forward_ms": fwd * 1e3,
            "tok_s": n / step,
            "split_ms": {k: v * 1e3 for k, v in parts.items()},
            "split_share": {k: v / step for k, v in parts.items()},
            "forward_ms_spread": [min(forward) * 1e3, max(forward) * 1e3],
            "tokens0": decoder.generated[0],
        }
        decoder.close()
        print(
            f"{label:>13} x{n:<3} step {step * 1e3:7.1f} ms  ({n / step:6.1f} tok/s)  "
            + "  ".join(f"{k} {v * 1e3:.1f}" for k, v in parts.items()),
            flush=True,
        )
    return by_seqs


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, bottoms, bars = [], [], {c: [] for c in CATEGORIES}
    for system in SYSTEMS:
        for n, entry in (results.get(system) or {}).items():
            labels.append(f"{system}\nx{n}")
            for c in CATEGORIES:
                bars[c].append(entry["split_ms"][c])
    bottoms = [0.0] * len(labels)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4.5))
    for c in CATEGORIES:
        ax.bar(labels, bars[c], bottom=bottoms, label=c.replace("_", " "))
        bottoms = [b + v for b, v in zip(bottoms, bars[c])]
    ax.set_ylabel("ms per decode step")
    ax.set_title(f"Decode step split, {Path(results['model']).name} {results['dtype']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def measure_system(system: str, model_dir: Path, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    """``{system: by_seqs}``, for "compiled" also ``"compile"``: start-up facts."""
    from streamhost.engine.executor import TorchExecutor
    from streamhost.engine.loader import cache_root

    if system != "compiled":  # every eager system: one executor with its switches
        executor = TorchExecutor(
            model_dir,
            dtype="bf16",
            compile=False,
            lean=system != "transformers",
            compile_lean=system == "lean-compiled",
            compile_cache_dir=cache_root(),
            decode_kernel=system != "lean-sdpa",
            layer_ops=system not in ("lean-torch-ops", "lean-session8"),
            small_gemm=system not in ("lean-onednn", "lean-session8"),
        )
        assert (executor.lean is not None) == (system != "transformers")
        return {system: measure(executor, prompts, args, system)}
    kwargs: dict[str, Any] = {}
    if args.buckets:
        kwargs["compile_buckets"] = tuple(int(b) for b in args.buckets.split(","))
    started = time.perf_counter()
    compiled = TorchExecutor(model_dir, dtype="bf16", compile=True, compile_cache_dir=cache_root(), **kwargs)
    assert compiled.compiled is not None
    report = compiled.compiled.report
    facts = {
        "load_and_compile_s": time.perf_counter() - started,
        "warm_up_s": report.seconds,
        "source": report.source,
        "buckets": list(report.buckets),
        "per_bucket_s": report.per_bucket_s,
    }
    by_seqs = measure(compiled, prompts, args, "compiled")
    facts["recompiles_after_warm_up"] = compiled.compiled.recompiles()
    return {"compiled": by_seqs, "compile": facts}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the engine's setting (see bench/engine.py)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch
    import transformers
    from transformers import AutoTokenizer

    from streamhost.engine.loader import ensure_default_model

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    _instrument_attention()
    model_dir = Path(args.model) if args.model else ensure_default_model()
    prompts = chat_prompts(AutoTokenizer.from_pretrained(model_dir), max(args.seq_counts))
    if args.prompts == "mixed":  # the short questions, repeated to the server mix's lengths
        mix = (47, 214, 47, 214, 47, 214, 47, 635)
        prompts = [(p * (mix[i % len(mix)] // len(p) + 1))[: mix[i % len(mix)]] for i, p in enumerate(prompts)]
    results: dict[str, Any] = {
        "benchmark": "step-profile",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": str(model_dir),
        "dtype": "bfloat16",
        "steps": args.steps,
        "prompts": args.prompts,
        "prompt_lengths": [len(p) for p in prompts],
        "profile_steps": args.profile_steps,
        "machine": {**machine_info(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "categories": {
            "matmul": "self time of linear-layer matmul kernels (aten::mm/addmm/linear)",
            "attention": "streamhost packed attention and its KV writes, Python included",
            "other_kernels": "self time of every other op (norms, rotary, activations, copies, inductor fused kernels)",
            "python_dispatch": "forward wall time minus the above: Python, module calls, dispatch",
            "sampling": "sample_batch wall time (greedy)",
        },
    }
    systems = args.system_list
    if args.only:
        part = measure_system(args.only, model_dir, prompts, args)
        Path(args.partial_out).write_text(json.dumps(part))
        return 0
    for system in systems:
        if args.in_process:
            part = measure_system(system, model_dir, prompts, args)
        else:
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
                out = Path(tmp.name)
            argv_child = [a for a in (argv if argv is not None else sys.argv[1:])]
            subprocess.run(
                [sys.executable, __file__, *argv_child, "--only", system, "--partial-out", str(out)], check=True
            )
            part = json.loads(out.read_text())
            out.unlink()
            part = {k: ({int(n): e for n, e in v.items()} if k in SYSTEMS else v) for k, v in part.items()}
        results.update(part)
    base = "transformers" if "transformers" in systems else None
    if base:
        results["ratios"] = {
            f"tok/s {system}/{base} x{n}": results[system][n]["tok_s"] / results[base][n]["tok_s"]
            for system in systems
            if system != base
            for n in args.seq_counts
        }
        results["greedy_equal"] = {
            f"{system} x{n}": results[system][n]["tokens0"] == results[base][n]["tokens0"]
            for system in systems
            if system != base
            for n in args.seq_counts
        }
        print(results["ratios"], results["greedy_equal"])
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    stamped = write_results(results, "step-profile")
    png = plot_path(stamped)
    plot(results, png)
    print(f"wrote {stamped}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
