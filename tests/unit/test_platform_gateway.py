"""Gateway behaviour that needs a precise setup: an instance believed ready that is actually gone.

The gateway runs in process, driven through its ASGI-level ``invoke``; one upstream is the stand-in
model server (a real process), the other a port where nothing listens.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from streamhost.launcher import free_port
from streamhost.platform.artifacts import ArtifactStore
from streamhost.platform.gateway import Gateway
from streamhost.platform.instances import READY, UNHEALTHY, Instance, LaunchSpec
from streamhost.platform.metrics import PlatformMetrics
from streamhost.platform.settings import PlatformSettings
from streamhost.platform.store import Store
from streamhost.platform.supervisor import Deployment, Supervisor
from streamhost.protocols.eventstream import EventStreamDecoder

STUB = Path(__file__).resolve().parents[1] / "e2e" / "_stub_container.py"


@pytest.fixture(scope="module")
def stub_url(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("stub") / "stub.log", "wb")
    proc = subprocess.Popen([sys.executable, str(STUB), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "STUB_NAME": "alive"})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


SNAPSHOT = {
    "config_name": "c",
    "config": {"ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "m", "InitialInstanceCount": 2}]},
    "models": {"m": {"spec": {"PrimaryContainer": {"Image": "streamhost"}}, "eula_required": False}},
}


async def _setup(tmp_path, urls):
    settings = PlatformSettings(state_dir=tmp_path, ready_wait=1.0)
    store = Store(settings.db_path)
    metrics = PlatformMetrics()
    supervisor = Supervisor(store, settings, ArtifactStore(settings.artifacts_dir), metrics)
    deployment = Deployment(supervisor, "ep", SNAPSHOT)
    variant = deployment.variants[0]
    for index, url in enumerate(urls):
        instance = Instance("ep", variant.name, index, LaunchSpec(url=url), tmp_path)
        instance.state = READY
        variant.instances.append(instance)
    supervisor.live["ep"] = deployment
    return Gateway(supervisor, store, metrics, settings), variant


async def _invoke(gateway, body: bytes, stream: bool):
    sent = []
    delivered = asyncio.Event()

    async def receive():
        if not delivered.is_set():
            delivered.set()
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    status = await gateway.invoke(receive, send, "ep", body, {"content-type": "application/json"}, stream)
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return status, headers, payload


def test_dead_instance_is_retried_on_the_live_one(tmp_path, stub_url):
    async def scenario():
        gateway, variant = await _setup(tmp_path, [f"http://127.0.0.1:{free_port()}", stub_url])
        dead, alive = variant.instances
        dead.in_flight = -5  # make least-outstanding pick the dead one first
        body = json.dumps({"inputs": "x", "parameters": {"max_new_tokens": 2}}).encode()
        status, headers, payload = await _invoke(gateway, body, stream=False)
        assert status == 200
        assert json.loads(payload)[0]["instance"] == "alive"
        assert dead.state == UNHEALTHY
        assert dead.in_flight == -5 and alive.in_flight == 0  # counts restored after the retry
        await gateway.close()
        await gateway.supervisor.client.aclose()

    asyncio.run(scenario())


def test_dead_instance_is_retried_before_a_stream_starts(tmp_path, stub_url):
    async def scenario():
        gateway, variant = await _setup(tmp_path, [f"http://127.0.0.1:{free_port()}", stub_url])
        variant.instances[0].in_flight = -5
        body = json.dumps({"inputs": "x", "parameters": {"max_new_tokens": 3}, "stream": True}).encode()
        status, headers, payload = await _invoke(gateway, body, stream=True)
        assert status == 200
        assert headers["content-type"] == "application/vnd.amazon.eventstream"
        messages = EventStreamDecoder().feed(payload)
        assert [m.event_type for m in messages] == ["PayloadPart"] * 3
        assert b"".join(m.payload for m in messages).count(b"data:") == 3
        await gateway.close()
        await gateway.supervisor.client.aclose()

    asyncio.run(scenario())


def test_no_ready_instance_is_service_unavailable(tmp_path):
    async def scenario():
        gateway, variant = await _setup(tmp_path, [f"http://127.0.0.1:{free_port()}"])
        variant.instances[0].state = UNHEALTHY
        started = time.monotonic()
        status, headers, payload = await _invoke(gateway, b'{"inputs": "x"}', stream=True)
        assert status == 503
        assert headers["x-amzn-ErrorType"] == "ServiceUnavailable"
        assert "restarting" in json.loads(payload)["Message"]
        assert time.monotonic() - started >= 0.9  # waited ready_wait for an instance first
        await gateway.close()
        await gateway.supervisor.client.aclose()

    asyncio.run(scenario())
