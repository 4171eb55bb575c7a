"""SageMaker wire details: runtime (rest-json) errors, control-plane (JSON 1.1) errors, names and ARNs.

boto3 finds a runtime error's code in the ``x-amzn-ErrorType`` header and its message in the
body's ``message``/``Message``; modeled fields (ModelError's ``OriginalStatusCode``,
``OriginalMessage``, ``LogStreamArn``) come from the body by their shape names, so the body uses
the shape's spelling (``Message``), which also makes botocore copy it to the top level of the
error response. Control-plane errors carry their code only in ``__type`` (docs/protocols.md §1-2).
"""

from __future__ import annotations

import json
import re
from typing import Any

RUNTIME_ERROR_STATUS = {
    "ValidationError": 400,
    "ModelError": 424,
    "ModelNotReadyException": 429,
    "InternalFailure": 500,
    "ServiceUnavailable": 503,
    "InternalDependencyException": 530,
}

JSON_CONTENT_TYPE = "application/json"
AMZ_JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
EVENT_STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"

# Request headers botocore sends for InvokeEndpoint[WithResponseStream] (absent when not given).
ACCEPT = "Accept"
STREAM_ACCEPT = "X-Amzn-SageMaker-Accept"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"
TARGET_CONTAINER_HOSTNAME = "X-Amzn-SageMaker-Target-Container-Hostname"
INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
ENABLE_EXPLANATIONS = "X-Amzn-SageMaker-Enable-Explanations"
INFERENCE_COMPONENT = "X-Amzn-SageMaker-Inference-Component"
SESSION_ID = "X-Amzn-SageMaker-Session-Id"
# Response headers.
INVOKED_VARIANT = "x-Amzn-Invoked-Production-Variant"
STREAM_CONTENT_TYPE = "X-Amzn-SageMaker-Content-Type"
REQUEST_ID = "x-amzn-RequestId"
ERROR_TYPE = "x-amzn-ErrorType"

MAX_BODY_BYTES = 6 * 1024 * 1024
MAX_CUSTOM_ATTRIBUTES = 1024
_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")


def valid_name(name: str) -> bool:
    """SageMaker resource names (endpoints, configs, models): ``^[a-zA-Z0-9](-*[a-zA-Z0-9])*$``, at most 63 chars."""
    return 0 < len(name) <= 63 and _NAME.fullmatch(name) is not None


valid_endpoint_name = valid_name


def name_error(kind: str, name: str) -> str:
    """The message for a name that breaks the rule, saying what the rule is."""
    return (
        f"{kind} name {name!r} is not valid: use 1-63 letters, digits and hyphens, "
        "starting and ending with a letter or digit"
    )


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def runtime_error(code: str, message: str, **extra: Any) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` for a runtime error boto3 raises as ``ClientError`` with ``code``.

    ``extra`` adds modeled fields, e.g. ModelError's ``OriginalStatusCode``, ``OriginalMessage``,
    ``LogStreamArn``. Unknown codes are refused so a typo cannot reach a client.
    """
    if code not in RUNTIME_ERROR_STATUS:
        raise ValueError(
            f"unknown SageMaker runtime error code {code!r}; expected one of {sorted(RUNTIME_ERROR_STATUS)}"
        )
    headers = {ERROR_TYPE: code, "Content-Type": JSON_CONTENT_TYPE}
    return RUNTIME_ERROR_STATUS[code], headers, _dumps({"Message": message, **extra})


def model_error(
    original_status: int,
    original_body: bytes | str,
    *,
    log_stream_arn: str | None = None,
    variant: str = "primary",
    see: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """424 ModelError for a container that answered non-2xx, worded as AWS words it.

    ``Received client error (422) from primary with message "<body>".`` (``server error`` for 5xx);
    ``see`` adds AWS's "See <where> for more information." pointer (e.g. the log path).
    """
    text = original_body.decode("utf-8", "replace") if isinstance(original_body, bytes) else original_body
    kind = "client" if 400 <= original_status < 500 else "server"
    message = f'Received {kind} error ({original_status}) from {variant} with message "{text}".'
    if see:
        message += f" See {see} for more information."
    extra: dict[str, Any] = {"OriginalStatusCode": original_status, "OriginalMessage": text}
    if log_stream_arn:
        extra["LogStreamArn"] = log_stream_arn
    return runtime_error("ModelError", message, **extra)


def endpoint_not_found(name: str, account: str) -> tuple[int, dict[str, str], bytes]:
    """What InvokeEndpoint answers for an unknown endpoint (400 ValidationError)."""
    return runtime_error("ValidationError", f"Endpoint {name} of account {account} not found.")


def control_plane_error(code: str, message: str, status: int = 400) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` for a JSON 1.1 control-plane error: ``{"__type": code, "message": message}``.

    Send it with ``Content-Type: application/x-amz-json-1.1``. ``ValidationException`` is what AWS
    answers for a missing or duplicate resource; ``ResourceNotFound``, ``ResourceInUse``,
    ``ResourceLimitExceeded`` and ``ConflictException`` are the modeled codes.
    """
    return status, {"__type": code, "message": message}


def arn(region: str, account: str, kind: str, name: str) -> str:
    """``arn:aws:sagemaker:<region>:<account>:<kind>/<lowercased name>`` (kind: model, endpoint, ...)."""
    return f"arn:aws:sagemaker:{region}:{account}:{kind}/{name.lower()}"


def could_not_find(kind: str, what: str) -> tuple[int, dict[str, Any]]:
    """AWS's ValidationException for a missing resource, e.g. ``Could not find endpoint "x".``."""
    return control_plane_error("ValidationException", f'Could not find {kind} "{what}".')


def already_exists(kind: str, resource_arn: str) -> tuple[int, dict[str, Any]]:
    """AWS's ValidationException for a duplicate name: ``Cannot create already existing endpoint "<arn>".``."""
    return control_plane_error("ValidationException", f'Cannot create already existing {kind} "{resource_arn}".')
