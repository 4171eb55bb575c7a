"""TGI's HTTP API: ``POST /``, ``/generate``, ``/generate_stream``, ``/tokenize``, ``GET /info``.

Request parsing and byte framing live in ``protocols/tgi.py``; this module connects them to the
engine. The engine always gets ``return_full_text=False``: the TGI framing prepends the request's
own ``inputs`` string, exactly as TGI does (the engine would decode the prompt tokens instead).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamhost.engine.executors import EXECUTOR_NAMES
from streamhost.protocols import tgi
from streamhost.server.bodies import SSE_HEADERS, json_answer, json_request_body, now, server_state
from streamhost.server.generation import collect_many, logprob_sum, request_id
from streamhost.server.lmi_report import serving_properties_report
from streamhost.server.model_folder import SERVING_PROPERTIES
from streamhost.server.state import ServerState
from streamhost.server.streaming import Observer, TokenStream, WholeAnswer, dumps, encode_headers


async def compat_generate(request: Request) -> Any:
    """POST ``/``: streams when ``"stream": true``, otherwise the answer wrapped in a list."""
    started = now()
    state = server_state(request)
    body = await json_request_body(request)
    return generate_answer(state, body, started, stream=None, wrap=True, default_full_text=True)


async def generate(request: Request) -> Any:
    started = now()
    state = server_state(request)
    return generate_answer(state, await json_request_body(request), started, stream=False)


async def generate_stream(request: Request) -> Any:
    started = now()
    state = server_state(request)
    return generate_answer(state, await json_request_body(request), started, stream=True)


def generate_answer(
    state: ServerState,
    body: bytes | dict,
    started: float,
    *,
    stream: bool | None,
    wrap: bool = False,
    default_full_text: bool = False,
) -> Any:
    """Parse a TGI generate request and answer it (SSE or JSON); raises ProtocolError/EngineError early."""
    req = tgi.parse_generate_request(body, stream=stream, default_return_full_text=default_full_text)
    engine = state.require_engine()
    params = req.parameters
    engine_params = dataclasses.replace(params, return_full_text=False)
    observer = Observer(state, started)
    compute_type = state.compute_type()
    if req.stream:
        framer = tgi.TgiStream(params, req.inputs)
        events = engine.generate(req.inputs, engine_params, request_id("gen"), stream=True)
        return TokenStream(
            observer,
            events,
            framer.event,
            content_type=tgi.SSE_CONTENT_TYPE,
            headers={**SSE_HEADERS, "x-compute-type": compute_type, "x-compute-characters": str(len(req.inputs))},
            early_error=tgi.engine_error,
            stream_error=framer.error,
        )
    copies = params.best_of or 1
    if not 1 <= copies <= engine.limits.max_best_of:
        copies = 1  # one stream, which the engine refuses with TGI's message (best_of=2**40 once looped here until OOM)
    streams = [engine.generate(req.inputs, engine_params, request_id("gen"), stream=False) for _ in range(copies)]

    async def compute() -> tuple[int, list, bytes]:
        submitted = now()
        done = await collect_many(streams, state.metrics)
        best = max(done, key=logprob_sum) if len(done) > 1 else done[0]
        answer = tgi.generate_response(best, params, req.inputs)
        if len(done) > 1 and "details" in answer:
            answer["details"]["best_of_sequences"] = [
                _best_of_sequence(r, params, req.inputs) for r in done if r is not best
            ]
        details = best.details
        headers = tgi.timing_headers(
            compute_type=compute_type,
            compute_characters=len(req.inputs),
            total_time=now() - started,
            validation_time=submitted - started,
            queue_time=best.queue_time,
            inference_time=best.inference_time,
            prompt_tokens=details.input_length,
            generated_tokens=details.generated_tokens,
        )
        return 200, encode_headers(headers, "application/json"), dumps([answer] if wrap else answer)

    return WholeAnswer(observer, compute, early_error=tgi.engine_error, closers=streams)


def _best_of_sequence(result, params, inputs: str) -> dict[str, Any]:
    """One losing candidate in TGI's ``best_of_sequences`` shape."""
    full = tgi.generate_response(result, dataclasses.replace(params, details=True), inputs)
    details = full["details"]
    out = {
        "generated_text": full["generated_text"],
        "finish_reason": details["finish_reason"],
        "generated_tokens": details["generated_tokens"],
        "seed": details["seed"],
        "prefill": details["prefill"],
        "tokens": details["tokens"],
    }
    if "top_tokens" in details:
        out["top_tokens"] = details["top_tokens"]
    return out


async def tokenize(request: Request) -> Response:
    """POST ``/tokenize``: ``[{id, text, start, stop}]`` with UTF-8 byte offsets (tokenized off the event loop)."""
    state = server_state(request)
    body = await json_request_body(request)
    req = tgi.parse_generate_request(body, stream=False)
    engine = state.require_engine()
    ids, offsets = await asyncio.to_thread(_encode_with_offsets, engine.tokenizer, req.inputs)
    return json_answer(tgi.tokenize_response(req.inputs, ids, offsets))


def _dtype_label(described: dict) -> str:
    """TGI says ``torch.bfloat16``; a llama.cpp model says its GGUF type (``Q4_1``)."""
    dtype = str(described.get("dtype", "float32"))
    return f"torch.{dtype}" if described.get("executor", "torch") == "torch" else dtype


def _encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    try:
        encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
    except (NotImplementedError, ValueError, KeyError):  # slow tokenizers have no offsets
        return list(tokenizer(text, add_special_tokens=True)["input_ids"]), None


async def info(request: Request) -> Response:
    """GET ``/info`` in TGI's shape (503 until the model is loaded)."""
    state = server_state(request)
    engine = state.engine
    if engine is None:
        return json_answer(tgi.unhealthy_body(), 503)
    limits = engine.limits
    described = engine.info()
    answer = tgi.info_response(
        model_id=state.model_id,
        model_sha=state.settings.revision,
        model_dtype=_dtype_label(described),
        model_device_type=str(described.get("device", "cpu")),
        max_concurrent_requests=limits.max_concurrent_requests,
        max_best_of=limits.max_best_of,
        max_stop_sequences=limits.max_stop_sequences,
        max_input_tokens=limits.max_input_tokens,
        max_total_tokens=limits.max_total_tokens,
        max_client_batch_size=limits.max_client_batch_size,
        router="streamhost",
        version=state.version,
        docker_label=None,
    )
    answer["executor"] = described.get("executor", "torch")  # ours: which executor runs the model
    if "prefix_cache" in described:  # ours: KV reuse across requests sharing a prompt prefix
        answer["prefix_cache"] = described["prefix_cache"]
    for executor in EXECUTOR_NAMES:  # ours: the llama.cpp context (threads, KV cells) or the torch forward
        if executor in described:
            answer[executor] = described[executor]
    settings = state.settings
    if settings.properties is not None:  # LMI: which serving.properties keys did what (ours, beyond TGI's fields)
        props_file = settings.model_dir / SERVING_PROPERTIES if settings.model_dir is not None else None
        source = props_file if props_file is not None and props_file.is_file() else None
        answer["serving_properties"] = serving_properties_report(settings.properties, source)
    return json_answer(answer)


ROUTES = [
    Route("/", compat_generate, methods=["POST"]),
    Route("/generate", generate, methods=["POST"]),
    Route("/generate_stream", generate_stream, methods=["POST"]),
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/info", info, methods=["GET"]),
]
