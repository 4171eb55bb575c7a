"""A model server whose engine writes a timeline of each request, to see where a TTFT goes.

Runs ``python -m streamhost.cli container ...`` from a given source tree (this checkout's or
another commit's, e.g. extracted by ``git archive``) with the engine's request path wrapped so that
it appends one JSON line per event to ``--trace``:

- ``arrive``: ``Engine.generate`` called (the route has parsed the body and rendered the prompt);
- ``tokenize``: ``Engine.tokenize`` start/end and the thread it ran on;
- ``schedule``: each step's decision (decode count, prefill chunks with request id, start, length,
  whether the chunk completes its prompt, how many wait);
- ``step``: each step's start and end (a completed prompt's first token is sampled at its end).

Only method names both the pre- and post-issue-13 engines have are wrapped, so the same harness
traces either. A diagnostic for bench/serve.py runs, not a benchmark of its own (it adds a file
write per event). Usage:

    python bench/ttft_trace.py --src SRC_DIR --trace OUT.jsonl -- --model-id smollm2 --port P ...
    python bench/ttft_trace.py --report OUT.jsonl   # per-request timeline of the opening burst
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import threading
import time
from pathlib import Path
from typing import Any


def install(trace_path: Path) -> None:
    """Wrap the engine's request path so it logs to ``trace_path`` (call before the server starts)."""
    from streamhost.engine import engine as engine_mod
    from streamhost.engine import scheduler as sched_mod

    out = trace_path.open("a", buffering=1)
    lock = threading.Lock()

    def emit(kind: str, **fields: Any) -> None:
        line = json.dumps({"t": time.monotonic(), "kind": kind, **fields})
        with lock:
            out.write(line + "\n")

    engine_cls = engine_mod.Engine
    original_generate = engine_cls.generate

    async def generate(self, prompt, params=None, request_id=None, *, stream=True):  # type: ignore[no-untyped-def]
        emit("arrive", rid=request_id, chars=len(prompt) if isinstance(prompt, str) else None)
        async for event in original_generate(self, prompt, params, request_id, stream=stream):
            yield event

    original_tokenize = engine_cls.tokenize

    def tokenize(self, text):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        ids = original_tokenize(self, text)
        emit("tokenize", start=t0, tokens=len(ids), thread=threading.current_thread().name)
        return ids

    original_step = engine_cls._step

    def step(self, work):  # type: ignore[no-untyped-def]
        t0, cpu0 = time.monotonic(), time.process_time()
        original_step(self, work)
        emit(
            "step",
            start=t0,
            cpu=time.process_time() - cpu0,  # every thread of the process: less sensitive to other load
            decode=len(work.decode),
            prefill=sum(p.length for p in work.prefill),
        )

    original_schedule = sched_mod.Scheduler.schedule

    def schedule(self):  # type: ignore[no-untyped-def]
        work = original_schedule(self)
        emit(
            "schedule",
            decode=len(work.decode),
            waiting=len(self.waiting),
            prefill=[[p.seq.request_id, p.start, p.length, p.completes_prompt] for p in work.prefill],
        )
        return work

    engine_cls.generate = generate
    engine_cls.tokenize = tokenize
    engine_cls._step = step
    sched_mod.Scheduler.schedule = schedule


def report(trace_path: Path, first: int = 16) -> None:
    """The first ``first`` requests: arrival, tokenized, first scheduled, first token (ms from the first arrival)."""
    rows = [json.loads(line) for line in trace_path.read_text().splitlines() if line.strip()]
    every = [r for r in rows if r["kind"] == "arrive"]
    bursts = [i for i in range(len(every) - first + 1) if every[i + first - 1]["t"] - every[i]["t"] < 1.0]
    starts = [i for n, i in enumerate(bursts) if n == 0 or i >= bursts[n - 1] + first]
    if not starts:
        print(f"no burst of {first} requests within a second traced")
        return
    for i in starts:
        print(f"== burst at arrival #{i}: {_burst_summary(rows, every[i : i + first])}")
        _report_burst(rows, every[i : i + first])


def _burst_summary(rows: list[dict[str, Any]], arrivals: list[dict[str, Any]]) -> str:
    """Last first token, steps, their summed process CPU, and scheduling-order inversions against arrival."""
    t0 = arrivals[0]["t"]
    arrived = [a["rid"] for a in arrivals]
    admitted: list[str] = []
    firsts: dict[str, float] = {}
    steps: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        if r["kind"] != "schedule" or r["t"] < t0 or not any(p[0] in arrived for p in r["prefill"]):
            continue
        end = next((s for s in rows[i + 1 :] if s["kind"] == "step"), None)
        if end is not None:
            steps.append(end)
        for rid, start, _length, completes in r["prefill"]:
            if rid in arrived and start == 0:
                admitted.append(rid)
            if rid in arrived and completes and end is not None:
                firsts[rid] = end["t"]
    rank = {rid: n for n, rid in enumerate(arrived)}
    inversions = sum(
        1 for a in range(len(admitted)) for b in range(a + 1, len(admitted)) if rank[admitted[a]] > rank[admitted[b]]
    )
    last = max(firsts.values(), default=t0) - t0
    cpu = sum(s.get("cpu", 0.0) for s in steps)
    return f"last first token {last:.3f} s, {len(steps)} steps, {cpu:.3f} s step CPU, {inversions} order inversions"


def _report_burst(rows: list[dict[str, Any]], arrivals: list[dict[str, Any]]) -> None:
    first = len(arrivals)
    t0 = arrivals[0]["t"]
    reqs: dict[str, dict[str, float]] = {a["rid"]: {"arrive": a["t"]} for a in arrivals}
    steps = [r for r in rows if r["kind"] == "step"]
    for i, r in enumerate(rows):
        if r["kind"] != "schedule":
            continue
        end = next((s["t"] for s in rows[i + 1 :] if s["kind"] == "step"), None)
        for rid, _start, _length, completes in r["prefill"]:
            if rid in reqs:
                reqs[rid].setdefault("scheduled", r["t"])
                if completes and end is not None:
                    reqs[rid]["first_token"] = end
    print(f"{'request':<28} {'arrive':>8} {'sched':>8} {'first':>8}  (ms after the first arrival)")
    for rid, times in reqs.items():
        cells = [
            f"{(times[k] - t0) * 1000:8.0f}" if k in times else "       -"
            for k in ("arrive", "scheduled", "first_token")
        ]
        print(f"{rid:<28} {' '.join(cells)}")
    toks = [r for r in rows if r["kind"] == "tokenize" and r["start"] >= t0 - 0.01][:first]
    print("tokenize calls (start ms, duration ms, tokens, thread):")
    for r in toks:
        print(f"  {(r['start'] - t0) * 1000:8.1f} {(r['t'] - r['start']) * 1000:7.2f} {r['tokens']:5d} {r['thread']}")
    print("steps (start ms, duration ms, process CPU ms, decode rows, prefill tokens):")
    last = max((t.get("first_token", 0) for t in reqs.values()), default=t0)
    for s in steps:
        if s["start"] >= t0 - 0.001 and s["start"] <= last + 0.001:
            wall, cpu = (s["t"] - s["start"]) * 1000, s.get("cpu", float("nan")) * 1000
            print(f"  {(s['start'] - t0) * 1000:8.1f} {wall:7.1f} {cpu:7.1f} {s['decode']:4d} {s['prefill']:6d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, help="the source tree to serve (its src/ folder)")
    parser.add_argument("--trace", type=Path, help="JSON-lines file to append events to")
    parser.add_argument("--report", type=Path, help="print the opening burst's timeline of a trace and exit")
    parser.add_argument("--first", type=int, default=16, help="requests in the report (default 16)")
    parser.add_argument("container_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.report:
        report(args.report, args.first)
        return 0
    if not args.src or not args.trace:
        parser.error("--src and --trace are needed to serve")
    sys.path.insert(0, str(args.src.resolve()))
    install(args.trace)
    rest = [a for a in args.container_args if a != "--"]
    sys.argv = ["streamhost", "container", *rest]
    runpy.run_module("streamhost.cli", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
