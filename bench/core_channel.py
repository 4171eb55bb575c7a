"""Round trip of one engine step's messages between two processes, per channel.

The front end sends a step's input (a CoreInput) and the core answers with a 16-stream step's
output (a CoreOutput with 16 sampled tokens and the counters), with no model in between: what is
left is the channel's own cost per step. Channels: ZeroMQ PUSH/PULL over ``ipc://`` with pickle
(what engine/core_client.py uses), the same with msgpack, and a multiprocessing Pipe (pickle).

    flock /work/wt/bench.lock nice -n 5 .venv/bin/python bench/core_channel.py --rounds 3000

Writes bench/results/core-channel-<time>.json and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from streamhost.engine.core_messages import CoreInput, CoreOutput, CoreStats

RESULTS = Path(__file__).resolve().parent / "results"


def step_output(streams: int) -> CoreOutput:
    return CoreOutput(
        tokens=[(k, 1000 + k, -0.25, None, None) for k in range(streams)], stats=CoreStats(running=streams, steps=1)
    )


def as_msgpack(out: CoreOutput) -> list:
    return [[list(t) for t in out.tokens], list(vars(out.stats).values())]


def _echo_zmq(in_addr: str, out_addr: str, codec: str, streams: int) -> None:
    import msgpack
    import zmq

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.connect(in_addr)
    push.connect(out_addr)
    out = step_output(streams)
    while True:
        raw = pull.recv()
        message = pickle.loads(raw) if codec == "pickle" else msgpack.unpackb(raw)
        if message.shutdown if codec == "pickle" else message == "stop":
            return
        push.send(pickle.dumps(out, protocol=5) if codec == "pickle" else msgpack.packb(as_msgpack(out)))


def _echo_pipe(conn: Any, streams: int) -> None:
    out = step_output(streams)
    while True:
        message = conn.recv()
        if message.shutdown:
            return
        conn.send(out)


def measure_zmq(codec: str, rounds: int, streams: int) -> list[float]:
    import msgpack
    import zmq

    folder = tempfile.mkdtemp(prefix="core-channel-")
    in_addr, out_addr = f"ipc://{folder}/in", f"ipc://{folder}/out"
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    push.bind(in_addr)
    pull.bind(out_addr)
    child = multiprocessing.get_context("spawn").Process(target=_echo_zmq, args=(in_addr, out_addr, codec, streams))
    child.start()
    message = CoreInput()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        push.send(pickle.dumps(message, protocol=5) if codec == "pickle" else msgpack.packb([[], [], [], []]))
        raw = pull.recv()
        if codec == "pickle":
            pickle.loads(raw)
        else:
            msgpack.unpackb(raw)
        times.append(time.perf_counter() - start)
    push.send(pickle.dumps(CoreInput(shutdown=True)) if codec == "pickle" else msgpack.packb("stop"))
    child.join()
    return times[rounds // 10 :]


def measure_pipe(rounds: int, streams: int) -> list[float]:
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    child = multiprocessing.get_context("spawn").Process(target=_echo_pipe, args=(theirs, streams))
    child.start()
    message = CoreInput()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        ours.send(message)
        ours.recv()
        times.append(time.perf_counter() - start)
    ours.send(CoreInput(shutdown=True))
    child.join()
    return times[rounds // 10 :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every channel")
    args = parser.parse_args()
    channels = {
        "zmq-ipc+pickle": lambda: measure_zmq("pickle", args.rounds, args.streams),
        "zmq-ipc+msgpack": lambda: measure_zmq("msgpack", args.rounds, args.streams),
        "mp-pipe+pickle": lambda: measure_pipe(args.rounds, args.streams),
    }
    runs: dict[str, list[dict]] = {name: [] for name in channels}
    for repeat in range(args.repeats):
        for name, measure in channels.items():
            times = measure()
            summary = {
                "p50_us": statistics.median(times) * 1e6,
                "p99_us": statistics.quantiles(times, n=100)[98] * 1e6,
                "mean_us": statistics.fmean(times) * 1e6,
            }
            runs[name].append(summary)
            print(f"repeat {repeat + 1} {name:18s} p50 {summary['p50_us']:7.1f} us  p99 {summary['p99_us']:7.1f} us")
    result = {
        "bench": "core_channel",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "rounds": args.rounds,
        "streams": args.streams,
        "loadavg": os.getloadavg(),
        "output_bytes_pickle": len(pickle.dumps(step_output(args.streams), protocol=5)),
        "runs": runs,
        "median_p50_us": {name: statistics.median(r["p50_us"] for r in rs) for name, rs in runs.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"core-channel-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(runs)
    ax.bar(names, [result["median_p50_us"][n] for n in names])
    ax.set_ylabel("round trip p50 (us)")
    ax.set_title(f"one step each way, {args.streams} streams")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"))
    print(json.dumps(result["median_p50_us"], indent=2), "->", stem.with_suffix(".json"))


if __name__ == "__main__":
    main()
