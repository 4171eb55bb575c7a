"""GGUF weight types on llama.cpp's CPU kernels: step cost and what requantizing does to answers.

llama.cpp's fast CPU GEMMs cover some weight types only (on x86: repacked Q4_0 / IQ4_NL / Q4_K
blocks, llamafile's tiled Q8_0 / Q4_0 / BF16); others (Q4_1, the default model's type) take the
one-row dot product path, which re-reads the weights for every token of a batch. For each type,
the shipped Q4_1 GGUF is requantized with ``gguf_quantize.requantized_gguf`` (what
``HF_MODEL_QUANTIZE`` does for a GGUF model) and measured:

1. raw ``llama_decode`` medians (one child process per type, the core process's OpenMP
   environment, the executor's default KV cells): one-token decode, 256- and 512-token prefills,
   16 sequences of 300 cached tokens decoding one token each, and that with a 256-token prompt
   chunk in the same batch;
2. greedy answers (64 tokens) of 20 chat prompts through our engine against the shipped Q4_1's,
   counted as tokens before the first difference and per token with teacher forcing (the same
   counts as bench/llamacpp.py and bench/llamacpp_kv.py).

Results: bench/results/llamacpp-types-<timestamp>.json and .png. Usage::

    PYTHONPATH=src .venv/bin/python bench/llamacpp_types.py [--types q4_1,q8_0,q4_0] [--skip quality]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import QUESTIONS, common_prefix, machine_info, plot_path, write_results
from _llamacpp import decode_timer, step_bars
from streamhost.engine.core_client import core_environment

CTX = 300  # cached tokens per sequence before the 16-sequence steps
SHAPES = ("1 seq decode", "prefill 256", "prefill 512", "16 seqs decode", "16 decode + 256 prompt")


def worker(gguf: str, threads: int) -> None:
    """Times every shape on ``gguf``; prints one JSON object of shape -> median wall ms."""
    import numpy as np

    from streamhost.engine.executors.llamacpp import import_llama_cpp
    from streamhost.engine.executors.llamacpp_kv import CACHE_TYPES, default_cache_type

    llama = import_llama_cpp()
    model = llama.llama_model_load_from_file(gguf.encode(), llama.llama_model_default_params())
    cparams = llama.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = 17 * 1024, 2048, 512
    cparams.n_seq_max, cparams.kv_unified = 17, False
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.n_outputs_max, cparams.no_perf = 2048, True
    cparams.type_k = cparams.type_v = CACHE_TYPES[default_cache_type()]
    ctx = llama.llama_init_from_model(model, cparams)
    assert ctx, "no context"
    run = decode_timer(llama, ctx, llama.llama_batch_init(4096, 0, 1), np.random.default_rng(0))
    memory = llama.llama_get_memory(ctx)

    def median(times: list[float]) -> float:
        return 1000 * sorted(times)[len(times) // 2]

    out: dict[str, float] = {}
    for n in (256, 512):
        samples = []
        for _ in range(3):
            llama.llama_memory_seq_rm(memory, 0, -1, -1)
            samples.append(run([(0, i, int(i == n - 1)) for i in range(n)]))
        out[f"prefill {n}"] = median(samples)
    llama.llama_memory_seq_rm(memory, 0, -1, -1)
    for seq in range(16):
        run([(seq, i, int(i == CTX - 1)) for i in range(CTX)])
    out["1 seq decode"] = median([run([(0, CTX + k, 1)]) for k in range(16)])
    llama.llama_memory_seq_rm(memory, 0, CTX, -1)  # back to CTX cached tokens, like the others
    out["16 seqs decode"] = median([run([(s, CTX + k, 1) for s in range(16)]) for k in range(8)])
    samples = []
    for k in range(3):
        llama.llama_memory_seq_rm(memory, 16, -1, -1)
        samples.append(run([(s, CTX + 8 + k, 1) for s in range(16)] + [(16, i, int(i == 255)) for i in range(256)]))
    out["16 decode + 256 prompt"] = median(samples)
    print(json.dumps(out), flush=True)


def measure(gguf: Path, threads: int) -> dict[str, float]:
    env = core_environment(dict(os.environ), threads, None)
    cmd = [sys.executable, __file__, "--worker", str(gguf), "--threads", str(threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the worker exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def quality(reference_gguf: Path, ggufs: dict[str, Path], threads: int, new_tokens: int) -> dict[str, Any]:
    """Greedy agreement of each type with the shipped GGUF, through our engine."""
    from llamacpp import EXTRA_QUESTIONS, _greedy, teacher_forced
    from streamhost.engine import Engine, EngineConfig
    from streamhost.engine.executors import gguf_tokenizer
    from streamhost.engine.executors.llamacpp import LlamaCppExecutor

    tokenizer = gguf_tokenizer(reference_gguf)
    chats = [[{"role": "user", "content": q}] for q in (QUESTIONS + EXTRA_QUESTIONS)[:20]]
    prompts = [
        list(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        for c in chats
    ]

    def answers(gguf: Path) -> list[list[int]]:
        return asyncio.run(
            _greedy(Engine(LlamaCppExecutor(gguf, tokenizer, threads=threads), EngineConfig()), prompts, new_tokens)
        )

    reference = answers(reference_gguf)
    out: dict[str, Any] = {}
    for name, gguf in ggufs.items():
        if gguf == reference_gguf:
            continue
        got = answers(gguf)
        out[name] = {
            "agreement_pooled": sum(common_prefix(a, b) for a, b in zip(reference, got)) / sum(map(len, reference)),
            "agreement_teacher_forced": teacher_forced(
                LlamaCppExecutor(gguf, tokenizer, threads=threads), prompts, reference
            ),
            "identical_answers": sum(a == b for a, b in zip(reference, got)),
            "prompts": len(prompts),
            "example": {
                "question": chats[0][0]["content"],
                "reference": tokenizer.decode(reference[0]),
                name: tokenizer.decode(got[0]),
            },
        }
        print(
            f"[llamacpp-types] quality {name}: {out[name]['agreement_teacher_forced']:.1%} teacher forced",
            file=sys.stderr,
        )
    return out


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 1]})
    series = {name: [steps[s] for s in SHAPES] for name, steps in data["steps"].items()}
    step_bars(left, SHAPES, series, f"llama.cpp step cost by weight type ({data['threads']} threads)", rotate=True)
    quality = data.get("quality") or {}
    names = list(quality)
    right.bar(names, [100 * quality[n]["agreement_teacher_forced"] for n in names], label="teacher forced")
    right.bar(names, [100 * quality[n]["agreement_pooled"] for n in names], width=0.4, label="before first difference")
    right.set_ylim(0, 100)
    right.set_ylabel("% greedy tokens equal to the shipped GGUF's")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", default="q4_1,q8_0,q4_0", help="comma-separated HF_MODEL_QUANTIZE names")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--skip", choices=["quality"], action="append", default=[])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.threads)
        return
    from streamhost.engine.gguf_quantize import requantized_gguf
    from streamhost.engine.loader import default_gguf_path

    shipped = default_gguf_path()
    ggufs = {name: requantized_gguf(shipped, name, threads=args.threads) for name in args.types.split(",")}
    steps = {}
    for name, gguf in ggufs.items():
        print(f"[llamacpp-types] {name}: {gguf.name}", file=sys.stderr, flush=True)
        steps[name] = measure(gguf, args.threads)
        for shape in SHAPES:
            print(f"  {shape:<26} {steps[name][shape]:8.1f} ms", file=sys.stderr, flush=True)
    data: dict[str, Any] = {
        "machine": machine_info(),
        "threads": args.threads,
        "ctx_per_seq": CTX,
        "reference": shipped.name,
        "ggufs": {name: {"file": gguf.name, "bytes": gguf.stat().st_size} for name, gguf in ggufs.items()},
        "steps": steps,
    }
    if "quality" not in args.skip:
        data["quality"] = quality(shipped, ggufs, args.threads, args.new_tokens)
    path = write_results(data, "llamacpp-types")
    plot(data, plot_path(path))
    print(f"[llamacpp-types] {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
