"""/metrics tells the truth: an abandoned request is a 499 (never a 5xx), and every load gauge
returns to 0 when nothing is in flight, on the model server and on the platform.

Requests are abandoned the way a user does it: a socket closed in the middle of a long
non-streaming answer, a streamed body closed after its first event (boto3 included). The tiny
model greedily generates up to 2000 tokens, so every abandoned request is still running when its
client leaves; the test waits for the server to show it in flight before closing.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest
from _platform_fixtures import REAL_COMMAND, PlatformProcess, deploy, unique
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from prometheus_client.parser import text_string_to_metric_families

from conftest import start_container

pytestmark = pytest.mark.timeout(300)

LONG = {"max_new_tokens": 2000, "do_sample": False}
LIMITS = {"MAX_TOTAL_TOKENS": "2048", "MAX_INPUT_TOKENS": "40"}
SERVER_LOAD_GAUGES = (
    "streamhost_requests_in_flight", "streamhost_engine_in_flight", "streamhost_queue_size", "tgi_queue_size",
    "streamhost_batch_size", "tgi_batch_current_size", "streamhost_last_step_batch_size",
)  # fmt: skip
PLATFORM_LOAD_GAUGES = ("streamhost_endpoint_in_flight_requests", "streamhost_endpoint_in_flight_streams")


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == want for k, want in labels.items()))


def server_errors(samples: list, name: str, label: str, route: str) -> float:
    return sum(
        v for n, lab, v in samples if n == name and lab.get(label) == route and lab.get("status", "").startswith("5")
    )


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


def open_request(url: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> socket.socket:
    """An HTTP/1.1 POST written to a raw socket, so the test decides when the client goes away."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    head = {
        "Host": parts.netloc,
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **(headers or {}),
    }
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items()), "", ""]
    sock.sendall("\r\n".join(lines).encode("latin-1") + body)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before {marker!r}: {seen[-300:]!r}"
        seen += chunk
    return seen


def running_on(url: str, count: int) -> Callable[[], bool]:
    return lambda: value(scrape(url), "tgi_batch_current_size") == count


def idle(url: str, gauges: tuple[str, ...]) -> Callable[[], bool]:
    def check() -> bool:
        samples = scrape(url)
        return all(value(samples, name) == 0 for name in gauges)

    return check


# --------------------------------------------------------------------------- the model server


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    container = start_container(
        ["--model-id", str(tiny_llama_dir)], tmp_path_factory.mktemp("metrics") / "server.log", LIMITS
    )
    yield container
    container.stop()


@pytest.mark.parametrize(
    ("path", "body", "streams"),
    [
        ("/generate", {"inputs": "Hello", "parameters": LONG}, False),
        ("/generate_stream", {"inputs": "Hello", "parameters": LONG}, True),
        ("/invocations", {"inputs": "Hello", "parameters": LONG}, False),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2000, "stream": True},
            True,
        ),
    ],
)
def test_abandoned_request_is_a_499_and_the_gauges_return_to_zero(server, path, body, streams):
    before = scrape(server.url)
    sock = open_request(server.url, path, json.dumps(body).encode())
    try:
        if streams:
            read_until(sock, b"data: ")  # the first token event arrived
        else:
            wait_for(running_on(server.url, 1), f"{path} is being generated")
    finally:
        sock.close()
    key = {"route": path, "status": "499"}
    wait_for(lambda: value(scrape(server.url), "streamhost_requests_total", **key) == value(before, "streamhost_requests_total", **key) + 1,
             f"{path} is counted as 499")  # fmt: skip
    after = scrape(server.url)
    assert (
        value(after, "streamhost_client_disconnects_total") == value(before, "streamhost_client_disconnects_total") + 1
    )
    assert server_errors(after, "streamhost_requests_total", "route", path) == server_errors(
        before, "streamhost_requests_total", "route", path
    )
    wait_for(idle(server.url, SERVER_LOAD_GAUGES), "every load gauge of the model server is 0")
    assert (
        value(scrape(server.url), "streamhost_engine_aborted_total")
        >= value(before, "streamhost_engine_aborted_total") + 1
    )


def test_gauges_read_zero_right_after_the_last_answer(server):
    """The batch-size gauges are read from the scheduler, not left at the last step's value."""
    for stream in (False, True):
        route = "/generate_stream" if stream else "/generate"
        response = httpx.post(
            f"{server.url}{route}", json={"inputs": "Hi", "parameters": {"max_new_tokens": 5}}, timeout=60
        )
        assert response.status_code == 200
        samples = scrape(server.url)
        assert {name: value(samples, name) for name in SERVER_LOAD_GAUGES} == dict.fromkeys(SERVER_LOAD_GAUGES, 0.0)


# --------------------------------------------------------------------------- the platform


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(tmp_path_factory.mktemp("platform-metrics"), container_command=REAL_COMMAND).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def endpoint(platform, tiny_llama_dir):
    name = unique("metrics")
    deploy(
        platform.sagemaker(),
        name,
        image="huggingface-pytorch-tgi-inference:2.4.0",
        env={"HF_MODEL_ID": str(tiny_llama_dir), **LIMITS},
    )
    return name


def instance_url(platform: PlatformProcess, name: str) -> str:
    view = platform.instances(name)
    return next(i["url"] for v in view["variants"] for i in v["instances"])


def signed_headers(platform: PlatformProcess, path: str, body: bytes) -> dict[str, str]:
    request = AWSRequest(
        method="POST", url=f"{platform.url}{path}", data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials("x", "y"), "sagemaker", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def test_platform_counts_an_abandoned_invocation_as_499(platform, endpoint):
    model_server = instance_url(platform, endpoint)
    before, server_before = scrape(platform.url), scrape(model_server)
    path = f"/endpoints/{endpoint}/invocations"
    body = json.dumps({"inputs": "Hello", "parameters": LONG}).encode()
    sock = open_request(platform.url, path, body, signed_headers(platform, path, body))
    try:
        wait_for(running_on(model_server, 1), "the invocation is being generated")
    finally:
        sock.close()
    key = {"operation": "InvokeEndpoint", "status": "499"}
    wait_for(lambda: value(scrape(platform.url), "streamhost_platform_requests_total", **key)
             == value(before, "streamhost_platform_requests_total", **key) + 1, "the platform counts a 499")  # fmt: skip
    after = scrape(platform.url)
    assert value(after, "streamhost_client_disconnects_total", operation="InvokeEndpoint") == (
        value(before, "streamhost_client_disconnects_total", operation="InvokeEndpoint") + 1
    )
    assert server_errors(after, "streamhost_platform_requests_total", "operation", "InvokeEndpoint") == 0
    # The platform closed its upstream connection: the model server saw the same client leave.
    wait_for(lambda: value(scrape(model_server), "streamhost_requests_total", route="/invocations", status="499")
             == value(server_before, "streamhost_requests_total", route="/invocations", status="499") + 1,
             "the model server counts a 499")  # fmt: skip
    wait_for(idle(platform.url, PLATFORM_LOAD_GAUGES), "the platform's in-flight gauges are 0")
    wait_for(idle(model_server, SERVER_LOAD_GAUGES), "the model server's load gauges are 0")


def test_platform_counts_a_closed_boto3_stream_as_499(platform, endpoint):
    model_server = instance_url(platform, endpoint)
    before = scrape(platform.url)
    response = platform.runtime().invoke_endpoint_with_response_stream(
        EndpointName=endpoint, ContentType="application/json",
        Body=json.dumps({"inputs": "Hello", "parameters": LONG, "stream": True}))  # fmt: skip
    first = next(iter(response["Body"]))
    assert first["PayloadPart"]["Bytes"].startswith(b"data: ")
    assert value(scrape(platform.url), "streamhost_endpoint_in_flight_streams", endpoint=endpoint) == 1
    response["Body"].close()
    key = {"operation": "InvokeEndpointWithResponseStream", "status": "499"}
    wait_for(lambda: value(scrape(platform.url), "streamhost_platform_requests_total", **key)
             == value(before, "streamhost_platform_requests_total", **key) + 1, "the platform counts a 499")  # fmt: skip
    after = scrape(platform.url)
    assert value(after, "streamhost_client_disconnects_total", operation="InvokeEndpointWithResponseStream") == (
        value(before, "streamhost_client_disconnects_total", operation="InvokeEndpointWithResponseStream") + 1
    )
    assert (
        server_errors(after, "streamhost_platform_requests_total", "operation", "InvokeEndpointWithResponseStream") == 0
    )
    wait_for(idle(platform.url, PLATFORM_LOAD_GAUGES), "the platform's in-flight gauges are 0")
    wait_for(idle(model_server, SERVER_LOAD_GAUGES), "the model server's load gauges are 0")
    # A stream read to its end is a 200, and the gauges are 0 at once.
    done = platform.runtime().invoke_endpoint_with_response_stream(
        EndpointName=endpoint, ContentType="application/json",
        Body=json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": 4}, "stream": True}))  # fmt: skip
    assert len([event for event in done["Body"]]) >= 1
    samples = scrape(platform.url)
    assert (
        value(samples, "streamhost_platform_requests_total", operation="InvokeEndpointWithResponseStream", status="200")
        >= 1
    )
    assert all(value(samples, name) == 0 for name in PLATFORM_LOAD_GAUGES)
