"""The OpenAI chat/completions API, the way TGI serves it (``/v1/chat/completions``, ``/v1/completions``).

Wire shapes follow TGI's router (``ChatCompletionChunk`` with ``object`` first, every delta carrying
``role: assistant``, ``data: <compact JSON>\\n\\n`` events ending in ``data: [DONE]``: with the space,
which huggingface_hub's ``chat_completion(stream=True)`` matches byte for byte) with three
deliberate differences, so that the ``openai`` client's own types validate every object:

- ``finish_reason`` is ``stop`` for both EOS and a stop sequence (TGI sends ``stop_sequence``);
- completion chunks before the last carry ``finish_reason: null`` (TGI sends ``""``);
- a special token (EOS) contributes ``""`` to completion text as it does to chat content.

Errors before a stream keep TGI's body ``{"error", "error_type"}`` (what TGI answers on these routes);
an error inside a stream is ``data: {"error":{"message":..,"http_status_code":..}}``, which the
openai client raises as ``APIError``.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from streamhost.engine.errors import EngineError
from streamhost.engine.types import FinishReason, GenerationParameters, GenerationResult, TokenEvent, TopToken
from streamhost.protocols.errors import ProtocolError, parse_body
from streamhost.protocols.json_atoms import U32_MAX, U64_MAX, f32_json, f32_value
from streamhost.protocols.json_atoms import json_str as _json_str
from streamhost.protocols.tgi import engine_error

DONE = b"data: [DONE]\n\n"

# --------------------------------------------------------------------------- requests


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class ContentPart(_Strict):
    type: str
    text: Optional[str] = None
    image_url: Optional[Any] = None


class ChatMessage(_Strict):
    role: str
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[Any]] = None


class StreamOptions(_Strict):
    include_usage: Optional[bool] = None


class _Common(_Strict):
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=0, le=U32_MAX)
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(default=None, ge=0, le=U64_MAX)
    n: Optional[int] = None
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    logit_bias: Optional[Any] = None
    user: Optional[str] = None
    # TGI/vLLM extensions many clients send
    repetition_penalty: Optional[float] = None
    top_k: Optional[int] = None
    ignore_eos: Optional[bool] = None  # vLLM's: generate max_tokens whatever the model says


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage]
    max_completion_tokens: Optional[int] = Field(default=None, ge=0, le=U32_MAX)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Any] = None
    response_format: Optional[Any] = None


class CompletionRequest(_Common):
    prompt: Union[str, list[str]]
    suffix: Optional[str] = None
    echo: Optional[bool] = None
    logprobs: Optional[int] = None
    best_of: Optional[int] = None


class ChatInput(NamedTuple):
    """A parsed chat request: messages ready for the chat template, and engine parameters."""

    messages: list[dict[str, str]]
    parameters: GenerationParameters
    stream: bool
    include_usage: bool
    logprobs: bool
    model: str | None


class CompletionInput(NamedTuple):
    prompt: str
    parameters: GenerationParameters
    stream: bool
    echo: bool
    model: str | None


def _reject(message: str) -> ProtocolError:
    return ProtocolError(422, message, "validation")


def _sampling(req: _Common, max_new_tokens: int | None, top_n: int | None) -> GenerationParameters:
    """Common OpenAI -> engine mapping (TGI's): temperature 0 is greedy, otherwise sample."""
    if req.n not in (None, 1):
        raise _reject(f"`n` must be 1: this server returns one choice per request. Given: {req.n}")
    if req.presence_penalty:
        raise _reject("`presence_penalty` is not supported; use `frequency_penalty` or `repetition_penalty`")
    if req.logit_bias:
        raise _reject("`logit_bias` is not supported")
    greedy = req.temperature == 0
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return GenerationParameters(
        do_sample=not greedy,
        temperature=None if greedy else req.temperature,
        # temperature 0 means greedy whatever else is sent: TGI would turn sampling back on for a warper.
        top_p=None if greedy or req.top_p == 1.0 else req.top_p,  # 1.0 is OpenAI's "disabled"; TGI rejects it
        top_k=None if greedy else req.top_k,
        repetition_penalty=req.repetition_penalty,
        frequency_penalty=req.frequency_penalty or None,
        seed=req.seed,
        max_new_tokens=max_new_tokens,
        stop=stop,
        ignore_eos=bool(req.ignore_eos),
        details=True,
        top_n_tokens=top_n or None,
    )


def _message_text(msg: ChatMessage) -> str:
    if msg.content is None:
        return json.dumps(msg.tool_calls, separators=(",", ":")) if msg.tool_calls else ""
    if isinstance(msg.content, str):
        return msg.content
    texts = []
    for part in msg.content:
        if part.type != "text" or part.text is None:
            raise _reject(f"message content of type `{part.type}` is not supported: send text parts only")
        texts.append(part.text)
    return "".join(texts)


def parse_chat_request(body: bytes | str | dict) -> ChatInput:
    """Parse ``/v1/chat/completions``; raises ``ProtocolError`` 400/422 with a message naming the field."""
    req = parse_body(ChatCompletionRequest, body)
    if not req.messages:
        raise _reject("`messages` must contain at least one message")
    if req.tools:
        raise _reject("`tools` are not supported by this server")
    fmt = req.response_format
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _reject('`response_format` other than {"type": "text"} is not supported')
    if req.top_logprobs and not req.logprobs:
        raise _reject("`top_logprobs` requires `logprobs` to be true")
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": _message_text(m)} for m in req.messages
    ]
    max_new = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    params = _sampling(req, max_new, req.top_logprobs if req.logprobs else None)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return ChatInput(messages, params, bool(req.stream), include_usage, bool(req.logprobs), req.model)


def parse_completion_request(body: bytes | str | dict) -> CompletionInput:
    """Parse ``/v1/completions`` (one prompt per request)."""
    req = parse_body(CompletionRequest, body)
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if len(prompts) != 1:
        raise _reject(f"`prompt` must be a string or a list of exactly one string. Given: {len(prompts)} prompts")
    if req.suffix is not None:
        raise ProtocolError(
            422, "Suffix is not supported and can be achieved by preprocessing the prompt.", "suffix not supported"
        )
    if req.logprobs:
        raise _reject("`logprobs` is not supported on /v1/completions; use /v1/chat/completions")
    if req.best_of not in (None, 1):
        raise _reject(f"`best_of` must be 1. Given: {req.best_of}")
    params = _sampling(req, req.max_tokens, None)
    params.return_full_text = bool(req.echo)
    return CompletionInput(prompts[0], params, bool(req.stream), bool(req.echo), req.model)


# --------------------------------------------------------------------------- errors


def error_response(err: EngineError) -> tuple[int, dict[str, str]]:
    """``(status, body)`` before a stream starts: TGI's statuses and ``{"error", "error_type"}`` body."""
    return engine_error(err)


def sse_error(message: str, status: int = 422) -> bytes:
    """An error inside a stream, as TGI writes it; the openai client raises ``APIError(message)``."""
    return ('data: {"error":{"message":%s,"http_status_code":%d}}\n\n' % (_json_str(message), status)).encode(
        "utf-8", "replace"
    )


def sse_engine_error(err: EngineError) -> bytes:
    status, body = engine_error(err)
    return sse_error(body["error"], status)


# --------------------------------------------------------------------------- response pieces


def finish_reason(reason: FinishReason) -> str:
    """OpenAI's ``finish_reason``: ``length`` when the budget ran out, else ``stop``."""
    return "length" if reason == FinishReason.LENGTH else "stop"


def system_fingerprint(version: str, docker_label: str | None = None) -> str:
    """TGI's ``system_fingerprint``: ``<version>-<docker_label or "native">``."""
    return f"{version}-{docker_label or 'native'}"


_USAGE = '{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":%d}}'


def _usage_json(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> str:
    return _USAGE % (prompt_tokens, completion_tokens, prompt_tokens + completion_tokens, cached_tokens)


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's ``usage``; ``prompt_tokens_details.cached_tokens``: prompt tokens served from the prefix
    cache (OpenAI reports it on every response, 0 included)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _top_json(tops: list[TopToken] | None) -> str:
    if not tops:
        return "[]"
    return "[" + ",".join('{"token":%s,"logprob":%s}' % (_json_str(t.text), f32_json(t.logprob)) for t in tops) + "]"


def _logprob_entry_json(ev: TokenEvent) -> str:
    return '{"token":%s,"logprob":%s,"top_logprobs":%s}' % (
        _json_str(ev.text),
        f32_json(ev.logprob),
        _top_json(ev.top_tokens),
    )


def _logprob_entry(ev: TokenEvent) -> dict[str, Any]:
    tops = [{"token": t.text, "logprob": f32_value(t.logprob)} for t in (ev.top_tokens or [])]
    return {"token": ev.text, "logprob": f32_value(ev.logprob), "top_logprobs": tops}


def _head(obj: str, id: str, created: int, model: str, fingerprint: str) -> str:
    return '{"object":"%s","id":%s,"created":%d,"model":%s,"system_fingerprint":%s' % (
        obj,
        _json_str(id),
        created,
        _json_str(model),
        _json_str(fingerprint),
    )


# --------------------------------------------------------------------------- chat


class _SseEnd:
    """How every OpenAI stream ends: an error event, or ``data: [DONE]``."""

    @staticmethod
    def error(err: EngineError) -> bytes:
        return sse_engine_error(err)

    @staticmethod
    def done() -> bytes:
        return DONE


class ChatStream(_SseEnd):
    """Frames one chat request's TokenEvents as ``chat.completion.chunk`` SSE events.

    Header fields are encoded once; each ``chunk`` formats only the token's own part.
    """

    __slots__ = ("_head", "_open", "_logprobs", "_include_usage")

    def __init__(
        self,
        *,
        model: str,
        created: int,
        id: str = "",
        system_fingerprint: str = "",
        logprobs: bool = False,
        include_usage: bool = False,
    ) -> None:
        self._head = "data: " + _head("chat.completion.chunk", id, created, model, system_fingerprint)
        self._open = self._head + ',"choices":[{"index":0,"delta":{"role":"assistant","content":'
        self._logprobs = logprobs
        self._include_usage = include_usage

    def chunk(self, ev: TokenEvent) -> bytes:
        """The chunk for ``ev``; after the final token also the usage chunk when asked for."""
        content = "" if ev.special else ev.text
        lp = '{"content":[%s]}' % _logprob_entry_json(ev) if self._logprobs else "null"
        d = ev.details
        reason = "null" if d is None else '"%s"' % finish_reason(d.finish_reason)
        out = '%s%s},"logprobs":%s,"finish_reason":%s}],"usage":null}\n\n' % (
            self._open,
            _json_str(content),
            lp,
            reason,
        )
        if d is not None and self._include_usage:
            out += self.usage_chunk_text(d.input_length, d.generated_tokens, d.cached_tokens)
        return out.encode("utf-8", "replace")

    def usage_chunk_text(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> str:
        return '%s,"choices":[],"usage":%s}\n\n' % (
            self._head,
            _usage_json(prompt_tokens, completion_tokens, cached_tokens),
        )


def chat_completion(
    result: GenerationResult,
    *,
    model: str,
    created: int,
    id: str = "",
    system_fingerprint: str = "",
    logprobs: bool = False,
) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` object (TGI's key order)."""
    d = result.details
    lp = {"content": [_logprob_entry(t) for t in result.tokens]} if logprobs else None
    return {
        "object": "chat.completion",
        "id": id,
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.generated_text},
                "logprobs": lp,
                "finish_reason": finish_reason(d.finish_reason),
            }
        ],
        "usage": usage(d.input_length, d.generated_tokens, d.cached_tokens),
    }


# --------------------------------------------------------------------------- completions


class CompletionStream(_SseEnd):
    """Frames ``/v1/completions`` chunks (``object: text_completion``); the last one carries usage."""

    __slots__ = ("_chunk_head", "_final_head", "_tail", "_echo")

    def __init__(self, *, model: str, created: int, id: str = "", system_fingerprint: str = "", echo: str = "") -> None:
        self._chunk_head = 'data: {"object":"text_completion","id":%s,"created":%d,"choices":[{"index":0,"text":' % (
            _json_str(id),
            created,
        )
        self._tail = ',"model":%s,"system_fingerprint":%s}\n\n' % (_json_str(model), _json_str(system_fingerprint))
        self._final_head = "data: " + _head("text_completion", id, created, model, system_fingerprint)
        self._echo = echo  # the prompt, sent in front of the first chunk's text when echo is on

    def chunk(self, ev: TokenEvent) -> bytes:
        text = "" if ev.special else ev.text
        if self._echo:
            text, self._echo = self._echo + text, ""
        d = ev.details
        if d is None:
            out = '%s%s,"logprobs":null,"finish_reason":null}]%s' % (self._chunk_head, _json_str(text), self._tail)
        else:
            out = '%s,"choices":[{"index":0,"text":%s,"logprobs":null,"finish_reason":"%s"}],"usage":%s}\n\n' % (
                self._final_head,
                _json_str(text),
                finish_reason(d.finish_reason),
                _usage_json(d.input_length, d.generated_tokens, d.cached_tokens),
            )
        return out.encode("utf-8", "replace")


def text_completion(
    result: GenerationResult,
    *,
    model: str,
    created: int,
    id: str = "",
    system_fingerprint: str = "",
    echo: str = "",
) -> dict[str, Any]:
    """The non-streaming ``text_completion`` object; ``echo`` is the prompt when echo is on."""
    d = result.details
    return {
        "object": "text_completion",
        "id": id,
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": [
            {
                "index": 0,
                "text": echo + result.generated_text,
                "logprobs": None,
                "finish_reason": finish_reason(d.finish_reason),
            }
        ],
        "usage": usage(d.input_length, d.generated_tokens, d.cached_tokens),
    }


def models_response(model_id: str, created: int = 0) -> dict[str, Any]:
    """GET ``/v1/models`` as TGI answers it."""
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created, "owned_by": model_id}]}
