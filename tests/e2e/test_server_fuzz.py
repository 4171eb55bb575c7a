"""Generated bad (and some good) request bodies never get a 5xx or a traceback, in either dialect.

Bodies are raw bytes, arbitrary JSON, and near-valid requests with junk in every field. Token counts
are kept small (or junk) so valid requests finish fast; each answer is read to its end so an error
inside a stream counts too.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

ROUTES = ["/generate", "/generate_stream", "/", "/invocations", "/v1/chat/completions", "/v1/completions", "/tokenize"]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
)
any_json = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
junk = st.one_of(json_scalars, st.lists(json_scalars, max_size=3), st.dictionaries(st.text(max_size=4), json_scalars, max_size=2))


def mutated(valid: st.SearchStrategy, keys: list[str]) -> st.SearchStrategy:
    """A valid body with up to two fields replaced by junk or removed (``parameters.x`` reaches inside)."""
    edits = st.lists(st.tuples(st.sampled_from(keys), st.one_of(junk, st.just(_DELETE))), max_size=2)
    return st.tuples(valid, edits).map(lambda pair: _apply(*pair))


_DELETE = object()


def _apply(body: dict, edits: list) -> dict:
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


prompt_text = st.text(min_size=1, max_size=30)
stops = st.lists(st.text(min_size=1, max_size=4), max_size=4)
VALID_PARAMETERS = {
    "temperature": st.floats(min_value=0.05, max_value=2), "top_k": st.integers(1, 50),
    "top_p": st.floats(min_value=0.01, max_value=0.99), "typical_p": st.floats(min_value=0.01, max_value=0.99),
    "repetition_penalty": st.floats(min_value=0.5, max_value=2), "frequency_penalty": st.floats(min_value=-2, max_value=2),
    "do_sample": st.booleans(), "seed": st.integers(0, 2**63), "stop": stops, "details": st.booleans(),
    "decoder_input_details": st.booleans(), "return_full_text": st.booleans(), "truncate": st.integers(1, 400),
    "top_n_tokens": st.integers(0, 5), "no_repeat_ngram_size": st.integers(0, 3), "stop_sequences": stops,
    "ignore_eos_token": st.booleans(),
}
generate_body = mutated(
    st.fixed_dictionaries(
        {"inputs": prompt_text,
         "parameters": st.fixed_dictionaries({"max_new_tokens": st.integers(1, 4)}, optional=VALID_PARAMETERS)},
        optional={"stream": st.booleans()},
    ),
    ["inputs", "parameters", "stream", "parameters.max_new_tokens", "parameters.best_of", "parameters.num_beams",
     "parameters.grammar", "parameters.watermark", "parameters.adapter_id", "parameters.max_length",
     *(f"parameters.{k}" for k in VALID_PARAMETERS)],
)
messages = st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": prompt_text}), min_size=1, max_size=1).flatmap(
    lambda turn: st.one_of(st.just(turn), prompt_text.map(lambda system: [{"role": "system", "content": system}] + turn)))
CHAT_OPTIONAL = {
    "stream": st.booleans(), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "stop": stops,
    "logprobs": st.booleans(), "seed": st.integers(0, 10), "model": st.text(max_size=5),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "frequency_penalty": st.floats(-2, 2),
}
chat_body = mutated(
    st.fixed_dictionaries({"messages": messages, "max_tokens": st.integers(1, 4)}, optional=CHAT_OPTIONAL),
    ["messages", "max_tokens", "n", "top_logprobs", "tools", "response_format", "presence_penalty", "logit_bias",
     "max_completion_tokens", *CHAT_OPTIONAL],
)
completion_body = mutated(
    st.fixed_dictionaries({"prompt": prompt_text, "max_tokens": st.integers(1, 4)},
                          optional={"stream": st.booleans(), "echo": st.booleans(), "temperature": st.floats(0, 2), "stop": stops}),
    ["prompt", "max_tokens", "stream", "echo", "suffix", "logprobs", "best_of", "temperature", "stop"],
)
GENERATE_ROUTES = ["/generate", "/generate_stream", "/", "/invocations", "/tokenize"]
# (how to send, body, where): bodies mostly go to routes that take their shape, sometimes anywhere.
bodies = st.one_of(
    st.tuples(st.just("raw"), st.binary(max_size=64), st.sampled_from(ROUTES)),
    st.tuples(st.just("json"), any_json, st.sampled_from(ROUTES)),
    st.tuples(st.just("json"), generate_body, st.sampled_from(GENERATE_ROUTES)),
    st.tuples(st.just("json"), generate_body, st.sampled_from(GENERATE_ROUTES)),
    st.tuples(st.just("json"), chat_body, st.sampled_from(["/v1/chat/completions", "/invocations"])),
    st.tuples(st.just("json"), chat_body, st.sampled_from(ROUTES)),
    st.tuples(st.just("json"), completion_body, st.sampled_from(["/v1/completions", "/invocations"])),
)
content_types = st.sampled_from(["application/json"] * 5 + ["application/json; charset=utf-8", "text/plain", None])


def check_answer(response: httpx.Response) -> None:
    body = response.read()
    assert response.status_code < 500, (response.status_code, body[:300])
    assert b"Traceback" not in body and b'"internal"' not in body, body[:300]
    if response.status_code >= 400:
        payload = response.json()
        assert isinstance(payload.get("error"), str) and payload["error"], payload


def fuzz(url: str):
    @settings(max_examples=120, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(body=bodies, content_type=content_types)
    def run(body: tuple, content_type: str | None) -> None:
        kind, value, route = body
        headers = {"content-type": content_type} if content_type else {}
        with httpx.Client(base_url=url, timeout=30) as client:
            if kind == "raw":
                request = client.build_request("POST", route, content=value, headers=headers)
            else:
                request = client.build_request("POST", route, json=value, headers=headers)
            if not content_type:
                request.headers.pop("content-type", None)
            response = client.send(request, stream=True)
            try:
                check_answer(response)
                event(f"status {response.status_code}")
            finally:
                response.close()

    return run


def test_generated_bodies_never_get_a_5xx_tgi(tgi_url: str) -> None:
    fuzz(tgi_url)()
    assert httpx.get(tgi_url + "/ping").status_code == 200


def test_generated_bodies_never_get_a_5xx_lmi(lmi_url: str) -> None:
    fuzz(lmi_url)()
    assert httpx.get(lmi_url + "/ping").status_code == 200


@pytest.mark.parametrize("route", ROUTES)
def test_empty_and_huge_nesting_bodies(tgi_url: str, route: str) -> None:
    for body in (b"", b"{" * 50_000, b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"):
        check_answer(httpx.post(tgi_url + route, content=body, headers={"content-type": "application/json"}))
