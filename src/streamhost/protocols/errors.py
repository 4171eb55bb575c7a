"""The one error type the protocol layer raises.

Each protocol module raises ``ProtocolError`` with the HTTP status and the body already in its own
wire shape, so a server route can answer any protocol's bad request with the same two lines:
``except ProtocolError as e: return JSONResponse(e.body, status_code=e.status, headers=e.headers)``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic

M = TypeVar("M", bound=pydantic.BaseModel)


class ProtocolError(Exception):
    """A request the protocol rejects before any engine work starts.

    ``body`` defaults to TGI's ``{"error": message, "error_type": error_type}``; LMI and SageMaker
    pass their own shape. ``headers`` carries extra response headers (SageMaker's x-amzn-ErrorType).
    """

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str = "validation",
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.body: dict[str, Any] = body if body is not None else {"error": message, "error_type": error_type}
        self.headers: dict[str, str] = headers or {}

    def __repr__(self) -> str:
        return f"ProtocolError({self.status}, {self.message!r}, {self.error_type!r})"


def describe_validation_error(exc: pydantic.ValidationError) -> tuple[bool, str]:
    """``(is_json_syntax_error, one-line message)`` for a pydantic failure, naming the field."""
    errors = exc.errors(include_url=False)
    first = errors[0] if errors else {"type": "", "loc": (), "msg": str(exc)}
    if first["type"] == "json_invalid":
        ctx = first.get("ctx")
        detail = ctx.get("error", first["msg"]) if isinstance(ctx, dict) else first["msg"]
        return True, f"Failed to parse the request body as JSON: {detail}"
    loc = ".".join(str(p) for p in first["loc"])
    where = f"{loc}: " if loc else ""
    return False, f"Failed to deserialize the JSON body into the target type: {where}{first['msg']}"


def parse_body(model: type[M], body: bytes | str | dict) -> M:
    """Validate a request body (raw JSON or an already-decoded object) into ``model``.

    Unparsable JSON raises ``ProtocolError(400)``, a well-formed body of the wrong shape
    ``ProtocolError(422)``, as axum's Json extractor does in TGI. Callers re-wrap the error when
    their protocol has another body shape.
    """
    try:
        if isinstance(body, (bytes, bytearray, memoryview, str)):
            return model.model_validate_json(body)
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        syntax, message = describe_validation_error(exc)
        raise ProtocolError(400 if syntax else 422, message, "validation") from None
