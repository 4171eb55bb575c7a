"""Where a loaded llama.cpp engine core's time goes: decode-only steps vs steps with prompt chunks.

Our engine core (scheduler, llama.cpp executor, sampler; no front end, no HTTP) in a process of its
own with the core process's OpenMP environment, fed closed-loop like bench/serve.py's levels:
``--concurrency`` requests from its mixed prompt pool (short / medium / long chat prompts), each
forcing ``--new-tokens`` tokens, a new one submitted as each finishes, ``--requests`` in all. Every
step is recorded: its tokens, its ``llama_decode`` wall time, the time outside it. Summary per
configuration: output tok/s, steps and seconds by kind (decode-only: at most one token per
sequence; mixed: with a prompt chunk), median decode step by batch size, TTFT p50 / max. Each
``--prefill-chunk`` and ``--decode-threads`` value is one configuration, run in turn.
Results: bench/results/llamacpp-load-<timestamp>.json and .png.

    flock /work/wt/bench.lock nice -n 5 .venv/bin/python bench/llamacpp_load.py --prefill-chunk 512,1024
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, plot_path, write_results
from streamhost.engine.core_client import core_environment


def worker(concurrency: int, requests: int, new_tokens: int, chunk: int, decode_threads: int | None) -> dict[str, Any]:
    """One configuration, in this process: the summary of a closed-loop run."""
    import torch

    from serve import build_prompts, template_prompts
    from streamhost.engine.config import EngineConfig
    from streamhost.engine.core import EngineCore
    from streamhost.engine.core_messages import CoreInput, CoreRequest
    from streamhost.engine.executors import gguf_tokenizer
    from streamhost.engine.executors.llamacpp import LlamaCppExecutor
    from streamhost.engine.loader import default_gguf_path, ensure_default_model
    from streamhost.engine.types import GenerationParameters

    torch.set_grad_enabled(False)
    prompts = build_prompts(0)
    template_prompts(prompts, ensure_default_model())
    gguf = default_gguf_path()
    executor = LlamaCppExecutor(gguf, gguf_tokenizer(gguf), decode_threads=decode_threads)
    core = EngineCore(executor, EngineConfig(prefill_chunk=chunk))
    decode = executor.llama.llama_decode
    last: dict[str, float] = {}

    def timed(ctx, batch):  # the bench's own wrapper
        started = time.perf_counter()
        try:
            return decode(ctx, batch)
        finally:
            last["s"], last["n"] = time.perf_counter() - started, batch.n_tokens

    executor.llama.llama_decode = timed
    params = GenerationParameters(max_new_tokens=new_tokens, ignore_eos=True)
    submitted: dict[int, float] = {}
    produced: dict[int, int] = {}

    def submit() -> None:
        key = len(submitted)
        prompt = prompts[key % len(prompts)]
        core.apply(CoreInput(new=[CoreRequest(key, list(prompt.token_ids), new_tokens, params, time.monotonic())]))
        submitted[key], produced[key] = time.perf_counter(), 0

    for _ in range(concurrency):
        submit()
    steps: list[tuple[int, int, float, float]] = []  # (tokens, sequences, decode s, step s)
    ttft: list[float] = []
    started = time.perf_counter()
    while core.has_work():
        last.clear()
        sequences = len(core.scheduler.running) + len(core.scheduler.prefilling)
        step_started = time.perf_counter()
        out = core.step()
        if "n" in last:
            steps.append((int(last["n"]), sequences, last["s"], time.perf_counter() - step_started))
        for key, _tok, _lp, _top, reason in out.tokens if out is not None else []:
            if produced[key] == 0:
                ttft.append(time.perf_counter() - submitted[key])
            produced[key] += 1
            if reason is not None and len(submitted) < requests:
                submit()
    wall = time.perf_counter() - started
    decode_only = [s for s in steps if s[0] <= s[1]]
    mixed = [s for s in steps if s[0] > s[1]]
    by_size: dict[int, list[float]] = defaultdict(list)
    for tokens, _seqs, seconds, _step in decode_only:
        by_size[tokens].append(seconds)
    ttft.sort()
    return {
        "prefill_chunk": core.scheduler.prefill_chunk,
        "decode_threads": executor.step_threads.decode,
        "output_tok_s": sum(produced.values()) / wall,
        "wall_s": wall,
        "steps": len(steps),
        "decode_only": {
            "steps": len(decode_only),
            "seconds": sum(s[2] for s in decode_only),
            "outside_decode_ms_median": 1000 * statistics.median(s[3] - s[2] for s in decode_only),
        },
        "mixed": {
            "steps": len(mixed),
            "seconds": sum(s[2] for s in mixed),
            "step_ms_median": 1000 * statistics.median(s[2] for s in mixed) if mixed else None,
            "prompt_tokens": sum(s[0] - s[1] for s in mixed),
        },
        "decode_step_ms_by_tokens": {n: 1000 * statistics.median(v) for n, v in sorted(by_size.items())},
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p99_s": ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))],
        "ttft_max_s": ttft[-1],
    }


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    labels = [f"chunk {r['prefill_chunk']}\ndecode threads {r['decode_threads']}" for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    ax.bar(labels, [r["decode_only"]["seconds"] for r in runs], label="decode-only steps", color="#2a7")
    ax.bar(
        labels,
        [r["mixed"]["seconds"] for r in runs],
        bottom=[r["decode_only"]["seconds"] for r in runs],
        label="steps with a prompt chunk",
        color="#c84",
    )
    ax.set_ylabel("llama_decode seconds")
    ax.legend(fontsize=8)
    ax.set_title(f"{data['concurrency']} streams, {data['requests']} requests x {data['new_tokens']} tokens")
    ax = axes[1]
    for r, label in zip(runs, labels):
        sizes = sorted(r["decode_step_ms_by_tokens"], key=int)
        ax.plot([int(n) for n in sizes], [r["decode_step_ms_by_tokens"][n] for n in sizes], marker="o", label=label)
    ax.set_xlabel("sequences in a decode-only step")
    ax.set_ylabel("llama_decode ms (median)")
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.bar(labels, [r["output_tok_s"] for r in runs], color="#27a")
    ax.set_ylabel("output tok/s (engine core alone)")
    for i, r in enumerate(runs):
        ax.text(i, r["output_tok_s"], f"TTFT p50 {r['ttft_p50_s']:.2f} s\nmax {r['ttft_max_s']:.2f} s", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=None, help="requests in all (default 3x concurrency)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prefill-chunk", default="1024", help="prompt tokens per step, comma-separated values")
    parser.add_argument("--decode-threads", default="", help="llama.cpp threads for small steps, comma-separated")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    requests = args.requests or 3 * args.concurrency
    chunks = [int(c) for c in args.prefill_chunk.split(",") if c.strip()]
    threads = [int(t) for t in args.decode_threads.split(",") if t.strip()] or [None]
    if args.worker:
        summary = worker(args.concurrency, requests, args.new_tokens, chunks[0], threads[0])
        print(json.dumps(summary), flush=True)
        return
    runs = []
    env = core_environment({**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, args.threads, None)
    for chunk in chunks:
        for decode_threads in threads:
            cmd = [sys.executable, __file__, "--worker", "--concurrency", str(args.concurrency)]
            cmd += ["--requests", str(requests), "--new-tokens", str(args.new_tokens), "--prefill-chunk", str(chunk)]
            cmd += ["--decode-threads", str(decode_threads)] if decode_threads else []
            print(f"[llamacpp-load] chunk {chunk}, decode threads {decode_threads or 'default'}", file=sys.stderr)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"the worker exited {done.returncode}: {done.stderr[-2000:]}")
            run = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
            print(
                f"  {run['output_tok_s']:.1f} tok/s; decode-only {run['decode_only']['steps']} steps "
                f"{run['decode_only']['seconds']:.1f} s, mixed {run['mixed']['steps']} steps "
                f"{run['mixed']['seconds']:.1f} s; TTFT p50 {run['ttft_p50_s']:.2f} max {run['ttft_max_s']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
            runs.append(run)
    data = {
        "benchmark": "llamacpp-load",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "concurrency": args.concurrency,
        "requests": requests,
        "new_tokens": args.new_tokens,
        "runs": runs,
    }
    data["machine"]["load_average_at_end"] = list(os.getloadavg())
    path = write_results(data, "llamacpp-load")
    plot(data, plot_path(path))
    print(f"[llamacpp-load] {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
