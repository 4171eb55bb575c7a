"""The runtime gateway with real boto3 clients: invoke, stream, routing, errors, failures.

Model servers are the stand-in stub (real processes, real sockets, the container contract).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import httpx
import pytest
from _platform_fixtures import STUB, PlatformProcess, deploy, free_port, stub_stats, tgi_body, unique, wait_in_service

from streamhost.client.iterators import LineIterator
from streamhost.protocols.eventstream import EventStreamDecoder


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(tmp_path_factory.mktemp("platform-runtime")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def sm(platform):
    return platform.sagemaker()


@pytest.fixture(scope="module")
def rt(platform):
    return platform.runtime()


@pytest.fixture(scope="module")
def pair(platform, sm):
    """One endpoint with InitialInstanceCount 2."""
    return deploy(sm, unique("pair"), count=2)


def sse_events(lines):
    return [json.loads(line[len(b"data:") :]) for line in lines if line.startswith(b"data:")]


def test_invoke_forwards_headers_and_body(rt, pair):
    response = rt.invoke_endpoint(
        EndpointName=pair, ContentType="application/json", Accept="application/json",
        CustomAttributes="accept_eula=true;trace=1", Body=tgi_body(4),
    )  # fmt: skip
    answer = json.loads(response["Body"].read())[0]
    assert answer["generated_text"] == "t0 t1 t2 t3 "
    assert answer["custom_attributes"] == "accept_eula=true;trace=1"
    assert (answer["content_type"], answer["accept"]) == ("application/json", "application/json")
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    assert response["CustomAttributes"] == "echo=accept_eula=true;trace=1"


def test_stream_with_line_iterator_arrives_incrementally(rt, pair):
    started = time.monotonic()
    response = rt.invoke_endpoint_with_response_stream(
        EndpointName=pair, ContentType="application/json", Body=tgi_body(10, stream=True, delay=0.1)
    )
    assert response["ContentType"].startswith("text/event-stream")
    arrivals, lines = [], []
    for line in LineIterator(response["Body"]):
        arrivals.append(time.monotonic() - started)
        lines.append(line)
    events = sse_events(lines)
    assert [e["token"]["text"] for e in events] == [f"t{i} " for i in range(10)]
    assert events[-1]["generated_text"] == "".join(f"t{i} " for i in range(10))
    # Flushed per event: the first token arrives long before the last (tokens are 0.1 s apart).
    assert arrivals[-1] - arrivals[0] > 0.6


def test_event_stream_is_chunked_and_framed(platform, pair):
    body = tgi_body(3, stream=True)
    response = platform.signed(
        "POST", f"/endpoints/{pair}/invocations-response-stream", body, {"Content-Type": "application/json"}
    )
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["x-amzn-sagemaker-content-type"].startswith("text/event-stream")
    decoder = EventStreamDecoder()
    messages = decoder.feed(response.content)
    decoder.close()
    assert {m.event_type for m in messages} == {"PayloadPart"}
    payload = b"".join(m.payload for m in messages)
    assert payload.count(b"data:") == 3


def test_load_spreads_over_both_instances(platform, rt, pair):
    before = {i["name"]: i["served"] for i in platform.instances(pair)["variants"][0]["instances"]}

    def one(_):
        response = rt.invoke_endpoint_with_response_stream(
            EndpointName=pair, ContentType="application/json", Body=tgi_body(5, stream=True, delay=0.05)
        )
        return sse_events(list(LineIterator(response["Body"])))[-1]["instance"]

    with ThreadPoolExecutor(8) as pool:
        served_by = list(pool.map(one, range(16)))
    assert len(set(served_by)) == 2
    after = {i["name"]: i["served"] for i in platform.instances(pair)["variants"][0]["instances"]}
    for name in after:
        assert after[name] - before[name] >= 4, (before, after)


def test_container_error_becomes_model_error(rt, pair):
    for call in (rt.invoke_endpoint, rt.invoke_endpoint_with_response_stream):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            call(EndpointName=pair, ContentType="application/json", Body=tgi_body(2, stream=True, status=422))
        error = info.value.response
        assert error["Error"]["Code"] == "ModelError"
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert error["OriginalStatusCode"] == 422
        assert "stub error 422" in error["OriginalMessage"]
        assert "Received client error (422) from AllTraffic" in error["Error"]["Message"]


def test_client_disconnect_aborts_the_container_stream(platform, pair):
    instances = platform.instances(pair)["variants"][0]["instances"]
    aborted_before = sum(stub_stats(i["url"])["aborted"] for i in instances)
    url, headers, body = _signed_stream_request(platform, pair, tgi_body(200, stream=True, delay=0.05))
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", url, content=body, headers=headers) as response:
            assert response.status_code == 200
            next(response.iter_raw())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if sum(stub_stats(i["url"])["aborted"] for i in instances) > aborted_before:
            break
        time.sleep(0.1)
    assert sum(stub_stats(i["url"])["aborted"] for i in instances) == aborted_before + 1
    assert all(i["in_flight"] == 0 for i in platform.instances(pair)["variants"][0]["instances"])


def _signed_stream_request(platform, endpoint, body):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{platform.url}/endpoints/{endpoint}/invocations-response-stream"
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials("x", "y"), "sagemaker", "us-east-1").add_auth(request)
    return url, dict(request.headers.items()), body


def test_target_variant_and_weights(platform, sm, rt):
    name = unique("variants")
    for suffix in ("a", "b"):
        sm.create_model(
            ModelName=f"{name}-{suffix}", PrimaryContainer={"Image": "streamhost", "Environment": {"STUB_NAME": suffix}}
        )
    deploy_variants = [
        {"VariantName": "A", "ModelName": f"{name}-a", "InitialInstanceCount": 1, "InitialVariantWeight": 1.0},
        {"VariantName": "B", "ModelName": f"{name}-b", "InitialInstanceCount": 1, "InitialVariantWeight": 0.0,
         "RoutingConfig": {"RoutingStrategy": "RANDOM"}},
    ]  # fmt: skip
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=deploy_variants)
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    wait_in_service(sm, name)
    described = sm.describe_endpoint(EndpointName=name)
    assert [v["CurrentWeight"] for v in described["ProductionVariants"]] == [1.0, 0.0]
    for _ in range(5):
        response = rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Body=tgi_body(1))
        assert response["InvokedProductionVariant"] == "A"
    response = rt.invoke_endpoint(
        EndpointName=name, ContentType="application/json", Body=tgi_body(1), TargetVariant="B"
    )
    assert response["InvokedProductionVariant"] == "B"
    assert json.loads(response["Body"].read())[0]["instance"] == "b"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Body=tgi_body(1), TargetVariant="C")
    assert info.value.response["Error"]["Code"] == "ValidationError"
    sm.delete_endpoint(EndpointName=name)


def test_eula_gated_model_needs_accept_eula(sm, rt):
    name = unique("gated")
    deploy(sm, name, env={"HF_MODEL_ID": "meta-llama/Llama-2-7b-chat-hf"})  # eula_required in the catalog
    with pytest.raises(botocore.exceptions.ClientError) as info:
        rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Body=tgi_body(1))
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert "accept_eula=true" in info.value.response["Error"]["Message"]
    response = rt.invoke_endpoint(
        EndpointName=name, ContentType="application/json", Body=tgi_body(1), CustomAttributes="accept_eula=true"
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    sm.delete_endpoint(EndpointName=name)


def test_lmi_image_runs_the_lmi_dialect(sm, rt):
    name = unique("lmi")
    deploy(sm, name, image="763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.29.0-lmi11.0.0-cu124")
    response = rt.invoke_endpoint_with_response_stream(
        EndpointName=name, ContentType="application/json", Body=tgi_body(3, stream=True)
    )
    assert response["ContentType"] == "application/jsonlines"
    lines = list(LineIterator(response["Body"]))
    assert [json.loads(line)["token"]["text"] for line in lines] == ["t0 ", "t1 ", "t2 "]
    sm.delete_endpoint(EndpointName=name)


def test_external_server_url_image(sm, rt, tmp_path):
    port = free_port()
    log = open(tmp_path / "external.log", "wb")
    server = subprocess.Popen([sys.executable, str(STUB), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "STUB_NAME": "external"})  # fmt: skip
    try:
        name = unique("ext")
        deploy(sm, name, image=f"http://127.0.0.1:{port}")
        response = rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Body=tgi_body(2))
        assert json.loads(response["Body"].read())[0]["instance"] == "external"
        sm.delete_endpoint(EndpointName=name)
        sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig={"Delay": 1})
        assert server.poll() is None  # the platform does not own an external server
    finally:
        server.terminate()
        server.wait(10)


def test_crash_mid_stream_is_a_model_stream_error(platform, rt, pair):
    response = rt.invoke_endpoint_with_response_stream(
        EndpointName=pair, ContentType="application/json", Body=tgi_body(10, stream=True, crash_after=3)
    )
    lines = []
    with pytest.raises(botocore.exceptions.EventStreamError) as info:
        for line in LineIterator(response["Body"]):
            lines.append(line)
    assert len(sse_events(lines)) == 3
    assert info.value.response["Error"]["Code"] == "ModelStreamError"
    _wait_all_ready(platform, pair)


def _wait_all_ready(platform, endpoint, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        instances = platform.instances(endpoint)["variants"][0]["instances"]
        if all(i["state"] == "ready" for i in instances):
            return instances
        time.sleep(0.2)
    raise AssertionError(f"instances not ready: {platform.instances(endpoint)}")


def test_instance_killed_under_traffic(platform, sm, rt, pair):
    instances = _wait_all_ready(platform, pair)
    victim = instances[0]
    restarts_before = victim["restarts"]
    failures, done = [], []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                response = rt.invoke_endpoint_with_response_stream(
                    EndpointName=pair, ContentType="application/json", Body=tgi_body(3, stream=True)
                )
                events = sse_events(list(LineIterator(response["Body"])))
                assert len(events) == 3
                done.append(1)
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    os.kill(victim["pid"], signal.SIGKILL)
    time.sleep(2.0)
    assert sm.describe_endpoint(EndpointName=pair)["EndpointStatus"] == "InService"
    stop.set()
    for t in threads:
        t.join(30)
    # Requests that were mid-stream on the killed instance end with ModelStreamError; none may
    # fail before streaming began (those are retried on the other instance).
    assert all("ModelStreamError" in f for f in failures), failures
    assert len(done) > 10
    instances = _wait_all_ready(platform, pair)
    assert instances[0]["restarts"] == restarts_before + 1
    assert instances[0]["pid"] != victim["pid"]


def test_dead_instance_is_retried_before_streaming(platform, rt, pair):
    """Kill an instance between requests: the gateway's next request to it fails to connect and is retried."""
    instances = _wait_all_ready(platform, pair)
    os.kill(instances[1]["pid"], signal.SIGKILL)
    for _ in range(6):
        response = rt.invoke_endpoint(EndpointName=pair, ContentType="application/json", Body=tgi_body(2))
        assert json.loads(response["Body"].read())[0]["generated_text"] == "t0 t1 "
    _wait_all_ready(platform, pair)
    text = httpx.get(f"{platform.url}/metrics").text
    assert f'streamhost_instance_restarts_total{{endpoint="{pair}",variant="AllTraffic"}}' in text
