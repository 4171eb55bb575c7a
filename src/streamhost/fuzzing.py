"""Hypothesis strategies for the fuzz suites, generated from the APIs' own machine-readable models.

- ``ShapeStrategies`` draws request bodies for any operation of a botocore service model: mostly
  plausible values (enums, lengths, ranges and, where Python can read them, patterns of the
  model), mixed with values of the wrong JSON type, nulls, values just past a bound, and members
  taken from *other* operations (how issue 12's 500s were found).
- ``openapi_bodies`` draws bodies for one route of an OpenAPI 3.1 document (the model server's
  ``/openapi.json``): valid ones from the schema (``from_schema``: the JSON Schema subset pydantic
  writes), then the same mutations.

Only the test suite imports this module (it needs ``hypothesis`` from the ``test`` extra).
"""

from __future__ import annotations

import base64
import copy
import re
from typing import Any

from botocore.model import ServiceModel, Shape
from hypothesis import strategies as st

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
)  # fmt: skip
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
# Strings that have broken servers before: lone surrogates, NUL, huge numbers as text, path tricks.
NASTY_STRINGS = st.sampled_from([
    "", " ", "\x00", "\ud800", "a\udfffb", "../../etc/passwd", "file:///etc/passwd", "s3://", "https://",
    "%00", "NaN", "Infinity", "1e400", "😀" * 3, "-", "--", "a-", "null",
]) | st.builds(lambda: "9" * 5000) | st.builds(lambda: "a" * 300)  # fmt: skip
_INT_BOUNDS = {"byte": 2**7, "short": 2**15, "integer": 2**31, "long": 2**63}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ShapeStrategies:
    """Request bodies for the operations of one botocore service model."""

    def __init__(self, model: ServiceModel, overrides: dict[str, st.SearchStrategy] | None = None,
                 max_depth: int = 4) -> None:  # fmt: skip
        self.model = model
        self.overrides = overrides or {}
        self.max_depth = max_depth
        self._cache: dict[tuple[str, int, bool], st.SearchStrategy] = {}
        self._member_names: list[str] | None = None

    @property
    def member_names(self) -> list[str]:
        """Every top-level input member name of every operation (the pool of 'foreign' members)."""
        if self._member_names is None:
            names: set[str] = set()
            for op in self.model.operation_names:
                shape = self.model.operation_model(op).input_shape
                if shape is not None:
                    names.update(shape.members)
            self._member_names = sorted(names)
        return self._member_names

    def body(self, operation: str) -> st.SearchStrategy[dict[str, Any]]:
        """A JSON object for ``operation``: near-valid, with junk, nulls and foreign members mixed in."""
        shape = self.model.operation_model(operation).input_shape
        base = st.just({}) if shape is None else self._valid(shape, 0)
        foreign = st.lists(st.tuples(st.sampled_from(self.member_names), st.one_of(ANY_JSON, JSON_SCALARS)), max_size=2)
        return st.tuples(base, foreign).map(lambda pair: {**dict(pair[1]), **pair[0]} if pair[1] else pair[0])

    # ------------------------------------------------------------------ per shape

    def _value(self, shape: Shape, depth: int, name: str = "") -> st.SearchStrategy:
        """A member's value: usually plausible, sometimes of the wrong type, null or past a bound."""
        if name in self.overrides:
            return self.overrides[name]
        valid = st.deferred(lambda: self._valid(shape, depth))
        return st.one_of(valid, valid, valid, valid, self._wrong(shape), st.none())

    def _wrong(self, shape: Shape) -> st.SearchStrategy:
        kind = shape.type_name
        md = shape.metadata
        options = [JSON_SCALARS, NASTY_STRINGS]
        if kind in _INT_BOUNDS or kind in ("float", "double"):
            bound = _INT_BOUNDS.get(kind, 2**64)
            edges = [bound, -bound - 1, 1.5, "1", "NaN", "Infinity"]
            for key in ("min", "max"):
                if key in md:
                    edges += [md[key] - 1, md[key] + 1]
            options.append(st.sampled_from(edges))
        containers: list[st.SearchStrategy[Any]] = []
        if kind in ("string", "list", "map"):
            containers.append(st.lists(JSON_SCALARS, max_size=2))
        if kind in ("structure", "map"):
            containers.append(st.dictionaries(st.text(max_size=6), JSON_SCALARS, max_size=2))
        return st.one_of([*options, *containers])

    def _valid(self, shape: Shape, depth: int) -> st.SearchStrategy:
        key = (shape.name, depth, False)
        if key not in self._cache:
            self._cache[key] = self._build(shape, depth)
        return self._cache[key]

    def _build(self, shape: Shape, depth: int) -> st.SearchStrategy:
        kind = shape.type_name
        md = shape.metadata
        if kind == "structure":
            if md.get("document"):
                return ANY_JSON
            if depth >= self.max_depth:
                return st.just({})
            members = shape.members
            if md.get("union"):
                names = sorted(members)

                def one_member(n: str) -> st.SearchStrategy[dict[str, Any]]:
                    return self._value(members[n], depth + 1, n).map(lambda v: {n: v})

                return st.sampled_from(names).flatmap(one_member)
            required = {n: self._value(members[n], depth + 1, n) for n in shape.required_members if n in members}
            optional = [n for n in members if n not in required]
            picked = st.lists(st.sampled_from(optional), max_size=3, unique=True) if optional else st.just([])
            extra = picked.flatmap(
                lambda names: st.fixed_dictionaries({n: self._value(members[n], depth + 1, n) for n in names})
            )
            return st.tuples(st.fixed_dictionaries(required), extra).map(lambda pair: {**pair[0], **pair[1]})
        if kind == "list":
            low = min(md.get("min", 0), 2)
            high = max(low, min(md.get("max", 2), 2))
            if depth >= self.max_depth:
                return st.just([])
            return st.lists(self._valid(shape.member, depth + 1), min_size=low, max_size=high)
        if kind == "map":
            if depth >= self.max_depth:
                return st.just({})
            return st.dictionaries(self._valid(shape.key, depth + 1), self._valid(shape.value, depth + 1), max_size=2)
        if kind == "string":
            return self._string(shape)
        if kind in _INT_BOUNDS:
            bound = _INT_BOUNDS[kind]
            low = md.get("min", -bound)
            high = md.get("max", bound - 1)
            return st.one_of(st.integers(low, high), st.sampled_from([low, high]))
        if kind in ("float", "double"):
            return st.floats(min_value=md.get("min"), max_value=md.get("max"), allow_nan=False, allow_infinity=False)
        if kind == "boolean":
            return st.booleans()
        if kind == "timestamp":
            return st.one_of(st.floats(0, 2e9), st.sampled_from(["2024-01-01T00:00:00Z", "2030-06-01T12:00:00+02:00"]))
        if kind == "blob":
            return st.binary(max_size=16).map(_b64)
        return JSON_SCALARS

    @staticmethod
    def _string(shape: Shape) -> st.SearchStrategy:
        md = shape.metadata
        if shape.enum:
            return st.sampled_from(list(shape.enum))
        low = md.get("min", 0)
        high = md.get("max", 64)
        text = st.text(min_size=low, max_size=max(low, min(high, 24)))
        pattern = md.get("pattern")
        if pattern:
            try:
                compiled = re.compile(pattern)
            except re.error:
                return text
            fitting = st.from_regex(compiled, fullmatch=True).map(lambda s: s[:high])
            return st.one_of(fitting, fitting, text)
        return text


# ---------------------------------------------------------------------- OpenAPI


def resolve_refs(document: dict[str, Any], node: Any) -> Any:
    """``node`` with every local ``$ref`` replaced by what it names (the schemas here do not recurse)."""
    if isinstance(node, dict):
        if "$ref" in node and isinstance(node["$ref"], str) and node["$ref"].startswith("#/"):
            target: Any = document
            for part in node["$ref"][2:].split("/"):
                target = target[part]
            return resolve_refs(document, copy.deepcopy(target))
        return {k: resolve_refs(document, v) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_refs(document, v) for v in node]
    return node


def request_schema(document: dict[str, Any], path: str, method: str = "post") -> dict[str, Any]:
    """The JSON schema of a route's request body, references resolved."""
    body = document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return resolve_refs(document, body)


def mutations(valid: st.SearchStrategy[dict[str, Any]], schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A valid body with up to two properties (at the top or one level down) replaced by junk or removed."""
    paths = _property_paths(schema)
    if not paths:
        return valid
    edits = st.lists(
        st.tuples(st.sampled_from(paths), st.one_of(ANY_JSON, NASTY_STRINGS, st.just(_DELETE))), max_size=2
    )
    return st.tuples(valid, edits).map(lambda pair: _apply(copy.deepcopy(pair[0]), pair[1]))


_DELETE = object()


def _property_paths(schema: dict[str, Any], prefix: str = "", depth: int = 0) -> list[str]:
    out: list[str] = []
    variants = [schema] + list(schema.get("anyOf", [])) + list(schema.get("oneOf", []))
    for variant in variants:
        for name, sub in (variant.get("properties") or {}).items():
            path = f"{prefix}{name}"
            out.append(path)
            if depth < 1 and isinstance(sub, dict):
                out += _property_paths(sub, f"{path}.", depth + 1)
    return sorted(set(out))


def _apply(body: Any, edits: list[tuple[str, Any]]) -> Any:
    if not isinstance(body, dict):
        return body
    for path, value in edits:
        target = body
        *parents, key = path.split(".")
        for parent in parents:
            child = target.get(parent)
            if not isinstance(child, dict):
                child = target[parent] = {}
            target = child
        if value is _DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    return body


REQUIRED = "__required__"  # a ``shrink`` key: property names to make required wherever they appear


def openapi_bodies(document: dict[str, Any], path: str, method: str = "post",
                   shrink: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:  # fmt: skip
    """Bodies for one route: valid per its schema, mutated, or any JSON at all.

    ``shrink`` narrows the schema before generating (e.g. ``{"max_new_tokens": {"maximum": 4}}``
    applied wherever a property of that name appears, ``{REQUIRED: ["max_new_tokens"]}`` to make
    it required) so valid requests stay cheap to answer.
    """
    schema = _narrow(request_schema(document, path, method), shrink or {})
    valid = from_schema(schema)
    return st.one_of(valid, valid, mutations(valid, schema), ANY_JSON)


def _narrow(node: Any, shrink: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        out = {k: _narrow(v, shrink) for k, v in node.items()}
        props = out.get("properties")
        if isinstance(props, dict):
            for name, extra in shrink.items():
                if name == REQUIRED:
                    out["required"] = sorted(set(out.get("required", [])) | (set(extra) & set(props)))
                elif name in props:
                    props[name] = _narrow_property(props[name], extra)
        return out
    if isinstance(node, list):
        return [_narrow(v, shrink) for v in node]
    return node


def _narrow_property(schema: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Apply ``extra`` to the non-null branches of an ``anyOf`` (pydantic's Optional) or to the schema."""
    if "anyOf" in schema:
        return {**schema, "anyOf": [b if b.get("type") == "null" else {**b, **extra} for b in schema["anyOf"]]}
    return {**schema, **extra}


# ---------------------------------------------------------------------- JSON Schema -> strategy


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for ``schema``: the subset pydantic writes (object, array, scalars, anyOf/oneOf, bounds).

    ``oneOf`` is generated as ``anyOf`` (a value may match more than one branch); keywords outside
    the subset are ignored, so a value can occasionally be invalid, which a fuzz suite welcomes.
    """
    if not schema or schema is True:
        return ANY_JSON
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        return st.one_of([from_schema(b) for b in branches])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}) for k in kind])
    if kind == "object":
        props = schema.get("properties") or {}
        required = [n for n in schema.get("required", []) if n in props]
        optional = {n: from_schema(s) for n, s in props.items() if n not in required}
        return st.fixed_dictionaries({n: from_schema(props[n]) for n in required}, optional=optional)
    if kind == "array":
        return st.lists(from_schema(schema.get("items") or {}), min_size=schema.get("minItems", 0),
                        max_size=schema.get("maxItems", 3))  # fmt: skip
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 20))
    if kind == "integer":
        low = schema.get("minimum", schema["exclusiveMinimum"] + 1 if "exclusiveMinimum" in schema else None)
        high = schema.get("maximum", schema["exclusiveMaximum"] - 1 if "exclusiveMaximum" in schema else None)
        edges = [v for v in (low, high) if v is not None]
        ints = st.integers(min_value=low, max_value=high)
        return st.one_of(ints, st.sampled_from(edges)) if edges else ints
    if kind == "number":
        return st.floats(min_value=schema.get("minimum"), max_value=schema.get("maximum"),
                         allow_nan=False, allow_infinity=False)  # fmt: skip
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return ANY_JSON
