"""The SageMaker container contract: ``POST /invocations`` routed by the body's shape, ``GET /ping``.

Like TGI's image: ``{inputs}`` is a generate request (TGI's compat route: streams when
``"stream": true``, answers a list otherwise, ``return_full_text`` defaults to true), ``{messages}``
is chat and ``{prompt}`` is completions. In the ``lmi`` dialect ``{inputs}`` is answered the
DJL-Serving way instead, and every refusal has DJL's ``{"error", "code"}`` shape.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamhost.engine.errors import EngineError
from streamhost.protocols import lmi, tgi
from streamhost.protocols.errors import ProtocolError
from streamhost.server.bodies import check_content_type, json_answer, now, parse_json, protocol_error_answer, read_body
from streamhost.server.lmi_routes import engine_error_answer, lmi_answer, lmi_shape
from streamhost.server.openai_routes import chat_answer, completion_answer
from streamhost.server.state import ServerState
from streamhost.server.tgi_routes import generate_answer


async def invocations(request: Request) -> Any:
    started = now()
    state: ServerState = request.app.state.server
    lmi_dialect = state.settings.dialect == "lmi"
    try:
        check_content_type(request, lenient=True)
        body = await read_body(request, state.payload_limit)
        kind = tgi.invocation_kind(parse_json(body))
    except ProtocolError as err:
        if lmi_dialect:
            if err.status == 422:  # no known shape: DJL's wording and code
                err = lmi.lmi_error("Invalid request payload. The 'inputs' field does not contain any content.")
            return protocol_error_answer(lmi_shape(err))
        raise
    if not lmi_dialect:
        if kind == "chat":
            return chat_answer(state, body, started)
        if kind == "completion":
            return completion_answer(state, body, started)
        return generate_answer(state, body, started, stream=None, wrap=True, default_full_text=True)
    answer = {"chat": chat_answer, "completion": completion_answer}.get(kind, lmi_answer)
    try:  # in the lmi dialect every refusal, chat and completions included, has DJL's shape
        response = answer(state, body, started)
        if hasattr(response, "early_error"):  # the engine's refusals before the first byte, too
            response.early_error = lmi.engine_error
        return response
    except ProtocolError as err:
        return protocol_error_answer(lmi_shape(err))
    except EngineError as err:
        return engine_error_answer(err)


async def ping(request: Request) -> Response:
    """200 (empty) when ready; 503 while loading, after a failed load, or draining."""
    state: ServerState = request.app.state.server
    if state.ready:
        return Response(status_code=200)
    return json_answer(tgi.unhealthy_body(), 503)


ROUTES = [
    Route("/invocations", invocations, methods=["POST"]),
    Route("/ping", ping, methods=["GET"]),
    Route("/health", ping, methods=["GET"]),
    Route("/", ping, methods=["GET"]),
]
