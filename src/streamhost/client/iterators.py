"""Turn a streamed response body into lines, events and text, whatever the split of its bytes.

A streaming invocation reaches the client as arbitrary byte chunks: boto3's
``invoke_endpoint_with_response_stream`` yields ``{'PayloadPart': {'Bytes': b'...'}}`` events, and
an HTTP client yields raw chunks. A chunk boundary may fall anywhere, inside a JSON object or
inside a multi-byte UTF-8 character, so everything here works on bytes until a line is complete.

- ``LineIterator`` yields complete lines (bytes, without the ``\\n``), including a last line that
  lacks its newline.
- ``iter_events`` yields the JSON object of each line, understanding TGI and OpenAI SSE with or
  without a space after the colon (``data: {..}`` as TGI 2.1+, vLLM and OpenAI write it,
  ``data:{..}`` as older TGI images did), LMI jsonlines (old ``{"outputs": [..]}`` and new
  ``{"token": {..}}``), LMI SSE (``data: {..}``) and OpenAI chat/completion chunks; it skips blank
  lines, SSE comments and fields, and ``[DONE]`` in either form.
- ``TokenIterator`` yields the generated text pieces (``str``) only.

An error event inside the stream (TGI ``{"error": ..}``, OpenAI ``{"error": {"message": ..}}``,
an LMI line whose ``finish_reason`` is ``"error"``) raises ``StreamError``. An exception event of
the event-stream protocol itself (``ModelStreamError``, ``InternalStreamFailure``) is raised by
botocore as ``botocore.exceptions.EventStreamError`` while iterating the body; it propagates
unchanged through these iterators, after every complete line that preceded it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["LineIterator", "StreamError", "TokenIterator", "iter_events", "event_texts"]

_SSE_FIELDS = (b"event:", b"id:", b"retry:")


class StreamError(Exception):
    """The model reported an error inside the stream; ``event`` holds the offending object."""

    def __init__(self, message: str, event: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.event = dict(event) if event is not None else None
        self.error_type: str | None = _error_type(event) if event is not None else None


def _chunks(stream: Any) -> Iterator[bytes]:
    """Raw bytes from a boto3 event stream, a boto3 response dict, or an iterable of bytes."""
    if isinstance(stream, Mapping) and "Body" in stream:
        stream = stream["Body"]
    if isinstance(stream, (bytes, bytearray, memoryview)):
        yield bytes(stream)
        return
    for item in stream:
        if isinstance(item, (bytes, bytearray, memoryview)):
            yield bytes(item)
        elif isinstance(item, str):
            yield item.encode("utf-8")
        elif isinstance(item, Mapping):
            part = item.get("PayloadPart")
            if part is not None:
                yield bytes(part.get("Bytes", b""))
                continue
            # Any other event type is an error shape that was not raised by botocore.
            name, body = next(iter(item.items()), ("UnknownEvent", {}))
            message = body.get("Message") if isinstance(body, Mapping) else None
            raise StreamError(f"{name}: {message or body}", {"error": message or str(body), "error_type": name})
        else:
            raise TypeError(
                "expected bytes chunks or boto3 events like {'PayloadPart': {'Bytes': b'...'}}, "
                f"got {type(item).__name__}"
            )


class LineIterator:
    """Complete lines (bytes, without the trailing ``\\n``) from a stream split anywhere.

    Blank lines are yielded too (SSE uses them between events). The last line is yielded even
    when the stream ends without a newline, so nothing is lost and nothing spins at the end.
    """

    def __init__(self, event_stream: Any) -> None:
        self._stream = event_stream
        self._lines = self._generate()

    def __iter__(self) -> LineIterator:
        return self

    def __next__(self) -> bytes:
        return next(self._lines)

    def close(self) -> None:
        """Stop early and close the underlying stream (frees the HTTP connection)."""
        self._lines.close()
        body = self._stream["Body"] if isinstance(self._stream, Mapping) and "Body" in self._stream else self._stream
        close = getattr(body, "close", None)
        if callable(close):
            close()

    def _generate(self) -> Iterator[bytes]:
        buffer = bytearray()
        for chunk in _chunks(self._stream):
            if not chunk:
                continue
            scan_from = len(buffer)
            buffer += chunk
            start = 0
            while (end := buffer.find(b"\n", scan_from)) != -1:
                yield bytes(buffer[start:end])
                start = scan_from = end + 1
            if start:
                del buffer[:start]
        if buffer:
            yield bytes(buffer)


def _error_type(event: Mapping[str, Any]) -> str | None:
    error = event.get("error")
    if isinstance(error, Mapping):
        value = error.get("type") or error.get("code")
        return str(value) if value is not None else None
    value = event.get("error_type")
    return str(value) if value is not None else None


def _error_message(event: Mapping[str, Any]) -> str | None:
    """The error an event carries, or None for an ordinary event."""
    error = event.get("error")
    if isinstance(error, Mapping):  # OpenAI / vLLM: {"error": {"message": .., "type": ..}}
        return str(error.get("message") or error)
    if error:  # TGI: {"error": "...", "error_type": "..."}; LMI: {"error": .., "code": ..}
        return str(error)
    details = event.get("details")
    reasons = [event.get("finish_reason")]
    if isinstance(details, Mapping):
        reasons.append(details.get("finish_reason"))
    for choice in event.get("choices") or ():
        if isinstance(choice, Mapping):
            reasons.append(choice.get("finish_reason"))
    if "error" in reasons:  # LMI: the final line of a failed generation
        message = event.get("message") or event.get("error_msg")
        return str(message) if message else "the model stopped with finish_reason 'error'"
    return None


def _parse_line(line: bytes) -> dict[str, Any] | None:
    """One line as a JSON object, or None for lines that carry no event."""
    line = line.rstrip(b"\r")
    stripped = line.strip()
    if not stripped or stripped.startswith(b":"):  # blank separator or SSE comment
        return None
    if stripped.startswith(b"data:"):
        stripped = stripped[5:].strip()
        if not stripped or stripped == b"[DONE]":
            return None
    elif stripped.startswith(_SSE_FIELDS):
        return None
    try:
        event = json.loads(stripped.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StreamError(f"stream line is not valid UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise StreamError(f"stream line is not JSON ({exc.msg}): {_excerpt(stripped)}") from None
    if not isinstance(event, dict):
        raise StreamError(f"stream line is not a JSON object: {_excerpt(stripped)}")
    return event


def _excerpt(data: bytes, limit: int = 120) -> str:
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."


def iter_events(event_stream: Any, raise_on_error: bool = True) -> Iterator[dict[str, Any]]:
    """Each event of the stream as a parsed JSON object (TGI, LMI, OpenAI formats alike).

    With ``raise_on_error`` (the default) an error event raises ``StreamError`` instead of being
    yielded; set it to False to receive error events as ordinary dicts.
    """
    for line in LineIterator(event_stream):
        event = _parse_line(line)
        if event is None:
            continue
        if raise_on_error:
            message = _error_message(event)
            if message is not None:
                raise StreamError(message, event)
        yield event


def event_texts(event: Mapping[str, Any]) -> list[str]:
    """The generated text pieces one event carries (empty for bookkeeping events)."""
    token = event.get("token")
    if isinstance(token, Mapping):  # TGI SSE and LMI jsonlines (new)
        if token.get("special") or token.get("special_token"):
            return []
        text = token.get("text")
        return [text] if isinstance(text, str) and text else []
    outputs = event.get("outputs")
    if isinstance(outputs, list):  # LMI jsonlines (old)
        return [piece for piece in outputs if isinstance(piece, str) and piece]
    choices = event.get("choices")
    if isinstance(choices, list):  # OpenAI chat and completion chunks; first choice only
        for choice in choices:
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, Mapping) else choice.get("text")
            return [text] if isinstance(text, str) and text else []
    return []


class TokenIterator:
    """Generated text pieces (``str``) from a streamed response in any supported format.

    Special tokens (TGI's EOS ``</s>`` with ``special: true``) are skipped, and the final event's
    ``generated_text`` is not repeated: joining the pieces gives the answer exactly once.
    """

    def __init__(self, event_stream: Any) -> None:
        self._stream = event_stream
        self._texts = self._generate()

    def __iter__(self) -> TokenIterator:
        return self

    def __next__(self) -> str:
        return next(self._texts)

    def _generate(self) -> Iterator[str]:
        for event in iter_events(self._stream):
            yield from event_texts(event)
