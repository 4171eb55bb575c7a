"""Engine benchmark: our continuous-batching engine against two transformers baselines, in one run.

Systems, all on the same model folder, dtype and greedy prompts (EOS ignored, so every stream
makes exactly ``--new-tokens`` tokens):

* ``hand_loop``       -- a hand-written transformers decode loop at batch 1 (one prefill forward,
                         then one forward per token with the model's KV cache, argmax);
* ``transformers_cb`` -- transformers' own continuous batching (``init_continuous_batching``,
                         the manager behind ``generate_batch``) with a small paged KV cache;
* ``engine``          -- ``streamhost.engine.Engine``, N concurrent ``generate()`` streams;
* ``engine_peer``     -- with ``--peer-src``: the same engine measurement run on another checkout's
                         ``src/`` (e.g. the previous main), for a before/after in one run;
* ``engine_compiled`` -- with ``--compile-peers``: the engine with its small steps compiled
                         (``EngineConfig(compile=True)``, engine/compiled_step.py) beside the eager
                         one (``compile=False``); start-up (compile, or load from the disk cache) is
                         not timed here but recorded in the result (``compile``).

Each configuration gets a warm-up run, then ``--repeats`` measured runs; the figures are medians.
Results go to bench/results/engine-<timestamp>.json and the plot beside it (same stem, .png);
``bench/check.py`` says whether the issue's goals are met. Usage::

    .venv/bin/python bench/engine.py                 # full run (~10 min on 2 cores)
    .venv/bin/python bench/engine.py --quick         # smoke run (streams 1,4; 32 tokens; 1 repeat)
    git archive <rev> src | tar -x -C /tmp/prev       # a previous version's source tree, then:
    .venv/bin/python bench/engine.py --skip-baselines --peer-src /tmp/prev/src --streams 1,16
    .venv/bin/python bench/engine.py --skip-baselines --compile-peers --streams 1,4,16   # eager vs compiled
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from _common import (
    StreamRecord,
    _jsonable,
    chat_prompts,
    common_prefix,
    load_latest,
    machine_info,
    median_runs,
    plot_path,
    plot_throughput_and_ttft,
    run_metrics,
    write_results,
)
from check import format_verdict, verdicts

console = Console(width=max(Console().width, 100))  # a table, even when piped

SYSTEM_KEYS = {
    "hand": "hand_loop",
    "cb": "transformers_cb",
    "engine": "engine",
    "peer": "engine_peer",
    "compiled": "engine_compiled",
}


def run_systems_in_subprocesses(
    argv: list[str], systems: list[str], peer_src: str | None = None, rounds: int = 1
) -> dict[str, Any]:
    """Measure each system in a fresh interpreter and merge their results (see ``--in-process``).

    The ``peer`` system imports streamhost from ``peer_src`` instead of this checkout. With several
    ``rounds`` the systems take turns (the order flips every round), so a change in the machine's
    load during the run falls on all of them alike; each system's runs are pooled before the medians.
    """
    import subprocess
    import tempfile

    merged: dict[str, Any] = {}
    for round_index in range(rounds):
        order = systems if round_index % 2 == 0 else list(reversed(systems))
        for system in order:
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
                out = Path(tmp.name)
            console.print(f"[bold]measuring {system} in a fresh process (round {round_index + 1}/{rounds})[/]")
            env = dict(os.environ)
            if system == "peer" and peer_src:
                env["PYTHONPATH"] = os.pathsep.join(
                    [str(Path(peer_src).resolve()), *[p for p in [env.get("PYTHONPATH")] if p]]
                )
            subprocess.run(
                [sys.executable, __file__, *argv, "--only", system, "--partial-out", str(out)], check=True, env=env
            )
            part = json.loads(out.read_text())
            out.unlink()
            _pool_runs(merged, part)
    return merged


def _pool_runs(merged: dict[str, Any], part: dict[str, Any]) -> None:
    """Add one child's results to ``merged``: a system seen before gets its runs appended, medians redone."""
    for key, value in part.items():
        earlier = merged.get(key)
        if isinstance(earlier, dict) and "runs" in earlier and "runs" in value:  # the hand loop: one entry
            earlier["runs"].extend(value["runs"])
            earlier["median"] = median_runs(earlier["runs"])
            continue
        if not isinstance(earlier, dict) or "by_streams" not in earlier or "by_streams" not in value:
            merged[key] = value
            continue
        for n, entry in value["by_streams"].items():
            into = earlier["by_streams"].setdefault(n, entry)
            if into is not entry:
                into["runs"].extend(entry["runs"])
                into["median"] = median_runs(into["runs"])


def measure_one(system: str, model_dir: Path, args, progress) -> dict[str, Any]:
    """Measure one system ("hand", "cb" or "engine") on the shared prompts."""
    from transformers import AutoTokenizer

    prompts = chat_prompts(AutoTokenizer.from_pretrained(model_dir), max(args.stream_counts))
    runs = (1 + args.repeats) * (1 if system == "hand" else len(args.stream_counts))
    task = progress.add_task(
        {
            "hand": "hand loop",
            "cb": "transformers CB",
            "engine": "streamhost engine",
            "peer": "streamhost engine (peer src)",
            "compiled": "streamhost engine (compiled)",
        }[system],
        total=runs,
    )
    part: dict[str, Any] = {"prompt_lengths": [len(p) for p in prompts]}
    if system in ("engine", "peer", "compiled"):
        import streamhost

        compile_choice = None if system == "peer" or not args.compile_peers else system == "compiled"
        part[SYSTEM_KEYS[system]] = bench_engine(model_dir, prompts, args, progress, task, compile_choice)
        part[SYSTEM_KEYS[system]]["source"] = str(Path(streamhost.__path__[0]).resolve().parent)
        return part
    model, tokenizer = load_hf_model(model_dir)
    if system == "hand":
        part["hand_loop"] = bench_hand_loop(model, prompts, args, progress, task)
    else:
        part["transformers_cb"] = bench_transformers_cb(model, tokenizer, prompts, args, progress, task)
    del model
    gc.collect()
    return part


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,4,8,16", help="concurrent stream counts (default 1,4,8,16)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per stream")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per configuration")
    parser.add_argument(
        "--warmup-tokens", type=int, default=32, help="tokens per stream in each configuration's warm-up run"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: streams 1,4; 32 tokens; 1 repeat")
    parser.add_argument(
        "--skip-baselines",
        action="store_true",
        help="run only our engine; ratios use the baselines of the last bench/results/engine.json",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--omp-wait-policy",
        choices=["passive", "active", "inherit"],
        default="passive",
        help="OMP_WAIT_POLICY for this process (default passive: on shared cores, spinning OpenMP "
        "threads slow a batch-1 loop 5-20x; 'inherit' keeps the environment's)",
    )
    parser.add_argument("--model", default=None, help="model folder (default: the converted smollm2)")
    parser.add_argument("--cb-num-blocks", type=int, default=128, help="transformers CB: KV cache blocks")
    parser.add_argument("--cb-page-size", type=int, default=32, help="transformers CB: tokens per block")
    parser.add_argument("--cb-max-batch-tokens", type=int, default=1024, help="transformers CB: tokens per step")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure every system in this one process (default: each in a fresh process, because "
        "OpenMP thread pools left by one system slow the next one's model thread by ~35%%)",
    )
    parser.add_argument(
        "--peer-src",
        default=None,
        help="another checkout's src/ folder (e.g. the previous main): its engine is measured too, in its own "
        "process, and compared stream count by stream count",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure the systems this many times in turns (order flipped each round) and pool their runs",
    )
    parser.add_argument(
        "--compile-peers",
        action="store_true",
        help="measure the engine eager (compile=False) and compiled (compile=True) side by side",
    )
    parser.add_argument(
        "--compile-buckets", default=None, help="compiled step sizes in tokens, e.g. 1,4,16 (default: the engine's)"
    )
    parser.add_argument("--only", choices=list(SYSTEM_KEYS), help=argparse.SUPPRESS)
    parser.add_argument("--partial-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.streams = "1,4"
        args.new_tokens = min(args.new_tokens, 32)
        args.repeats = 1
        args.warmup_tokens = min(args.warmup_tokens, 8)
    args.stream_counts = sorted({int(s) for s in args.streams.split(",") if s.strip()})
    if not args.stream_counts or min(args.stream_counts) < 1:
        parser.error("--streams must list positive integers")
    if args.new_tokens < 2 or args.repeats < 1:
        parser.error("--new-tokens must be >= 2 and --repeats >= 1")
    args.warmup_tokens = max(2, min(args.warmup_tokens, args.new_tokens))
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.rounds > 1 and args.in_process:
        parser.error("--rounds measures in separate processes; drop --in-process")
    if args.peer_src and args.in_process:
        parser.error("--peer-src measures in separate processes; drop --in-process")
    if args.peer_src and not (Path(args.peer_src) / "streamhost").is_dir():
        parser.error(f"--peer-src {args.peer_src}: no streamhost package there")
    return args


# --------------------------------------------------------------------------------------------
# Systems. Each measured configuration returns {"median": {...}, "runs": [...], "tokens0": [...]}.
# --------------------------------------------------------------------------------------------


def measure(
    run_once: Callable[[int], tuple[list[StreamRecord], float | None]],
    args: argparse.Namespace,
    progress: Progress,
    task: Any,
    label: str,
) -> dict[str, Any]:
    """Warm-up run (short), then ``args.repeats`` measured runs; medians of the per-run metrics."""
    progress.update(task, description=f"{label}: warm-up")
    run_once(args.warmup_tokens)
    progress.advance(task)
    runs, tokens0 = [], []
    for i in range(args.repeats):
        progress.update(task, description=f"{label}: run {i + 1}/{args.repeats}")
        records, end = run_once(args.new_tokens)
        bad = [r.n_tokens for r in records if r.n_tokens != args.new_tokens]
        if bad:
            raise RuntimeError(f"{label}: streams generated {bad} tokens, expected {args.new_tokens}")
        runs.append(run_metrics(records, end))
        tokens0 = records[0].token_ids
        progress.advance(task)
    return {"median": median_runs(runs), "runs": runs, "tokens0": tokens0}


def load_hf_model(model_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    return model, tokenizer


def hand_loop_once(model: Any, prompt: list[int], new_tokens: int) -> StreamRecord:
    """Batch 1: one prefill forward, then one cached forward per token; greedy, EOS ignored."""
    import inspect

    import torch

    # transformers 5.x renamed ``past_key_values`` to ``cache``; use whichever this model takes.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        input_ids = torch.tensor([prompt], dtype=torch.long)
        start = time.perf_counter()
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        next_token = out.logits[:, -1, :].argmax(dim=-1)
        tokens = [int(next_token.item())]
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            cache = getattr(out, cache_kw)
            out = model(input_ids=next_token[:, None], use_cache=True, **{cache_kw: cache})
            next_token = out.logits[:, -1, :].argmax(dim=-1)
            tokens.append(int(next_token.item()))
        last = time.perf_counter()
    return StreamRecord(start=start, first=first, last=last, token_ids=tokens)


def bench_hand_loop(model: Any, prompts: list[list[int]], args, progress, task) -> dict[str, Any]:
    return measure(lambda n: ([hand_loop_once(model, prompts[0], n)], None), args, progress, task, "hand loop")


def bench_transformers_cb(model: Any, tokenizer: Any, prompts: list[list[int]], args, progress, task) -> dict:
    """transformers' continuous batching through the manager ``generate_batch`` wraps.

    The manager is built and warmed once (its construction is not what we measure) and sized
    explicitly: on CPU its defaults size the KV cache from host RAM. Results are taken without
    streaming (``generate_batch``'s way, its best case); TTFT comes from its per-token
    timestamps, total tok/s from submission until the last result is in hand.
    """
    from transformers import ContinuousBatchingConfig, GenerationConfig

    gen_config = GenerationConfig(
        max_new_tokens=args.new_tokens,
        do_sample=False,
        eos_token_id=-1,  # never matches: every stream makes exactly max_new_tokens
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )
    cb_config = ContinuousBatchingConfig(
        num_blocks=args.cb_num_blocks,
        page_size=args.cb_page_size,
        max_batch_tokens=args.cb_max_batch_tokens,
        max_requests_per_batch=max(args.stream_counts),
    )
    needed = max(args.stream_counts) * -(-(max(map(len, prompts)) + args.new_tokens) // args.cb_page_size)
    if needed > args.cb_num_blocks:
        console.print(
            f"[yellow]transformers CB: {needed} blocks needed for all streams at once, "
            f"{args.cb_num_blocks} configured (--cb-num-blocks); it will queue or evict[/]"
        )
    manager = model.init_continuous_batching(generation_config=gen_config, continuous_batching_config=cb_config)
    manager.warmup()
    manager.start()
    resolved = manager.continuous_batching_config
    config_info = {
        "api": "model.init_continuous_batching(...) -> manager.add_requests / get_result",
        "num_blocks": args.cb_num_blocks,
        "page_size": args.cb_page_size,
        "max_batch_tokens": args.cb_max_batch_tokens,
        "max_requests_per_batch": resolved.max_requests_per_batch,
        "allow_block_sharing": resolved.allow_block_sharing,
        "attn_implementation": model.config._attn_implementation,
        "streaming": False,
    }

    def run_once(batch: list[list[int]], new_tokens: int) -> tuple[list[StreamRecord], float]:
        start = time.perf_counter()
        ids = manager.add_requests(batch, max_new_tokens=new_tokens, record_timestamps=True)
        results: dict[str, Any] = {}
        while len(results) < len(ids):
            result = manager.get_result(timeout=60)
            if result is None:
                raise RuntimeError("transformers CB produced no result for 60 s")
            if result.is_finished():
                if result.error:
                    raise RuntimeError(f"transformers CB request failed: {result.error}")
                results[result.request_id] = result
        end = time.perf_counter()
        records = []
        for rid in ids:
            r = results[rid]
            stamps = r.timestamps or [end]
            records.append(StreamRecord(start, stamps[0], stamps[-1], list(r.generated_tokens)))
        return records, end

    by_streams = {}
    try:
        for n in args.stream_counts:
            batch = prompts[:n]
            by_streams[n] = measure(
                lambda tokens, b=batch: run_once(b, tokens), args, progress, task, f"transformers CB x{n}"
            )
    finally:
        manager.stop(block=True, timeout=30)
        manager.destroy()
    return {"config": config_info, "by_streams": by_streams}


def import_engine() -> tuple[Any, Any]:
    """(Engine, EngineConfig), from the package if it exports them, else from its module."""
    try:
        from streamhost.engine import Engine, EngineConfig
    except ImportError:
        from streamhost.engine.engine import Engine, EngineConfig
    return Engine, EngineConfig


def engine_available() -> str | None:
    """None if streamhost's Engine can be imported, else why not."""
    try:
        import_engine()
    except ImportError as exc:
        return str(exc)
    return None


def bench_engine(
    model_dir: Path, prompts: list[list[int]], args, progress, task, compile_choice: bool | None = None
) -> dict[str, Any]:
    """Our engine: N concurrent ``generate()`` loops; times are when each token reached the caller.

    ``compile_choice``: EngineConfig.compile (None leaves the field out, for a peer that predates it)."""
    from streamhost.engine.types import GenerationParameters

    Engine, EngineConfig = import_engine()

    extra: dict[str, Any] = {}
    if compile_choice is not None:
        extra["compile"] = compile_choice
        if compile_choice and args.compile_buckets:
            extra["compile_buckets"] = tuple(int(b) for b in args.compile_buckets.split(","))
    load_started = time.perf_counter()
    engine = Engine.load(str(model_dir), EngineConfig(dtype="bfloat16", **extra))
    load_s = time.perf_counter() - load_started

    async def stream(prompt: list[int], new_tokens: int, start: float) -> StreamRecord:
        params = GenerationParameters(max_new_tokens=new_tokens, ignore_eos=True)
        first = last = None
        tokens: list[int] = []
        async for event in engine.generate(prompt, params):
            last = time.perf_counter()
            if first is None:
                first = last
            tokens.append(event.token_id)
        if first is None:
            raise RuntimeError("engine stream ended without a token")
        return StreamRecord(start, first, last, tokens)

    async def main() -> dict[int, Any]:
        await engine.start()
        loop = asyncio.get_running_loop()
        by_streams = {}
        try:
            for n in args.stream_counts:
                batch = prompts[:n]

                def run_once(new_tokens: int, b=batch) -> tuple[list[StreamRecord], float]:
                    # measure() is synchronous; the event loop is ours, so drive it from a thread.
                    async def go() -> list[StreamRecord]:
                        start = time.perf_counter()
                        return list(await asyncio.gather(*(stream(p, new_tokens, start) for p in b)))

                    records = asyncio.run_coroutine_threadsafe(go(), loop).result()
                    return records, time.perf_counter()

                by_streams[n] = await asyncio.to_thread(
                    measure, run_once, args, progress, task, f"streamhost engine x{n}"
                )
        finally:
            await engine.stop()
        return by_streams

    by_streams = asyncio.run(main())
    info: dict[str, Any] = {
        "api": f"Engine.load(path, EngineConfig(dtype='bfloat16', **{extra})).generate(token_ids, params)",
        "load_s": load_s,
    }
    compiled = getattr(engine.executor, "compiled", None)
    if compiled is not None:
        info["compile"] = {
            "summary": compiled.report.summary(),
            "warm_up_s": compiled.report.seconds,
            "source": compiled.report.source,
            "buckets": list(compiled.report.buckets),
            "recompiles_after_warm_up": compiled.recompiles(),
        }
    for attr in ("info", "config", "stats"):
        value = getattr(engine, attr, None)
        try:
            info[attr] = value() if callable(value) else value
        except Exception as exc:  # informational only: never lose the figures over it
            info[attr] = f"unavailable: {exc}"
    return {"config": info, "by_streams": by_streams}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _get(system: dict | None, n: int) -> dict | None:
    if not system:
        return None
    by = system.get("by_streams", {})
    entry = by.get(n) or by.get(str(n))
    return entry["median"] if entry else None


def ratios(results: dict[str, Any], stream_counts: list[int]) -> list[dict[str, Any]]:
    """The ratios the goals are stated in (bench/check.py holds the goals themselves)."""
    hand = results.get("hand_loop")
    hand_m = hand["median"] if hand else None
    ours, cb = results.get("engine"), results.get("transformers_cb")
    one, top = min(stream_counts), max(stream_counts)
    ours_one, ours_top, cb_top = _get(ours, one), _get(ours, top), _get(cb, top)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    rows = [
        {
            "name": f"decode tok/s: ours x{one} / hand loop",
            "value": ratio(
                ours_one and ours_one["decode_tok_s_per_stream"], hand_m and hand_m["decode_tok_s_per_stream"]
            ),
        },
        {
            "name": f"total tok/s: ours x{top} / hf CB x{top}",
            "value": ratio(ours_top and ours_top["total_tok_s"], cb_top and cb_top["total_tok_s"]),
        },
        {
            "name": f"total tok/s: ours x{top} / ours x{one}",
            "value": ratio(ours_top and ours_top["total_tok_s"], ours_one and ours_one["total_tok_s"]),
        },
    ]
    if top != 16:
        for row in rows:
            row["note"] = "issue targets are stated for 1 and 16 streams"
    compiled = results.get("engine_compiled")
    if compiled:
        for n in stream_counts:
            mine, theirs = _get(compiled, n), _get(ours, n)
            rows.append(
                {
                    "name": f"total tok/s: compiled x{n} / eager x{n}",
                    "value": ratio(mine and mine["total_tok_s"], theirs and theirs["total_tok_s"]),
                }
            )
            rows.append(
                {
                    "name": f"TTFT p50: compiled x{n} / eager x{n}",
                    "value": ratio(mine and mine["ttft_median_s"], theirs and theirs["ttft_median_s"]),
                }
            )
    peer = results.get("engine_peer")
    if peer:
        for n in stream_counts:
            mine, theirs = _get(ours, n), _get(peer, n)
            rows.append(
                {
                    "name": f"total tok/s: ours x{n} / peer x{n}",
                    "value": ratio(mine and mine["total_tok_s"], theirs and theirs["total_tok_s"]),
                }
            )
            rows.append(
                {
                    "name": f"TTFT p50: ours x{n} / peer x{n}",
                    "value": ratio(mine and mine["ttft_median_s"], theirs and theirs["ttft_median_s"]),
                }
            )
    return rows


def print_report(results: dict[str, Any], stream_counts: list[int]) -> None:
    table = Table(
        title=f"SmolLM2-135M bf16, {results['new_tokens']} new tokens, medians of {results['repeats'] * results.get('rounds', 1)} runs"
    )
    for col in ("system", "streams", "tok/s total", "tok/s/stream", "TTFT p50 ms", "TTFT max ms"):
        table.add_column(col, justify="right" if col != "system" else "left")

    def row(label: str, n: int, m: dict | None) -> None:
        if m:
            table.add_row(
                label,
                str(n),
                f"{m['total_tok_s']:.1f}",
                f"{m['decode_tok_s_per_stream']:.1f}",
                f"{m['ttft_median_s'] * 1000:.0f}",
                f"{m['ttft_max_s'] * 1000:.0f}",
            )

    if results.get("hand_loop"):
        row("hand loop" + (" (prev)" if results.get("baselines_from") else ""), 1, results["hand_loop"]["median"])
    for key, label in (
        ("transformers_cb", "hf CB"),
        ("engine_peer", "streamhost (peer src)"),
        ("engine", "streamhost"),
        ("engine_compiled", "streamhost compiled"),
    ):
        if key == "transformers_cb" and results.get("baselines_from"):
            label += " (prev)"
        for n in stream_counts:
            row(label, n, _get(results.get(key), n))
    console.print(table)
    for r in results.get("ratios", []):
        if ("peer" in r["name"] or "compiled" in r["name"]) and r["value"] is not None:
            console.print(f"  {r['name']}: {r['value']:.3f}")

    console.print("goals (bench/check.py):")
    for verdict in verdicts(results, "engine"):
        console.print("  " + format_verdict(verdict), markup=False)
    agreement = results.get("greedy_agreement")
    if agreement:
        console.print(f"greedy agreement with the hand loop (stream 0, leading tokens): {agreement}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Must happen before torch loads its OpenMP runtime, which reads it once.
    if args.omp_wait_policy != "inherit":
        if "torch" in sys.modules:
            console.print("[yellow]torch already imported: --omp-wait-policy has no effect[/]")
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    import transformers

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    from streamhost.engine.loader import ensure_default_model

    model_dir = Path(args.model) if args.model else ensure_default_model()
    results: dict[str, Any] = {
        "benchmark": "engine",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": str(model_dir),
        "dtype": "bfloat16",
        "new_tokens": args.new_tokens,
        "warmup_tokens": args.warmup_tokens,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "streams": args.stream_counts,
        "quick": args.quick,
        "greedy": True,
        "ignore_eos": True,
        "machine": {**machine_info(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "metrics": {
            "total_tok_s": "all generated tokens / (time all results are in hand - submission)",
            "ttft_median_s": "median over streams of (first token at the caller - submission)",
            "decode_tok_s_per_stream": "median over streams of (tokens - 1) / (last token - first token)",
        },
    }
    why_no_engine = engine_available()
    if why_no_engine:
        console.print(f"[yellow]streamhost engine not available ({why_no_engine}); measuring baselines only[/]")
    if args.skip_baselines and why_no_engine:
        console.print("[red]--skip-baselines with no engine: nothing to measure[/]")
        return 2

    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} runs"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        if args.only is not None:  # a child: one system, results to --partial-out
            Path(args.partial_out).write_text(
                json.dumps(measure_one(args.only, model_dir, args, progress), default=_jsonable)
            )
            return 0
        if args.skip_baselines:
            previous = load_latest("engine")
            if previous and previous.get("new_tokens") == args.new_tokens:
                results["baselines_from"] = previous.get("timestamp")
                for key in ("hand_loop", "transformers_cb"):
                    if previous.get(key):
                        results[key] = previous[key]
            else:
                console.print("[yellow]no previous baselines with the same --new-tokens; ratios will be n/a[/]")
        wanted = ([] if args.skip_baselines else ["hand", "cb"]) + ([] if why_no_engine else ["engine"])
        if args.peer_src:
            wanted.insert(len(wanted) - 1 if "engine" in wanted else len(wanted), "peer")  # peer, then ours
        if args.compile_peers and "engine" in wanted:
            wanted.append("compiled")
        if args.in_process:
            for system in wanted:
                results.update(measure_one(system, model_dir, args, progress))
        else:
            progress.stop()
            results.update(
                run_systems_in_subprocesses(
                    list(argv if argv is not None else sys.argv[1:]), wanted, args.peer_src, args.rounds
                )
            )
    results["elapsed_s"] = time.perf_counter() - started
    # The cores are shared: a high load average here means the figures are noisy.
    results["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["engine_available"] = why_no_engine is None
    if why_no_engine:
        results["engine_unavailable_reason"] = why_no_engine

    # Greedy sanity check: stream 0 of every system starts from the same prompt as the hand loop.
    hand_tokens = results.get("hand_loop", {}).get("tokens0")
    if hand_tokens:
        agreement = {}
        for key in ("transformers_cb", "engine", "engine_peer", "engine_compiled"):
            for n, entry in (results.get(key) or {}).get("by_streams", {}).items():
                agreement[f"{key} x{n}"] = f"{common_prefix(hand_tokens, entry['tokens0'])}/{len(hand_tokens)}"
        results["greedy_agreement"] = agreement

    if results.get("engine_compiled") and results.get("engine"):  # compiled greedy output against eager
        results["compiled_agreement"] = {
            f"x{n}": f"{common_prefix(entry['tokens0'], results['engine_compiled']['by_streams'][n]['tokens0'])}"
            f"/{len(entry['tokens0'])}"
            for n, entry in results["engine"]["by_streams"].items()
            if n in results["engine_compiled"]["by_streams"]
        }
    results["ratios"] = ratios(results, args.stream_counts)
    stamped = write_results(results, "engine")
    series = {}
    for key, label in (
        ("engine", "streamhost engine"),
        ("engine_peer", "streamhost engine (peer src)"),
        ("engine_compiled", "streamhost engine (compiled)"),
        ("transformers_cb", "transformers CB"),
    ):
        if results.get(key):
            series[label] = {int(n): e["median"] for n, e in results[key]["by_streams"].items()}
    plot = plot_throughput_and_ttft(
        plot_path(stamped),
        f"SmolLM2-135M-Instruct bf16 on CPU ({results['machine']['torch_threads']} threads), "
        f"{args.new_tokens} new tokens, greedy",
        series,
        reference=results["hand_loop"]["median"] if results.get("hand_loop") else None,
    )
    print_report(results, args.stream_counts)
    console.print(f"wrote {stamped}, {plot} in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
