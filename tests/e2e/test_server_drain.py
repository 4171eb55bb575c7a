"""SIGTERM drains: /ping says 503 at once, the stream in flight runs to its end, the process exits 0.

The server here is an LMI one with ``option.enable_streaming=true``, so the drained stream also
checks the legacy ``{"outputs": [...]}`` lines end to end.
"""

from __future__ import annotations

import json
import signal
import time

import httpx


def test_sigterm_drains_in_flight_streams_then_exits_zero(tiny_llama_dir, containers) -> None:
    folder = containers.lmi_dir(tiny_llama_dir, {"option.enable_streaming": "true"})
    server = containers.start(["--model-dir", str(folder)])
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 400, "do_sample": False}}
    with httpx.stream("POST", server.url + "/invocations", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/jsonlines"
        lines = response.iter_lines()
        received = [next(lines)]
        server.proc.send_signal(signal.SIGTERM)

        deadline = time.monotonic() + 5
        while httpx.get(server.url + "/ping", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "/ping still says ready after SIGTERM"
            time.sleep(0.02)
        refused = httpx.post(server.url + "/invocations", json=body, timeout=5)
        assert refused.status_code == 503 and refused.json()["code"] == 503
        assert server.proc.poll() is None, "the process must wait for the stream in flight"

        received.extend(lines)
    assert len(received) > 300, "the stream ran to its end"
    for line in received:
        outputs = json.loads(line)["outputs"]
        assert isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], str)
    assert server.proc.wait(20) == 0, server.log()[-2000:]
    assert "draining" in server.log()


def test_sigterm_while_idle_exits_zero_quickly(tiny_llama_dir, containers) -> None:
    server = containers.start(["--model-id", str(tiny_llama_dir)])
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0, server.log()[-2000:]
    assert time.monotonic() - started < 5


def test_a_model_that_cannot_load_exits_1_with_a_clear_message(containers, tmp_path) -> None:
    missing = tmp_path / "no-model-here"
    missing.mkdir()
    server = containers.start(["--model-id", str(missing)], wait=False)
    assert server.proc.wait(60) == 1
    log = server.log()
    assert "cannot serve" in log and "no config.json" in log
    assert "Traceback" not in log


def test_a_stream_outliving_the_drain_timeout_ends_with_an_error_event(tiny_llama_dir, containers) -> None:
    server = containers.start(["--model-id", str(tiny_llama_dir), "--drain-timeout", "0.3"])
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 1500, "do_sample": False}}
    with httpx.stream("POST", server.url + "/generate_stream", json=body, timeout=60) as response:
        events = response.iter_lines()
        first = next(events)
        assert first.startswith("data: {")
        server.proc.send_signal(signal.SIGTERM)
        rest = [line for line in events if line]
    assert len(rest) < 1400, "the stream was ended by the drain timeout"
    last = json.loads(rest[-1][len("data:") :])
    assert last["error_type"] == "healthcheck" and "shutting down" in last["error"]
    assert server.proc.wait(20) == 0
