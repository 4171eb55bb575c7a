"""What the platform's runtime gateway costs: the same streaming load straight to a model server
and through ``InvokeEndpointWithResponseStream``, at 1 and 16 concurrent streams.

Both paths hit the *same* model-server process: the benchmark starts ``streamhost serve``,
creates an endpoint with one instance, and reads that instance's address from the platform's
operator view. So the only difference between the two is the gateway hop (routing, SigV4 off,
event-stream framing, one more loopback connection).

    .venv/bin/python bench/gateway.py              # streams 1,16, 64 tokens, 5 repeats
    .venv/bin/python bench/gateway.py --quick      # streams 1,4, 16 tokens, 2 repeats

Targets (issue #4): the gateway adds at most 5 ms to TTFT p50 and costs at most 3% of output
tok/s. Runs alternate direct/gateway (and which goes first) so slow drift on a shared machine
hits both alike; the overhead is the median of per-repeat paired differences.

Outputs: ``bench/results/gateway-<timestamp>.json`` and its plot (same stem, ``.png``); goals: ``bench/check.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import (
    QUESTIONS,
    StreamRecord,
    common_prefix,
    machine_info,
    median_runs,
    plot_path,
    plot_throughput_and_ttft,
    run_metrics,
    write_results,
)
from check import format_verdict, verdicts
from streamhost.launcher import ServerProcess, free_port
from streamhost.protocols.eventstream import EventStreamDecoder

ENDPOINT = "gateway-bench"


# --------------------------------------------------------------------------- platform


class Platform:
    """``streamhost serve`` in a subprocess with one endpoint of one instance."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = Path(tempfile.mkdtemp(prefix="streamhost-gateway-bench-"))
        self.server: ServerProcess | None = None

    def __enter__(self) -> Platform:
        argv = [sys.executable, "-m", "streamhost.cli", "serve", "--port", str(self.port), "--state-dir", str(self.state),
                "--no-auth", "--log-level", "warning"]  # fmt: skip
        if self.args.instance_threads:
            argv += ["--instance-threads", str(self.args.instance_threads)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.server = ServerProcess(argv, self.port, self.state / "platform.log", env).start(timeout=60)
        self._deploy()
        return self

    def _call(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(self.url, json=params, headers={"X-Amz-Target": f"SageMaker.{op}",
                                                              "Content-Type": "application/x-amz-json-1.1"})  # fmt: skip
        if response.status_code != 200:
            raise RuntimeError(f"{op}: {response.text}")
        return response.json()

    def _deploy(self) -> None:
        env = {"HF_MODEL_ID": self.args.model, "MAX_CONCURRENT_REQUESTS": "64"}
        self._call(
            "CreateModel", {"ModelName": ENDPOINT, "PrimaryContainer": {"Image": "streamhost", "Environment": env}}
        )
        self._call("CreateEndpointConfig", {"EndpointConfigName": ENDPOINT, "ProductionVariants": [
            {"VariantName": "AllTraffic", "ModelName": ENDPOINT, "InitialInstanceCount": 1,
             "ContainerStartupHealthCheckTimeoutInSeconds": 900}]})  # fmt: skip
        self._call("CreateEndpoint", {"EndpointName": ENDPOINT, "EndpointConfigName": ENDPOINT})
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            status = self._call("DescribeEndpoint", {"EndpointName": ENDPOINT})
            if status["EndpointStatus"] == "InService":
                break
            if status["EndpointStatus"] == "Failed":
                raise RuntimeError(status.get("FailureReason"))
            time.sleep(0.5)
        view = httpx.get(f"{self.url}/_streamhost/endpoints/{ENDPOINT}").json()
        self.instance_url = view["variants"][0]["instances"][0]["url"]
        self.instance_pid = view["variants"][0]["instances"][0]["pid"]

    def __exit__(self, *exc: Any) -> None:
        if self.server:
            self.server.stop(grace=60)


# --------------------------------------------------------------------------- load


def _sse_tokens(lines: list[bytes]) -> list[int]:
    ids = []
    for line in lines:
        if line.startswith(b"data:"):
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(f"error in stream: {event['error']}")
            if event.get("token") and not event["token"].get("special"):
                ids.append(int(event["token"]["id"]))
    return ids


class LineSplitter:
    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        return lines


async def one_stream(client: httpx.AsyncClient, url: str, body: bytes, framed: bool, start: float) -> StreamRecord:
    """One streaming request; ``framed`` means the answer is event-stream wrapped (the gateway)."""
    splitter, decoder = LineSplitter(), EventStreamDecoder()
    first = last = 0.0
    ids: list[int] = []
    async with client.stream("POST", url, content=body, headers={"Content-Type": "application/json"}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for chunk in response.aiter_raw():
            if framed:
                payload = b"".join(m.payload for m in decoder.feed(chunk) if m.event_type == "PayloadPart")
            else:
                payload = chunk
            new = _sse_tokens(splitter.feed(payload))
            if new:
                now = time.perf_counter()
                if not ids:
                    first = now
                last = now
                ids.extend(new)
    if not ids:
        raise RuntimeError(f"{url}: no tokens streamed")
    return StreamRecord(start=start, first=first, last=last, token_ids=ids)


def chat_texts(model: str) -> list[str]:
    """Each question in the model's chat template (a bare question makes a chat model stop at once)."""
    from transformers import AutoTokenizer

    from streamhost.engine.loader import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in QUESTIONS
    ]


PROMPTS: list[str] = []


async def run_once(client: httpx.AsyncClient, url: str, framed: bool, streams: int, tokens: int) -> list[StreamRecord]:
    bodies = [
        json.dumps(
            {
                "inputs": PROMPTS[i % len(PROMPTS)],
                "stream": True,
                "parameters": {"max_new_tokens": tokens, "do_sample": False},
            }
        ).encode()  # fmt: skip
        for i in range(streams)
    ]
    start = time.perf_counter()
    return list(await asyncio.gather(*(one_stream(client, url, b, framed, start) for b in bodies)))


async def bench(platform: Platform, args: argparse.Namespace) -> dict[str, Any]:
    targets = {
        "direct": (f"{platform.instance_url}/invocations", False),
        "gateway": (f"{platform.url}/endpoints/{ENDPOINT}/invocations-response-stream", True),
    }
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    runs: dict[str, dict[int, list[dict[str, float]]]] = {t: {s: [] for s in args.streams} for t in targets}
    samples: dict[str, dict[int, list[int]]] = {t: {} for t in targets}
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        for streams in args.streams:  # warm-up: connections, kernels, the engine's buckets
            for url, framed in targets.values():
                await run_once(client, url, framed, streams, min(8, args.new_tokens))
        for rep in range(args.repeats):
            for streams in args.streams:
                order = list(targets) if rep % 2 == 0 else list(reversed(targets))
                for name in order:
                    url, framed = targets[name]
                    records = await run_once(client, url, framed, streams, args.new_tokens)
                    runs[name][streams].append(run_metrics(records))
                    samples[name].setdefault(streams, records[0].token_ids)
                    m = runs[name][streams][-1]
                    print(f"  rep {rep + 1} {name:8s} streams={streams:<3d} tok/s={m['total_tok_s']:7.1f} "
                          f"ttft p50={m['ttft_median_s'] * 1000:7.1f} ms", flush=True)  # fmt: skip
    return {"runs": runs, "samples": samples}


def summarize(measured: dict[str, Any], streams_levels: list[int]) -> dict[str, Any]:
    runs = measured["runs"]
    medians = {name: {s: median_runs(runs[name][s]) for s in streams_levels} for name in runs}
    overhead = {}
    for s in streams_levels:
        pairs = list(zip(runs["direct"][s], runs["gateway"][s]))
        ttft_delta = statistics.median((g["ttft_median_s"] - d["ttft_median_s"]) * 1000 for d, g in pairs)
        tok_ratio = statistics.median(g["total_tok_s"] / d["total_tok_s"] - 1 for d, g in pairs)
        overhead[s] = {
            "ttft_p50_added_ms": ttft_delta,
            "tok_s_change": tok_ratio,
            "same_greedy_tokens": common_prefix(measured["samples"]["direct"][s], measured["samples"]["gateway"][s]),
            "tokens_in_sample": len(measured["samples"]["direct"][s]),
        }
    return {"medians": medians, "overhead": overhead}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,16", help="comma-separated concurrency levels")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="smollm2", help="HF_MODEL_ID of the endpoint (default: the embedded model)")
    parser.add_argument("--instance-threads", type=int, default=None, help="OMP_NUM_THREADS of the model server")
    parser.add_argument("--quick", action="store_true", help="streams 1,4, 16 tokens, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.new_tokens, args.repeats = "1,4", 16, 2
    args.streams = [int(s) for s in str(args.streams).split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    print(
        f"gateway bench: streams {args.streams}, {args.new_tokens} tokens, {args.repeats} repeats, model {args.model}"
    )
    PROMPTS[:] = chat_texts(args.model)
    with Platform(args) as platform:
        measured = asyncio.run(bench(platform, args))
    summary = summarize(measured, args.streams)
    machine["load_average_at_end"] = list(os.getloadavg())
    data = {
        "benchmark": "gateway",
        "config": {
            "streams": args.streams,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "model": args.model,
            "instance_threads": args.instance_threads,
        },  # fmt: skip
        "machine": machine,
        **summary,
        "runs": measured["runs"],
    }
    stamped = write_results(data, "gateway")
    series = {
        "direct to model server": summary["medians"]["direct"],
        "through the gateway": summary["medians"]["gateway"],
    }
    plot_throughput_and_ttft(plot_path(stamped), f"Gateway overhead ({args.model}, {args.new_tokens} tokens)", series)
    print(f"\nresults: {stamped}  plot: {plot_path(stamped)}")
    for s, o in summary["overhead"].items():
        d, g = summary["medians"]["direct"][s], summary["medians"]["gateway"][s]
        print(f"streams={s:<3d} direct {d['total_tok_s']:7.1f} tok/s, ttft p50 {d['ttft_median_s'] * 1000:6.1f} ms | "
              f"gateway {g['total_tok_s']:7.1f} tok/s, ttft p50 {g['ttft_median_s'] * 1000:6.1f} ms | "
              f"added ttft {o['ttft_p50_added_ms']:+.1f} ms, tok/s {o['tok_s_change'] * 100:+.1f}%")  # fmt: skip
    print("goals (bench/check.py):")
    for verdict in verdicts(data, "gateway"):
        print("  " + format_verdict(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
