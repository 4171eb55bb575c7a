"""llama.cpp executor benchmark: raw llama-cpp-python vs our executor at one stream, single-stream
decode against memory bandwidth, and the Q8_0 conversion's greedy agreement with bf16.

1. ``raw``: llama-cpp-python's low-level API alone (one context, one sequence, ``llama_decode`` of
   one token and an argmax per step) on the same GGUF, threads and chat prompts; decode tok/s =
   (tokens - 1) / (last - first token time), median over prompts. Run in its own process, with
   ``--raw-decode-threads`` threads for its one-token steps (default: all of them).
2. ``engine``: our engine core (scheduler, executor, sampler, output records: everything but the
   front end) stepping one request in a process of its own with the core process's environment;
   the same decode tok/s, plus the ms per step spent outside ``llama_decode``.
3. ``ours``: ``bench/serve.py --launch streamhost,executor=llamacpp --concurrency 1``: the whole
   server, through the OpenAI streaming API; decode tok/s = 1 / TPOT p50. Target: >= 95% of raw.
   Raw, engine and server take turns prompt by prompt, so load drifts over all alike.
4. bandwidth: bytes of weights a decode step reads (the GGUF's tensors; SmolLM2's tied embedding
   is read whole for the logits) x decode tok/s, against a measured read bandwidth of this
   machine (torch sum over a 1 GiB buffer, all cores, best of 5).
5. quality: greedy answers (64 tokens) of the bf16 model on torch vs its Q8_0 conversion
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
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    QUESTIONS,
    RESULTS_DIR,
    common_prefix,
    machine_info,
    plot_path,
    write_results,
)
from streamhost.engine.core_client import core_environment

EXTRA_QUESTIONS = [
    "Why do we see lightning before we hear thunder?",
    "How do vaccines teach the body to fight germs?",
    "What is the difference between weather and climate?",
    "Why do stars twinkle in the night sky?",
]


class Worker:
    """A decoder in a process of its own (the server's threads never share it), with the OpenMP
    environment our engine-core process gets: it decodes the prompt whose index it reads on stdin
    and answers one JSON line. ``kind``: ``raw`` (llama-cpp-python alone) or ``engine`` (our core)."""

    def __init__(
        self, kind: str, gguf: str, threads: int, decode_threads: int | None, prompts: list[list[int]], new_tokens: int
    ) -> None:
        self.spec = RESULTS_DIR / f".llamacpp-prompts-{os.getpid()}-{kind}.json"
        self.spec.write_text(json.dumps(prompts))
        cmd = [sys.executable, __file__, "--threads", str(threads), "--new-tokens", str(new_tokens)]
        if decode_threads is not None:
            cmd += ["--decode-threads", str(decode_threads)]
        self.proc = subprocess.Popen(
            [*cmd, f"--{kind}-worker", gguf, str(self.spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            # the OpenMP environment our engine-core process gets (wait policy, spin, threads): like for like
            env=core_environment({**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, threads, None),
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a llama.cpp bench worker exited")
        return json.loads(line)

    def decode(self, index: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{index}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.spec.unlink(missing_ok=True)


def engine_worker(
    gguf: str, threads: int, decode_threads: int | None, prompts: list[list[int]], new_tokens: int
) -> None:
    """The engine Worker's process: our EngineCore on the llama.cpp executor, one request at a time,
    stepped as CoreLoop steps it; times when each step's token is out and the time spent inside
    ``llama_decode``."""
    import torch

    from streamhost.engine.config import EngineConfig
    from streamhost.engine.core import EngineCore
    from streamhost.engine.core_messages import CoreInput, CoreRequest
    from streamhost.engine.executors import gguf_tokenizer
    from streamhost.engine.executors.llamacpp import LlamaCppExecutor
    from streamhost.engine.types import GenerationParameters

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    chosen = {} if decode_threads is None else {"decode_threads": decode_threads}  # (older executors: no such option)
    executor = LlamaCppExecutor(gguf, gguf_tokenizer(Path(gguf)), threads=threads, **chosen)
    core = EngineCore(executor, EngineConfig())
    llama = executor.llama
    decode, inside = llama.llama_decode, [0.0]

    def timed(ctx, batch):  # the bench's own wrapper: perf_counter twice per step (~1 us)
        started = time.perf_counter()
        try:
            return decode(ctx, batch)
        finally:
            inside[0] += time.perf_counter() - started

    llama.llama_decode = timed
    print(json.dumps({"threads": threads, "decode_threads": decode_threads or "auto"}), flush=True)
    for key, line in enumerate(sys.stdin):
        ids = prompts[int(line)]
        params = GenerationParameters(max_new_tokens=new_tokens, ignore_eos=True)
        started = time.perf_counter()
        core.apply(CoreInput(new=[CoreRequest(key, list(ids), new_tokens, params, time.monotonic())]))
        times: list[float] = []
        inside_first = 0.0
        while core.has_work():
            out = core.step()
            if out is not None and out.tokens:
                times.append(time.perf_counter())
                if len(times) == 1:
                    inside_first = inside[0]
        rate = (len(times) - 1) / (times[-1] - times[0])
        outside_ms = 1000 * ((times[-1] - times[0]) - (inside[0] - inside_first)) / (len(times) - 1)
        inside[0] = 0.0
        report = {"decode_tok_s": rate, "ttft_s": times[0] - started, "outside_decode_ms": outside_ms}
        step_threads = getattr(executor, "step_threads", None)
        if step_threads is not None:
            report["step_threads"] = step_threads.describe()
        print(json.dumps(report), flush=True)


def raw_worker(gguf: str, threads: int, decode_threads: int | None, prompts: list[list[int]], new_tokens: int) -> None:
    """The raw Worker's process: load, say so, then decode prompts by index until stdin closes."""
    import numpy as np

    from streamhost.engine.executors.llamacpp import import_llama_cpp, use_extra_buffers

    llama = import_llama_cpp()
    mparams = llama.llama_model_default_params()
    mparams.use_extra_bufts = use_extra_buffers(gguf)  # the same weight layout as our executor
    model = llama.llama_model_load_from_file(gguf.encode(), mparams)
    cparams = llama.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = 2048, 2048, 512  # a whole prompt per decode
    cparams.n_threads_batch = threads
    cparams.n_threads = decode_threads or threads  # llama.cpp's threads for one-token micro-batches
    cparams.no_perf = True
    ctx = llama.llama_init_from_model(model, cparams)
    memory = llama.llama_get_memory(ctx)
    n_vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model))
    info = {
        "weights_bytes": int(llama.llama_model_size(model)),
        "threads": threads,
        "decode_threads": cparams.n_threads,
    }
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        ids = prompts[int(line)]
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
        rate = (len(times) - 1) / (times[-1] - times[0])
        print(json.dumps({"decode_tok_s": rate, "ttft_s": times[0] - started}), flush=True)
    llama.llama_free(ctx)
    llama.llama_model_free(model)


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


def copy_bandwidth() -> float:
    """Bytes per second a numpy copy of a 512 MiB array moves (read + write), best of 5."""
    import numpy as np

    src = np.ones(128 * 1024 * 1024, dtype=np.float32)
    dst = np.empty_like(src)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - t))
    return best


def one_stream_side_by_side(
    gguf: str,
    model_dir: Path,
    threads: int,
    decode_threads: int | None,
    raw_decode_threads: int | None,
    prompts: list,
    rounds: int,
    new_tokens: int,
    sides: list[str],
) -> dict[str, Any]:
    """Raw llama-cpp-python, our engine core alone and our server (llama.cpp executor, OpenAI
    streaming API) on the same prompts, taking turns request by request in a rotating order so the
    machine's load drifts over all alike; decode tok/s = (tokens - 1) / (last - first token time)."""
    from types import SimpleNamespace

    import httpx

    from serve import Server, launch_target, stream_request

    server = target = None
    workers: dict[str, Worker] = {}
    try:
        if "server" in sides:
            options = SimpleNamespace(
                omp_wait_policy="passive",
                server_threads=threads,
                model=None,
                tf_cb_num_blocks=64,
                max_model_len=None,
                vllm_venv=None,
                vllm_kv_cache_gib=None,
            )
            spec = "streamhost,executor=llamacpp" + (f",decode_threads={decode_threads}" if decode_threads else "")
            target = launch_target(spec, options, model_dir)
            assert target.launch is not None
            server = Server(target.launch, Path(tempfile.mkdtemp(prefix="bench-llamacpp-")), target.name)
            server.start(600)
        token_ids = [p.token_ids for p in prompts]
        if "raw" in sides:
            workers["raw"] = Worker("raw", gguf, threads, raw_decode_threads, token_ids, new_tokens)
        if "engine" in sides:
            workers["engine"] = Worker("engine", gguf, threads, decode_threads, token_ids, new_tokens)

        async def ours(prompt) -> Any:
            async with httpx.AsyncClient(timeout=600) as client:
                return await stream_request(client, target, prompt, new_tokens, lambda: None)

        def one(side: str, i: int) -> dict[str, Any]:
            if side != "server":
                return workers[side].decode(i)
            rec = asyncio.run(ours(prompts[i]))
            if not rec.ok or rec.tokens != new_tokens:
                raise RuntimeError(f"our server's request failed: {rec.summary()}")
            return {"decode_tok_s": 1 / rec.tpot, "ttft_s": rec.ttft}

        for side in sides:  # warm-up
            one(side, 0)
        pairs: list[dict[str, Any]] = []
        for r in range(rounds):
            for i, prompt in enumerate(prompts):
                shift = (r * len(prompts) + i) % len(sides)
                got = {side: one(side, i) for side in sides[shift:] + sides[:shift]}
                pairs.append({"round": r, "prompt": i, "kind": prompt.kind, **got})
                print(
                    f"  prompt {i} ({prompt.kind}): "
                    + ", ".join(f"{side} {got[side]['decode_tok_s']:.1f}" for side in sides)
                    + " tok/s",
                    flush=True,
                )
    finally:
        for worker in workers.values():
            worker.close()
        if server is not None:
            server.stop()
    out: dict[str, Any] = {"sides": sides, "pairs": pairs}
    rates = {side: [p[side]["decode_tok_s"] for p in pairs] for side in sides}
    for side in sides:
        out[side] = {
            "decode_tok_s_median": statistics.median(rates[side]),
            "ttft_median_s": statistics.median(p[side]["ttft_s"] for p in pairs),
            **(workers[side].info if side in workers else {"api": "OpenAI /v1/chat/completions, stream=true"}),
        }
        if side == "engine":
            out[side]["outside_decode_ms_median"] = statistics.median(p[side]["outside_decode_ms"] for p in pairs)
        if side != "raw" and "raw" in sides:
            ratios = [o / r for o, r in zip(rates[side], rates["raw"])]
            out[side]["ratio_vs_raw"] = statistics.median(rates[side]) / statistics.median(rates["raw"])
            out[side]["ratio_paired_median"] = statistics.median(ratios)
            out[side]["ratio_paired_spread"] = [min(ratios), max(ratios)]
    if "server" in sides:  # the names earlier results used
        out["ours"] = {**out["server"], "decode_tok_s": out["server"]["decode_tok_s_median"]}
        if "raw" in sides:
            out["ratio_ours_vs_raw"] = out["server"]["ratio_vs_raw"]
            out["ratio_paired_median"] = out["server"]["ratio_paired_median"]
            out["ratio_paired_spread"] = out["server"]["ratio_paired_spread"]
    return out


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


def teacher_forced(executor, prompts: list[list[int]], answers: list[list[int]]) -> float:
    """Share of positions of ``answers`` where ``executor``'s argmax, given the reference answer so
    far (teacher forcing), is the reference's token: agreement per token, without the cascade."""
    from streamhost.engine.kv_cache import Segment
    from streamhost.engine.limits import EngineLimits

    executor.configure(
        EngineLimits(
            max_input_tokens=1023,
            max_total_tokens=1024,
            max_batch_prefill_tokens=1024,
            max_batch_total_tokens=1024,
            max_batch_size=1,
        ),
        1024,
    )
    same = total = 0
    for ids, answer in zip(prompts, answers):
        row = executor.alloc_row()
        (logits,) = executor.forward([Segment(row, ids + answer[:-1], 0, "all")])
        picked = logits[len(ids) - 1 :].argmax(dim=-1).tolist()
        same += sum(a == b for a, b in zip(picked, answer))
        total += len(answer)
        executor.free_row(row)
    return same / total


def quality(model_dir: Path, threads: int, new_tokens: int, with_f32: bool) -> dict[str, Any]:
    """Greedy agreement of the Q8_0 conversion (llama.cpp) with the bf16 model (torch), counted two
    ways: tokens before the first difference (one flip changes the rest of the answer), and per
    token with teacher forcing. The same counts for the bf16 model on torch in f32 maths against
    bf16 maths give the noise floor of the first."""
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

    def prefix(ref: list[list[int]], got: list[list[int]]) -> float:
        return sum(common_prefix(a, b) for a, b in zip(ref, got)) / sum(len(a) for a in ref)

    out: dict[str, Any] = {
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "gguf": str(q8),
        "reference": "bf16 weights on torch (TorchExecutor dtype=bf16), greedy",
        "agreement_pooled": prefix(bf16, ours),
        "agreement_per_prompt": [common_prefix(a, b) / max(1, len(a)) for a, b in zip(bf16, ours)],
        "agreement_teacher_forced": teacher_forced(LlamaCppExecutor(q8, tokenizer, threads=threads), prompts, bf16),
        "identical_answers": sum(a == b for a, b in zip(bf16, ours)),
        "examples": [
            {"question": q, "bf16": tokenizer.decode(a), "q8_0": tokenizer.decode(b)}
            for q, a, b in list(zip(questions, bf16, ours))[:3]
        ],
    }
    if with_f32:
        f32 = asyncio.run(
            _greedy(Engine(TorchExecutor(model_dir, dtype="fp32", device="cpu"), EngineConfig()), prompts, new_tokens)
        )
        out["noise_floor_f32_vs_bf16_maths"] = {
            "agreement_pooled": prefix(bf16, f32),
            "identical_answers": sum(a == b for a, b in zip(bf16, f32)),
            "q8_0_vs_f32_maths_pooled": prefix(f32, ours),
        }
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    sides = results.get("sides") or []
    if sides:
        ax = axes[0]
        labels = {
            "raw": "raw llama-cpp-python",
            "engine": "our engine core\n(no front end)",
            "server": "our server\n(OpenAI stream)",
        }
        ax.bar(
            [labels[s] for s in sides],
            [results[s]["decode_tok_s_median"] for s in sides],
            color=[{"raw": "#888", "engine": "#7b7", "server": "#2a7"}[s] for s in sides],
        )
        ax.set_ylabel("single-stream decode tok/s")
        ratios = [f"{s} {results[s]['ratio_paired_median']:.0%}" for s in sides if "ratio_paired_median" in results[s]]
        ax.set_title("1 stream vs raw, paired medians (target 95%):\n" + ", ".join(ratios), fontsize=9)
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
        ax.set_title(
            f"Q8_0 vs bf16 greedy: {q['agreement_teacher_forced']:.1%} per token (teacher forced),\n"
            f"{q['agreement_pooled']:.1%} before the first difference",
            fontsize=9,
        )
    fig.suptitle("llama.cpp executor, SmolLM2-135M-Instruct (" + results["machine"].get("cpu_model", "") + ")")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--decode-threads", type=int, default=None, help="our executor's one-token-step threads (default: its own)"
    )
    parser.add_argument(
        "--raw-decode-threads", type=int, default=None, help="raw llama-cpp-python's one-token threads (default: all)"
    )
    parser.add_argument(
        "--sides", default="raw,engine,server", help="which 1-stream sides, comma-separated: raw, engine, server"
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=4, help="1-stream prompts (mixed lengths)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the 1-stream prompts")
    parser.add_argument("--skip", action="append", default=[], choices=["one-stream", "bandwidth", "quality"])
    parser.add_argument("--quality-f32", action="store_true", help="also the f32-vs-bf16 noise floor (slow)")
    parser.add_argument("--raw-worker", nargs=2, metavar=("GGUF", "PROMPTS_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--engine-worker", nargs=2, metavar=("GGUF", "PROMPTS_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for kind, run in (("raw_worker", raw_worker), ("engine_worker", engine_worker)):
        chosen = getattr(args, kind)
        if chosen:
            prompts = json.loads(Path(chosen[1]).read_text())
            run(chosen[0], args.threads, args.decode_threads, prompts, args.new_tokens)
            return 0
    sides = [side.strip() for side in args.sides.split(",") if side.strip()]
    if not sides or set(sides) - {"raw", "engine", "server"}:
        parser.error(f"--sides {args.sides!r}: expected some of raw, engine, server")

    from serve import build_prompts, template_prompts
    from streamhost.engine.loader import default_gguf_path, ensure_default_model

    model_dir = ensure_default_model()
    gguf = default_gguf_path()
    prompts = build_prompts(0)[: args.prompts]
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
    if "one-stream" not in args.skip:
        side = one_stream_side_by_side(
            str(gguf),
            model_dir,
            args.threads,
            args.decode_threads,
            args.raw_decode_threads,
            prompts,
            args.rounds,
            args.new_tokens,
            sides,
        )
        results.update(side)
        print(
            "1 stream: "
            + ", ".join(
                f"{name} {side[name]['decode_tok_s_median']:.1f} tok/s"
                + (
                    f" (paired {side[name]['ratio_paired_median']:.1%} of raw)"
                    if "ratio_paired_median" in side[name]
                    else ""
                )
                for name in sides
            ),
            flush=True,
        )
    if "bandwidth" not in args.skip and results.get("raw"):
        read = read_bandwidth(args.threads)
        copy = copy_bandwidth()
        weights = results["raw"]["weights_bytes"]
        rates = {side: results[side]["decode_tok_s_median"] for side in sides}
        best = max(rates.values())
        results["bandwidth"] = {
            "weights_bytes_per_token": weights,
            "machine_read_bytes_s": read,
            "machine_copy_bytes_s": copy,
            "machine_gb_s": max(read, copy) / 1e9,
            "decode_gb_s": weights * best / 1e9,
            "fraction": weights * best / max(read, copy),
            "decode_rates": rates,
            "note": "weights only (KV reads at these lengths are < 1% of them); machine = the better of a "
            "torch sum over 1 GiB (read) and a numpy copy of 512 MiB (read + write bytes)",
        }
        print(f"bandwidth: decode reads {results['bandwidth']['fraction']:.0%} of the measured", flush=True)
    if "quality" not in args.skip:
        results["quality"] = quality(model_dir, args.threads, 64, args.quality_f32)
        q = results["quality"]
        print(
            f"Q8_0 vs bf16 greedy: {q['agreement_pooled']:.1%} before the first difference, "
            f"{q['agreement_teacher_forced']:.1%} per token (teacher forced)",
            flush=True,
        )
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    stamped = write_results(results, "llamacpp")
    plot(results, plot_path(stamped))
    print(
        json.dumps(
            {k: v for k, v in results.items() if k not in ("machine", "quality", "pairs")}, indent=2, default=str
        )
    )
    print(f"wrote {stamped} and {plot_path(stamped)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
