"""llama.cpp executor benchmark: raw llama-cpp-python vs our executor at one stream, single-stream
decode against memory bandwidth, and the Q8_0 conversion's greedy agreement with bf16.

1. ``raw``: llama-cpp-python's low-level API alone (one context, one sequence, ``llama_decode`` of
   one token and an argmax per step) on the same GGUF, threads and chat prompts; decode tok/s =
   (tokens - 1) / (last - first token time), median over prompts. Run in its own process.
2. ``ours``: ``bench/serve.py --launch streamhost,executor=llamacpp --concurrency 1``: the whole
   server, through the OpenAI streaming API; decode tok/s = 1 / TPOT p50. Target: >= 95% of raw.
3. bandwidth: bytes of weights a decode step reads (the GGUF's tensors; SmolLM2's tied embedding
   is read whole for the logits) x decode tok/s, against a measured read bandwidth of this
   machine (torch sum over a 1 GiB buffer, all cores, best of 5).
4. quality: greedy answers (64 tokens) of the bf16 model on torch vs its Q8_0 conversion
   (gguf_quantize.gguf_for) on llama.cpp for 20 chat prompts; agreement = tokens before the first
   difference / tokens of the bf16 answer, pooled. Target: >= 90%. (The bf16 weights here are the
   dequantised Q4_1 GGUF the default model ships as: no hub access on this machine.)

Results: bench/results/llamacpp-<timestamp>.json and .png. Usage::

    nice -n 10 .venv/bin/python bench/llamacpp.py [--threads 2] [--skip quality]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    QUESTIONS,
    RESULTS_DIR,
    common_prefix,
    load_latest,
    machine_info,
    plot_path,
    write_results,
)

EXTRA_QUESTIONS = [
    "Why do we see lightning before we hear thunder?",
    "How do vaccines teach the body to fight germs?",
    "What is the difference between weather and climate?",
    "Why do stars twinkle in the night sky?",
]


def raw_decode(gguf: str, threads: int, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
    """Single-stream greedy decode with llama-cpp-python's low-level API only."""
    import numpy as np

    from streamhost.engine.executors.llamacpp import import_llama_cpp, use_extra_buffers

    llama = import_llama_cpp()
    mparams = llama.llama_model_default_params()
    mparams.use_extra_bufts = use_extra_buffers()  # the same weight layout as our executor
    model = llama.llama_model_load_from_file(gguf.encode(), mparams)
    cparams = llama.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = 2048, 2048, 512  # a whole prompt per decode
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.no_perf = True
    ctx = llama.llama_init_from_model(model, cparams)
    memory = llama.llama_get_memory(ctx)
    n_vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model))
    rates, ttfts = [], []
    for ids in prompts:
        llama.llama_memory_clear(memory, True)
        started = time.perf_counter()
        tokens = (llama.llama_token * len(ids))(*ids)
        assert llama.llama_decode(ctx, llama.llama_batch_get_one(tokens, len(ids))) == 0
        times = []
        for _ in range(new_tokens):
            logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            tok = int(logits.argmax())
            times.append(time.perf_counter())
            one = (llama.llama_token * 1)(tok)
            assert llama.llama_decode(ctx, llama.llama_batch_get_one(one, 1)) == 0
        ttfts.append(times[0] - started)
        rates.append((len(times) - 1) / (times[-1] - times[0]))
    weights = int(llama.llama_model_size(model))
    llama.llama_free(ctx)
    llama.llama_model_free(model)
    return {
        "decode_tok_s_per_prompt": rates,
        "decode_tok_s_median": statistics.median(rates),
        "ttft_median_s": statistics.median(ttfts),
        "weights_bytes": weights,
        "threads": threads,
    }


def read_bandwidth(threads: int) -> float:
    """Bytes per second a multi-threaded reduction reads from a buffer far larger than the caches."""
    import torch

    torch.set_num_threads(threads)
    buf = torch.ones(256 * 1024 * 1024, dtype=torch.float32)  # 1 GiB
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        buf.sum()
        best = max(best, buf.numel() * 4 / (time.perf_counter() - t))
    return best


def serve_one_stream(threads: int, requests: int) -> dict[str, Any]:
    """Our server on llama.cpp at one stream, through bench/serve.py (OpenAI streaming API)."""
    name = "llamacpp-1stream"
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("serve.py")),
        "--launch",
        "streamhost,executor=llamacpp",
        "--concurrency",
        "1",
        "--requests-per-level",
        str(requests),
        "--name",
        name,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env)
    data = load_latest(name)
    assert data is not None, f"bench/serve.py wrote no {name} results"
    level = data["targets"]["streamhost-llamacpp"]["levels"]["1"]
    return {
        "tpot_p50_s": level["tpot_p50_s"],
        "decode_tok_s": 1 / level["tpot_p50_s"],
        "ttft_p50_s": level["ttft_p50_s"],
        "output_tok_s": level["output_tok_s"],
        "requests": level["ok"],
        "results_file": data.get("_file"),
    }


async def _greedy(engine, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    from streamhost.engine.types import GenerationParameters

    await engine.start()
    try:
        out = []
        for ids in prompts:
            result = await engine.generate_full(ids, GenerationParameters(max_new_tokens=new_tokens))
            out.append([t.token_id for t in result.tokens])
        return out
    finally:
        await engine.stop()


def quality(model_dir: Path, threads: int, new_tokens: int) -> dict[str, Any]:
    """Greedy agreement of the Q8_0 conversion (llama.cpp) with the bf16 model (torch)."""
    from transformers import AutoTokenizer

    from streamhost.engine import Engine, EngineConfig
    from streamhost.engine.executor import TorchExecutor
    from streamhost.engine.executors.llamacpp import LlamaCppExecutor
    from streamhost.engine.gguf_quantize import gguf_for

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    questions = (QUESTIONS + EXTRA_QUESTIONS)[:20]
    prompts = [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
        for q in questions
    ]
    q8 = gguf_for(model_dir, "q8_0", threads=threads)
    bf16 = asyncio.run(
        _greedy(Engine(TorchExecutor(model_dir, dtype="bf16", device="cpu"), EngineConfig()), prompts, new_tokens)
    )
    ours = asyncio.run(
        _greedy(Engine(LlamaCppExecutor(q8, tokenizer, threads=threads), EngineConfig()), prompts, new_tokens)
    )
    per_prompt = [common_prefix(a, b) / max(1, len(a)) for a, b in zip(bf16, ours)]
    pooled = sum(common_prefix(a, b) for a, b in zip(bf16, ours)) / sum(len(a) for a in bf16)
    return {
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "gguf": str(q8),
        "agreement_pooled": pooled,
        "agreement_per_prompt": per_prompt,
        "identical_answers": sum(a == b for a, b in zip(bf16, ours)),
        "examples": [
            {"question": q, "bf16": tokenizer.decode(a), "q8_0": tokenizer.decode(b)}
            for q, a, b in list(zip(questions, bf16, ours))[:3]
        ],
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    raw, ours = results.get("raw"), results.get("ours")
    if raw and ours:
        ax = axes[0]
        ax.bar(
            ["raw llama-cpp-python", "streamhost llama.cpp\n(OpenAI stream)"],
            [raw["decode_tok_s_median"], ours["decode_tok_s"]],
            color=["#888", "#2a7"],
        )
        ax.set_ylabel("single-stream decode tok/s")
        ax.set_title(f"1 stream: ours = {results['ratio_ours_vs_raw']:.0%} of raw (target 95%)")
    bw = results.get("bandwidth")
    if bw:
        ax = axes[1]
        ax.bar(
            ["weights read\nby decode", "measured read\nbandwidth"],
            [bw["decode_gb_s"], bw["machine_gb_s"]],
            color=["#2a7", "#888"],
        )
        ax.set_ylabel("GB/s")
        ax.set_title(f"decode reads {bw['fraction']:.0%} of measured bandwidth")
    q = results.get("quality")
    if q:
        ax = axes[2]
        ax.bar(range(len(q["agreement_per_prompt"])), [100 * a for a in q["agreement_per_prompt"]], color="#27a")
        ax.axhline(90, color="red", linestyle="--", linewidth=1)
        ax.set_ylim(0, 105)
        ax.set_xlabel("chat prompt")
        ax.set_ylabel("% tokens before first difference")
        ax.set_title(f"Q8_0 vs bf16 greedy: {q['agreement_pooled']:.1%} agreement")
    fig.suptitle("llama.cpp executor, SmolLM2-135M-Instruct (" + results["machine"].get("cpu_model", "") + ")")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=8, help="1-stream requests through the server")
    parser.add_argument("--skip", action="append", default=[], choices=["raw", "ours", "bandwidth", "quality"])
    parser.add_argument("--raw-worker", nargs=2, metavar=("GGUF", "PROMPTS_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw_worker:
        prompts = json.loads(Path(args.raw_worker[1]).read_text())
        print(json.dumps(raw_decode(args.raw_worker[0], args.threads, prompts, args.new_tokens)))
        return 0

    from serve import build_prompts, template_prompts
    from streamhost.engine.loader import default_gguf_path, ensure_default_model

    model_dir = ensure_default_model()
    gguf = default_gguf_path()
    prompts = build_prompts(0)[:8]
    template_prompts(prompts, model_dir)
    results: dict[str, Any] = {
        "benchmark": "llamacpp",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "gguf": str(gguf),
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "machine": machine_info(),
    }
    if "raw" not in args.skip:
        spec = RESULTS_DIR / ".llamacpp-prompts.json"
        spec.write_text(json.dumps([p.token_ids for p in prompts]))
        # OMP_WAIT_POLICY=PASSIVE as bench/serve.py gives the servers it launches (like for like; on a
        # shared machine spinning OpenMP barriers collapse: 2 tok/s instead of 17 measured here).
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--threads",
                str(args.threads),
                "--new-tokens",
                str(args.new_tokens),
                "--raw-worker",
                str(gguf),
                str(spec),
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        ).stdout
        spec.unlink()
        results["raw"] = json.loads(out.strip().splitlines()[-1])
        print(f"raw llama-cpp-python: {results['raw']['decode_tok_s_median']:.1f} tok/s decode", flush=True)
    if "ours" not in args.skip:
        results["ours"] = serve_one_stream(args.threads, args.requests)
        print(f"streamhost llama.cpp, 1 stream: {results['ours']['decode_tok_s']:.1f} tok/s decode", flush=True)
    if results.get("raw") and results.get("ours"):
        results["ratio_ours_vs_raw"] = results["ours"]["decode_tok_s"] / results["raw"]["decode_tok_s_median"]
    if "bandwidth" not in args.skip and results.get("raw"):
        machine = read_bandwidth(args.threads)
        weights = results["raw"]["weights_bytes"]
        rates = {"raw": results["raw"]["decode_tok_s_median"]}
        if results.get("ours"):
            rates["ours"] = results["ours"]["decode_tok_s"]
        best = max(rates.values())
        results["bandwidth"] = {
            "weights_bytes_per_token": weights,
            "machine_read_bytes_s": machine,
            "machine_gb_s": machine / 1e9,
            "decode_gb_s": weights * best / 1e9,
            "fraction": weights * best / machine,
            "decode_rates": rates,
            "note": "weights only (KV reads at these lengths are < 1% of them)",
        }
    if "quality" not in args.skip:
        results["quality"] = quality(model_dir, args.threads, 64)
        print(f"Q8_0 vs bf16 greedy agreement: {results['quality']['agreement_pooled']:.1%}", flush=True)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    stamped = write_results(results, "llamacpp")
    plot(results, plot_path(stamped))
    print(json.dumps({k: v for k, v in results.items() if k not in ("machine", "quality")}, indent=2, default=str))
    print(f"wrote {stamped} and {plot_path(stamped)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
