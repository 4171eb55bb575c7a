"""Filter expressions for the model catalog: ``task == llm and not eula_required == true``.

Grammar (keywords and field names are case-insensitive; no ``eval``)::

    expr       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := FIELD ("==" | "!=") VALUE
    VALUE      := bare word (letters, digits, - _ . / : + @) | "double" or 'single' quoted string

Values compare case-insensitively as text; ``true``/``false`` match booleans and ``none``/``null``
match a missing value. A syntax error names the position: ``FilterSyntaxError`` carries it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "Comparison",
    "Filter",
    "FilterError",
    "FilterSyntaxError",
    "parse_filter",
]


class FilterError(ValueError):
    """A filter cannot be used: bad syntax or a field the records do not have."""


class FilterSyntaxError(FilterError):
    """The expression does not parse; ``position`` is the 0-based character offset."""

    def __init__(self, message: str, expression: str, position: int) -> None:
        pointer = f"\n  {expression}\n  {' ' * position}^"
        super().__init__(f"{message} at position {position}{pointer}")
        self.reason = message
        self.expression = expression
        self.position = position


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<op>==|!=)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<quoted>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<word>[A-Za-z0-9_\-./:+@]+)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not"}
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class _Token:
    kind: str  # op, lparen, rparen, value, keyword, end
    text: str
    position: int
    quoted: bool = False


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def _tokenize(expression: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:
            char = expression[position]
            if char in "\"'":
                raise FilterSyntaxError("unterminated quoted value", expression, position)
            if char == "=":
                raise FilterSyntaxError("unexpected '=' (use '==' to compare)", expression, position)
            raise FilterSyntaxError(f"unexpected character {char!r}", expression, position)
        kind = match.lastgroup
        text = match.group()
        if kind == "quoted":
            tokens.append(_Token("value", _unquote(text), position, quoted=True))
        elif kind == "word":
            lowered = text.lower()
            tokens.append(_Token("keyword" if lowered in _KEYWORDS else "value", text, position))
        elif kind != "space":
            tokens.append(_Token(kind or "", text, position))
        position = match.end()
    tokens.append(_Token("end", "", len(expression)))
    return tokens


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str  # "==" or "!="
    value: str

    def evaluate(self, record: Mapping[str, Any]) -> bool:
        equal = _matches(_lookup(record, self.field), self.value)
        return equal if self.op == "==" else not equal


@dataclass(frozen=True)
class _Not:
    operand: Node

    def evaluate(self, record: Mapping[str, Any]) -> bool:
        return not self.operand.evaluate(record)


@dataclass(frozen=True)
class _And:
    operands: tuple[Node, ...]

    def evaluate(self, record: Mapping[str, Any]) -> bool:
        return all(o.evaluate(record) for o in self.operands)


@dataclass(frozen=True)
class _Or:
    operands: tuple[Node, ...]

    def evaluate(self, record: Mapping[str, Any]) -> bool:
        return any(o.evaluate(record) for o in self.operands)


Node = Union[Comparison, _Not, _And, _Or]

_MISSING = object()


def _lookup(record: Mapping[str, Any], field: str) -> Any:
    """A field by name, case-insensitively; dots reach into nested mappings (default_env.SM_NUM_GPUS)."""
    value: Any = record
    for part in field.split("."):
        if not isinstance(value, Mapping):
            return _MISSING
        if part in value:
            value = value[part]
            continue
        folded = {str(k).lower(): k for k in value}
        key = folded.get(part.lower(), _MISSING)
        if key is _MISSING:
            return _MISSING
        value = value[key]
    return value


def _matches(actual: Any, expected: str) -> bool:
    wanted = expected.lower()
    if actual is _MISSING or actual is None:
        return wanted in ("none", "null", "")
    if isinstance(actual, bool):
        return wanted == ("true" if actual else "false")
    if isinstance(actual, (list, tuple, set, frozenset)):  # a list field matches any member
        return any(_matches(item, expected) for item in actual)
    return str(actual).lower() == wanted


class _Parser:
    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tokens = _tokenize(expression)
        self.index = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def is_keyword(self, word: str) -> bool:
        token = self.peek()
        return token.kind == "keyword" and token.text.lower() == word

    def fail(self, message: str, token: _Token | None = None) -> FilterSyntaxError:
        token = token or self.peek()
        found = "end of expression" if token.kind == "end" else repr(token.text)
        return FilterSyntaxError(f"{message}, found {found}", self.expression, token.position)

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise FilterSyntaxError("empty filter expression", self.expression, 0)
        node = self.parse_or()
        if self.peek().kind != "end":
            raise self.fail("expected 'and', 'or' or the end of the expression")
        return node

    def parse_or(self) -> Node:
        operands = [self.parse_and()]
        while self.is_keyword("or"):
            self.take()
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else _Or(tuple(operands))

    def parse_and(self) -> Node:
        operands = [self.parse_not()]
        while self.is_keyword("and"):
            self.take()
            operands.append(self.parse_not())
        return operands[0] if len(operands) == 1 else _And(tuple(operands))

    def parse_not(self) -> Node:
        if self.is_keyword("not"):
            self.take()
            return _Not(self.parse_not())
        token = self.peek()
        if token.kind == "lparen":
            self.take()
            node = self.parse_or()
            if self.peek().kind != "rparen":
                raise self.fail(f"expected ')' to close the '(' at position {token.position}")
            self.take()
            return node
        return self.parse_comparison()

    def parse_comparison(self) -> Comparison:
        field = self.peek()
        if field.kind != "value" or field.quoted or not _FIELD.match(field.text):
            raise self.fail("expected a field name such as 'task'")
        self.take()
        op = self.peek()
        if op.kind != "op":
            raise self.fail(f"expected '==' or '!=' after {field.text!r}")
        self.take()
        value = self.peek()
        if value.kind == "keyword" and not value.quoted:
            raise self.fail(f"expected a value after '{op.text}' (quote it if it is the word {value.text!r})")
        if value.kind != "value":
            raise self.fail(f"expected a value after '{op.text}'")
        self.take()
        return Comparison(field.text, op.text, value.text)


class Filter:
    """A parsed filter expression; ``matches(record)`` evaluates it against a mapping."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._root = _Parser(expression).parse()

    def __repr__(self) -> str:
        return f"Filter({self.expression!r})"

    @property
    def fields(self) -> set[str]:
        """Every field name the expression compares, as written."""
        found: set[str] = set()

        def walk(node: Node) -> None:
            if isinstance(node, Comparison):
                found.add(node.field)
            elif isinstance(node, _Not):
                walk(node.operand)
            else:
                for operand in node.operands:
                    walk(operand)

        walk(self._root)
        return found

    def check_fields(self, known: Iterable[str]) -> None:
        """Raise FilterError for a field outside ``known`` (top-level names), listing the valid ones."""
        known = list(known)
        known_folded = {name.lower() for name in known}
        for field in sorted(self.fields):
            if field.split(".")[0].lower() not in known_folded:
                names = ", ".join(sorted(known))
                raise FilterError(f"unknown field {field!r} in filter; known fields: {names}")

    def matches(self, record: Mapping[str, Any]) -> bool:
        return self._root.evaluate(record)


def parse_filter(expression: str | Filter) -> Filter:
    """Parse ``expression`` (a Filter passes through), raising FilterSyntaxError on bad syntax."""
    if isinstance(expression, Filter):
        return expression
    if not isinstance(expression, str):
        raise FilterError(f"a filter must be a string, got {type(expression).__name__}")
    return Filter(expression)
