"""Requests checked against botocore's published service model, the way AWS's front end checks them.

Any handler behind the control plane (and any later one: training jobs, S3, STS/IAM) receives only
input that fits the operation's input shape in the service model botocore ships. Checking happens
in two steps, as on AWS:

1. ``read``: the JSON body is read into the shape. A value of the wrong JSON type, an integer out of
   its 32/64-bit range, a non-object body, a broken union or an invalid string (lone UTF-16
   surrogates) is a ``SerializationException``. Members the shape does not define are dropped,
   as AWS JSON services do: Smithy's server protocol tests reject unknown *union* members (and
   this code does too) but never unknown structure members, and AWS services built from Smithy
   skip them, so a client newer than the service still works. ``null`` means "not given".
   Timestamps come out as epoch seconds (float); everything else keeps its JSON type.
2. ``check``: constraints of the model (required members, lengths, ranges, patterns, enums) are
   checked on the typed value; every failure is collected into one ``ValidationException`` in
   AWS's words: ``1 validation error detected: Value 'x' at 'endpointName' failed to satisfy
   constraint: Member must satisfy regular expression pattern: ...``.

Deliberate loosenings for self-hosting live in ``service_extensions.py`` and nowhere else.

Use: ``ServiceValidator.for_service("sagemaker").load("CreateModel", body)`` for a JSON protocol,
or ``.check(op, params)`` alone where another protocol (query, rest-xml) already parsed the input.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import logging
import math
from typing import Any

import regex
from botocore.model import OperationModel, OperationNotFoundError, Shape
from botocore.model import ServiceModel as BotocoreServiceModel

from .service_extensions import ISO_TIMESTAMPS, extension

log = logging.getLogger("streamhost.platform")

_INT_BITS = {"byte": 8, "short": 16, "integer": 32, "long": 64}
_TYPE_WORDS = {
    "string": "a String", "integer": "an Integer", "long": "a Long", "short": "a Short", "byte": "a Byte",
    "float": "a Float", "double": "a Double", "boolean": "a Boolean", "timestamp": "a Timestamp", "blob": "a Blob",
}  # fmt: skip
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_PATTERN_TIMEOUT_S = 0.05
_MAX_SHOWN_VALUE = 200


class RequestError(Exception):
    """A request AWS would refuse: answered as ``{"__type": code, "message": message}`` with ``status``."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _serialization(message: str) -> RequestError:
    return RequestError("SerializationException", message)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A JSON 1.x request body as a dict ('' is ``{}``); anything else is a SerializationException."""
    if not body.strip():
        return {}
    try:
        params = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise _serialization("Request body is nested too deeply to read") from None
    except UnicodeDecodeError as exc:
        raise _serialization(f"Request body is not valid UTF-8: {exc.reason}") from None
    except ValueError as exc:  # JSONDecodeError, and int() past Python's digit limit
        raise _serialization(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise _serialization(f"Request body must be a JSON object, got {_json_kind(params)}")
    return params


def _reject_constant(name: str) -> Any:
    raise ValueError(f'{name} is not a JSON value (write it as the string "{name}")')


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _token(value: Any) -> str:
    """How Coral names the JSON token it could not convert."""
    if isinstance(value, dict):
        return "Start of structure or map"
    if isinstance(value, list):
        return "Start of list"
    if isinstance(value, bool):
        return "TRUE_VALUE" if value else "FALSE_VALUE"
    if isinstance(value, (int, float)):
        return "NUMBER_VALUE"
    return "STRING_VALUE"


def _cannot_convert(value: Any, target: str, path: str) -> RequestError:
    if isinstance(value, (dict, list)):
        return _serialization(f"{_token(value)} found where not expected (at '{path}', which must be {target})")
    return _serialization(f"{_token(value)} can not be converted to {target} (at '{path}')")


def _member_path(parent: str, name: str) -> str:
    """AWS names members in lowerCamelCase, list items as ``list.N.member`` (from 1)."""
    name = name[:1].lower() + name[1:]
    return f"{parent}.{name}" if parent else name


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _serialization(f"Invalid UTF-8 in a string at '{path}' (lone UTF-16 surrogate)") from None


def _java_pattern(pattern: str) -> regex.Pattern | None:
    """Compile a model's (Java) regular expression; ``None`` when Python cannot express it."""
    translated = pattern.replace(r"\uD800\uDC00-\uDBFF\uDFFF", r"\U00010000-\U0010FFFF")
    try:
        return regex.compile(translated)
    except regex.error:
        log.debug("service model pattern %r is not checked: it does not compile", pattern)
        return None


_compiled = functools.lru_cache(maxsize=1024)(_java_pattern)


def _utf16_length(text: str) -> int:
    """String length as the service counts it (Java: UTF-16 code units)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        text = f"'{value}'"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= _MAX_SHOWN_VALUE else text[: _MAX_SHOWN_VALUE - 3] + "..."


class ServiceValidator:
    """Reads and checks requests for one AWS service's model (``sagemaker``, ``s3``, ``sts``, ``iam``, ...)."""

    def __init__(self, service_name: str, model: BotocoreServiceModel | None = None) -> None:
        if model is None:
            import botocore.session

            model = botocore.session.get_session().get_service_model(service_name)
        self.service_name = service_name
        self.model = model

    @classmethod
    @functools.cache
    def for_service(cls, service_name: str) -> ServiceValidator:
        """One validator per service per process (loading a model takes ~0.1 s)."""
        return cls(service_name)

    # ------------------------------------------------------------------ operations

    def operation(self, name: str) -> OperationModel | None:
        """The operation's model, or ``None`` when the service defines no such operation."""
        try:
            return self.model.operation_model(name)
        except OperationNotFoundError:
            return None

    def load(self, operation: str, body: bytes) -> dict[str, Any]:
        """A JSON request body read into ``operation``'s input shape and checked: the handler's input."""
        return self.checked(operation, parse_json_object(body))

    def checked(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """``read`` then ``check``: typed input that satisfies the model, or a RequestError."""
        typed = self.read(operation, params)
        self.check(operation, typed)
        return typed

    def read(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """The members ``operation`` defines, typed; raises SerializationException."""
        shape = self._input_shape(operation)
        if shape is None:
            return {}
        return self._read(shape, params, "")

    def check(self, operation: str, params: dict[str, Any]) -> None:
        """Every constraint of the model on already typed ``params``; raises one ValidationException."""
        shape = self._input_shape(operation)
        if shape is None:
            return
        errors: list[str] = []
        self._check(shape, params, "", errors)
        if errors:
            count = len(errors)
            noun = "validation error" if count == 1 else "validation errors"
            raise RequestError("ValidationException", f"{count} {noun} detected: " + "; ".join(errors))

    def _input_shape(self, operation: str) -> Shape | None:
        op = self.operation(operation)
        if op is None:
            raise RequestError("UnknownOperationException", f"{self.service_name} has no operation {operation}")
        return op.input_shape

    # ------------------------------------------------------------------ step 1: JSON types

    def _read(self, shape: Shape, value: Any, path: str) -> Any:
        kind = shape.type_name
        if kind == "structure":
            if shape.metadata.get("document"):
                return self._read_document(value, path)
            return self._read_structure(shape, value, path)
        if kind == "list":
            if not isinstance(value, list):
                raise _cannot_convert(value, "a List", path)
            out = []
            for index, item in enumerate(value, start=1):
                item_path = f"{path}.{index}.member"
                if item is None:
                    raise _serialization(f"null is not allowed in the list at '{path}' (item {index})")
                out.append(self._read(shape.member, item, item_path))
            return out
        if kind == "map":
            if not isinstance(value, dict):
                raise _cannot_convert(value, "a Map", path)
            out_map = {}
            for key, item in value.items():
                _check_text(key, path)
                if item is None:
                    raise _serialization(f"null is not allowed as the value of '{key}' in the map at '{path}'")
                out_map[key] = self._read(shape.value, item, path)
            return out_map
        return self._read_scalar(shape, value, path)

    def _read_structure(self, shape: Shape, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _cannot_convert(value, "a Structure", path)
        union = bool(shape.metadata.get("union"))
        out: dict[str, Any] = {}
        for key, item in value.items():
            member = shape.members.get(key)
            if member is None:
                if union:
                    raise _serialization(f"Unknown member '{key}' in the union at '{path or 'input'}'")
                continue  # not modeled: dropped, as AWS JSON services do
            if item is None:
                continue
            out[key] = self._read(member, item, _member_path(path, key))
        if union and len(out) != 1:
            raise _serialization(f"The union at '{path or 'input'}' must set exactly one member, got {len(out)}")
        return out

    def _read_document(self, value: Any, path: str) -> Any:
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                _check_text(item, path)
            elif isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key, path)
                    stack.append(child)
        return value

    def _read_scalar(self, shape: Shape, value: Any, path: str) -> Any:
        kind = shape.type_name
        target = _TYPE_WORDS.get(kind, kind)
        if kind == "string":
            if not isinstance(value, str):
                raise _cannot_convert(value, target, path)
            _check_text(value, path)
            return value
        if kind == "boolean":
            if not isinstance(value, bool):
                raise _cannot_convert(value, target, path)
            return value
        if kind in _INT_BITS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _cannot_convert(value, target, path)
            if isinstance(value, float):
                if not value.is_integer():
                    raise _serialization(f"{value!r} at '{path}' is not a whole number; {target} is needed")
                value = int(value)
            bits = _INT_BITS[kind]
            if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
                raise _serialization(f"{value} at '{path}' does not fit in {target} ({bits}-bit)")
            return value
        if kind in ("float", "double"):
            if isinstance(value, str) and value in _NON_FINITE:
                return _NON_FINITE[value]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _cannot_convert(value, target, path)
            return float(value)
        if kind == "timestamp":
            return self._read_timestamp(value, path)
        if kind == "blob":
            if not isinstance(value, str):
                raise _cannot_convert(value, target, path)
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise _serialization(f"The value at '{path}' is not valid base64") from None
            return value
        raise _serialization(f"'{path}' has a type this server cannot read ({kind})")

    @staticmethod
    def _read_timestamp(value: Any, path: str) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _serialization(f"The timestamp at '{path}' is not a finite number")
            return float(value)
        if isinstance(value, str) and ISO_TIMESTAMPS:
            try:
                parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                pass
            else:
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=dt.timezone.utc)
                return parsed.timestamp()
        raise _cannot_convert(value, "a Timestamp (epoch seconds, or an ISO-8601 string)", path)

    # ------------------------------------------------------------------ step 2: constraints

    def _bounds(self, shape: Shape) -> tuple[Any, Any, str | None, str]:
        """(min, max, pattern, how to name the pattern) of a shape, with our extensions applied."""
        md = shape.metadata
        low, high, pattern = md.get("min"), md.get("max"), md.get("pattern")
        shown = pattern or ""
        ext = extension(self.service_name, shape.name)
        if ext is not None:
            low = ext.min if ext.min is not None else low
            high = ext.max if ext.max is not None else high
            if ext.pattern is not None:
                pattern = ext.pattern
                shown = f"{shown} {ext.pattern_note}".strip()
        return low, high, pattern, shown

    def _check(self, shape: Shape, value: Any, path: str, errors: list[str]) -> None:
        kind = shape.type_name
        if kind == "structure":
            if shape.metadata.get("document"):
                return
            for name in shape.required_members:
                if value.get(name) is None:
                    errors.append(f"Value null at '{_member_path(path, name)}' failed to satisfy constraint: "
                                  "Member must not be null")  # fmt: skip
            for key, item in value.items():
                member = shape.members.get(key)
                if member is not None and item is not None:
                    self._check(member, item, _member_path(path, key), errors)
            return
        failures = self._constraints(shape, value)
        for failure in failures:
            errors.append(f"Value {_shown(value)} at '{path}' failed to satisfy constraint: {failure}")
        if kind == "list":
            for index, item in enumerate(value, start=1):
                self._check(shape.member, item, f"{path}.{index}.member", errors)
        elif kind == "map":
            for key, item in value.items():
                key_failures = self._constraints(shape.key, key)
                if key_failures:
                    errors.append(f"Value '{key}' at '{path}' failed to satisfy constraint: "
                                  f"Map keys must satisfy constraint: [{', '.join(key_failures)}]")  # fmt: skip
                if shape.value.type_name in ("structure", "list", "map"):
                    self._check(shape.value, item, f"{path}.{key}", errors)
                else:
                    value_failures = self._constraints(shape.value, item)
                    if value_failures:
                        errors.append(f"Value {_shown(item)} at '{path}.{key}' failed to satisfy constraint: "
                                      f"Map value must satisfy constraint: [{', '.join(value_failures)}]")  # fmt: skip

    def _constraints(self, shape: Shape, value: Any) -> list[str]:
        """The constraints of one shape that ``value`` breaks (not looking inside lists and maps)."""
        kind = shape.type_name
        low, high, pattern, shown_pattern = self._bounds(shape)
        out: list[str] = []
        if kind in ("string", "list", "map", "blob"):
            if kind == "string":
                size = _utf16_length(value)
            elif kind == "blob":
                size = len(base64.b64decode(value))
            else:
                size = len(value)
            if low is not None and size < low:
                out.append(f"Member must have length greater than or equal to {low}")
            if high is not None and size > high:
                out.append(f"Member must have length less than or equal to {high}")
            if kind == "string":
                enum = shape.enum
                if enum and value not in enum:
                    out.append(f"Member must satisfy enum value set: [{', '.join(enum)}]")
                elif pattern and not out and not self._matches(pattern, value):
                    out.append(f"Member must satisfy regular expression pattern: {shown_pattern}")
        elif kind in _INT_BITS or kind in ("float", "double"):
            if low is not None and not value >= low:  # NaN fails both bounds
                out.append(f"Member must have value greater than or equal to {low}")
            if high is not None and not value <= high:
                out.append(f"Member must have value less than or equal to {high}")
        return out

    @staticmethod
    def _matches(pattern: str, value: str) -> bool:
        compiled = _compiled(pattern)
        if compiled is None:
            return True
        try:
            return compiled.fullmatch(value, timeout=_PATTERN_TIMEOUT_S) is not None
        except TimeoutError:
            return False
