"""Prefix reuse through the model server: a multi-turn chat and a shared system prompt, cache on vs off.

Two servers of the same model start side by side in one run, one with ``--prefix-cache`` (the
default) and one with ``--no-prefix-cache``, and the workloads alternate between them round by
round, so load from elsewhere on the machine falls on both alike:

- ``chat``: ``--chats`` conversations at once, ``--turns`` turns each; every turn re-sends the
  conversation so far (system prompt, questions, the server's own answers) as chat clients do.
  Reported: time to first token per turn (median over conversations and rounds), tok/s, and the
  prompt tokens the server said it took from the cache (``usage.prompt_tokens_details``).
- ``system``: ``--clients`` clients, each sending ``--requests`` questions one after another, all
  behind one long system prompt (apps that send the same instructions with every request).

Greedy decoding throughout, and the answers of the two servers are compared: with the cache on,
the same conversation must get the same answers. Each round uses questions of its own, so a round
never finds the previous round's conversations in the cache (only the shared system prompt).

    flock /work/wt/bench.lock nice -n 5 .venv/bin/python bench/prefix_cache.py                # torch and llama.cpp
    flock /work/wt/bench.lock nice -n 5 .venv/bin/python bench/prefix_cache.py --executor torch --rounds 1 --quick

Writes ``bench/results/prefix-cache-<timestamp>.json`` and the ``.png`` beside it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, plot_path, write_results
from streamhost.launcher import ServerProcess, free_port, streamhost_command

CHAT_SYSTEM = (
    "You are a friendly science tutor for curious teenagers. Answer in plain words, give one everyday "
    "example for every idea, and keep each answer to a short paragraph."
)
CHAT_QUESTIONS = [
    "Why is the sky blue?",
    "Then why are sunsets red?",
    "Does the same thing happen on Mars?",
    "What colour would the sky be with no air at all?",
    "How do astronauts see the Sun from the space station?",
    "Could we ever paint the sky another colour?",
    "Why does the ocean look blue too?",
    "What would a sunset look like on the Moon?",
]
TOPICS = ["light", "sound", "heat", "magnets", "rain", "volcanoes", "stars", "plants"]
APP_SYSTEM = (
    "You are the help-desk assistant of Northwind Outdoor Gear. Policies: orders ship within two "
    "working days from our warehouse in Leeds; standard delivery takes three to five days and is "
    "free over fifty pounds; express delivery costs nine pounds and arrives the next working day "
    "when ordered before two in the afternoon. Returns are accepted within sixty days in unused "
    "condition with the original tags; refunds go back to the original payment method within ten "
    "days of the return arriving. Tents, sleeping bags and stoves carry a two-year warranty; "
    "footwear carries one year. Never promise discounts, never share other customers' details, "
    "and if a question is about an order number, ask for the email address used for the order. "
    "Answer in at most three sentences, politely, and end by asking whether there is anything else."
)
APP_QUESTIONS = [
    "How long does delivery take?",
    "Can I return boots I wore once?",
    "Is there a warranty on stoves?",
    "How much is express delivery?",
    "When will my refund arrive?",
    "Do you ship from Leeds?",
    "Is delivery free for a sixty pound order?",
    "My order 1234 is late, what now?",
    "Can I get a discount on a tent?",
    "How long is the warranty on sleeping bags?",
    "Can I return a gift without tags?",
    "What if I order express at three pm?",
]


@dataclass
class Turn:
    """One request's timing and usage as the client saw it."""

    ttft: float
    total: float
    tokens: int
    prompt_tokens: int
    cached_tokens: int
    text: str


async def stream_chat(client: httpx.AsyncClient, url: str, messages: list[dict], max_tokens: int) -> Turn:
    body = {
        "model": "m",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices"):
                if first is None:
                    first = time.perf_counter()
                pieces.append(chunk["choices"][0]["delta"].get("content") or "")
            if chunk.get("usage"):
                usage = chunk["usage"]
    end = time.perf_counter()
    return Turn(
        ttft=(first or end) - start,
        total=end - start,
        tokens=int(usage.get("completion_tokens", 0)),
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)),
        text="".join(pieces),
    )


async def chat_workload(url: str, round_no: int, chats: int, turns: int, max_tokens: int) -> dict[str, Any]:
    """``chats`` conversations at once, each ``turns`` turns long; per turn the Turn of every chat."""

    async def conversation(client: httpx.AsyncClient, index: int) -> list[Turn]:
        topic = TOPICS[(index + round_no * chats) % len(TOPICS)]
        messages = [{"role": "system", "content": CHAT_SYSTEM}]
        out = []
        for turn in range(turns):
            question = CHAT_QUESTIONS[turn % len(CHAT_QUESTIONS)]
            messages.append({"role": "user", "content": f"(Round {round_no}, about {topic}.) {question}"})
            result = await stream_chat(client, url, messages, max_tokens)
            messages.append({"role": "assistant", "content": result.text})
            out.append(result)
        return out

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=30), trust_env=False) as client:
        per_chat = await asyncio.gather(*(conversation(client, i) for i in range(chats)))
    wall = time.perf_counter() - started
    tokens = sum(t.tokens for chat in per_chat for t in chat)
    return {"wall_s": wall, "tok_s": tokens / wall, "chats": [[vars(t) for t in chat] for chat in per_chat]}


async def system_workload(url: str, round_no: int, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """``clients`` clients each asking ``requests`` questions in turn, one shared system prompt."""

    async def one_client(client: httpx.AsyncClient, index: int) -> list[Turn]:
        out = []
        for k in range(requests):
            question = APP_QUESTIONS[(index * requests + k) % len(APP_QUESTIONS)]
            messages = [
                {"role": "system", "content": APP_SYSTEM},
                {"role": "user", "content": f"[ticket {round_no}-{index}-{k}] {question}"},
            ]
            out.append(await stream_chat(client, url, messages, max_tokens))
        return out

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=30), trust_env=False) as client:
        per_client = await asyncio.gather(*(one_client(client, i) for i in range(clients)))
    wall = time.perf_counter() - started
    tokens = sum(t.tokens for c in per_client for t in c)
    return {"wall_s": wall, "tok_s": tokens / wall, "clients": [[vars(t) for t in c] for c in per_client]}


def start_server(executor: str, cache: bool, log_dir: Path, dtype: str | None) -> ServerProcess:
    port = free_port()
    args = ["--model-id", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--executor", executor]
    if dtype and executor == "torch":  # llama.cpp runs the GGUF's own weight type
        args += ["--dtype", dtype]
    args.append("--prefix-cache" if cache else "--no-prefix-cache")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_path = log_dir / f"{executor}-{'on' if cache else 'off'}.log"
    server = ServerProcess(streamhost_command("container", *args), port, log_path, env)
    server.start(timeout=300)
    return server


def summarize(rounds: list[dict[str, Any]], turns: int) -> dict[str, Any]:
    """Medians per setting: TTFT per chat turn, tok/s, cached share; and answer agreement on vs off."""
    out: dict[str, Any] = {}
    for setting in ("on", "off"):
        chat_turns: list[list[float]] = [[] for _ in range(turns)]
        cached_share: list[list[float]] = [[] for _ in range(turns)]
        system_ttft: list[float] = []
        system_cached: list[float] = []
        for r in rounds:
            for chat in r[setting]["chat"]["chats"]:
                for i, t in enumerate(chat):
                    chat_turns[i].append(t["ttft"])
                    cached_share[i].append(t["cached_tokens"] / max(1, t["prompt_tokens"]))
            for c in r[setting]["system"]["clients"]:
                for t in c:
                    system_ttft.append(t["ttft"])
                    system_cached.append(t["cached_tokens"] / max(1, t["prompt_tokens"]))
        out[setting] = {
            "chat_ttft_median_s_per_turn": [statistics.median(v) for v in chat_turns],
            "chat_cached_share_per_turn": [statistics.median(v) for v in cached_share],
            "chat_prompt_tokens_last_turn": statistics.median(
                chat[-1]["prompt_tokens"] for r in rounds for chat in r[setting]["chat"]["chats"]
            ),
            "chat_tok_s": statistics.median(r[setting]["chat"]["tok_s"] for r in rounds),
            "chat_wall_s": statistics.median(r[setting]["chat"]["wall_s"] for r in rounds),
            "system_ttft_median_s": statistics.median(system_ttft),
            "system_cached_share_median": statistics.median(system_cached),
            "system_tok_s": statistics.median(r[setting]["system"]["tok_s"] for r in rounds),
            "system_wall_s": statistics.median(r[setting]["system"]["wall_s"] for r in rounds),
        }
    on, off = out["on"], out["off"]
    out["ratios_off_over_on"] = {
        "chat_ttft_last_turn": off["chat_ttft_median_s_per_turn"][-1] / on["chat_ttft_median_s_per_turn"][-1],
        "chat_ttft_all_turns_median": statistics.median(
            b / a for a, b in zip(on["chat_ttft_median_s_per_turn"], off["chat_ttft_median_s_per_turn"])
        ),
        "system_ttft": off["system_ttft_median_s"] / on["system_ttft_median_s"],
        "chat_tok_s_on_over_off": on["chat_tok_s"] / off["chat_tok_s"],
        "system_tok_s_on_over_off": on["system_tok_s"] / off["system_tok_s"],
    }
    out["answers_identical"] = agreement(rounds, "on", "off")
    if "off_again" in rounds[0]:
        out["answers_identical_off_vs_off"] = agreement(rounds, "off", "off_again")
    return out


def agreement(rounds: list[dict[str, Any]], a: str, b: str) -> str:
    """How many answers two settings gave identically, ``same/total`` (a later chat turn builds on the
    earlier answers, so one difference makes the rest of that conversation differ too)."""
    same = total = 0
    for r in rounds:
        for workload, key in (("chat", "chats"), ("system", "clients")):
            for xs, ys in zip(r[a][workload][key], r[b][workload][key]):
                for x, y in zip(xs, ys):
                    same += x["text"] == y["text"]
                    total += 1
    return f"{same}/{total}"


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    executors = list(results["executors"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax_turn, ax_sys = axes
    styles = {"on": "-", "off": "--"}
    for executor in executors:
        summary = results["executors"][executor]["summary"]
        for setting in ("on", "off"):
            ys = [v * 1000 for v in summary[setting]["chat_ttft_median_s_per_turn"]]
            ax_turn.plot(range(1, len(ys) + 1), ys, styles[setting], marker="o", label=f"{executor}, cache {setting}")
    ax_turn.set_xlabel("chat turn")
    ax_turn.set_ylabel("median TTFT (ms)")
    ax_turn.set_title(f"multi-turn chat ({results['config']['chats']} conversations at once)")
    ax_turn.set_ylim(bottom=0)
    ax_turn.grid(True, alpha=0.3)
    ax_turn.legend(fontsize=8)
    width = 0.35
    for i, executor in enumerate(executors):
        summary = results["executors"][executor]["summary"]
        for j, setting in enumerate(("on", "off")):
            value = summary[setting]["system_ttft_median_s"] * 1000
            bar = ax_sys.bar(i + (j - 0.5) * width, value, width, label=f"cache {setting}" if i == 0 else None,
                             color="tab:blue" if setting == "on" else "tab:orange")  # fmt: skip
            ax_sys.bar_label(bar, labels=[f"{value:.0f} ms\n{summary[setting]['system_tok_s']:.1f} tok/s"], fontsize=7)
    ax_sys.margins(y=0.15)
    ax_sys.set_xticks(range(len(executors)), executors)
    ax_sys.set_ylabel("median TTFT (ms)")
    ax_sys.set_title(f"shared system prompt ({results['config']['clients']} clients)")
    ax_sys.grid(True, axis="y", alpha=0.3)
    ax_sys.legend(fontsize=8)
    fig.suptitle("Prefix cache on vs off, SmolLM2-135M, greedy; medians over rounds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


async def measure(executor: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    servers = {}
    try:
        for setting in ("on", "off"):
            servers[setting] = start_server(executor, setting == "on", log_dir, args.dtype)
            print(f"[{executor}] cache {setting}: ready in {servers[setting].startup_s:.1f} s", flush=True)
        info = {s: httpx.get(servers[s].url + "/info", trust_env=False).json() for s in servers}
        rounds = []
        for round_no in range(args.rounds):
            order: tuple[str, ...] = ("on", "off") if round_no % 2 == 0 else ("off", "on")
            if args.control:  # the cache-off server again: how often answers differ without the cache
                order += ("off_again",)
            result: dict[str, Any] = {setting: {} for setting in order}
            for workload in ("chat", "system"):
                for setting in order:
                    url = servers[setting.removesuffix("_again")].url
                    if workload == "chat":
                        data = await chat_workload(url, round_no, args.chats, args.turns, args.max_tokens)
                    else:
                        data = await system_workload(url, round_no, args.clients, args.requests, args.max_tokens)
                    result[setting][workload] = data
                    print(
                        f"[{executor}] round {round_no + 1}/{args.rounds} {workload:6s} cache {setting:3s}: "
                        f"{data['wall_s']:.1f} s, {data['tok_s']:.1f} tok/s",
                        flush=True,
                    )
            rounds.append(result)
        return {
            "info": {
                s: {k: info[s].get(k) for k in ("executor", "prefix_cache", "model_id", "model_dtype")} for s in info
            },
            "rounds": rounds,
            "summary": summarize(rounds, args.turns),
        }
    finally:
        for server in servers.values():
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executor", action="append", choices=["torch", "llamacpp"], help="default: both")
    parser.add_argument("--rounds", type=int, default=2, help="alternating on/off rounds (default 2)")
    parser.add_argument("--chats", type=int, default=4, help="conversations at once (default 4)")
    parser.add_argument("--turns", type=int, default=6, help="turns per conversation (default 6)")
    parser.add_argument("--clients", type=int, default=4, help="clients of the shared-system-prompt workload")
    parser.add_argument("--requests", type=int, default=4, help="requests per client (default 4)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per answer (default 32)")
    parser.add_argument("--dtype", default=None, help="torch executor's dtype (default: the server's, bf16 here)")
    parser.add_argument(
        "--control", action="store_true", help="run the cache-off workloads twice: answer agreement off vs off"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 chats x 3 turns, 2 clients x 3 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.chats, args.turns, args.clients, args.requests, args.max_tokens = 2, 3, 2, 3, 16
    executors = args.executor or ["torch", "llamacpp"]
    results: dict[str, Any] = {
        "bench": "prefix_cache",
        "machine": machine_info(),
        "config": {k: v for k, v in vars(args).items() if k != "executor"} | {"executors": executors},
        "executors": {},
    }
    with tempfile.TemporaryDirectory(prefix="prefix-bench-") as tmp:
        for executor in executors:
            results["executors"][executor] = asyncio.run(measure(executor, args, Path(tmp)))
    path = write_results(results, "prefix-cache")
    plot(results, plot_path(path))
    for executor in executors:
        s = results["executors"][executor]["summary"]
        ttft_on = ", ".join(f"{v * 1000:.0f}" for v in s["on"]["chat_ttft_median_s_per_turn"])
        ttft_off = ", ".join(f"{v * 1000:.0f}" for v in s["off"]["chat_ttft_median_s_per_turn"])
        print(f"{executor}: chat TTFT per turn (ms) on [{ttft_on}] off [{ttft_off}]")
        print(f"{executor}: ratios (off/on TTFT, on/off tok/s) {json.dumps(s['ratios_off_over_on'])}")
        print(f"{executor}: answers identical on vs off: {s['answers_identical']}")
        if "answers_identical_off_vs_off" in s:
            print(f"{executor}: answers identical off vs off (control): {s['answers_identical_off_vs_off']}")
    print(f"results: {path}\nplot: {plot_path(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
