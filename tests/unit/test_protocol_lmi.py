"""LMI: serving.properties, request parsing and DJL's output formats, byte for byte."""

from __future__ import annotations

import json

import pytest

from streamhost.engine import errors as engine_errors
from streamhost.engine.types import (
    FinishReason,
    GenerationDetails,
    GenerationParameters,
    GenerationResult,
    TokenEvent,
    TopToken,
)
from streamhost.protocols import lmi
from streamhost.protocols.errors import ProtocolError
from streamhost.server.serving_properties import ServingProperties, ServingPropertiesError

PROPS = """\
# written by a notebook
engine=MPI
option.model_id=s3://bucket/llama-2-7b/
option.entryPoint = djl_python.huggingface
option.tensor_parallel_degree=max
option.rolling_batch=lmi-dist
option.max_rolling_batch_size=64
option.dtype=fp16
option.n_positions: 4096
option.trust_remote_code=TRUE
option.model_loading_timeout=3600
option.paged_attention=false
option.low_cpu_mem_usage=true
option.custom_flag=keep me
job_queue_size=100
"""


# --------------------------------------------------------------------------- serving.properties


def test_all_documented_keys_typed():
    p = ServingProperties.load(PROPS)
    assert p.engine == "MPI" and p.model_id == "s3://bucket/llama-2-7b/"
    assert p.entry_point == "djl_python.huggingface"
    assert p.tensor_parallel_degree == "max" and p.rolling_batch == "lmi-dist"
    assert p.max_rolling_batch_size == 64 and p.dtype == "fp16" and p.n_positions == 4096
    assert p.trust_remote_code is True and p.model_loading_timeout == 3600
    assert p.paged_attention is False and p.low_cpu_mem_usage is True
    assert p.output_formatter is None and p.enable_streaming is False
    assert p.extras == {"option.custom_flag": "keep me", "job_queue_size": "100"}


def test_defaults_when_empty():
    p = ServingProperties.load("")
    assert (p.engine, p.rolling_batch, p.model_id, p.tensor_parallel_degree, p.dtype) == (
        "Python",
        "auto",
        None,
        None,
        None,
    )
    assert p.trust_remote_code is False and p.paged_attention is None


def test_file_wins_over_option_env_which_wins_over_plain_names():
    env = {
        "HF_MODEL_ID": "plain/model",
        "OPTION_MODEL_ID": "option/model",
        "OPTION_ENTRYPOINT": "model.py",
        "TENSOR_PARALLEL_DEGREE": "2",
        "OPTION_DTYPE": "bf16",
        "PATH": "/usr/bin",
    }
    p = ServingProperties.load("option.dtype=fp32\n", env)
    assert p.model_id == "option/model" and p.entry_point == "model.py"
    assert p.tensor_parallel_degree == 2 and p.dtype == "fp32"
    assert p.sources["option.dtype"] == "serving.properties" and p.sources["option.model_id"] == "OPTION_MODEL_ID"
    assert ServingProperties.load(None, {"HF_MODEL_ID": "plain/model"}).model_id == "plain/model"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "option.tensor_parallel_degree=two",
            "option.tensor_parallel_degree='two' (from serving.properties) is not valid: expected an integer >= 1 or 'max'",
        ),
        ("option.rolling_batch=turbo", "expected one of auto, scheduler, lmi-dist, vllm"),
        ("option.dtype=int3", "expected fp16, bf16, fp32 or auto"),
        ("option.max_rolling_batch_size=0", "expected an integer >= 1"),
        ("option.trust_remote_code=maybe", "expected true or false"),
        ("engine=Rust", "expected one of Python, MPI"),
        ("option.output_formatter=xml", "expected one of json, jsonlines, sse"),
    ],
)
def test_bad_values_fail_at_load_with_clear_message(text, fragment):
    with pytest.raises(ServingPropertiesError) as info:
        ServingProperties.load(text)
    assert fragment in str(info.value)


def test_bad_env_value_names_its_variable():
    with pytest.raises(ServingPropertiesError, match=r"from OPTION_N_POSITIONS"):
        ServingProperties.load("", {"OPTION_N_POSITIONS": "lots"})


@pytest.mark.parametrize(
    ("text", "stream", "expected"),
    [
        ("", False, "json"),
        ("", True, "jsonlines"),
        ("option.enable_streaming=true", False, "jsonlines-legacy"),
        ("option.output_formatter=sse", True, "sse"),
        ("option.output_formatter=jsonlines", False, "jsonlines"),
        ("option.output_formatter=json", True, "jsonlines"),
    ],
)
def test_response_format_selection(text, stream, expected):
    assert ServingProperties.load(text).response_format(stream) == expected


# --------------------------------------------------------------------------- requests


def test_request_mapping():
    body = {
        "inputs": "What is Deep Learning?",
        "parameters": {
            "do_sample": True,
            "max_new_tokens": 64,
            "temperature": 0.7,
            "top_p": 1.0,
            "top_k": 0,
            "stop_sequences": ["\n"],
            "stop": "###",
            "details": True,
            "repetition_penalty": 1.1,
            "vllm_only_thing": 3,
        },
        "stream": True,
    }
    req = lmi.parse_request(json.dumps(body).encode())
    assert req.inputs == ["What is Deep Learning?"] and req.stream and not req.batched
    p = req.parameters
    assert (p.do_sample, p.max_new_tokens, p.temperature, p.top_p, p.top_k) == (True, 64, 0.7, None, None)
    assert p.stop == ["\n", "###"] and p.details and p.repetition_penalty == 1.1


def test_jumpstart_style_parameters_and_batch_inputs():
    req = lmi.parse_request(
        {
            "inputs": ["a", "b"],
            "parameters": {"max_length": 50, "num_beams": 2, "no_repeat_ngram_size": 3, "early_stopping": True},
        }
    )
    assert req.batched and req.inputs == ["a", "b"]
    assert (req.parameters.max_length, req.parameters.num_beams, req.parameters.no_repeat_ngram_size) == (50, 2, 3)
    assert lmi.parse_request({"inputs": "x", "parameters": {"temperature": 0}}).parameters.do_sample is False


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "Invalid request payload"),
        (b'{"parameters": {}}', "inputs"),
        (b'{"inputs": ""}', "does not contain any content"),
        (b'{"inputs": "x", "parameters": {"max_new_tokens": "ten"}}', "parameters.max_new_tokens"),
        (b'{"inputs": ["a", "b"], "stream": true}', "streaming is not supported for a list of inputs"),
    ],
)
def test_bad_requests_get_djl_error_body(body, fragment):
    with pytest.raises(ProtocolError) as info:
        lmi.parse_request(body)
    assert info.value.status == 424
    assert info.value.body["code"] == 424 and fragment in info.value.body["error"]


def test_engine_errors():
    assert lmi.engine_error(engine_errors.ValidationError("bad")) == (424, {"error": "bad", "code": 424})
    assert lmi.engine_error(engine_errors.OverloadedError())[0] == 503


# --------------------------------------------------------------------------- output bytes


def _tok(i, text, logprob=-0.052432529628276825, special=False):
    return TokenEvent(index=i, token_id=300 + i, text=text, logprob=logprob, special=special)


def _last(text=" field.", reason=FinishReason.LENGTH, special=False):
    return TokenEvent(
        index=3,
        token_id=5972,
        text=text,
        logprob=-0.6950479745864868,
        special=special,
        generated_text="Deep Learning is a field.",
        details=GenerationDetails(finish_reason=reason, generated_tokens=4, input_length=6, seed=None),
    )


def test_jsonlines_token_matches_djl_docs():
    assert (
        lmi.jsonlines_token(_tok(0, "Deep "))
        == b'{"token": {"id": 300, "text": "Deep ", "log_prob": -0.052432529628276825}}\n'
    )


def test_jsonlines_line_equals_python_json_dumps():
    """DJL writes lines with json.dumps(..., ensure_ascii=False): we must produce identical bytes."""
    ev = _tok(1, 'é "q" \\ \n😀', special=True)
    expected = json.dumps(
        {"token": {"id": 301, "text": ev.text, "log_prob": ev.logprob, "special_token": True}}, ensure_ascii=False
    )
    assert lmi.jsonlines_token(ev) == (expected + "\n").encode()


def test_jsonlines_last_line_with_and_without_details():
    assert lmi.jsonlines_token(_last(), details=True, inputs="What is Deep Learning?") == (
        b'{"token": {"id": 5972, "text": " field.", "log_prob": -0.6950479745864868}, '
        b'"generated_text": "Deep Learning is a field.", '
        b'"details": {"finish_reason": "length", "generated_tokens": 4, "inputs": "What is Deep Learning?"}}\n'
    )
    assert lmi.jsonlines_token(_last(), details=False) == (
        b'{"token": {"id": 5972, "text": " field.", "log_prob": -0.6950479745864868}, '
        b'"generated_text": "Deep Learning is a field."}\n'
    )


def test_non_finite_logprob_is_null_not_nan():
    line = lmi.jsonlines_token(_tok(0, "x", logprob=float("-inf")))
    assert json.loads(line)["token"]["log_prob"] is None


def test_stream_formats_and_error_lines():
    params = GenerationParameters(details=True)
    s = lmi.LmiStream("sse", params, "Q")
    assert s.content_type == "text/event-stream"
    first = s.event(_tok(0, "A"))
    assert first == b'data: {"token": {"id": 300, "text": "A", "log_prob": -0.052432529628276825}}\n\n'
    err = s.error(engine_errors.GenerationError("exception occurred during rolling batch inference"))
    assert err == (
        b'data: {"token": {"id": -1, "text": "", "log_prob": -1, "special_token": true, '
        b'"error_msg": "exception occurred during rolling batch inference"}, "generated_text": "A", '
        b'"details": {"finish_reason": "error", "generated_tokens": 2, "inputs": "Q"}}\n\n'
    )
    plain = lmi.LmiStream("jsonlines", GenerationParameters(), "Q")
    plain.event(_tok(0, "A"))
    assert json.loads(plain.error("boom"))["details"] == {"finish_reason": "error"}


def test_legacy_stream():
    s = lmi.LmiStream("jsonlines-legacy", GenerationParameters(), "Q")
    assert s.event(_tok(0, " This")) == b'{"outputs": [" This"]}\n'
    assert s.event(_last(text="</s>", special=True, reason=FinishReason.EOS_TOKEN)) == b""
    assert json.loads(s.error("boom")) == {"error": "boom", "code": 424}


def test_every_line_is_newline_terminated_and_parseable_by_line_iterators():
    s = lmi.LmiStream("jsonlines", GenerationParameters(details=True, return_full_text=True), "Q:")
    blob = s.event(_tok(0, "Deep ")) + s.event(_last())
    assert blob.endswith(b"\n")
    lines = [json.loads(line) for line in blob.split(b"\n") if line]
    assert lines[-1]["generated_text"] == "Q:Deep Learning is a field."


def test_json_response():
    tokens = [
        TokenEvent(
            index=0,
            token_id=1,
            text="Hi",
            logprob=-0.5,
            special=False,
            top_tokens=[TopToken(id=1, text="Hi", logprob=-0.5, special=False)],
        )
    ]
    result = GenerationResult(
        generated_text="Hi",
        tokens=tokens,
        details=GenerationDetails(finish_reason=FinishReason.EOS_TOKEN, generated_tokens=1, input_length=2, seed=None),
    )
    assert lmi.json_response(result, GenerationParameters(), "Q") == {"generated_text": "Hi"}
    body = lmi.json_response(result, GenerationParameters(details=True, top_n_tokens=1), "Q")
    assert body == {
        "generated_text": "Hi",
        "details": {
            "finish_reason": "eos_token",
            "generated_tokens": 1,
            "inputs": "Q",
            "tokens": [{"id": 1, "text": "Hi", "log_prob": -0.5}],
            "top_tokens": [[{"id": 1, "text": "Hi", "log_prob": -0.5}]],
        },
    }
    assert lmi.dumps(body).startswith(b'{"generated_text": "Hi", "details": {"finish_reason": "eos_token"')
    assert lmi.json_batch_response(["a", "b"]) == [{"generated_text": "a"}, {"generated_text": "b"}]
