"""llama.cpp step shapes: what one ``llama_decode`` costs for the shapes our executor sends.

Raw llama-cpp-python (no server), 2 threads, the core process's OpenMP environment, per weight
layout (``use_extra_bufts``: AMX / AVX-512 repacked, or plain) and GGUF: one-token decode, prompt
prefill of 64/256/512 tokens, and 16 sequences of ~300 cached tokens decoding one token each:
per-sequence KV streams with consecutive ids, the same with 3 free ids among them (llama.cpp
then cuts the step into 4 micro-batches), the same with a filler token in each free id (our
executor's way: one micro-batch), one unified pool; each also with a 256-token prompt
chunk of another sequence in the same batch. Median wall ms over repeats; each configuration in a
child process of its own. Results: bench/results/llamacpp-steps-<timestamp>.json and .png.

    flock /work/wt/bench.lock nice -n 5 .venv/bin/python bench/llamacpp_steps.py [--gguf PATH ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, plot_path, write_results
from _llamacpp import decode_timer, step_bars
from streamhost.engine.core_client import core_environment

CTX = 300  # cached tokens per sequence before the measured steps


def worker(gguf: str, extra: bool, threads: int) -> None:
    """One configuration; prints one JSON line per shape."""
    import numpy as np

    from streamhost.engine.executors.llamacpp import import_llama_cpp

    llama = import_llama_cpp()
    mparams = llama.llama_model_default_params()
    mparams.use_extra_bufts = extra
    model = llama.llama_model_load_from_file(gguf.encode(), mparams)
    batch = llama.llama_batch_init(4096, 0, 1)
    rng = np.random.default_rng(0)

    def context(n_seq: int, unified: bool, n_ctx: int):
        cparams = llama.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, 2048, 512
        cparams.n_seq_max, cparams.kv_unified = n_seq, unified
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.n_outputs_max, cparams.no_perf = 2048, True
        ctx = llama.llama_init_from_model(model, cparams)
        assert ctx, "no context"
        return ctx

    def run(ctx, tokens: list[tuple[int, int, int]]) -> float:
        return decode_timer(llama, ctx, batch, rng)(tokens)

    def report(shape: str, times: list[float], tokens: int) -> None:
        times = sorted(times)
        print(json.dumps({"shape": shape, "wall_ms": 1000 * times[len(times) // 2], "tokens": tokens}), flush=True)

    ctx = context(1, True, 4096)
    run(ctx, [(0, i, int(i == CTX - 1)) for i in range(CTX)])
    report("1 seq decode", [run(ctx, [(0, CTX + k, 1)]) for k in range(12)], 1)
    memory = llama.llama_get_memory(ctx)
    for n in (64, 256, 512):
        samples = []
        for _ in range(3):
            llama.llama_memory_clear(memory, True)
            samples.append(run(ctx, [(0, i, int(i == n - 1)) for i in range(n)]))
        report(f"prefill {n}", samples, n)
    llama.llama_free(ctx)
    layouts = [
        ("per-seq consecutive", list(range(16)), 17, False),
        ("per-seq 3 free ids", [i for i in range(19) if i not in (3, 8, 12)], 20, False),
        ("unified", list(range(16)), 17, True),
    ]
    for name, seqs, slots, unified in layouts:
        ctx = context(slots, unified, slots * 1024)
        for seq in seqs:
            run(ctx, [(seq, i, int(i == CTX - 1)) for i in range(CTX)])
        report(f"16 decode, {name}", [run(ctx, [(s, CTX + k, 1) for s in seqs]) for k in range(6)], 16)
        pos = CTX + 6  # the next position of every sequence
        holes = [h for h in range(min(seqs), max(seqs)) if h not in seqs]
        if holes and not unified:  # our executor's fillers: one token per empty id between, cell removed after
            filled = []
            for k in range(6):
                step = sorted([(s, pos + k, 1) for s in seqs] + [(h, 0, 0) for h in holes])
                filled.append(run(ctx, step))
                for h in holes:
                    llama.llama_memory_seq_rm(llama.llama_get_memory(ctx), h, -1, -1)
            report(f"16 decode, {name} + fillers", filled, 16)
            pos += 6
        other, samples = slots - 1, []
        for k in range(3):
            llama.llama_memory_seq_rm(llama.llama_get_memory(ctx), other, -1, -1)
            step = [(s, pos + k, 1) for s in seqs] + [(other, i, int(i == 255)) for i in range(256)]
            samples.append(run(ctx, step))
        report(f"16 decode + 256 prompt, {name}", samples, 272)
        llama.llama_free(ctx)


def measure(gguf: str, extra: bool, threads: int) -> list[dict[str, Any]]:
    env = core_environment({**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, threads, None)
    cmd = [sys.executable, __file__, "--worker", gguf, "1" if extra else "0", "--threads", str(threads)]
    print(f"[llamacpp-steps] {Path(gguf).name} extra_buffers={extra}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the worker exited {done.returncode}: {done.stderr[-2000:]}")
    out = done.stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for row in rows:
        print(f"  {row['shape']:<40} {row['wall_ms']:8.1f} ms", file=sys.stderr, flush=True)
    return rows


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    shapes = [row["shape"] for row in runs[0]["rows"]]
    series = {
        f"{run['gguf']} extra={run['extra_buffers']}": [
            {row["shape"]: row["wall_ms"] for row in run["rows"]}.get(s, 0) for s in shapes
        ]
        for run in runs
    }
    fig, ax = plt.subplots(figsize=(11, 5))
    step_bars(ax, shapes, series, "llama.cpp step shapes (2 threads)", rotate=True)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", action="append", help="GGUF files, both layouts (default: the shipped Q4_1)")
    parser.add_argument("--gguf-extra", action="append", default=[], help="GGUF files, repacked layouts only")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--worker", nargs=2, metavar=("GGUF", "EXTRA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1] == "1", args.threads)
        return
    from streamhost.engine.loader import default_gguf_path

    ggufs = args.gguf or [str(default_gguf_path())]
    runs = []
    plan = [(gguf, extra) for gguf in ggufs for extra in (False, True)] + [(g, True) for g in args.gguf_extra]
    for gguf, extra in plan:
        runs.append({"gguf": Path(gguf).name, "extra_buffers": extra, "rows": measure(gguf, extra, args.threads)})
    data = {"machine": machine_info(), "threads": args.threads, "ctx_per_seq": CTX, "runs": runs}
    path = write_results(data, "llamacpp-steps")
    plot(data, plot_path(path))
    print(f"[llamacpp-steps] {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
