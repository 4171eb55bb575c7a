"""Hugging Face TGI's HTTP API: request parsing and byte-exact response framing.

Shapes follow TGI's router (``router/src/lib.rs``, ``server.rs``, ``validation.rs``): the
``{inputs, parameters, stream}`` request, the ``data: <compact JSON>\\n\\n`` stream events (with the
space current TGI, vLLM and OpenAI write; TGI before 2.1 wrote none, and strict clients such as
huggingface_hub compare ``data: [DONE]`` byte for byte), the ``{"error", "error_type"}`` error body
and its status codes. JSON is written the way serde_json
writes it (compact, UTF-8 unescaped, f32 logprobs in shortest form) so that clients which parse
bytes by hand, such as the SageMaker TokenIterator samples, see what they would see from TGI.

Per-token builders format strings directly instead of going through pydantic or a dict.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from pydantic import BaseModel, ConfigDict, Field

from streamhost.engine.errors import (
    EngineError,
    EngineNotReadyError,
    OverloadedError,
    ValidationError,
)
from streamhost.engine.types import (
    FinishReason,
    GenerationParameters,
    GenerationResult,
    TokenEvent,
    TopToken,
)
from streamhost.protocols.errors import ProtocolError, parse_body
from streamhost.protocols.json_atoms import I32_MAX, U32_MAX, U64_MAX, f32_json, f32_value
from streamhost.protocols.json_atoms import json_str as _json_str

PAYLOAD_LIMIT = 2_000_000
SSE_CONTENT_TYPE = "text/event-stream"


def _token_json(token_id: int, text: str, logprob: float | None, special: bool) -> str:
    return '{"id":%d,"text":%s,"logprob":%s,"special":%s}' % (
        token_id,
        _json_str(text),
        f32_json(logprob),
        "true" if special else "false",
    )


# --------------------------------------------------------------------------- requests


class TgiParameters(BaseModel):
    """TGI's ``parameters`` object (plus the JumpStart/LMI extras). Unknown keys are ignored, as serde does."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    best_of: Optional[int] = Field(default=None, ge=0)
    temperature: Optional[float] = None
    repetition_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    top_k: Optional[int] = Field(default=None, ge=-(2**31), le=I32_MAX)
    top_p: Optional[float] = None
    typical_p: Optional[float] = None
    do_sample: Optional[bool] = None
    max_new_tokens: Optional[int] = Field(default=None, ge=0, le=U32_MAX)
    return_full_text: Optional[bool] = None
    stop: Optional[list[str]] = None
    truncate: Optional[int] = Field(default=None, ge=0)
    watermark: Optional[bool] = None
    details: Optional[bool] = None
    decoder_input_details: Optional[bool] = None
    seed: Optional[int] = Field(default=None, ge=0, le=U64_MAX)
    top_n_tokens: Optional[int] = Field(default=None, ge=0, le=U32_MAX)
    grammar: Optional[Any] = None
    adapter_id: Optional[str] = None
    # JumpStart / LMI payloads send these to TGI containers too.
    max_length: Optional[int] = Field(default=None, ge=0, le=U32_MAX)
    num_beams: Optional[int] = Field(default=None, ge=0)
    no_repeat_ngram_size: Optional[int] = Field(default=None, ge=0)
    early_stopping: Optional[bool] = None
    # vLLM's name, also understood by LMI: keep generating past EOS (benchmarks want fixed lengths).
    ignore_eos: Optional[bool] = None


class TgiGenerateBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    inputs: str
    parameters: Optional[TgiParameters] = None
    stream: Optional[bool] = None


class GenerateRequest(NamedTuple):
    inputs: str
    parameters: GenerationParameters
    stream: bool


def validation_error(message: str) -> ProtocolError:
    """TGI's 422: ``{"error": "Input validation error: <message>", "error_type": "validation"}``."""
    return ProtocolError(422, f"Input validation error: {message}", "validation")


def check_json_content_type(content_type: str | None) -> None:
    """415 unless the request says ``application/json`` (or ``+json``), as axum's Json extractor does."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json")):
        return
    raise ProtocolError(415, "Expected request with `Content-Type: application/json`", "validation")


def invocation_kind(body: Any) -> str:
    """Which API a SageMaker ``/invocations`` body is for: ``generate``, ``chat`` or ``completion``.

    TGI decides by shape (an untagged enum tried in that order): ``inputs``, ``messages``, ``prompt``.
    """
    if isinstance(body, dict):
        if "inputs" in body:
            return "generate"
        if "messages" in body:
            return "chat"
        if "prompt" in body:
            return "completion"
    raise ProtocolError(
        422,
        "Failed to deserialize the JSON body into the target type: "
        "data did not match any variant of untagged enum SagemakerRequest",
        "validation",
    )


def parse_generate_request(
    body: bytes | str | dict,
    *,
    stream: bool | None = None,
    default_return_full_text: bool = False,
) -> GenerateRequest:
    """Parse a generate request into engine parameters.

    ``stream=None`` takes ``stream`` from the body (POST ``/`` and ``/invocations``); the
    ``/generate`` and ``/generate_stream`` routes pass False/True. ``default_return_full_text`` is
    TGI's compat default: true on ``/`` and ``/invocations`` for a text-generation model, false on
    ``/generate``. Like TGI, a body without ``parameters`` samples (``do_sample`` true).
    Raises ``ProtocolError`` 400 (bad JSON) or 422 (wrong shape, unsupported feature); the
    engine validates values and limits.
    """
    req = parse_body(TgiGenerateBody, body)
    is_stream = bool(req.stream) if stream is None else stream
    raw = req.parameters
    sampling_default = raw is None  # TGI's default_parameters() has do_sample: true
    if raw is None:
        raw = TgiParameters()
    reject_unsupported(req.inputs, raw)
    params = to_generation_parameters(raw, sampling_default=sampling_default)
    if raw.return_full_text is None:
        params.return_full_text = default_return_full_text
    return GenerateRequest(req.inputs, params, is_stream)


def reject_unsupported(inputs: str, p: TgiParameters) -> None:
    """What the engine cannot represent, refused up front with TGI-style 422s.

    The numeric rules (temperature > 0, top_p in (0, 1), stop count, token budget, ...) are the
    engine's (``engine/validation.py``, TGI's order and messages, after the 429 check); the TGI
    layer adds the ``Input validation error: `` prefix in :func:`engine_error`. Empty ``inputs``
    is checked here on the string, as TGI does, because a BOS token would hide it from the engine.
    """
    if not inputs:
        raise validation_error("`inputs` cannot be empty")
    if p.grammar is not None:
        raise validation_error("grammar is not supported")
    if p.watermark:
        raise validation_error("`watermark` is not supported by this server")
    if p.adapter_id is not None:
        raise validation_error(f"adapter `{p.adapter_id}` is not available: this server serves no LoRA adapters")


def to_generation_parameters(p: TgiParameters, *, sampling_default: bool = False) -> GenerationParameters:
    """Map validated TGI parameters onto the engine's (``return_full_text`` left to the caller)."""
    return GenerationParameters(
        do_sample=sampling_default if p.do_sample is None else p.do_sample,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        typical_p=p.typical_p,
        repetition_penalty=p.repetition_penalty,
        frequency_penalty=p.frequency_penalty,
        no_repeat_ngram_size=p.no_repeat_ngram_size,
        seed=p.seed,
        max_new_tokens=p.max_new_tokens,
        max_length=p.max_length,
        stop=list(p.stop or []),
        return_full_text=bool(p.return_full_text),
        truncate=p.truncate,
        details=bool(p.details),
        decoder_input_details=bool(p.decoder_input_details),
        top_n_tokens=p.top_n_tokens or None,
        best_of=p.best_of,
        num_beams=p.num_beams,
        early_stopping=p.early_stopping,
        ignore_eos=bool(p.ignore_eos),
    )


# --------------------------------------------------------------------------- errors


def error_body(message: str, error_type: str) -> dict[str, str]:
    return {"error": message, "error_type": error_type}


def engine_error(err: EngineError) -> tuple[int, dict[str, str]]:
    """``(status, body)`` for an engine error before the stream starts, with TGI's wording.

    422 validation, 429 overloaded, 424 generation, 503 not ready.
    """
    text = str(err)
    if isinstance(err, ValidationError):
        return 422, error_body(_prefixed("Input validation error: ", text), "validation")
    if isinstance(err, OverloadedError):
        return 429, error_body(text or "Model is overloaded", "overloaded")
    if isinstance(err, EngineNotReadyError):
        return 503, error_body(text or "unhealthy", "healthcheck")
    # GenerationError and any other EngineError
    return 424, error_body(_prefixed("Request failed during generation: ", text), "generation")


def _prefixed(prefix: str, text: str) -> str:
    return text if text.startswith(prefix) else prefix + text


def unhealthy_body() -> dict[str, str]:
    """GET /health while the model is not ready (503)."""
    return error_body("unhealthy", "healthcheck")


def payload_too_large(size: int, limit: int = PAYLOAD_LIMIT) -> ProtocolError:
    """413 for a body over PAYLOAD_LIMIT, saying both numbers."""
    return ProtocolError(
        413,
        f"Request body is {size} bytes; the limit is {limit} bytes (PAYLOAD_LIMIT)",
        "payload_too_large",
    )


def overloaded() -> ProtocolError:
    """429 past MAX_CONCURRENT_REQUESTS (TGI checks this before validation)."""
    return ProtocolError(429, "Model is overloaded", "overloaded")


# --------------------------------------------------------------------------- streaming


def finish_reason_str(reason: FinishReason) -> str:
    """TGI's spelling: ``length`` | ``eos_token`` | ``stop_sequence``."""
    return reason.value if isinstance(reason, FinishReason) else str(reason)


def _top_tokens_json(tops: list[TopToken]) -> str:
    return "[" + ",".join(_token_json(t.id, t.text, t.logprob, t.special) for t in tops) + "]"


def sse_token_event(ev: TokenEvent, details: bool, *, index: int | None = None, prefix: str = "") -> bytes:
    """One ``/generate_stream`` event, byte-exact with TGI::

        data: {"index":1,"token":{"id":..,"text":..,"logprob":..,"special":false},"generated_text":null,"details":null}\\n\\n

    ``index`` is TGI's 1-based position (default ``ev.index + 1``). ``top_tokens`` appears only when
    the event has some. On the final event ``generated_text`` is ``prefix`` (the prompt, when
    return_full_text) + the text, and ``details`` is ``{finish_reason, generated_tokens, seed,
    input_length}`` when requested, else null.
    """
    position = ev.index + 1 if index is None else index
    token = _token_json(ev.token_id, ev.text, ev.logprob, ev.special)
    tops = ',"top_tokens":' + _top_tokens_json(ev.top_tokens) if ev.top_tokens else ""
    if ev.details is None:
        return b'data: {"index":%d,"token":%s%s,"generated_text":null,"details":null}\n\n' % (
            position,
            token.encode("utf-8", "replace"),
            tops.encode("utf-8", "replace"),
        )
    text = _json_str(prefix + (ev.generated_text or ""))
    det = _stream_details_json(ev) if details else "null"
    line = 'data: {"index":%d,"token":%s%s,"generated_text":%s,"details":%s}\n\n' % (position, token, tops, text, det)
    return line.encode("utf-8", "replace")


def _stream_details_json(ev: TokenEvent) -> str:
    d = ev.details
    assert d is not None
    return '{"finish_reason":"%s","generated_tokens":%d,"seed":%s,"input_length":%d}' % (
        finish_reason_str(d.finish_reason),
        d.generated_tokens,
        "null" if d.seed is None else "%d" % d.seed,
        d.input_length,
    )


def sse_error(message: str, error_type: str) -> bytes:
    """The event TGI sends when generation fails after the stream started; the stream then ends."""
    return ('data: {"error":%s,"error_type":%s}\n\n' % (_json_str(message), _json_str(error_type))).encode(
        "utf-8", "replace"
    )


def sse_engine_error(err: EngineError) -> bytes:
    """``sse_error`` with the wording ``engine_error`` would use."""
    _, body = engine_error(err)
    return sse_error(body["error"], body["error_type"])


class TgiStream:
    """Frames one request's TokenEvents as TGI SSE, counting ``index`` itself (1, 2, ...)."""

    __slots__ = ("_details", "_prefix", "_count")

    def __init__(self, params: GenerationParameters, inputs: str) -> None:
        self._details = params.details
        self._prefix = inputs if params.return_full_text else ""
        self._count = 0

    def event(self, ev: TokenEvent) -> bytes:
        self._count += 1
        return sse_token_event(ev, self._details, index=self._count, prefix=self._prefix)

    def error(self, err: EngineError) -> bytes:
        return sse_engine_error(err)


def stream_headers(compute_type: str, compute_characters: int) -> dict[str, str]:
    """Headers on a TGI SSE response (``X-Accel-Buffering: no`` keeps proxies from buffering)."""
    return {
        "Content-Type": SSE_CONTENT_TYPE,
        "x-compute-type": compute_type,
        "x-compute-characters": str(compute_characters),
        "X-Accel-Buffering": "no",
    }


# --------------------------------------------------------------------------- non-streaming


def _token_dict(t: TokenEvent | TopToken) -> dict[str, Any]:
    token_id = t.token_id if isinstance(t, TokenEvent) else t.id
    return {"id": token_id, "text": t.text, "logprob": f32_value(t.logprob), "special": t.special}


def generate_response(result: GenerationResult, params: GenerationParameters, inputs: str) -> dict[str, Any]:
    """``/generate``'s body: ``{"generated_text", "details"?}`` (POST ``/`` wraps it in a list).

    ``details`` (when ``details`` or ``decoder_input_details``) holds finish_reason,
    generated_tokens, seed, prefill, tokens and, when asked for, top_tokens.
    """
    text = (inputs if params.return_full_text else "") + result.generated_text
    out: dict[str, Any] = {"generated_text": text}
    if params.details or params.decoder_input_details:
        d = result.details
        details: dict[str, Any] = {
            "finish_reason": finish_reason_str(d.finish_reason),
            "generated_tokens": d.generated_tokens,
            "seed": d.seed,
            "prefill": [{"id": p.id, "text": p.text, "logprob": f32_value(p.logprob)} for p in d.prefill],
            "tokens": [_token_dict(t) for t in result.tokens],
        }
        if params.top_n_tokens:
            details["top_tokens"] = [[_token_dict(x) for x in (t.top_tokens or [])] for t in result.tokens]
        out["details"] = details
    return out


def timing_headers(
    *,
    compute_type: str,
    compute_characters: int,
    total_time: float,
    validation_time: float,
    queue_time: float,
    inference_time: float,
    prompt_tokens: int,
    generated_tokens: int,
) -> dict[str, str]:
    """TGI's response headers for ``/generate``; times in seconds in, milliseconds out (floored)."""
    per_token = inference_time / generated_tokens if generated_tokens else 0.0
    ms = lambda seconds: str(max(0, int(seconds * 1000)))  # noqa: E731
    return {
        "x-compute-type": compute_type,
        "x-compute-time": repr(float(total_time)),
        "x-compute-characters": str(compute_characters),
        "x-total-time": ms(total_time),
        "x-validation-time": ms(validation_time),
        "x-queue-time": ms(queue_time),
        "x-inference-time": ms(inference_time),
        "x-time-per-token": ms(per_token),
        "x-prompt-tokens": str(prompt_tokens),
        "x-generated-tokens": str(generated_tokens),
    }


def info_response(
    *,
    model_id: str,
    model_sha: str | None = None,
    model_dtype: str = "torch.float32",
    model_device_type: str = "cpu",
    model_pipeline_tag: str | None = "text-generation",
    max_concurrent_requests: int = 128,
    max_best_of: int = 2,
    max_stop_sequences: int = 4,
    max_input_tokens: int,
    max_total_tokens: int,
    validation_workers: int = 2,
    max_client_batch_size: int = 4,
    router: str = "text-generation-router",
    version: str,
    sha: str | None = None,
    docker_label: str | None = None,
) -> dict[str, Any]:
    """GET ``/info`` with TGI's field order (``model_dtype``/``model_device_type`` from TGI 1.x–2.0)."""
    return {
        "model_id": model_id,
        "model_sha": model_sha,
        "model_dtype": model_dtype,
        "model_device_type": model_device_type,
        "model_pipeline_tag": model_pipeline_tag,
        "max_concurrent_requests": max_concurrent_requests,
        "max_best_of": max_best_of,
        "max_stop_sequences": max_stop_sequences,
        "max_input_tokens": max_input_tokens,
        "max_total_tokens": max_total_tokens,
        "validation_workers": validation_workers,
        "max_client_batch_size": max_client_batch_size,
        "router": router,
        "version": version,
        "sha": sha,
        "docker_label": docker_label,
    }


def tokenize_response(inputs: str, ids: list[int], offsets: list[tuple[int, int]] | None) -> list[dict[str, Any]]:
    """POST ``/tokenize``: ``[{id, text, start, stop}]`` with UTF-8 byte offsets, as TGI answers.

    ``offsets`` are the character offsets a Python fast tokenizer returns; without them (or when
    their count differs) TGI answers empty texts at 0..0.
    """
    if offsets is None or len(offsets) != len(ids):
        return [{"id": i, "text": "", "start": 0, "stop": 0} for i in ids]
    out = []
    for token_id, (start, stop) in zip(ids, offsets):
        byte_start = len(inputs[:start].encode("utf-8"))
        text = inputs[start:stop]
        out.append({"id": token_id, "text": text, "start": byte_start, "stop": byte_start + len(text.encode("utf-8"))})
    return out
