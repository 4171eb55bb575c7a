"""The model server's TGI, OpenAI and LMI routes fuzzed from the OpenAPI description it serves.

Bodies come from ``GET /openapi.json`` (generated from the same pydantic models that parse the
requests): valid per schema, valid with fields replaced by junk or removed, any JSON at all, raw
bytes, with varied Content-Types, plus GETs of every read route. For each API at least
``REQUESTS_PER_API`` requests, derandomized; asserted: no 5xx, error bodies in the protocol's shape,
no traceback in the server log, the server still answers, and a greedy stream running alongside
returns the same text as alone. The servers' token limits are small so a valid request is cheap.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from _fuzz_helpers import (
    REQUESTS_PER_API,
    SHRINK,
    AlongsideStream,
    Budget,
    assert_no_traceback,
    fuzz_settings,
)
from hypothesis import event, given
from hypothesis import strategies as st

from conftest import start_container, write_lmi_dir
from streamhost.fuzzing import ANY_JSON, openapi_bodies

pytestmark = pytest.mark.timeout(300)

SMALL = {"MAX_TOTAL_TOKENS": "32", "MAX_INPUT_TOKENS": "24", "MAX_CONCURRENT_REQUESTS": "8", "PAYLOAD_LIMIT": "200000"}
CONTENT_TYPES = st.sampled_from(["application/json"] * 6 + ["application/json; charset=utf-8", "text/plain", None])
GREEDY = {"inputs": "Fuzzing must not change this", "parameters": {"max_new_tokens": 12, "do_sample": False}}
APIS = {
    "tgi": ["/generate", "/generate_stream", "/", "/tokenize", "/invocations"],
    "openai": ["/v1/chat/completions", "/v1/completions"],
    "lmi": ["/invocations"],
}
GETS = ["/ping", "/health", "/info", "/metrics", "/v1/models", "/openapi.json", "/api-doc/openapi.json", "/"]


@pytest.fixture(scope="module")
def tgi_fuzz_server(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("fuzz-tgi") / "server.log"
    container = start_container(["--model-id", str(tiny_llama_dir)], log, SMALL)
    yield container
    container.stop()


@pytest.fixture(scope="module")
def lmi_fuzz_server(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = write_lmi_dir(tmp_path_factory.mktemp("fuzz-lmi") / "model", tiny_llama_dir, {
        "option.rolling_batch": "auto", "option.max_rolling_batch_size": "8", "option.n_positions": "32",
        "option.output_formatter": "jsonlines", "option.dtype": "fp32"})  # fmt: skip
    container = start_container(["--model-dir", str(folder)], folder.parent / "server.log")
    yield container
    container.stop()


def stream_text(url: str) -> str:
    """One greedy TGI stream, read to its end; the text of its tokens."""
    pieces = []
    with httpx.stream("POST", url + "/generate_stream", json=GREEDY, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data:"):
                event_ = json.loads(line[5:])
                assert "error" not in event_, event_
                pieces.append(event_["token"]["text"])
    return "".join(pieces)


def check_answer(response: httpx.Response, lmi: bool) -> None:
    body = response.read()
    assert response.status_code < 500, (response.status_code, body[:300])
    assert b"Traceback" not in body and b'"internal"' not in body, body[:300]
    if response.status_code >= 400:
        payload = response.json()
        error = payload.get("error")
        assert (isinstance(error, str) and error) or (isinstance(error, dict) and error.get("message")), payload
        if lmi and response.url.path == "/invocations":
            assert payload.get("code") == response.status_code, payload  # DJL's {"error", "code"}


def requests_for(document: dict, routes: list[str]) -> st.SearchStrategy:
    """(method, route, kind, body) for one API: mostly its routes' bodies, some raw bytes, JSON and GETs."""
    per_route = [st.tuples(st.just("POST"), st.just(r), st.just("json"), openapi_bodies(document, r, shrink=SHRINK))
                 for r in routes]  # fmt: skip
    return st.one_of(
        *per_route,
        *per_route,
        st.tuples(st.just("POST"), st.sampled_from(routes), st.just("raw"), st.binary(max_size=64)),
        st.tuples(st.just("POST"), st.sampled_from(routes), st.just("json"), ANY_JSON),
        st.tuples(st.just("GET"), st.sampled_from(GETS), st.just("none"), st.none()),
    )


def fuzz_api(server, routes: list[str], lmi: bool = False) -> Budget:
    url = server.url
    document = httpx.get(url + "/openapi.json", timeout=10).json()
    assert set(routes) <= set(document["paths"])
    budget = Budget()
    batch = 4  # requests per generated example

    @fuzz_settings(REQUESTS_PER_API // batch + 1)
    @given(calls=st.lists(st.tuples(requests_for(document, routes), CONTENT_TYPES), min_size=batch, max_size=batch))
    def run(calls: list) -> None:
        # The example's requests go out at once: they meet in the engine's batches, as real traffic does.
        for status, route in pool.map(lambda call: send(client, server, call, lmi), calls):
            budget.count(status)
            event(f"{route} {status}")

    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(batch) as pool:
        run()
    return budget


def send(client: httpx.Client, server, call: tuple, lmi: bool) -> tuple[int, str]:
    (method, route, kind, body), content_type = call
    headers = {"content-type": content_type} if content_type else {}
    if kind == "raw":
        request = client.build_request(method, route, content=body, headers=headers)
    elif kind == "json":  # ASCII JSON: lone surrogates travel as \ud800 escapes
        request = client.build_request(method, route, content=json.dumps(body).encode(), headers=headers)
    else:
        request = client.build_request(method, route)
    try:
        response = client.send(request, stream=True)
    except httpx.TransportError as exc:
        pytest.fail(f"{exc!r} on {method} {route} {content_type} {body!r}; server log:\n{server.log()[-3000:]}")
    try:
        check_answer(response, lmi)
    finally:
        response.close()
    return response.status_code, route


@pytest.mark.parametrize("api", ["tgi", "openai"])
def test_tgi_and_openai_routes_survive_generated_requests(tgi_fuzz_server, api: str) -> None:
    alongside = AlongsideStream(lambda: stream_text(tgi_fuzz_server.url))
    with alongside:
        budget = fuzz_api(tgi_fuzz_server, APIS[api])
    alongside.check()
    print(f"{budget.sent} requests, answers by status: {dict(sorted(budget.statuses.items()))}")
    assert budget.sent >= REQUESTS_PER_API, budget.statuses
    assert any(200 <= s < 300 for s in budget.statuses), budget.statuses  # some requests were valid
    assert httpx.get(tgi_fuzz_server.url + "/ping").status_code == 200
    assert_no_traceback(tgi_fuzz_server.log())


def test_lmi_routes_survive_generated_requests(lmi_fuzz_server) -> None:
    alongside = AlongsideStream(lambda: stream_text(lmi_fuzz_server.url))
    with alongside:
        budget = fuzz_api(lmi_fuzz_server, APIS["lmi"], lmi=True)
    alongside.check()
    print(f"{budget.sent} requests, answers by status: {dict(sorted(budget.statuses.items()))}")
    assert budget.sent >= REQUESTS_PER_API, budget.statuses
    assert any(200 <= s < 300 for s in budget.statuses), budget.statuses
    assert httpx.get(lmi_fuzz_server.url + "/ping").status_code == 200
    assert_no_traceback(lmi_fuzz_server.log())


def test_openapi_document_describes_the_routes(tgi_fuzz_server, lmi_fuzz_server) -> None:
    for server, dialect in ((tgi_fuzz_server, "tgi"), (lmi_fuzz_server, "lmi")):
        document = httpx.get(server.url + "/openapi.json").json()
        assert document["openapi"].startswith("3.1") and dialect in document["info"]["description"]
        assert httpx.get(server.url + "/api-doc/openapi.json").json() == document
        for path, item in document["paths"].items():
            for method in item:
                probe = httpx.request(
                    method.upper(), server.url + path, json={"inputs": "x"} if method == "post" else None
                )
                assert probe.status_code != 404, (method, path)
        generate = document["components"]["schemas"]["TgiParameters"]["properties"]
        assert {"max_new_tokens", "temperature", "stop", "seed", "details"} <= set(generate)


@pytest.mark.parametrize("route", APIS["tgi"] + APIS["openai"])
def test_empty_and_huge_nesting_bodies(tgi_fuzz_server, route: str) -> None:
    for body in (b"", b"{" * 50_000, b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"):
        response = httpx.post(tgi_fuzz_server.url + route, content=body, headers={"content-type": "application/json"})
        check_answer(response, lmi=False)


def test_a_huge_best_of_is_refused_at_once(tgi_fuzz_server) -> None:
    """Fuzz finding: best_of=2**40 made /generate start one generation per copy before validation (OOM)."""
    for route, body in (("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2, "best_of": 2**40, "do_sample": True}}),
                        ("/", {"inputs": "hi", "parameters": {"max_new_tokens": 2, "best_of": 2**40, "do_sample": True}}),
                        ("/invocations", {"inputs": "hi", "parameters": {"max_new_tokens": 2, "best_of": 3, "do_sample": True}})):  # fmt: skip
        response = httpx.post(tgi_fuzz_server.url + route, json=body, timeout=30)
        assert response.status_code == 422, response.text
        assert response.json()["error"].startswith("Input validation error: `best_of` must be > 0 and <= 2. Given: ")
    assert httpx.get(tgi_fuzz_server.url + "/ping").status_code == 200
