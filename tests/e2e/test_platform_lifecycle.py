"""Platform lifecycle and bad input, with real boto3 clients against a real ``streamhost serve``.

Model servers here are the stand-in stub (tests/e2e/_stub_container.py): real processes with
real sockets that honour the container contract and start in a fraction of a second.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time

import botocore.exceptions
import pytest
from _platform_fixtures import PlatformProcess, deploy, stub_stats, tgi_body, unique, wait_in_service
from botocore.config import Config


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(tmp_path_factory.mktemp("platform-lifecycle")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def sm(platform):
    return platform.sagemaker()


def error_code(exc_info) -> str:
    return exc_info.value.response["Error"]["Code"]


def test_full_lifecycle_as_the_sdk_does_it(platform, sm):
    rt = platform.runtime()
    name = unique("life")
    model_arn = sm.create_model(
        ModelName=name, PrimaryContainer={"Image": "streamhost", "Environment": {"HF_MODEL_ID": "smollm2"}},
        ExecutionRoleArn="arn:aws:iam::123456789012:role/x", Tags=[],
    )["ModelArn"]  # fmt: skip
    assert model_arn == f"arn:aws:sagemaker:us-east-1:123456789012:model/{name}"
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1, "InstanceType": "ml.g5.2xlarge",
         "ContainerStartupHealthCheckTimeoutInSeconds": 300}])  # fmt: skip
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] in ("Creating", "InService")
    wait_in_service(sm, name)

    described = sm.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointArn"].endswith(f":endpoint/{name}")
    variant = described["ProductionVariants"][0]
    assert (variant["VariantName"], variant["CurrentInstanceCount"], variant["DesiredInstanceCount"]) == (
        "AllTraffic",
        1,
        1,
    )
    assert name in [e["EndpointName"] for e in sm.list_endpoints(NameContains=name)["Endpoints"]]
    assert sm.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"][0]["ModelName"] == name

    answer = json.loads(
        rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Body=tgi_body(3))["Body"].read()
    )
    assert answer[0]["generated_text"] == "t0 t1 t2 "

    # The SageMaker Python SDK's delete_endpoint removes the config first, while the endpoint lives.
    sm.delete_endpoint_config(EndpointConfigName=name)
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == name
    sm.delete_endpoint(EndpointName=name)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sm.describe_endpoint(EndpointName=name)
    assert error_code(info) == "ValidationException"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Body=tgi_body())
    assert error_code(info) == "ValidationError"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    sm.delete_model(ModelName=name)
    assert sm.list_models(NameContains=name)["Models"] == []


def test_paginators_walk_all_models(sm):
    prefix = unique("page")
    for i in range(7):
        sm.create_model(ModelName=f"{prefix}-{i}", PrimaryContainer={"Image": "streamhost"})
    pages = sm.get_paginator("list_models").paginate(NameContains=prefix, PaginationConfig={"PageSize": 3})
    names = [m["ModelName"] for page in pages for m in page["Models"]]
    assert sorted(names) == [f"{prefix}-{i}" for i in range(7)]
    assert len(names) == 7


def test_unknown_operation(platform):
    response = platform.control("CreateCompilationJob", {})
    assert response.status_code == 400
    assert response.json()["__type"] == "UnknownOperationException"


def test_missing_fields_and_malformed_json(platform):
    response = platform.control("CreateEndpoint", {"EndpointName": "x"})
    assert (response.status_code, response.json()["__type"]) == (400, "ValidationException")
    assert response.json()["message"] == (
        "1 validation error detected: Value null at 'endpointConfigName' "
        "failed to satisfy constraint: Member must not be null"
    )
    response = platform.control("CreateModel", None, raw=b'{"ModelName": "a",')
    assert (response.status_code, response.json()["__type"]) == (400, "SerializationException")


def test_duplicate_names(sm):
    name = unique("dup")
    sm.create_model(ModelName=name, PrimaryContainer={"Image": "streamhost"})
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sm.create_model(ModelName=name.upper(), PrimaryContainer={"Image": "streamhost"})
    assert error_code(info) == "ValidationException"
    assert "Cannot create already existing model" in str(info.value)


def test_bad_signature_is_403(platform):
    for service, call in [
        ("sagemaker", lambda c: c.list_models()),
        ("sagemaker-runtime", lambda c: c.invoke_endpoint(EndpointName="any", Body=b"{}")),
    ]:
        import boto3

        client = boto3.client(service, endpoint_url=platform.url, region_name="us-east-1",
                              aws_access_key_id="x", aws_secret_access_key="not-the-secret",
                              config=Config(retries={"max_attempts": 1}))  # fmt: skip
        with pytest.raises(botocore.exceptions.ClientError) as info:
            call(client)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert error_code(info) == "InvalidSignatureException"
    response = platform.signed("POST", "/", b"{}", {"X-Amz-Target": "SageMaker.ListModels"}, secret="wrong")
    assert response.status_code == 403


def test_unknown_endpoint_is_a_validation_error(platform):
    with pytest.raises(botocore.exceptions.ClientError) as info:
        platform.runtime().invoke_endpoint_with_response_stream(EndpointName="nowhere", Body=tgi_body(stream=True))
    assert error_code(info) == "ValidationError"
    assert "nowhere" in info.value.response["Error"]["Message"]


def _tarball(path, entries):
    with tarfile.open(path, "w:gz") as tar:
        for entry, data in entries.items():
            info = tarfile.TarInfo(entry)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_traversal_tarball_fails_the_endpoint(sm, tmp_path):
    archive = _tarball(tmp_path / "model.tar.gz", {"config.json": b"{}", "../../escape.txt": b"owned"})
    name = unique("evil")
    deploy(sm, name, model_data=f"file://{archive}", wait=False)
    with pytest.raises(botocore.exceptions.WaiterError):
        wait_in_service(sm, name, attempts=30)
    described = sm.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "Failed"
    assert "escape.txt" in described["FailureReason"] and "outside" in described["FailureReason"]
    assert not (tmp_path.parent / "escape.txt").exists()
    sm.delete_endpoint(EndpointName=name)


def test_tarball_model_data_reaches_the_container(platform, sm, tmp_path):
    archive = _tarball(tmp_path / "model.tar.gz", {"config.json": b"{}", "weights/w.bin": b"123"})
    name = deploy(sm, unique("tar"), model_data=str(archive), env={"HF_MODEL_ID": "/opt/ml/model"})
    instance = platform.instances(name)["variants"][0]["instances"][0]
    stats = stub_stats(instance["url"])
    assert stats["model_files"] == ["config.json", "weights"]
    assert stats["env"]["HF_MODEL_ID"] == stats["model_dir"]  # SageMaker's /opt/ml/model is where we unpacked
    assert stats["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    sm.delete_endpoint(EndpointName=name)


def test_crashing_container_fails_with_its_log(sm):
    name = unique("crash")
    deploy(sm, name, env={"STUB_FAIL_ON_START": "CUDA out of memory while loading weights"}, wait=False)
    with pytest.raises(botocore.exceptions.WaiterError):
        wait_in_service(sm, name, attempts=30)
    described = sm.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "Failed"
    reason = described["FailureReason"]
    assert "exited with code 3" in reason
    assert "RuntimeError: CUDA out of memory while loading weights" in reason
    sm.delete_endpoint(EndpointName=name)


def test_health_check_timeout(platform):
    # AWS's floor for the timeout is 60 s, which botocore enforces client-side; turn that off.
    sm = platform.sagemaker(parameter_validation=False)
    name = unique("slow")
    sm.create_model(
        ModelName=name, PrimaryContainer={"Image": "streamhost", "Environment": {"STUB_STARTUP_DELAY": "600"}}
    )
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "v", "ModelName": name, "InitialInstanceCount": 1,
         "ContainerStartupHealthCheckTimeoutInSeconds": 2}])  # fmt: skip
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    with pytest.raises(botocore.exceptions.WaiterError):
        wait_in_service(sm, name, attempts=30)
    reason = sm.describe_endpoint(EndpointName=name)["FailureReason"]
    assert "did not pass the health check within 2 seconds" in reason
    assert "HTTP 503" in reason
    sm.delete_endpoint(EndpointName=name)


def test_metrics_count_requests(platform, sm):
    import httpx

    sm.create_model(ModelName=unique("metric"), PrimaryContainer={"Image": "streamhost"})
    platform.control("NoSuchOperation", {})
    text = httpx.get(f"{platform.url}/metrics").text
    assert 'streamhost_platform_requests_total{operation="CreateModel",status="200"}' in text
    assert 'operation="Unknown",status="400"' in text


def test_delete_while_creating_stops_the_instance(platform, sm):
    name = unique("early")
    deploy(sm, name, env={"STUB_STARTUP_DELAY": "600"}, startup_timeout=900, wait=False)
    deadline = time.monotonic() + 20
    pid = None
    while pid is None and time.monotonic() < deadline:
        try:
            pid = platform.instances(name)["variants"][0]["instances"][0]["pid"]
        except Exception:
            time.sleep(0.1)
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Creating"
    sm.delete_endpoint(EndpointName=name)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}")


def test_failed_endpoint_can_be_updated_to_a_working_config(sm):
    name = unique("fix")
    deploy(sm, name, env={"STUB_FAIL_ON_START": "bad weights"}, wait=False)
    with pytest.raises(botocore.exceptions.WaiterError):
        wait_in_service(sm, name, attempts=30)
    good = unique("good")
    sm.create_model(ModelName=good, PrimaryContainer={"Image": "streamhost"})
    sm.create_endpoint_config(EndpointConfigName=good, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": good, "InitialInstanceCount": 1}])  # fmt: skip
    sm.update_endpoint(EndpointName=name, EndpointConfigName=good)
    wait_in_service(sm, name)
    described = sm.describe_endpoint(EndpointName=name)
    assert (described["EndpointConfigName"], described.get("FailureReason")) == (good, None)
    sm.delete_endpoint(EndpointName=name)
