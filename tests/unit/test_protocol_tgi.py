"""TGI protocol: request parsing/validation and byte-exact response framing."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import TextGenerationStreamOutput
from huggingface_hub.errors import ValidationError as HubValidationError
from huggingface_hub.inference._common import _format_text_generation_stream_output

from streamhost.engine import errors as engine_errors
from streamhost.engine.types import (
    FinishReason,
    GenerationDetails,
    GenerationResult,
    PrefillToken,
    TokenEvent,
    TopToken,
)
from streamhost.protocols import json_atoms, tgi
from streamhost.protocols.errors import ProtocolError


def _final(text="</s>", generated="Hello world", reason=FinishReason.EOS_TOKEN, special=True, **kw):
    return TokenEvent(
        index=2,
        token_id=2,
        text=text,
        logprob=-0.25,
        special=special,
        generated_text=generated,
        details=GenerationDetails(finish_reason=reason, generated_tokens=3, input_length=5, seed=None),
        **kw,
    )


# --------------------------------------------------------------------------- parsing


def test_minimal_request_samples_like_tgi():
    inputs, params, stream = tgi.parse_generate_request(b'{"inputs": "Hi"}')
    assert inputs == "Hi" and stream is False
    assert params.do_sample is True  # TGI's default_parameters() when "parameters" is absent
    assert params.return_full_text is False and params.stop == []


def test_empty_parameters_object_is_greedy():
    _, params, _ = tgi.parse_generate_request(b'{"inputs": "Hi", "parameters": {}}')
    assert params.do_sample is False


def test_seed_post_sample_payload():
    body = {
        "inputs": "<s>[INST] hi [/INST]",
        "parameters": {
            "max_new_tokens": 64,
            "temperature": 0.6,
            "top_p": 0.9,
            "stop": ["</s>"],
            "return_full_text": False,
        },
        "stream": True,
    }
    inputs, p, stream = tgi.parse_generate_request(json.dumps(body).encode(), default_return_full_text=True)
    assert stream is True and inputs == body["inputs"]
    assert (p.max_new_tokens, p.temperature, p.top_p, p.stop, p.return_full_text) == (64, 0.6, 0.9, ["</s>"], False)


def test_return_full_text_default_and_stream_override():
    _, p, stream = tgi.parse_generate_request(
        {"inputs": "x", "stream": True}, stream=False, default_return_full_text=True
    )
    assert p.return_full_text is True and stream is False


def test_unknown_fields_ignored_and_jumpstart_extras_kept():
    body = b'{"inputs":"x","parameters":{"max_length":50,"num_beams":1,"no_repeat_ngram_size":3,"early_stopping":true,"foo":1},"bar":2}'
    _, p, _ = tgi.parse_generate_request(body)
    assert (p.max_length, p.num_beams, p.no_repeat_ngram_size, p.early_stopping) == (50, 1, 3, True)


def test_int_accepted_for_float_but_not_the_reverse():
    _, p, _ = tgi.parse_generate_request(b'{"inputs":"x","parameters":{"temperature":1}}')
    assert p.temperature == 1.0
    with pytest.raises(ProtocolError) as info:
        tgi.parse_generate_request(b'{"inputs":"x","parameters":{"max_new_tokens":1.5}}')
    assert info.value.status == 422 and "parameters.max_new_tokens" in info.value.message


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"inputs": "x"', 400, "Failed to parse the request body as JSON"),
        (b"\xff\xfe", 400, "Failed to parse the request body as JSON"),
        (b'{"parameters": {}}', 422, "inputs: Field required"),
        (b'{"inputs": 5}', 422, "inputs: Input should be a valid string"),
        (b'{"inputs": "x", "parameters": {"max_new_tokens": -1}}', 422, "parameters.max_new_tokens"),
        (b'{"inputs": "x", "parameters": {"temperature": "0.5"}}', 422, "parameters.temperature"),
        (b'{"inputs": "x", "parameters": {"temperature": NaN}}', 422, "parameters.temperature"),
        (b'{"inputs": "x", "parameters": {"stop": "</s>"}}', 422, "parameters.stop"),
        (b'{"inputs": "x", "parameters": {"do_sample": 1}}', 422, "parameters.do_sample"),
        (b"[1, 2]", 422, "Input should be an object"),
    ],
)
def test_malformed_bodies(body, status, fragment):
    with pytest.raises(ProtocolError) as info:
        tgi.parse_generate_request(body)
    assert info.value.status == status
    assert fragment in info.value.message
    assert info.value.body == {"error": info.value.message, "error_type": "validation"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"grammar": {"type": "json", "value": {}}}, "grammar is not supported"),
        ({"watermark": True}, "`watermark` is not supported by this server"),
        ({"adapter_id": "lora1"}, "adapter `lora1` is not available: this server serves no LoRA adapters"),
    ],
)
def test_unsupported_features_are_refused(params, message):
    with pytest.raises(ProtocolError) as info:
        tgi.parse_generate_request({"inputs": "x", "parameters": params})
    assert info.value.status == 422
    assert info.value.body == {"error": f"Input validation error: {message}", "error_type": "validation"}


def test_values_are_left_to_the_engine_but_empty_inputs_is_not():
    """Range rules live in engine/validation.py (after the 429 check); the string check is ours."""
    _, p, _ = tgi.parse_generate_request({"inputs": "x", "parameters": {"temperature": 0, "top_p": 1.0}})
    assert (p.temperature, p.top_p) == (0, 1.0)
    with pytest.raises(ProtocolError, match="Input validation error: `inputs` cannot be empty"):
        tgi.parse_generate_request({"inputs": ""})


def test_content_type_and_invocation_kind():
    tgi.check_json_content_type("application/json; charset=utf-8")
    tgi.check_json_content_type("application/vnd.api+json")
    with pytest.raises(ProtocolError) as info:
        tgi.check_json_content_type("text/plain")
    assert info.value.status == 415
    assert tgi.invocation_kind({"inputs": "x"}) == "generate"
    assert tgi.invocation_kind({"messages": []}) == "chat"
    assert tgi.invocation_kind({"prompt": "x"}) == "completion"
    with pytest.raises(ProtocolError) as info:
        tgi.invocation_kind({"foo": 1})
    assert info.value.status == 422


# --------------------------------------------------------------------------- streaming bytes


def test_token_event_exact_bytes():
    ev = TokenEvent(index=0, token_id=22557, text=" Hello", logprob=-0.3400000035762787, special=False)
    assert tgi.sse_token_event(ev, details=False) == (
        b'data: {"index":1,"token":{"id":22557,"text":" Hello","logprob":-0.34,"special":false},'
        b'"generated_text":null,"details":null}\n\n'
    )


def test_final_event_with_details():
    assert tgi.sse_token_event(_final(), details=True) == (
        b'data: {"index":3,"token":{"id":2,"text":"</s>","logprob":-0.25,"special":true},'
        b'"generated_text":"Hello world",'
        b'"details":{"finish_reason":"eos_token","generated_tokens":3,"seed":null,"input_length":5}}\n\n'
    )


def test_final_event_without_details_has_null_details_and_prompt_prefix():
    ev = _final(text=" world", special=False, reason=FinishReason.LENGTH)
    assert tgi.sse_token_event(ev, details=False, index=7, prefix="Say: ") == (
        b'data: {"index":7,"token":{"id":2,"text":" world","logprob":-0.25,"special":false},'
        b'"generated_text":"Say: Hello world","details":null}\n\n'
    )


def test_top_tokens_only_when_present():
    tops = [
        TopToken(id=5, text="a", logprob=-0.5, special=False),
        TopToken(id=6, text="b", logprob=-1.5, special=False),
    ]
    ev = TokenEvent(index=0, token_id=5, text="a", logprob=-0.5, special=False, top_tokens=tops)
    assert tgi.sse_token_event(ev, details=False) == (
        b'data: {"index":1,"token":{"id":5,"text":"a","logprob":-0.5,"special":false},'
        b'"top_tokens":[{"id":5,"text":"a","logprob":-0.5,"special":false},'
        b'{"id":6,"text":"b","logprob":-1.5,"special":false}],"generated_text":null,"details":null}\n\n'
    )


def test_text_escaping_matches_serde_json():
    ev = TokenEvent(index=0, token_id=1, text='é"\\\n\t\x01😀', logprob=float("-inf"), special=False)
    line = tgi.sse_token_event(ev, details=False)
    assert line.startswith('data: {"index":1,"token":{"id":1,"text":"é\\"\\\\\\n\\t\\u0001😀","logprob":null'.encode())
    assert json.loads(line[5:])["token"]["text"] == ev.text


def test_stream_writer_counts_and_details_seed():
    from streamhost.engine.types import GenerationParameters

    writer = tgi.TgiStream(GenerationParameters(details=True, return_full_text=True), "Q: ")
    first = writer.event(TokenEvent(index=0, token_id=9, text="A", logprob=-1.0, special=False))
    last = _final()
    last.details.seed = 42
    final = writer.event(last)
    assert first.startswith(b'data: {"index":1,')
    assert final.startswith(b'data: {"index":2,')
    assert b'"generated_text":"Q: Hello world"' in final and b'"seed":42,' in final


def test_sse_error_bytes():
    assert tgi.sse_error("Request failed during generation: boom", "generation") == (
        b'data: {"error":"Request failed during generation: boom","error_type":"generation"}\n\n'
    )


def test_huggingface_hub_parses_our_stream():
    ev = TokenEvent(index=0, token_id=7, text=" hi", logprob=-0.5, special=False)
    for raw in (tgi.sse_token_event(ev, details=False), tgi.sse_token_event(_final(), details=True)):
        out = _format_text_generation_stream_output(raw.decode().rstrip("\n"), details=True)
        assert isinstance(out, TextGenerationStreamOutput)
    assert out.details.finish_reason == "eos_token" and out.generated_text == "Hello world"
    error_line = tgi.sse_engine_error(engine_errors.ValidationError("`inputs` must have less than 10 tokens"))
    with pytest.raises(HubValidationError):
        _format_text_generation_stream_output(error_line.decode().rstrip("\n"), details=False)


def test_token_iterator_sample_parsing():
    """The SageMaker TokenIterator sample: split lines, strip 'data:', parse JSON, print token.text."""
    events = [
        tgi.sse_token_event(TokenEvent(index=i, token_id=i, text=t, logprob=-1.0, special=False), False)
        for i, t in enumerate(["A", " b"])
    ]
    blob = b"".join(events)
    texts = [json.loads(line.decode().removeprefix("data:"))["token"]["text"] for line in blob.split(b"\n") if line]
    assert texts == ["A", " b"]


@pytest.mark.parametrize(
    "literal",
    [
        "0.3",
        "1234000000000.0",
        "1.234e13",
        "2.71828",
        "1.1e32",
        "1.1e-32",
        "2.7182817",
        "1e-45",
        "3.4028235e38",
        "-0.001234",
        "0.0",
        "-0.0",
        "1.0",
        "-1.0",
        "1.1754944e-38",
        "33554450.0",
        "9000000000.0",
        "305404.12",
        "8099.0312",
        "0.00024414062",
        "4.7223665e21",
        "16777216.0",
        "-2.47e-43",
        "4103.9004",
        "5339999700.0",
        "2.882326e17",
        "1e-44",
        "1.18697725e20",
        "200.0",
        "0.000001",
        "1e-7",
    ],
)
def test_f32_layout_matches_ryu(literal):
    """serde_json writes f32 with ryu; these literals are ryu's own expected outputs."""
    assert json_atoms.f32_json(float(literal)) == literal


# --------------------------------------------------------------------------- non-streaming and misc


def test_generate_response_details_shape():
    from streamhost.engine.types import GenerationParameters

    toks = [
        TokenEvent(
            index=0,
            token_id=10,
            text="Hi",
            logprob=-0.10000000149011612,
            special=False,
            top_tokens=[TopToken(id=10, text="Hi", logprob=-0.1, special=False)],
        )
    ]
    result = GenerationResult(
        generated_text="Hi",
        tokens=toks,
        details=GenerationDetails(
            finish_reason=FinishReason.LENGTH,
            generated_tokens=1,
            input_length=2,
            seed=7,
            prefill=[PrefillToken(id=1, text="<s>", logprob=None), PrefillToken(id=3, text="x", logprob=-2.0)],
        ),
    )
    params = GenerationParameters(details=True, top_n_tokens=1, return_full_text=True)
    body = tgi.generate_response(result, params, "P:")
    assert body == {
        "generated_text": "P:Hi",
        "details": {
            "finish_reason": "length",
            "generated_tokens": 1,
            "seed": 7,
            "prefill": [{"id": 1, "text": "<s>", "logprob": None}, {"id": 3, "text": "x", "logprob": -2.0}],
            "tokens": [{"id": 10, "text": "Hi", "logprob": -0.1, "special": False}],
            "top_tokens": [[{"id": 10, "text": "Hi", "logprob": -0.1, "special": False}]],
        },
    }
    # What Starlette's JSONResponse does: must not fail on the floats.
    json.dumps(body, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    assert tgi.generate_response(result, GenerationParameters(), "P:") == {"generated_text": "Hi"}


@pytest.mark.parametrize(
    ("err", "status", "body"),
    [
        (
            engine_errors.ValidationError(
                "`inputs` tokens + `max_new_tokens` must be <= 2048. Given: 2000 `inputs` tokens and 100 `max_new_tokens`"
            ),
            422,
            {
                "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. Given: 2000 `inputs` tokens and 100 `max_new_tokens`",
                "error_type": "validation",
            },
        ),
        (engine_errors.OverloadedError(), 429, {"error": "Model is overloaded", "error_type": "overloaded"}),
        (
            engine_errors.GenerationError("CUDA out of memory"),
            424,
            {"error": "Request failed during generation: CUDA out of memory", "error_type": "generation"},
        ),
        (engine_errors.EngineNotReadyError("unhealthy"), 503, {"error": "unhealthy", "error_type": "healthcheck"}),
    ],
)
def test_engine_error_mapping(err, status, body):
    assert tgi.engine_error(err) == (status, body)


def test_payload_limit_and_overload_errors():
    err = tgi.payload_too_large(2_000_001)
    assert err.status == 413 and "2000001" in err.message and "2000000" in err.message
    assert tgi.overloaded().status == 429


def test_timing_headers():
    h = tgi.timing_headers(
        compute_type="cpu",
        compute_characters=12,
        total_time=1.5,
        validation_time=0.0019,
        queue_time=0.25,
        inference_time=1.2,
        prompt_tokens=5,
        generated_tokens=4,
    )
    assert h == {
        "x-compute-type": "cpu",
        "x-compute-time": "1.5",
        "x-compute-characters": "12",
        "x-total-time": "1500",
        "x-validation-time": "1",
        "x-queue-time": "250",
        "x-inference-time": "1200",
        "x-time-per-token": "300",
        "x-prompt-tokens": "5",
        "x-generated-tokens": "4",
    }
    assert tgi.stream_headers("cpu", 3)["X-Accel-Buffering"] == "no"


def test_info_field_order():
    info = tgi.info_response(model_id="m", max_input_tokens=1024, max_total_tokens=2048, version="3.0.0")
    assert list(info) == [
        "model_id",
        "model_sha",
        "model_dtype",
        "model_device_type",
        "model_pipeline_tag",
        "max_concurrent_requests",
        "max_best_of",
        "max_stop_sequences",
        "max_input_tokens",
        "max_total_tokens",
        "validation_workers",
        "max_client_batch_size",
        "router",
        "version",
        "sha",
        "docker_label",
    ]


def test_tokenize_response_uses_byte_offsets():
    text = "héllo world"
    out = tgi.tokenize_response(text, [1, 2], [(0, 5), (5, 11)])
    assert out == [
        {"id": 1, "text": "héllo", "start": 0, "stop": 6},
        {"id": 2, "text": " world", "start": 6, "stop": 12},
    ]
    assert tgi.tokenize_response(text, [1], None) == [{"id": 1, "text": "", "start": 0, "stop": 0}]


def test_ignore_eos_reaches_the_engine():
    req = tgi.parse_generate_request(b'{"inputs": "x", "parameters": {"ignore_eos": true, "max_new_tokens": 3}}')
    assert req.parameters.ignore_eos is True
