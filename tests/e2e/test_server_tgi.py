"""``streamhost container`` speaking TGI's API to real clients over real sockets (tiny model)."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

SSE_EVENT = re.compile(rb"data: \{.*\}\n\n")
JSON_HEADERS = {"content-type": "application/json"}


def sse_events(body: bytes) -> list[dict]:
    """Split a TGI SSE body into its JSON events, insisting on TGI's exact framing."""
    assert body.endswith(b"\n\n"), body[-80:]
    raw = body.split(b"\n\n")[:-1]
    for chunk in raw:
        assert SSE_EVENT.fullmatch(chunk + b"\n\n"), chunk[:200]
    return [json.loads(chunk[len(b"data: ") :]) for chunk in raw]


def metric(text: str, name: str, labels: str = "") -> float:
    """A sample's value from Prometheus text (0 when absent)."""
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def scrape(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=10).text


# --------------------------------------------------------------------------- health and info


def test_ping_health_and_info(tgi_url: str, request: pytest.FixtureRequest) -> None:
    executor = request.node.callspec.params["tgi_server"]
    ping = httpx.get(tgi_url + "/ping")
    assert ping.status_code == 200 and ping.content == b""
    assert httpx.get(tgi_url + "/health").status_code == 200
    info = httpx.get(tgi_url + "/info").json()
    assert info["max_total_tokens"] == 512 and info["max_input_tokens"] == 400
    assert info["max_concurrent_requests"] == 2
    assert info["model_pipeline_tag"] == "text-generation"
    assert info["executor"] == executor  # a .gguf model runs on llama.cpp without being told
    assert info["model_dtype"].startswith("torch.") if executor == "torch" else info["model_dtype"] == "BF16"
    assert f'streamhost_executor_info{{executor="{executor}"}} 1.0' in scrape(tgi_url)
    models = httpx.get(tgi_url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == info["model_id"]


# --------------------------------------------------------------------------- real clients


@pytest.fixture
def hub_client_online(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE also blocks InferenceClient from a local URL; the hub itself is never reached here."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_inference_client_streams_tokens_and_details(tgi_url: str, hub_client_online: None) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=tgi_url)
    events = list(
        client.text_generation(
            "The quick brown fox", max_new_tokens=8, stream=True, details=True, return_full_text=False, do_sample=False
        )
    )
    assert len(events) == 8
    final = events[-1]
    assert final.details is not None and final.details.finish_reason == "length"
    assert final.details.generated_tokens == 8
    assert all(e.generated_text is None for e in events[:-1])
    assert final.generated_text == "".join(e.token.text for e in events if not e.token.special)

    whole = client.text_generation(
        "The quick brown fox", max_new_tokens=8, details=True, return_full_text=False, do_sample=False
    )
    assert whole.generated_text == final.generated_text, "greedy streaming and non-streaming answers agree"
    assert [t.id for t in whole.details.tokens] == [e.token.id for e in events]


def test_inference_client_raises_validation_error(tgi_url: str, hub_client_online: None) -> None:
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import ValidationError

    with pytest.raises(ValidationError, match="temperature"):
        InferenceClient(model=tgi_url).text_generation("Hi", max_new_tokens=4, temperature=-1.0)


# --------------------------------------------------------------------------- byte-exact SSE


def test_generate_stream_is_byte_exact_tgi_sse(tgi_url: str) -> None:
    body = {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 12, "details": True, "do_sample": False}}
    with httpx.stream("POST", tgi_url + "/generate_stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        raw = response.read()
    assert b": keep-alive" not in raw and b"event:" not in raw and b"[DONE]" not in raw
    events = sse_events(raw)
    assert [e["index"] for e in events] == list(range(1, 13))
    for event in events[:-1]:
        assert list(event) == ["index", "token", "generated_text", "details"]
        assert event["generated_text"] is None and event["details"] is None
        assert list(event["token"]) == ["id", "text", "logprob", "special"]
    last = events[-1]
    assert last["details"] == {
        "finish_reason": "length",
        "generated_tokens": 12,
        "seed": None,
        "input_length": last["details"]["input_length"],
    }
    assert last["generated_text"] == "".join(e["token"]["text"] for e in events if not e["token"]["special"])


def test_stream_is_flushed_token_by_token(tgi_url: str) -> None:
    """The first token arrives long before the last: nothing buffers the stream."""
    body = {"inputs": "Count:", "parameters": {"max_new_tokens": 300, "do_sample": False}}
    started = time.monotonic()
    arrivals = []
    with httpx.stream("POST", tgi_url + "/generate_stream", json=body, timeout=30) as response:
        for _chunk in response.iter_raw():
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) > 10
    assert arrivals[0] < arrivals[-1] * 0.5, (arrivals[0], arrivals[-1])


def test_compat_routes_default_to_full_text_and_honour_stream(tgi_url: str) -> None:
    plain = httpx.post(tgi_url + "/", json={"inputs": "Hello", "parameters": {"max_new_tokens": 3}})
    assert plain.status_code == 200
    (answer,) = plain.json()  # POST / wraps the answer in a list
    assert answer["generated_text"].startswith("Hello"), "return_full_text defaults to true on / (TGI compat)"

    for path in ("/", "/invocations"):
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 3, "return_full_text": False}, "stream": True}
        streamed = httpx.post(tgi_url + path, json=body)
        assert streamed.headers["content-type"] == "text/event-stream"
        events = sse_events(streamed.content)
        assert len(events) == 3
        assert events[-1]["generated_text"] == "".join(e["token"]["text"] for e in events if not e["token"]["special"])

    invoked = httpx.post(tgi_url + "/invocations", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    assert isinstance(invoked.json(), list) and invoked.json()[0]["generated_text"].startswith("Hello")


def test_generate_sends_tgi_timing_headers(tgi_url: str) -> None:
    body = {
        "inputs": "Hello there",
        "parameters": {"max_new_tokens": 5, "details": True, "decoder_input_details": True},
    }
    response = httpx.post(tgi_url + "/generate", json=body)
    assert response.status_code == 200
    details = response.json()["details"]
    headers = response.headers
    for name in ("x-total-time", "x-validation-time", "x-queue-time", "x-inference-time", "x-time-per-token"):
        assert headers[name].isdigit(), name
    assert int(headers["x-generated-tokens"]) == details["generated_tokens"] == 5
    assert int(headers["x-prompt-tokens"]) == len(details["prefill"]) >= 1
    assert headers["x-compute-type"]


def test_best_of_returns_the_other_candidates(tgi_url: str) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 4, "best_of": 2, "do_sample": True, "details": True}}
    answer = httpx.post(tgi_url + "/generate", json=body).json()
    assert len(answer["details"]["best_of_sequences"]) == 1
    assert answer["details"]["best_of_sequences"][0]["generated_tokens"] == 4


def test_tokenize_gives_byte_offsets(tgi_url: str) -> None:
    tokens = httpx.post(tgi_url + "/tokenize", json={"inputs": "Héllo wörld"}).json()
    text = "Héllo wörld".encode()
    assert "".join(t["text"] for t in tokens) == "Héllo wörld"
    for token in tokens:
        assert text[token["start"] : token["stop"]].decode() == token["text"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error_type", "fragment"),
    [
        (
            "/generate",
            b'{"inputs": "x", "parameters": {"temperature": 0}}',
            JSON_HEADERS,
            422,
            "validation",
            "temperature",
        ),
        ("/generate", b'{"inputs": ""}', JSON_HEADERS, 422, "validation", "`inputs` cannot be empty"),
        (
            "/generate",
            b'{"inputs": "x", "parameters": {"max_new_tokens": 600}}',
            JSON_HEADERS,
            422,
            "validation",
            "512",
        ),
        (
            "/generate_stream",
            b'{"inputs": "x", "parameters": {"top_p": 1.5}}',
            JSON_HEADERS,
            422,
            "validation",
            "top_p",
        ),
        ("/generate", b'{"inputs": "x"', JSON_HEADERS, 400, "validation", "JSON"),
        ("/generate", b'{"inputs": 5}', JSON_HEADERS, 422, "validation", "inputs"),
        ("/generate", b'{"inputs": "x"}', {"content-type": "text/plain"}, 415, "validation", "Content-Type"),
        ("/invocations", b'{"neither": 1}', JSON_HEADERS, 422, "validation", "untagged enum"),
        ("/v1/chat/completions", b'{"messages": []}', JSON_HEADERS, 422, "validation", "messages"),
        ("/generate", b"[" * 100_000 + b"]" * 100_000, JSON_HEADERS, 400, "validation", "JSON"),
    ],
)
def test_errors_have_tgi_shapes_and_codes(tgi_url, path, body, headers, status, error_type, fragment) -> None:
    response = httpx.post(tgi_url + path, content=body, headers=headers)
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"error", "error_type"}
    assert payload["error_type"] == error_type and fragment in payload["error"]


def test_oversized_body_is_413(tgi_url: str) -> None:
    body = json.dumps({"inputs": "x" * 250_000}).encode()
    response = httpx.post(tgi_url + "/generate", content=body, headers=JSON_HEADERS)
    assert response.status_code == 413
    assert "200000" in response.json()["error"]


def test_unknown_route_and_method_are_json(tgi_url: str) -> None:
    missing = httpx.get(tgi_url + "/nope")
    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"
    wrong = httpx.get(tgi_url + "/generate")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_over_max_concurrent_requests_is_429(tgi_url: str) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 450, "do_sample": False}}
    streams = []
    with httpx.Client(timeout=30) as client:
        try:
            for _ in range(2):
                response = client.send(
                    client.build_request("POST", tgi_url + "/generate_stream", json=body), stream=True
                )
                assert response.status_code == 200
                chunks = response.iter_raw()  # kept: a collected iterator would close the connection
                next(chunks)  # the request is admitted and streaming
                streams.append((response, chunks))
            refused = httpx.post(tgi_url + "/generate", json=body)
            assert refused.status_code == 429
            assert refused.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
        finally:
            for response, _ in streams:
                response.close()


# --------------------------------------------------------------------------- disconnects and metrics


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_client_disconnect_aborts_the_generation(tgi_url: str) -> None:
    before = scrape(tgi_url)
    aborted0 = metric(before, "streamhost_engine_aborted_total")
    gone0 = metric(before, "streamhost_client_disconnects_total")
    tokens0 = metric(before, "streamhost_generated_tokens_total")
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 500, "do_sample": False}}
    with httpx.stream("POST", tgi_url + "/generate_stream", json=body, timeout=30) as response:
        lines = response.iter_lines()
        seen = 0
        for line in lines:
            if line.startswith("data:"):
                seen += 1
                if seen == 2:
                    break
    # The connection is closed: the engine must drop the request at its next step.
    assert _wait_for(lambda: metric(scrape(tgi_url), "streamhost_engine_aborted_total") > aborted0), "no abort seen"
    text = scrape(tgi_url)
    assert metric(text, "streamhost_client_disconnects_total") > gone0
    generated = metric(text, "streamhost_generated_tokens_total") - tokens0
    assert generated < 400, f"generation went on after the client left ({generated} tokens)"
    time.sleep(0.3)
    assert metric(scrape(tgi_url), "streamhost_generated_tokens_total") - tokens0 == generated, (
        "tokens still being made"
    )
    assert metric(text, "streamhost_requests_in_flight") == 0


def test_disconnect_during_a_non_streaming_answer_aborts_it(tgi_url: str) -> None:
    aborted0 = metric(scrape(tgi_url), "streamhost_engine_aborted_total")
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 500, "do_sample": False}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(tgi_url + "/generate", json=body, timeout=httpx.Timeout(30, read=0.2))
    assert _wait_for(lambda: metric(scrape(tgi_url), "streamhost_engine_aborted_total") > aborted0)


def test_metrics_expose_latency_histograms_and_counters(tgi_url: str) -> None:
    httpx.post(tgi_url + "/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 4}})
    response = httpx.get(tgi_url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "streamhost_time_to_first_token_seconds_bucket",
        "streamhost_inter_token_latency_seconds_bucket",
        "streamhost_request_duration_seconds_bucket",
        "streamhost_queue_size",
        "tgi_queue_size",
        "streamhost_batch_size",
        "tgi_batch_current_size",
        "streamhost_prompt_tokens_total",
        "streamhost_generated_tokens_total",
        "streamhost_engine_aborted_total",
        "streamhost_ready",
    ):
        assert re.search(rf"^{name}[ {{]", text, re.M), name
    assert metric(text, "streamhost_requests_total", '{route="/generate_stream",status="200"}') >= 1
    assert metric(text, "streamhost_time_to_first_token_seconds_count") >= 1
    assert metric(text, "streamhost_ready") == 1


def test_a_bad_request_does_not_disturb_a_running_stream(tgi_url: str) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 120, "do_sample": False}}
    result: dict = {}

    def stream() -> None:
        result["body"] = httpx.post(tgi_url + "/generate_stream", json=body, timeout=30).content

    thread = threading.Thread(target=stream)
    thread.start()
    for junk in (b"\xff\xfe", b"{", b'{"inputs": []}', b"null", b'{"inputs": "x", "parameters": {"seed": -1}}'):
        assert httpx.post(tgi_url + "/generate_stream", content=junk, headers=JSON_HEADERS).status_code in (400, 422)
    thread.join(30)
    events = sse_events(result["body"])
    assert len(events) == 120 and events[-1]["details"] is None and events[-1]["generated_text"]
