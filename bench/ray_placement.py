"""What placing instances on Ray costs: the same streaming load on a 2-instance endpoint whose
instances are local processes and one whose instances are Ray actors, side by side in one run;
then the time from killing a Ray node to its replacement instance serving.

The benchmark starts a three-node Ray cluster on this machine (head + 2 workers, 1 CPU each; see
``streamhost.testing_ray``), two platforms (``streamhost serve`` and ``streamhost serve --ray``)
and one endpoint on each: 2 instances, the same model, one thread per instance. The load is N
concurrent streams of M tokens through ``InvokeEndpointWithResponseStream`` (raw HTTP, event-stream
decoded), local and Ray alternating which goes first each repeat, so drift on a shared machine
hits both alike. With Ray the gateway still talks HTTP straight to each model server; Ray is
only in the control path (issue #18's goal: Ray adds at most 3% to tok/s and TTFT).

Node kill: SIGKILL to one worker node's whole process tree (raylet, workers, model server);
measured are the seconds until the platform stops routing to it, and until the replacement (on
the spare node) passes its health check. After each kill a fresh worker joins as the next spare.

    .venv/bin/python bench/ray_placement.py                     # 16 streams x 128 tokens, tiny model
    .venv/bin/python bench/ray_placement.py --model smollm2     # the default model
    .venv/bin/python bench/ray_placement.py --quick             # 4 streams x 16 tokens, 1 kill

Outputs: ``bench/results/ray_placement-<timestamp>.json`` and its plot (same stem, ``.png``);
goals: ``bench/check.py``.
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

from _common import QUESTIONS, machine_info, median_runs, plot_path, run_metrics, write_results
from check import format_verdict, verdicts
from gateway import one_stream
from streamhost.launcher import ServerProcess, free_port, streamhost_command
from streamhost.testing_ray import RayCluster

ENDPOINT = "placement-bench"


class Platform:
    """``streamhost serve`` (optionally ``--ray``) in a subprocess with one 2-instance endpoint."""

    def __init__(self, label: str, state: Path, extra: list[str]) -> None:
        self.label, self.state, self.extra = label, state, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ServerProcess | None = None

    def start(self) -> Platform:
        argv = streamhost_command("serve", "--port", str(self.port), "--state-dir", str(self.state), "--no-auth",
                                  "--log-level", "warning", "--instance-threads", "1", "--health-interval", "1", *self.extra)  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.server = ServerProcess(argv, self.port, self.state / "platform.log", env).start(timeout=120)
        return self

    def call(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        headers = {"X-Amz-Target": f"SageMaker.{op}", "Content-Type": "application/x-amz-json-1.1"}
        response = httpx.post(self.url, json=params, headers=headers, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"{self.label} {op}: {response.text}")
        return response.json()

    def deploy(self, container: dict[str, Any]) -> None:
        self.call("CreateModel", {"ModelName": ENDPOINT, "PrimaryContainer": container})
        self.call("CreateEndpointConfig", {"EndpointConfigName": ENDPOINT, "ProductionVariants": [
            {"VariantName": "AllTraffic", "ModelName": ENDPOINT, "InitialInstanceCount": 2, "InstanceType": "ml.m5.xlarge",
             "ContainerStartupHealthCheckTimeoutInSeconds": 900}]})  # fmt: skip
        self.call("CreateEndpoint", {"EndpointName": ENDPOINT, "EndpointConfigName": ENDPOINT})
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            status = self.call("DescribeEndpoint", {"EndpointName": ENDPOINT})
            if status["EndpointStatus"] == "InService":
                return
            if status["EndpointStatus"] == "Failed":
                raise RuntimeError(f"{self.label}: {status.get('FailureReason')}")
            time.sleep(0.5)
        raise RuntimeError(f"{self.label}: endpoint not InService after 900 s")

    def instances(self) -> list[dict[str, Any]]:
        view = httpx.get(f"{self.url}/_streamhost/endpoints/{ENDPOINT}", timeout=10).json()
        return [i for v in view["variants"] for i in v["instances"]]

    def stop(self) -> None:
        if self.server:
            self.server.stop(grace=60)


def prompts(model_dir: str) -> list[str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
            for q in QUESTIONS]  # fmt: skip


async def run_once(client: httpx.AsyncClient, platform: Platform, texts: list[str], streams: int, tokens: int):
    url = f"{platform.url}/endpoints/{ENDPOINT}/invocations-response-stream"
    # ignore_eos: a fixed length, so every stream does the same work on both placements.
    bodies = [json.dumps({"inputs": texts[i % len(texts)], "stream": True,
                          "parameters": {"max_new_tokens": tokens, "do_sample": False, "ignore_eos": True}}).encode()
              for i in range(streams)]  # fmt: skip
    start = time.perf_counter()
    return list(await asyncio.gather(*(one_stream(client, url, b, True, start) for b in bodies)))


async def load(platforms: list[Platform], texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    runs: dict[str, list[dict[str, float]]] = {p.label: [] for p in platforms}
    ttfts: dict[str, list[float]] = {p.label: [] for p in platforms}
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        for platform in platforms:  # warm-up: connections, kernels, both instances
            await run_once(client, platform, texts, args.streams, 8)
        for rep in range(args.repeats):
            order = platforms if rep % 2 == 0 else list(reversed(platforms))
            for platform in order:
                records = await run_once(client, platform, texts, args.streams, args.new_tokens)
                runs[platform.label].append(run_metrics(records))
                ttfts[platform.label].extend(r.ttft for r in records)
                m = runs[platform.label][-1]
                print(f"  rep {rep + 1} {platform.label:5s} tok/s={m['total_tok_s']:7.1f} "
                      f"ttft p50={m['ttft_median_s'] * 1000:7.1f} ms", flush=True)  # fmt: skip
    out: dict[str, Any] = {}
    for label, label_runs in runs.items():
        samples = sorted(ttfts[label])
        out[label] = {
            "runs": label_runs,
            "medians": median_runs(label_runs),
            "ttft_p50_s": statistics.median(samples),
            "ttft_p99_s": samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))],
            "ttft_samples": len(samples),
        }
    local, ray = out["local"], out["ray"]
    out["ray_vs_local"] = {
        "tok_s_change": ray["medians"]["total_tok_s"] / local["medians"]["total_tok_s"] - 1,
        "ttft_p50_change": ray["ttft_p50_s"] / local["ttft_p50_s"] - 1,
        "ttft_p99_change": ray["ttft_p99_s"] / local["ttft_p99_s"] - 1,
        "paired_tok_s_change_median": statistics.median(
            r["total_tok_s"] / l_["total_tok_s"] - 1 for l_, r in zip(local["runs"], ray["runs"])
        ),
    }
    out["spread"] = spread(local, ray, ttfts)
    return out


def spread(local: dict[str, Any], ray: dict[str, Any], ttfts: dict[str, list[float]]) -> dict[str, Any]:
    """How far the figures move between back-to-back repeats, and how sure the pooled p99 change is.

    Per repeat, the two placements ran one after the other under nearly the same machine load, so
    the per-repeat ratios show the noise floor; the pooled p99 is ~the 2nd-worst of all TTFTs, so a
    bootstrap over the samples gives the range it could have landed in.
    """
    import random

    def ratios(key: str) -> list[float]:
        return [r[key] / l_[key] - 1 for l_, r in zip(local["runs"], ray["runs"])]

    def p99(samples: list[float]) -> float:
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    rng = random.Random(0)
    boot = sorted(
        p99(rng.choices(ttfts["ray"], k=len(ttfts["ray"]))) / p99(rng.choices(ttfts["local"], k=len(ttfts["local"])))
        - 1
        for _ in range(2000)
    )
    out: dict[str, Any] = {}
    for key in ("total_tok_s", "ttft_median_s", "ttft_max_s"):
        values = ratios(key)
        out[f"{key}_paired_change"] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    out["ttft_p99_change_bootstrap_90"] = [boot[len(boot) // 20], boot[-len(boot) // 20]]
    return out


def kill_and_replace(cluster: RayCluster, platform: Platform, kills: int) -> list[dict[str, float]]:
    """Kill the worker node of one Ray instance ``kills`` times; seconds to unrouted and to replaced."""
    results = []
    for number in range(kills):
        ready = [i for i in platform.instances() if i["state"] == "ready"]
        victim = next(cluster.node_by_id(i["node"]) for i in ready if cluster.node_by_id(i["node"]).name != "node_head")
        killed = time.monotonic()
        cluster.kill_node(victim)
        noticed = replaced = None
        while time.monotonic() - killed < 300:
            now = [i for i in platform.instances()]
            on_victim = [i for i in now if i["node"] == victim.node_id and i["state"] == "ready"]
            if noticed is None and not on_victim:
                noticed = time.monotonic() - killed
            if len([i for i in now if i["state"] == "ready" and i["node"] != victim.node_id]) == 2:
                replaced = time.monotonic() - killed
                break
            time.sleep(0.1)
        print(
            f"  kill {number + 1}: unrouted after {noticed:.1f} s, replacement serving after {replaced:.1f} s",
            flush=True,
        )
        results.append({"unrouted_s": noticed, "replacement_ready_s": replaced})
        cluster.add_worker(f"node_spare{number + 1}", 1)
        cluster.wait_nodes(3)
    return results


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["local", "ray"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].bar(labels, [result["load"][k]["medians"]["total_tok_s"] for k in labels], color=["#4c72b0", "#dd8452"])
    axes[0].set_title(f"output tok/s ({result['config']['streams']} streams x {result['config']['new_tokens']} tokens)")
    width = 0.38
    xs = range(len(labels))
    axes[1].bar(
        [x - width / 2 for x in xs], [result["load"][k]["ttft_p50_s"] * 1000 for k in labels], width, label="p50"
    )
    axes[1].bar(
        [x + width / 2 for x in xs], [result["load"][k]["ttft_p99_s"] * 1000 for k in labels], width, label="p99"
    )
    axes[1].set_xticks(list(xs), labels)
    axes[1].set_title("TTFT (ms)")
    axes[1].legend()
    kills = result["node_kill"]
    axes[2].bar([f"kill {i + 1}" for i in range(len(kills))], [k["replacement_ready_s"] or 0 for k in kills], color="#c44e52",
                label="replacement serving")  # fmt: skip
    axes[2].bar([f"kill {i + 1}" for i in range(len(kills))], [k["unrouted_s"] or 0 for k in kills], color="#8172b2",
                label="no longer routed")  # fmt: skip
    axes[2].set_title("Ray node SIGKILL -> seconds")
    axes[2].legend()
    fig.suptitle(f"2-instance endpoint, local processes vs Ray actors ({result['config']['model']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--model", default="tiny", help="tiny (random 2-layer Llama) or smollm2 (the default model)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.new_tokens, args.repeats, args.kills = 4, 16, 2, 1

    from streamhost.engine.loader import ensure_default_model

    work = Path(tempfile.mkdtemp(prefix="streamhost-ray-bench-"))
    smollm2 = ensure_default_model()
    if args.model == "tiny":
        from transformers import AutoTokenizer

        from streamhost.testing import build_tiny_llama

        model_dir = build_tiny_llama(work / "tiny", AutoTokenizer.from_pretrained(smollm2))
        container = {"Image": "streamhost", "ModelDataUrl": str(model_dir),
                     "Environment": {"MAX_TOTAL_TOKENS": "1024", "MAX_CONCURRENT_REQUESTS": "64"}}  # fmt: skip
    else:
        model_dir = smollm2
        container = {"Image": "streamhost", "Environment": {"HF_MODEL_ID": "smollm2", "MAX_CONCURRENT_REQUESTS": "64"}}
    texts = prompts(str(model_dir))

    (work / "ray-logs").mkdir()
    cluster = RayCluster(work / "ray-logs")
    platforms: list[Platform] = []
    try:
        print("starting a 3-node Ray cluster (head + 2 workers, 1 CPU each) ...", flush=True)
        cluster.start(head_cpus=1, workers=[1, 1])
        local = Platform("local", work / "local", []).start()
        platforms.append(local)
        ray = Platform("ray", work / "ray", ["--ray", cluster.address, "--ray-cpu-scale", "0.25",
                                             "--ray-instance-host", "127.0.0.1", "--ray-cache-dir", str(work / "cache")]).start()  # fmt: skip
        platforms.append(ray)
        for platform in platforms:
            print(f"deploying 2 instances on {platform.label} ...", flush=True)
            platform.deploy(container)
        print(f"load: {args.streams} streams x {args.new_tokens} tokens, {args.repeats} repeats", flush=True)
        measured = load(platforms, texts, args)
        measured = asyncio.run(measured)
        print("node kills ...", flush=True)
        kills = kill_and_replace(cluster, ray, args.kills)
    finally:
        for platform in platforms:
            platform.stop()
        cluster.stop()

    result = {
        "benchmark": "ray_placement",
        "config": {
            "streams": args.streams,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "model": args.model,
            "cluster": "3 nodes on this machine, 1 CPU each; instances: 1 CPU, 1 thread",
        },
        "machine": machine_info(),
        "load": measured,
        "node_kill": kills,
    }
    stamped = write_results(result, "ray_placement")
    plot(plot_path(stamped), result)
    change = measured["ray_vs_local"]
    noise = measured["spread"]
    for key, label in (("total_tok_s", "tok/s"), ("ttft_median_s", "TTFT p50"), ("ttft_max_s", "TTFT worst stream")):
        paired = noise[f"{key}_paired_change"]
        print(f"per repeat, ray vs local {label}: median {paired['median']:+.1%} (range {paired['min']:+.1%} .. "
              f"{paired['max']:+.1%})")  # fmt: skip
    low, high = noise["ttft_p99_change_bootstrap_90"]
    print(f"pooled TTFT p99 change, bootstrap 90% interval: {low:+.1%} .. {high:+.1%}")
    print(f"ray vs local: tok/s {change['tok_s_change']:+.1%}, TTFT p50 {change['ttft_p50_change']:+.1%}, "
          f"p99 {change['ttft_p99_change']:+.1%}; node kill -> replacement serving: "
          f"{statistics.median(k['replacement_ready_s'] for k in kills if k['replacement_ready_s']):.1f} s (median)")  # fmt: skip
    print(f"wrote {stamped} and {plot_path(stamped)}")
    print("goals (bench/check.py):")
    for verdict in verdicts(result, "ray_placement"):
        print("  " + format_verdict(verdict))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
