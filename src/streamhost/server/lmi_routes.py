"""The DJL-Serving/LMI answer to ``{inputs, parameters}`` on ``/invocations`` (dialect ``lmi``).

The output format comes from ``serving.properties`` / ``OPTION_*`` (``ServingProperties.response_format``):
jsonlines token lines by default when streaming, the legacy ``{"outputs": [...]}`` lines with
``option.enable_streaming=true``, ``data: {...}`` with ``option.output_formatter=sse``, and one JSON
object otherwise. Errors are DJL's ``{"error", "code"}``: 424 for a request the model refuses,
503 while loading, draining or overloaded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from streamhost.engine.errors import EngineError
from streamhost.protocols import lmi
from streamhost.protocols.errors import ProtocolError
from streamhost.server.bodies import json_answer
from streamhost.server.generation import collect_many, request_id
from streamhost.server.serving_properties import ServingProperties
from streamhost.server.state import ServerState
from streamhost.server.streaming import Observer, TokenStream, WholeAnswer

_DEFAULT_PROPERTIES = ServingProperties({})


def lmi_shape(err: ProtocolError) -> ProtocolError:
    """Re-shape a transport-level refusal (413, 415, bad JSON) as DJL's ``{"error", "code"}``."""
    if "code" in err.body:
        return err
    return ProtocolError(
        err.status, err.message, err.error_type, body={"error": err.message, "code": err.status}, headers=err.headers
    )


def engine_error_answer(err: EngineError) -> Any:
    status, body = lmi.engine_error(err)
    return json_answer(body, status)


def lmi_answer(state: ServerState, body: bytes | dict, started: float) -> Any:
    """Answer one LMI request; raises ProtocolError (LMI-shaped) or EngineError before any work."""
    req = lmi.parse_request(body)
    engine = state.require_engine()
    props = state.settings.properties or _DEFAULT_PROPERTIES
    fmt = props.response_format(req.stream)
    params = req.parameters
    engine_params = dataclasses.replace(params, return_full_text=False)
    observer = Observer(state, started)
    if fmt != "json" and not req.batched:
        inputs = req.inputs[0]
        framer = lmi.LmiStream(fmt, params, inputs)
        events = engine.generate(inputs, engine_params, request_id("lmi"), stream=True)
        return TokenStream(
            observer,
            events,
            framer.event,
            content_type=framer.content_type,
            headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
            early_error=lmi.engine_error,
            stream_error=framer.error,
        )
    streams = [engine.generate(text, engine_params, request_id("lmi"), stream=False) for text in req.inputs]

    async def compute() -> tuple[int, list, bytes]:
        done = await collect_many(streams, state.metrics)
        if req.batched:
            prefix = params.return_full_text
            texts = [(text if prefix else "") + result.generated_text for text, result in zip(req.inputs, done)]
            answer: Any = lmi.json_batch_response(texts)
        else:
            answer = lmi.json_response(done[0], params, req.inputs[0])
        return 200, [(b"content-type", b"application/json")], lmi.dumps(answer)

    return WholeAnswer(observer, compute, early_error=lmi.engine_error, closers=streams)
