"""Shared pieces of the benchmarks: prompts, per-stream timing records, medians, machine info,
result files and plots.

Every system under test reports the same thing, a list of ``StreamRecord`` per run, so the
metrics are computed one way for all of them and the comparison is apples to apples.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Distinct questions of similar length, so every stream does the same amount of prefill work
# while no two streams share a prompt (a shared prompt would flatter prefix caching).
QUESTIONS = [
    "What is the capital city of France and why?",
    "Why does the sky look blue during the day?",
    "How do green plants turn sunlight into food?",
    "What causes the seasons to change on Earth?",
    "How does a rainbow form after a summer rain?",
    "Why do leaves change colour in the autumn?",
    "What makes the ocean water taste so salty?",
    "How do bees make honey inside their hives?",
    "Why does the moon change its shape at night?",
    "How does a bicycle stay upright while moving?",
    "What is the main job of the human heart?",
    "Why do cats purr when they feel very happy?",
    "How does ice float on top of liquid water?",
    "What makes thunder so loud during a storm?",
    "How do birds know where to fly in winter?",
    "Why is exercise good for the human brain?",
]


def chat_prompts(tokenizer: Any, count: int) -> list[list[int]]:
    """``count`` chat-templated questions as token ids (cycled if more than we have)."""
    prompts = []
    for i in range(count):
        question = QUESTIONS[i % len(QUESTIONS)]
        if i >= len(QUESTIONS):
            question = f"{question} (#{i // len(QUESTIONS)})"
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
        )
        if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        prompts.append([int(t) for t in ids])
    return prompts


@dataclass
class StreamRecord:
    """One stream of one run; all times are ``time.perf_counter()`` seconds.

    ``start`` is when the run's requests were submitted, ``first`` when this stream's first
    token reached the caller, ``last`` its last token, ``token_ids`` what it generated.
    """

    start: float
    first: float
    last: float
    token_ids: list[int] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def ttft(self) -> float:
        return self.first - self.start

    @property
    def decode_tok_s(self) -> float:
        """Tokens after the first, per second: the steady decode rate this stream saw."""
        span = self.last - self.first
        return (self.n_tokens - 1) / span if span > 0 and self.n_tokens > 1 else float("nan")


def run_metrics(records: Sequence[StreamRecord], end: float | None = None) -> dict[str, float]:
    """Metrics of one run of N concurrent streams.

    ``end`` is when the caller had every result in hand (defaults to the last token seen);
    total tok/s is all generated tokens over the wall time from submission to ``end``.
    """
    start = min(r.start for r in records)
    end = max(r.last for r in records) if end is None else end
    ttfts = [r.ttft for r in records]
    tokens = sum(r.n_tokens for r in records)
    return {
        "streams": len(records),
        "tokens": tokens,
        "wall_s": end - start,
        "total_tok_s": tokens / (end - start),
        "ttft_median_s": statistics.median(ttfts),
        "ttft_max_s": max(ttfts),
        "decode_tok_s_per_stream": statistics.median(r.decode_tok_s for r in records),
    }


def median_runs(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Median of each metric over the measured repeats."""
    keys = runs[0].keys()
    return {k: statistics.median(run[k] for run in runs) for k in keys}


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two generations share (a greedy sanity check across systems)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": cpu_model,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def write_results(data: dict[str, Any], name: str) -> Path:
    """Write this run's ``<name>-<timestamp>.json`` under bench/results/ (one file per run, no copies).

    The run's plot goes beside it under the same stem (``plot_path``); "the latest" is resolved by
    name (``latest_result_path``), so nothing is written twice.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamped = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    stamped.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    return stamped


def plot_path(results_path: Path) -> Path:
    """The PNG that belongs to a results file: same folder, same stem."""
    return results_path.with_suffix(".png")


def latest_result_path(name: str) -> Path | None:
    """The newest ``<name>-YYYYMMDD-HHMMSS.json`` (timestamps sort by name; ``serve`` never matches
    ``serve-16-...``)."""
    pattern = re.compile(rf"^{re.escape(name)}-\d{{8}}-\d{{6}}\.json$")
    found = sorted(p for p in RESULTS_DIR.glob(f"{name}-*.json") if pattern.match(p.name))
    return found[-1] if found else None


def load_latest(name: str) -> dict[str, Any] | None:
    path = latest_result_path(name)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    data.setdefault("_file", path.name)
    return data


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def plot_throughput_and_ttft(
    path: Path,
    title: str,
    series: dict[str, dict[int, dict[str, float]]],
    reference: dict[str, float] | None = None,
    reference_label: str = "hand loop (batch 1)",
) -> Path:
    """Two panels: total tok/s vs streams, and median TTFT vs streams.

    ``series`` maps a label to {streams: medians}; ``reference`` (total_tok_s, ttft_median_s)
    is drawn as a dashed horizontal line on both panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_ttft) = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = ["o", "s", "^", "D"]
    for i, (label, by_streams) in enumerate(series.items()):
        xs = sorted(by_streams)
        if not xs:
            continue
        ax_tp.plot(xs, [by_streams[x]["total_tok_s"] for x in xs], marker=markers[i % 4], label=label)
        ax_ttft.plot(xs, [by_streams[x]["ttft_median_s"] * 1000 for x in xs], marker=markers[i % 4], label=label)
    ticks = sorted({x for by_streams in series.values() for x in by_streams})
    if ticks:
        ax_tp.set_xticks(ticks)
        ax_ttft.set_xticks(ticks)
    if reference:
        ax_tp.axhline(reference["total_tok_s"], linestyle="--", color="grey", label=reference_label)
        ax_ttft.axhline(reference["ttft_median_s"] * 1000, linestyle="--", color="grey", label=reference_label)
    ax_tp.set_xlabel("concurrent streams")
    ax_tp.set_ylabel("total tokens / s")
    ax_tp.set_title("Throughput")
    ax_ttft.set_xlabel("concurrent streams")
    ax_ttft.set_ylabel("median time to first token (ms)")
    ax_ttft.set_title("TTFT")
    for ax in (ax_tp, ax_ttft):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
