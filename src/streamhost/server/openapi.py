"""The model server's OpenAPI 3.1 description, served at ``GET /openapi.json`` (and TGI's ``/api-doc/openapi.json``).

The request schemas are generated from the very pydantic models that parse the requests
(``protocols/tgi.py``, ``openai.py``, ``lmi.py``), so the description cannot drift from what the
routes accept; the fuzz suite (``tests/e2e/test_server_fuzz.py``) generates its requests from it.
``/invocations`` takes any of the shapes it routes by (TGI's or DJL's generate body, chat,
completions), as the dialect answers them.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel

from streamhost.protocols.lmi import LmiBody
from streamhost.protocols.openai import ChatCompletionRequest, CompletionRequest
from streamhost.protocols.tgi import TgiGenerateBody

_REF = "#/components/schemas/{model}"


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """Component schemas for ``models`` and every model they use."""
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}},
          "required": ["error"]}  # fmt: skip
_LMI_ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "code": {"type": "integer"}},
              "required": ["error", "code"]}  # fmt: skip


def _answers(ok: dict[str, Any], error: dict[str, Any] = _ERROR) -> dict[str, Any]:
    refusal = {"content": {"application/json": {"schema": error}}}
    return {
        "200": ok,
        "400": {"description": "the body is not JSON", **refusal},
        "413": {"description": "the body is larger than the payload limit", **refusal},
        "415": {"description": "Content-Type is not application/json", **refusal},
        "422": {"description": "the request breaks a rule (shape, limits, unsupported feature)", **refusal},
        "424": {"description": "(lmi) the model refused the request", **refusal},
        "429": {"description": "too many requests in flight", **refusal},
        "503": {"description": "the model is loading or the server is draining", **refusal},
    }


_JSON_OR_SSE = {"description": "the answer (JSON), or a stream of server-sent events when streaming",
                "content": {"application/json": {}, "text/event-stream": {}}}  # fmt: skip
_SSE = {"description": "server-sent events, one per token", "content": {"text/event-stream": {}}}
_JSON = {"description": "the answer", "content": {"application/json": {}}}
_EMPTY = {"description": "ready"}


def _post(summary: str, body: dict[str, Any], ok: dict[str, Any], error: dict[str, Any] = _ERROR) -> dict[str, Any]:
    return {"post": {"summary": summary, "requestBody": _json_body(body), "responses": _answers(ok, error)}}


def _get(summary: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": ok, "503": {"description": "not ready"}}}}


@functools.cache
def openapi_document(dialect: str = "tgi") -> dict[str, Any]:
    """The description for a server in ``dialect`` (``tgi`` or ``lmi``: how ``/invocations`` answers ``{inputs}``)."""
    generate = _ref("LmiBody" if dialect == "lmi" else "TgiGenerateBody")
    invocations = {"oneOf": [generate, _ref("ChatCompletionRequest"), _ref("CompletionRequest")]}
    contract = "SageMaker container contract: generate, chat or completions by the body's shape"
    compat = "TGI compat generate (streams when stream is true)"
    return {
        "openapi": "3.1.0",
        "info": {"title": "streamhost model server", "version": "1", "description": f"dialect: {dialect}"},
        "paths": {
            "/invocations": _post(contract, invocations, _JSON_OR_SSE, _LMI_ERROR if dialect == "lmi" else _ERROR),
            "/generate": _post("TGI generate", _ref("TgiGenerateBody"), _JSON),
            "/generate_stream": _post("TGI generate, streamed", _ref("TgiGenerateBody"), _SSE),
            "/": {**_post(compat, _ref("TgiGenerateBody"), _JSON_OR_SSE), **_get("ping", _EMPTY)},
            "/tokenize": _post("TGI tokenize", _ref("TgiGenerateBody"), _JSON),
            "/v1/chat/completions": _post("OpenAI chat completions", _ref("ChatCompletionRequest"), _JSON_OR_SSE),
            "/v1/completions": _post("OpenAI completions", _ref("CompletionRequest"), _JSON_OR_SSE),
            "/v1/models": _get("OpenAI model list", _JSON),
            "/info": _get("TGI server info", _JSON),
            "/ping": _get("SageMaker health check", _EMPTY),
            "/health": _get("TGI health check", _EMPTY),
            "/metrics": _get("Prometheus metrics", {"description": "metrics", "content": {"text/plain": {}}}),
            "/openapi.json": _get("this description", _JSON),
        },
        "components": {"schemas": _schemas(TgiGenerateBody, LmiBody, ChatCompletionRequest, CompletionRequest)},
    }
