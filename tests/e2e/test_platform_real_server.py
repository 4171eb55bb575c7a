"""The platform with the real model server (``streamhost container``) on the tiny model, end to end.

Few model processes on purpose (the machine has two cores): one endpoint with two instances
carries the lifecycle, streaming, load spreading, an instance killed under traffic, an update to
a one-instance config under traffic, and a platform restart after SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from _platform_fixtures import REAL_COMMAND, PlatformProcess, unique, wait_in_service

from streamhost.client.iterators import LineIterator, TokenIterator

pytestmark = pytest.mark.timeout(300)


def body(tokens: int = 6, stream: bool = True) -> bytes:
    return json.dumps({"inputs": "Hello there", "parameters": {"max_new_tokens": tokens}, "stream": stream}).encode()


def ready_instances(platform, name, count, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = platform.instances(name)
        instances = [i for v in view["variants"] for i in v["instances"]]
        if len(instances) == count and all(i["state"] == "ready" for i in instances):
            return instances
        time.sleep(0.2)
    raise AssertionError(f"expected {count} ready instances: {platform.instances(name)}")


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(tmp_path_factory.mktemp("platform-real"), container_command=REAL_COMMAND).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def endpoint(platform, tiny_llama_dir):
    sm = platform.sagemaker()
    name = unique("tiny")
    env = {"HF_MODEL_ID": str(tiny_llama_dir), "MAX_TOTAL_TOKENS": "512", "MAX_INPUT_TOKENS": "256"}
    image = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4.0-tgi2.4.0-gpu-py311-cu124-ubuntu22.04"
    sm.create_model(ModelName=name, PrimaryContainer={"Image": image, "Environment": env},
                    ExecutionRoleArn="arn:aws:iam::123456789012:role/x")  # fmt: skip
    for config, count in ((name, 2), (f"{name}-one", 1)):
        sm.create_endpoint_config(EndpointConfigName=config, ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": count,
             "InstanceType": "ml.g5.xlarge", "ContainerStartupHealthCheckTimeoutInSeconds": 120}])  # fmt: skip
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    wait_in_service(sm, name)
    return name


def test_invoke_and_stream(platform, endpoint):
    rt = platform.runtime()
    answer = json.loads(
        rt.invoke_endpoint(EndpointName=endpoint, ContentType="application/json", Body=body(4, False))["Body"].read()
    )
    assert isinstance(answer, list) and answer[0]["generated_text"].startswith("Hello there")
    response = rt.invoke_endpoint_with_response_stream(
        EndpointName=endpoint, ContentType="application/json", Body=body(6)
    )
    assert response["ContentType"].startswith("text/event-stream")
    events = [json.loads(line[5:]) for line in LineIterator(response["Body"]) if line.startswith(b"data:")]
    assert len(events) == 6
    # /invocations returns the full text (prompt + generation), as TGI's SageMaker route does.
    assert events[-1]["generated_text"] == "Hello there" + "".join(e["token"]["text"] for e in events)
    response = rt.invoke_endpoint_with_response_stream(
        EndpointName=endpoint, ContentType="application/json", Body=body(5)
    )
    # Greedy decoding: the same prompt with fewer tokens streams a prefix of the same text.
    assert "".join(TokenIterator(response["Body"])) == "".join(e["token"]["text"] for e in events[:5])


def test_load_spreads_over_two_real_instances(platform, endpoint):
    rt = platform.runtime()
    before = {i["name"]: i["served"] for i in ready_instances(platform, endpoint, 2)}
    errors = []

    def stream():
        try:
            response = rt.invoke_endpoint_with_response_stream(
                EndpointName=endpoint, ContentType="application/json", Body=body(16)
            )
            assert len([line for line in LineIterator(response["Body"]) if line.startswith(b"data:")]) == 16
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=stream) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    after = {i["name"]: i["served"] for i in platform.instances(endpoint)["variants"][0]["instances"]}
    assert all(after[n] - before[n] >= 2 for n in after), (before, after)


def test_instance_killed_under_traffic(platform, endpoint):
    rt, sm = platform.runtime(), platform.sagemaker()
    victim = ready_instances(platform, endpoint, 2)[0]
    failures, done, stop = [], [], threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                response = rt.invoke_endpoint_with_response_stream(
                    EndpointName=endpoint, ContentType="application/json", Body=body(4)
                )
                list(LineIterator(response["Body"]))
                done.append(1)
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(victim["pid"], signal.SIGKILL)
    time.sleep(1.5)
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService"
    stop.set()
    for t in threads:
        t.join(60)
    assert all("ModelStreamError" in f for f in failures), failures
    assert len(done) >= 5
    instances = ready_instances(platform, endpoint, 2)
    assert instances[0]["restarts"] >= 1 and instances[0]["pid"] != victim["pid"]


def test_update_under_traffic_then_restart_after_sigkill(platform, endpoint):
    rt, sm = platform.runtime(), platform.sagemaker()
    ready_instances(platform, endpoint, 2)
    failures, done, stop = [], [], threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                response = rt.invoke_endpoint_with_response_stream(
                    EndpointName=endpoint, ContentType="application/json", Body=body(4)
                )
                assert len([line for line in LineIterator(response["Body"]) if line.startswith(b"data:")]) == 4
                done.append(1)
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-one")
    wait_in_service(sm, endpoint)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(60)
    assert failures == []
    assert len(done) >= 5
    described = sm.describe_endpoint(EndpointName=endpoint)
    assert described["EndpointConfigName"] == f"{endpoint}-one"
    assert ready_instances(platform, endpoint, 1)

    platform.kill()
    platform.start()
    wait_in_service(sm, endpoint)
    response = rt.invoke_endpoint_with_response_stream(
        EndpointName=endpoint, ContentType="application/json", Body=body(3)
    )
    assert len([line for line in LineIterator(response["Body"]) if line.startswith(b"data:")]) == 3
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] == f"{endpoint}-one"


@pytest.mark.slow
def test_deploy_default_serves_the_embedded_model(tmp_path, smollm2_dir):
    platform = PlatformProcess(
        tmp_path / "state", container_command=REAL_COMMAND, extra_args=["--deploy-default"]
    ).start()
    try:
        sm, rt = platform.sagemaker(), platform.runtime()
        wait_in_service(sm, "smollm2")
        model = sm.describe_model(ModelName="smollm2")
        assert model["PrimaryContainer"]["Environment"]["HF_MODEL_ID"] == "smollm2"
        response = rt.invoke_endpoint_with_response_stream(
            EndpointName="smollm2", ContentType="application/json",
            Body=json.dumps({"inputs": "The capital of France is", "parameters": {"max_new_tokens": 8}, "stream": True}),
        )  # fmt: skip
        assert "".join(TokenIterator(response["Body"])).strip()
        deadline = time.monotonic() + 10
        while "curl -s" not in platform.log_tail(20000) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"curl -s {platform.url}/endpoints/smollm2/invocations" in platform.log_tail(20000)
        platform.stop()
        platform.start()  # the flag finds the endpoint and creates nothing new
        wait_in_service(sm, "smollm2")
        assert [m["ModelName"] for m in sm.list_models()["Models"]] == ["smollm2"]
    finally:
        platform.stop()
