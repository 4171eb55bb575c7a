"""Failures no real model produces on demand, injected through a scripted engine behind the real app.

The app runs in uvicorn on a real socket (in a thread of this process); the engine is a stand-in whose
behaviour the prompt chooses: ``fail:N`` fails after N tokens, ``overload`` and ``draining`` refuse up
front. This checks the in-stream error events of each dialect, the 429/503 mapping, and that a model
which fails to load is reported as fatal.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import httpx
import pytest
import uvicorn

from streamhost.engine.errors import EngineNotReadyError, GenerationError, OverloadedError
from streamhost.engine.limits import EngineLimits
from streamhost.engine.types import FinishReason, GenerationDetails, TokenEvent
from streamhost.launcher import free_port
from streamhost.server.app import create_app
from streamhost.server.config import ServerSettings
from streamhost.server.serving_properties import ServingProperties
from streamhost.server.state import ServerState


class ScriptedEngine:
    """Just enough of streamhost.engine.Engine for the server."""

    def __init__(self) -> None:
        self.limits = EngineLimits(
            max_input_tokens=100,
            max_total_tokens=200,
            max_batch_prefill_tokens=200,
            max_batch_total_tokens=1000,
            max_batch_size=4,
        )
        self.stats = SimpleNamespace(
            waiting=0,
            running=0,
            steps=0,
            prompt_tokens=0,
            generated_tokens=0,
            aborted=0,
            failed=0,
            finished={},
            last_batch_size=0,
        )
        self.executor = SimpleNamespace(device=SimpleNamespace(type="cpu"))
        self.tokenizer = None
        self.ready = False
        self.in_flight = 0

    async def start(self) -> None:
        self.ready = True

    def stop_accepting(self) -> None:
        self.ready = False

    async def stop(self) -> None:
        self.ready = False

    def info(self) -> dict:
        return {"dtype": "float32", "device": "cpu"}

    async def generate(self, prompt, params=None, request_id=None, *, stream=True):
        if prompt == "overload":
            raise OverloadedError()
        if prompt == "draining":
            raise EngineNotReadyError("the engine is draining")
        fail_after = int(prompt.split(":")[1]) if prompt.startswith("fail:") else None
        count = params.max_new_tokens if params and params.max_new_tokens else 3
        self.in_flight += 1
        try:
            for i in range(count):
                await asyncio.sleep(0)
                if fail_after is not None and i == fail_after:
                    raise GenerationError("the device fell over")
                event = TokenEvent(i, 100 + i, f" t{i}", -0.5, False)
                if i == count - 1:
                    event.generated_text = "".join(f" t{j}" for j in range(count))
                    event.details = GenerationDetails(FinishReason.LENGTH, count, 2, None)
                yield event
        finally:
            self.in_flight -= 1


@dataclass
class Running:
    url: str
    state: ServerState
    fatal: list
    server: uvicorn.Server
    thread: threading.Thread


def serve_in_thread(settings: ServerSettings, loader) -> Running:
    state = ServerState(settings)
    fatal: list = []
    app = create_app(settings, state=state, loader=loader, on_fatal=fatal.append)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the in-thread server did not start"
        time.sleep(0.02)
    return Running(f"http://127.0.0.1:{port}", state, fatal, server, thread)


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 10
    while httpx.get(url + "/ping").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture(scope="module", params=["tgi", "lmi", "lmi-sse"])
def scripted(request):
    properties = ServingProperties.load("option.output_formatter=sse\n" if request.param == "lmi-sse" else "")
    settings = ServerSettings(model_id="scripted", dialect=request.param[:3], properties=properties)
    running = serve_in_thread(settings, lambda s: ScriptedEngine())
    _wait_ready(running.url)
    yield running
    running.server.should_exit = True
    running.thread.join(10)


def _post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=10)


def test_generation_failure_mid_stream_ends_with_the_dialect_error_event(scripted: Running) -> None:
    body = {"inputs": "fail:2", "parameters": {"max_new_tokens": 5}, "stream": True}
    if scripted.state.settings.dialect == "tgi":
        raw = _post(scripted.url, "/generate_stream", body).content
        events = raw.split(b"\n\n")[:-1]
        assert len(events) == 3 and raw.endswith(b"\n\n")
        assert json.loads(events[0][5:])["token"]["text"] == " t0"
        assert (
            events[-1]
            == b'data: {"error":"Request failed during generation: the device fell over","error_type":"generation"}'
        )
    elif scripted.state.settings.properties.output_formatter == "sse":
        response = _post(scripted.url, "/invocations", body)
        assert response.headers["content-type"].startswith("text/event-stream")
        events = response.content.split(b"\n\n")[:-1]
        assert response.content.endswith(b"\n\n") and len(events) == 3
        assert all(e.startswith(b"data: {") for e in events), events
        assert json.loads(events[0][6:]) == {"token": {"id": 100, "text": " t0", "log_prob": -0.5}}
        assert json.loads(events[-1][6:])["details"]["finish_reason"] == "error"
    else:
        raw = _post(scripted.url, "/invocations", body).content
        lines = raw.split(b"\n")[:-1]
        assert raw.endswith(b"\n") and len(lines) == 3
        last = json.loads(lines[-1])
        assert last["details"]["finish_reason"] == "error"
        assert last["token"]["error_msg"] == "the device fell over"
        assert last["generated_text"] == " t0 t1"


def test_openai_stream_failure_is_an_error_event(scripted: Running) -> None:
    raw = _post(scripted.url, "/v1/completions", {"prompt": "fail:1", "max_tokens": 4, "stream": True}).content
    events = raw.split(b"\n\n")[:-1]
    error = json.loads(events[-1][5:])
    assert error == {
        "error": {"message": "Request failed during generation: the device fell over", "http_status_code": 424}
    }


def test_refusals_before_the_stream_keep_their_status(scripted: Running) -> None:
    lmi = scripted.state.settings.dialect == "lmi"
    path = "/invocations"
    overloaded = _post(scripted.url, path, {"inputs": "overload", "stream": True})
    draining = _post(scripted.url, path, {"inputs": "draining", "stream": True})
    failing_first = _post(scripted.url, path, {"inputs": "fail:0", "stream": True})
    if lmi:
        assert (overloaded.status_code, draining.status_code, failing_first.status_code) == (503, 503, 424)
        assert overloaded.json()["code"] == 503
    else:
        assert overloaded.status_code == 429 and overloaded.json()["error_type"] == "overloaded"
        assert draining.status_code == 503 and draining.json()["error_type"] == "healthcheck"
        assert failing_first.status_code == 424 and failing_first.json()["error_type"] == "generation"


def test_a_model_that_fails_to_load_is_fatal_and_ping_stays_503() -> None:
    def broken(settings):
        raise OSError("no weights in /nowhere")

    running = serve_in_thread(ServerSettings(model_id="/nowhere"), broken)
    try:
        deadline = time.monotonic() + 10
        while not running.fatal:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert "no weights in /nowhere" in running.fatal[0]
        ping = httpx.get(running.url + "/ping")
        assert ping.status_code == 503 and ping.json()["error_type"] == "healthcheck"
        refused = _post(running.url, "/generate", {"inputs": "x"})
        assert refused.status_code == 503 and "failed to load" in refused.json()["error"]
    finally:
        running.server.should_exit = True
        running.thread.join(10)


def test_ping_is_503_while_the_model_loads() -> None:
    release = threading.Event()

    def slow(settings):
        release.wait(10)
        return ScriptedEngine()

    running = serve_in_thread(ServerSettings(model_id="slow"), slow)
    try:
        assert httpx.get(running.url + "/ping").status_code == 503
        assert httpx.get(running.url + "/metrics").status_code == 200
        assert _post(running.url, "/generate", {"inputs": "x"}).status_code == 503
        release.set()
        _wait_ready(running.url)
    finally:
        release.set()
        running.server.should_exit = True
        running.thread.join(10)
