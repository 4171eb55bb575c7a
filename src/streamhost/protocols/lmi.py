"""DJL Serving / LMI wire format: the ``{inputs, parameters}`` request and its output formats.

(``serving.properties``, LMI's configuration file, is read by ``streamhost.server.serving_properties``.)

Shapes follow DJL Serving's ``djl_python`` (``input_parser.py``, ``output_formatter.py``,
``request_io.py``): output lines are written like Python's ``json.dumps`` with its default
separators (``", "``, ``": "``) and ``ensure_ascii=False``, as DJL writes them; every line ends in
``\\n`` (the SageMaker LineIterator samples spin forever on a last line without one).

Output formats (``response_format``):

- ``json``: ``{"generated_text": ..., "details"?: {...}}`` (a list for a list of inputs);
- ``jsonlines`` (v0.26+): ``{"token": {"id", "text", "log_prob"}}`` per token, the last line adding
  ``generated_text`` and, with ``details``, ``details: {finish_reason, generated_tokens, inputs}``;
- ``jsonlines-legacy`` (``option.enable_streaming=true``, v0.22-0.25): ``{"outputs": [" tok"]}``;
- ``sse``: the jsonlines object as ``data: {json}\\n\\n`` (a space after the colon).
"""

from __future__ import annotations

import json
from math import isfinite as _isfinite
from typing import Any, NamedTuple, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from streamhost.engine.errors import EngineError, EngineNotReadyError, OverloadedError
from streamhost.engine.types import FinishReason, GenerationParameters, GenerationResult, TokenEvent
from streamhost.protocols.errors import ProtocolError, parse_body
from streamhost.protocols.json_atoms import json_str as _json_str

CONTENT_TYPES = {
    "json": "application/json",
    "jsonlines": "application/jsonlines",
    "jsonlines-legacy": "application/jsonlines",
    "sse": "text/event-stream",
}

# --------------------------------------------------------------------------- requests


class LmiParameters(BaseModel):
    """LMI's common generation parameters; backend-specific extras are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    max_new_tokens: Optional[int] = Field(default=None, ge=1)
    max_length: Optional[int] = Field(default=None, ge=1)
    do_sample: Optional[bool] = None
    temperature: Optional[float] = Field(default=None, ge=0)
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    typical_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    no_repeat_ngram_size: Optional[int] = Field(default=None, ge=0)
    seed: Optional[int] = Field(default=None, ge=0, le=2**64 - 1)
    stop_sequences: Union[str, list[str], None] = None
    stop: Union[str, list[str], None] = None
    details: Optional[bool] = None
    decoder_input_details: Optional[bool] = None
    return_full_text: Optional[bool] = None
    top_n_tokens: Optional[int] = Field(default=None, ge=0)
    num_beams: Optional[int] = Field(default=None, ge=1)
    early_stopping: Optional[bool] = None
    best_of: Optional[int] = Field(default=None, ge=1)
    truncate: Optional[int] = Field(default=None, ge=1)
    ignore_eos_token: Optional[bool] = None


class LmiBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    inputs: Union[str, list[str]]
    parameters: Optional[LmiParameters] = None
    stream: Optional[bool] = None


class LmiRequest(NamedTuple):
    inputs: list[str]
    parameters: GenerationParameters
    stream: bool
    batched: bool  # inputs came as a list: answer with a list


def lmi_error(message: str, status: int = 424) -> ProtocolError:
    """DJL's error body ``{"error": ..., "code": ...}`` (424 for a request the handler rejects)."""
    return ProtocolError(status, message, "validation", body={"error": message, "code": status})


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def parse_request(body: bytes | str | dict) -> LmiRequest:
    """Parse an LMI request; errors are DJL's 424 ``{"error", "code"}``.

    A list of inputs (the dynamic-batch schema) cannot stream. ``top_p``/``typical_p`` of 1.0 and
    ``top_k`` of 0 or -1 mean "off" in LMI and become ``None``; ``temperature`` 0 means greedy.
    """
    try:
        req = parse_body(LmiBody, body)
    except ProtocolError as exc:
        raise lmi_error(f"Invalid request payload: {exc.message}") from None
    inputs = _as_list(req.inputs)
    if not inputs or any(not text for text in inputs):
        raise lmi_error("Invalid request payload. The 'inputs' field does not contain any content.")
    batched = isinstance(req.inputs, list)
    stream = bool(req.stream)
    if batched and stream:
        raise lmi_error("Invalid request payload: streaming is not supported for a list of inputs")
    return LmiRequest(inputs, to_generation_parameters(req.parameters or LmiParameters()), stream, batched)


def to_generation_parameters(p: LmiParameters) -> GenerationParameters:
    greedy = p.temperature == 0
    return GenerationParameters(
        do_sample=False if greedy else bool(p.do_sample),
        temperature=None if greedy else p.temperature,
        top_k=None if p.top_k in (None, 0, -1) else p.top_k,
        top_p=None if p.top_p == 1.0 else p.top_p,
        typical_p=None if p.typical_p == 1.0 else p.typical_p,
        repetition_penalty=p.repetition_penalty,
        frequency_penalty=p.frequency_penalty,
        no_repeat_ngram_size=p.no_repeat_ngram_size,
        seed=p.seed,
        max_new_tokens=p.max_new_tokens,
        max_length=p.max_length,
        stop=_as_list(p.stop_sequences) + _as_list(p.stop),
        ignore_eos=bool(p.ignore_eos_token),
        return_full_text=bool(p.return_full_text),
        truncate=p.truncate,
        details=bool(p.details),
        decoder_input_details=bool(p.decoder_input_details),
        top_n_tokens=p.top_n_tokens or None,
        best_of=p.best_of,
        num_beams=p.num_beams,
        early_stopping=p.early_stopping,
    )


def engine_error(err: EngineError) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` before a stream starts: 424 for bad requests and failures, 503 when busy or loading."""
    status = 503 if isinstance(err, (OverloadedError, EngineNotReadyError)) else 424
    return status, {"error": str(err), "code": status}


# --------------------------------------------------------------------------- output


def _float(value: float | None) -> str:
    """A float as ``json.dumps`` writes it, but ``null`` where it would write invalid ``NaN``/``Infinity``."""
    if value is None or not _isfinite(value):
        return "null"
    return repr(float(value))


def finish_reason_str(reason: FinishReason) -> str:
    return reason.value if isinstance(reason, FinishReason) else str(reason)


def _token_obj(ev: TokenEvent) -> str:
    special = ', "special_token": true' if ev.special else ""
    return '{"id": %d, "text": %s, "log_prob": %s%s}' % (ev.token_id, _json_str(ev.text), _float(ev.logprob), special)


def _token_dict(ev: TokenEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"id": ev.token_id, "text": ev.text, "log_prob": _none_if_bad(ev.logprob)}
    if ev.special:
        out["special_token"] = True
    return out


def _none_if_bad(value: float | None) -> float | None:
    return None if _float(value) == "null" else value


def jsonlines_token(ev: TokenEvent, *, details: bool = False, inputs: str = "", prefix: str = "") -> bytes:
    """One ``application/jsonlines`` line (v0.26+), byte-exact with DJL's formatter::

        {"token": {"id": 5, "text": " tok", "log_prob": -0.5}}\\n

    The final event adds ``"generated_text"`` (``prefix`` + text; the prompt when
    return_full_text) and, with ``details``, ``{"finish_reason", "generated_tokens", "inputs"}``.
    """
    d = ev.details
    if d is None:
        return ('{"token": %s}\n' % _token_obj(ev)).encode("utf-8", "replace")
    tail = ""
    if details:
        tail = ', "details": {"finish_reason": "%s", "generated_tokens": %d, "inputs": %s}' % (
            finish_reason_str(d.finish_reason),
            d.generated_tokens,
            _json_str(inputs),
        )
    text = _json_str(prefix + (ev.generated_text or ""))
    return ('{"token": %s, "generated_text": %s%s}\n' % (_token_obj(ev), text, tail)).encode("utf-8", "replace")


def jsonlines_error(
    message: str, *, generated_text: str = "", details: bool = False, generated_tokens: int = 0, inputs: str = ""
) -> bytes:
    """The last line of a stream that failed: DJL's error token and ``finish_reason: error``."""
    if details:
        det = '{"finish_reason": "error", "generated_tokens": %d, "inputs": %s}' % (generated_tokens, _json_str(inputs))
    else:
        det = '{"finish_reason": "error"}'
    line = (
        '{"token": {"id": -1, "text": "", "log_prob": -1, "special_token": true, "error_msg": %s}, "generated_text": %s, "details": %s}\n'
        % (
            _json_str(message),
            _json_str(generated_text),
            det,
        )
    )
    return line.encode("utf-8", "replace")


def legacy_line(ev: TokenEvent) -> bytes:
    """``{"outputs": [" tok"]}\\n`` for the pre-0.26 stream; nothing for special or held-back tokens."""
    if ev.special or not ev.text:
        return b""
    return ('{"outputs": [%s]}\n' % _json_str(ev.text)).encode("utf-8", "replace")


def legacy_error(message: str) -> bytes:
    return ('{"error": %s, "code": 424}\n' % _json_str(message)).encode("utf-8", "replace")


def sse_wrap(line: bytes) -> bytes:
    """DJL's sse formatter: ``data: `` + the jsonlines line + ``\\n``."""
    return b"data: " + line + b"\n" if line else b""


class LmiStream:
    """Frames one request's TokenEvents in the chosen streaming format, keeping what an error line needs."""

    def __init__(self, fmt: str, params: GenerationParameters, inputs: str) -> None:
        if fmt not in ("jsonlines", "jsonlines-legacy", "sse"):
            raise ValueError(f"not a streaming LMI format: {fmt!r}")
        self.format = fmt
        self.content_type = CONTENT_TYPES[fmt]
        self._details = params.details
        self._inputs = inputs
        self._prefix = inputs if params.return_full_text else ""
        self._texts: list[str] = []

    def event(self, ev: TokenEvent) -> bytes:
        if not ev.special:
            self._texts.append(ev.text)
        if self.format == "jsonlines-legacy":
            return legacy_line(ev)
        line = jsonlines_token(ev, details=self._details, inputs=self._inputs, prefix=self._prefix)
        return sse_wrap(line) if self.format == "sse" else line

    def error(self, err: EngineError | str) -> bytes:
        message = str(err)
        if self.format == "jsonlines-legacy":
            return legacy_error(message)
        line = jsonlines_error(
            message,
            generated_text=self._prefix + "".join(self._texts),
            details=self._details,
            generated_tokens=len(self._texts) + 1,
            inputs=self._inputs,
        )
        return sse_wrap(line) if self.format == "sse" else line


def json_response(result: GenerationResult, params: GenerationParameters, inputs: str) -> dict[str, Any]:
    """The non-streaming body ``{"generated_text", "details"?}`` (DJL's key order)."""
    text = (inputs if params.return_full_text else "") + result.generated_text
    out: dict[str, Any] = {"generated_text": text}
    if params.details or params.decoder_input_details:
        d = result.details
        details: dict[str, Any] = {
            "finish_reason": finish_reason_str(d.finish_reason),
            "generated_tokens": d.generated_tokens,
            "inputs": inputs,
            "tokens": [_token_dict(t) for t in result.tokens],
        }
        if params.decoder_input_details:
            details["prefill"] = [{"id": p.id, "text": p.text, "log_prob": _none_if_bad(p.logprob)} for p in d.prefill]
        if params.top_n_tokens:
            details["top_tokens"] = [
                [{"id": x.id, "text": x.text, "log_prob": _none_if_bad(x.logprob)} for x in (t.top_tokens or [])]
                for t in result.tokens
            ]
        out["details"] = details
    return out


def json_batch_response(texts: list[str]) -> list[dict[str, str]]:
    """The dynamic-batch answer to a list of inputs: ``[{"generated_text": ...}, ...]``."""
    return [{"generated_text": text} for text in texts]


def dumps(obj: Any) -> bytes:
    """Serialise a response body the way DJL does (default separators, UTF-8 unescaped)."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "replace")
