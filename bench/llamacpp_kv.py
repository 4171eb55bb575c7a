"""llama.cpp KV cache types and flash attention: what each costs per step shape.

Raw llama-cpp-python (no server), the shipped Q4_1 GGUF with repacked (AMX) layouts, the core
process's OpenMP environment, 2 threads, per-sequence KV streams. For every configuration of
``--cache-type-k`` / ``--cache-type-v`` / ``--flash-attn`` (engine/executors/llamacpp_kv.py) the
median wall ms of one ``llama_decode`` for: a 512-token prompt, one sequence decoding at
``--ctx`` cached tokens, 16 sequences decoding one token each at ``--ctx``, and those 16 with a
256-token prompt chunk of another sequence in the same step (the shape a server step takes while
new requests arrive). Each configuration runs in a child process of its own. Then quality: each
configuration's greedy answers (64 tokens, 20 chat prompts, our engine) against llama.cpp's default (f16 cells),
as tokens before the first difference and per token with teacher forcing. Results:
bench/results/llamacpp-kv-<timestamp>.json and .png.

    PYTHONPATH=src .venv/bin/python bench/llamacpp_kv.py [--ctx 300] [--gguf PATH] [--skip-quality]
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

# (label, type_k, type_v, flash_attn): llama.cpp's default first (the quality reference)
CONFIGS = [
    ("f16 K+V, flash auto (llama.cpp default)", "f16", "f16", "auto"),
    ("f16 K+V, flash off", "f16", "f16", "off"),
    ("V q8_0, flash on", "f16", "q8_0", "on"),
    ("K+V q8_0, flash on", "q8_0", "q8_0", "on"),
    ("K q8_0, flash off", "q8_0", "f16", "off"),
    ("bf16 K+V, flash on (ours with bf16 hardware)", "bf16", "bf16", "on"),
]
STREAMS = 16
CHUNK = 256
PROMPT = 512


def worker(gguf: str, threads: int, ctx_tokens: int, type_k: str, type_v: str, flash: str) -> None:
    """One configuration; prints one JSON line with every shape's median ms."""
    import numpy as np

    from streamhost.engine.executors.llamacpp import import_llama_cpp
    from streamhost.engine.executors.llamacpp_kv import CACHE_TYPES, FLASH_ATTN

    llama = import_llama_cpp()
    mparams = llama.llama_model_default_params()
    mparams.use_extra_bufts = True
    model = llama.llama_model_load_from_file(gguf.encode(), mparams)
    cparams = llama.llama_context_default_params()
    slots = STREAMS + 2  # the 16 decoders, the chunk's sequence, the prompt's sequence
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = slots * 2048, 2048, 512
    cparams.n_seq_max, cparams.kv_unified = slots, False
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.n_outputs_max, cparams.no_perf = 2048, True
    cparams.flash_attn_type = FLASH_ATTN[flash]
    cparams.type_k, cparams.type_v = CACHE_TYPES[type_k], CACHE_TYPES[type_v]
    ctx = llama.llama_init_from_model(model, cparams)
    assert ctx, "llama.cpp made no context for this configuration"
    memory = llama.llama_get_memory(ctx)
    batch = llama.llama_batch_init(4096, 0, 1)
    rng = np.random.default_rng(0)

    run = decode_timer(llama, ctx, batch, rng)

    def median_ms(times: list[float]) -> float:
        return round(1000 * sorted(times)[len(times) // 2], 2)

    prompt_seq, chunk_seq = STREAMS + 1, STREAMS
    out: dict[str, float] = {}
    samples = []
    for _ in range(3):
        llama.llama_memory_seq_rm(memory, prompt_seq, -1, -1)
        samples.append(run([(prompt_seq, i, int(i == PROMPT - 1)) for i in range(PROMPT)]))
    out[f"prefill {PROMPT}"] = median_ms(samples)
    for seq in range(STREAMS):
        for start in range(0, ctx_tokens, 256):
            run([(seq, i, 0) for i in range(start, min(ctx_tokens, start + 256))])
    out[f"1 seq decode @{ctx_tokens}"] = median_ms([run([(0, ctx_tokens + k, 1)]) for k in range(10)])
    for seq in range(1, STREAMS):  # the others catch up with sequence 0
        run([(seq, ctx_tokens + k, 0) for k in range(10)])
    pos = ctx_tokens + 10
    out[f"{STREAMS} decode @{ctx_tokens}"] = median_ms(
        [run([(s, pos + k, 1) for s in range(STREAMS)]) for k in range(10)]
    )
    pos += 10
    samples = []
    for k in range(3):
        llama.llama_memory_seq_rm(memory, chunk_seq, -1, -1)
        step = [(s, pos + k, 1) for s in range(STREAMS)] + [(chunk_seq, i, int(i == CHUNK - 1)) for i in range(CHUNK)]
        samples.append(run(step))
    out[f"{STREAMS} decode + {CHUNK} chunk"] = median_ms(samples)
    print(json.dumps(out), flush=True)


def measure(gguf: str, threads: int, ctx_tokens: int, config: tuple[str, str, str, str]) -> dict[str, float]:
    label, type_k, type_v, flash = config
    env = core_environment({**os.environ}, threads, None)
    cmd = [sys.executable, __file__, "--worker", gguf, type_k, type_v, flash]
    cmd += ["--threads", str(threads), "--ctx", str(ctx_tokens)]
    print(f"[llamacpp-kv] {label}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the worker exited {done.returncode}: {done.stderr[-2000:]}")
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]
    shapes = json.loads(line)
    for shape, ms in shapes.items():
        print(f"  {shape:<28} {ms:8.1f} ms", file=sys.stderr, flush=True)
    return shapes


def kv_quality(gguf: str, threads: int, new_tokens: int = 64) -> dict[str, dict[str, Any]]:
    """Greedy agreement of every configuration with the default (f16 cells, flash auto) on 20 chat
    prompts through our engine (bench/llamacpp.py's counting: prefix and teacher-forced)."""
    import asyncio

    from _common import QUESTIONS, common_prefix
    from llamacpp import EXTRA_QUESTIONS, _greedy, teacher_forced
    from streamhost.engine import Engine, EngineConfig
    from streamhost.engine.executors import gguf_tokenizer
    from streamhost.engine.executors.llamacpp import LlamaCppExecutor

    tokenizer = gguf_tokenizer(Path(gguf))
    chats = [[{"role": "user", "content": q}] for q in (QUESTIONS + EXTRA_QUESTIONS)[:20]]
    prompts = [
        list(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        for c in chats
    ]

    def executor(type_k: str, type_v: str, flash: str) -> LlamaCppExecutor:
        return LlamaCppExecutor(
            gguf, tokenizer, threads=threads, cache_type_k=type_k, cache_type_v=type_v, flash_attn=flash
        )

    answers = {
        label: asyncio.run(_greedy(Engine(executor(k, v, f), EngineConfig()), prompts, new_tokens))
        for label, k, v, f in CONFIGS
    }
    reference = answers[CONFIGS[0][0]]
    out = {}
    for label, k, v, f in CONFIGS[1:]:
        got = answers[label]
        out[label] = {
            "agreement_pooled": sum(common_prefix(a, b) for a, b in zip(reference, got)) / sum(map(len, reference)),
            "agreement_teacher_forced": teacher_forced(executor(k, v, f), prompts, reference),
            "identical_answers": sum(a == b for a, b in zip(reference, got)),
            "prompts": len(prompts),
        }
        print(f"[llamacpp-kv] quality {label}: {out[label]}", file=sys.stderr, flush=True)
    return out


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    shapes = list(runs[0]["ms"])
    fig, ax = plt.subplots(figsize=(11, 5))
    title = f"llama.cpp KV cache types and flash attention ({data['gguf']}, {data['threads']} threads)"
    step_bars(ax, shapes, {run["config"]: [run["ms"][s] for s in shapes] for run in runs}, title)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", default=None, help="GGUF file (default: the shipped SmolLM2 Q4_1)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--ctx", type=int, default=300, help="cached tokens per decoding sequence (default 300)")
    parser.add_argument("--skip-quality", action="store_true", help="timings only")
    parser.add_argument("--worker", nargs=4, metavar=("GGUF", "K", "V", "FLASH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.threads, args.ctx, *args.worker[1:])
        return
    from streamhost.engine.loader import default_gguf_path

    gguf = args.gguf or str(default_gguf_path())
    runs = []
    for config in CONFIGS:
        runs.append({"config": config[0], "type_k": config[1], "type_v": config[2], "flash_attn": config[3],
                     "ms": measure(gguf, args.threads, args.ctx, config)})  # fmt: skip
    data = {"machine": machine_info(), "gguf": Path(gguf).name, "threads": args.threads, "ctx": args.ctx, "runs": runs}
    if not args.skip_quality:
        data["quality_vs_default"] = kv_quality(gguf, args.threads)
    path = write_results(data, "llamacpp-kv")
    plot(data, plot_path(path))
    print(f"[llamacpp-kv] {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
