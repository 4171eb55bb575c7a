"""The OpenAI-compatible API as TGI serves it: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Chat prompts come from the tokenizer's own chat template (``catalog.templates.render_prompt``);
the model name in a request is accepted and ignored, as TGI does: one server serves one model.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamhost.catalog.templates import TemplateError, render_prompt
from streamhost.protocols import openai as oa
from streamhost.protocols.errors import ProtocolError
from streamhost.protocols.tgi import SSE_CONTENT_TYPE
from streamhost.server.bodies import SSE_HEADERS, json_answer, json_request_body, now, server_state
from streamhost.server.generation import collect_many, request_id
from streamhost.server.state import ServerState
from streamhost.server.streaming import Observer, TokenStream, WholeAnswer, dumps


async def chat_completions(request: Request) -> Any:
    started = now()
    state = server_state(request)
    return chat_answer(state, await json_request_body(request), started)


async def completions(request: Request) -> Any:
    started = now()
    state = server_state(request)
    return completion_answer(state, await json_request_body(request), started)


async def models(request: Request) -> Response:
    state = server_state(request)
    return json_answer(oa.models_response(state.model_id, state.created))


def chat_prompt(engine: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text from the tokenizer's chat template; a template's refusal is a 422."""
    try:
        return render_prompt("tokenizer", messages, engine.tokenizer)
    except TemplateError as exc:
        raise ProtocolError(422, f"Template error: {exc}", "template_error") from None
    except Exception as exc:
        raise ProtocolError(
            422,
            f"Template error: the chat template failed on these messages: {type(exc).__name__}: {exc}",
            "template_error",
        ) from None


def _ident(kind: str) -> tuple[str, int]:
    return f"{kind}-{uuid.uuid4().hex[:24]}", int(time.time())


def _sse(observer: Observer, events: Any, framer: oa.ChatStream | oa.CompletionStream) -> TokenStream:
    """An OpenAI stream: one ``data: {chunk}`` event per token, errors in-stream, ``data: [DONE]`` last."""
    return TokenStream(
        observer,
        events,
        framer.chunk,
        content_type=SSE_CONTENT_TYPE,
        headers=SSE_HEADERS,
        early_error=oa.error_response,
        stream_error=framer.error,
        tail=oa.DONE,
    )


def chat_answer(state: ServerState, body: bytes | dict, started: float) -> Any:
    req = oa.parse_chat_request(body)
    engine = state.require_engine()
    prompt = chat_prompt(engine, req.messages)
    params = dataclasses.replace(req.parameters, return_full_text=False)
    ident, created = _ident("chatcmpl")
    fingerprint = oa.system_fingerprint(state.version)
    observer = Observer(state, started)
    rid = request_id("chat")
    if req.stream:
        framer = oa.ChatStream(
            model=state.model_id,
            created=created,
            id=ident,
            system_fingerprint=fingerprint,
            logprobs=req.logprobs,
            include_usage=req.include_usage,
        )
        return _sse(observer, engine.generate(prompt, params, rid, stream=True), framer)
    events = engine.generate(prompt, params, rid, stream=False)

    async def compute() -> tuple[int, list, bytes]:
        (done,) = await collect_many([events], state.metrics)
        answer = oa.chat_completion(
            done, model=state.model_id, created=created, id=ident, system_fingerprint=fingerprint, logprobs=req.logprobs
        )
        return 200, [(b"content-type", b"application/json")], dumps(answer)

    return WholeAnswer(observer, compute, early_error=oa.error_response, closers=[events])


def completion_answer(state: ServerState, body: bytes | dict, started: float) -> Any:
    req = oa.parse_completion_request(body)
    engine = state.require_engine()
    if not req.prompt:
        raise ProtocolError(422, "Input validation error: `inputs` cannot be empty", "validation")
    params = dataclasses.replace(req.parameters, return_full_text=False)
    echo = req.prompt if req.echo else ""
    ident, created = _ident("cmpl")
    fingerprint = oa.system_fingerprint(state.version)
    observer = Observer(state, started)
    rid = request_id("cmpl")
    if req.stream:
        framer = oa.CompletionStream(
            model=state.model_id, created=created, id=ident, system_fingerprint=fingerprint, echo=echo
        )
        return _sse(observer, engine.generate(req.prompt, params, rid, stream=True), framer)
    events = engine.generate(req.prompt, params, rid, stream=False)

    async def compute() -> tuple[int, list, bytes]:
        (done,) = await collect_many([events], state.metrics)
        answer = oa.text_completion(
            done, model=state.model_id, created=created, id=ident, system_fingerprint=fingerprint, echo=echo
        )
        return 200, [(b"content-type", b"application/json")], dumps(answer)

    return WholeAnswer(observer, compute, early_error=oa.error_response, closers=[events])


ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
]
