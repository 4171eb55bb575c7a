"""UpdateEndpointWeightsAndCapacities on local instances: scaling under traffic, weights, bad input.

Local processes (no Ray): the stand-in model server keeps each test fast; the Ray version of
the scaling test lives in test_ray_placement.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import botocore.exceptions
import pytest
from _platform_fixtures import ACCESS_KEY, REGION, SECRET_KEY, PlatformProcess, deploy, unique, wait_in_service
from _traffic import StatusWatch, StreamTraffic


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(tmp_path_factory.mktemp("platform-capacity")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def one_instance(platform) -> str:
    return deploy(platform.sagemaker(), unique("badcap"))


def _scale(sm, name: str, **desired) -> None:
    sm.update_endpoint_weights_and_capacities(
        EndpointName=name, DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", **desired}]
    )


def _gone(pid: int) -> bool:
    try:
        return "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]  # a zombie is gone too
    except OSError:
        return True


def _ready(platform, name: str) -> list[dict]:
    return [i for v in platform.instances(name)["variants"] for i in v["instances"] if i["state"] == "ready"]


def test_scale_1_to_3_to_1_under_traffic_loses_nothing(platform):
    sm, rt = platform.sagemaker(), platform.runtime()
    name = deploy(sm, unique("scale"), env={"STUB_TOKEN_DELAY": "0.02"})
    with StatusWatch(sm, name) as watch, StreamTraffic(rt, name, threads=3) as traffic:
        traffic.wait_completed(5)
        _scale(sm, name, DesiredInstanceCount=3)
        wait_in_service(sm, name)
        three = _ready(platform, name)
        variant = sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]
        traffic.wait_completed(traffic.completed + 15)
        _scale(sm, name, DesiredInstanceCount=1)
        wait_in_service(sm, name)
        one = _ready(platform, name)
        traffic.wait_completed(traffic.completed + 5)
    assert len(three) == 3 and len({i["pid"] for i in three}) == 3
    assert variant["DesiredInstanceCount"] == 3 and variant["CurrentInstanceCount"] == 3
    assert len(one) == 1 and one[0]["pid"] in {i["pid"] for i in three}
    assert traffic.before_stream == [] and traffic.mid_stream == [], (traffic.before_stream + traffic.mid_stream)[:3]
    assert watch.statuses[0] == "InService" and "Updating" in watch.statuses and watch.statuses[-1] == "InService"
    # The removed instances' processes are gone, and DescribeEndpoint reports the new count.
    for pid in {i["pid"] for i in three} - {one[0]["pid"]}:
        assert _gone(pid), f"removed instance {pid} still runs"
    assert sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["DesiredInstanceCount"] == 1


def test_weights_change_and_the_cli_shows_where_instances_run(platform):
    sm = platform.sagemaker()
    name = unique("weights")
    sm.create_model(
        ModelName=name, PrimaryContainer={"Image": "streamhost"}, ExecutionRoleArn="arn:aws:iam::123456789012:role/x"
    )
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "A", "ModelName": name, "InitialInstanceCount": 1, "InitialVariantWeight": 1.0},
        {"VariantName": "B", "ModelName": name, "InitialInstanceCount": 1, "InitialVariantWeight": 1.0},
    ])  # fmt: skip
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    wait_in_service(sm, name)
    sm.update_endpoint_weights_and_capacities(
        EndpointName=name, DesiredWeightsAndCapacities=[{"VariantName": "B", "DesiredWeight": 0.0}]
    )
    wait_in_service(sm, name)
    weights = {
        v["VariantName"]: v["CurrentWeight"] for v in sm.describe_endpoint(EndpointName=name)["ProductionVariants"]
    }
    assert weights == {"A": 1.0, "B": 0.0}
    rt = platform.runtime()
    invoked = {
        rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Body=b'{"inputs": "x"}')[
            "InvokedProductionVariant"
        ]
        for _ in range(10)
    }
    assert invoked == {"A"}

    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}
    out = subprocess.run(
        [sys.executable, "-m", "streamhost.cli", "endpoints", "describe", name, "--url", platform.url, "--json"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    described = json.loads(out.stdout)
    placed = [i for v in described["Instances"]["variants"] for i in v["instances"]]
    assert {i["node"] for i in placed} == {"local"}
    assert all(i["address"].startswith("http://127.0.0.1:") for i in placed)
    table = subprocess.run(
        [sys.executable, "-m", "streamhost.cli", "endpoints", "describe", name, "--url", platform.url],
        capture_output=True, text=True, env={**env, "COLUMNS": "200"}, timeout=60, check=False,
    )  # fmt: skip
    assert "Instances (local)" in table.stdout and placed[0]["address"] in table.stdout


@pytest.mark.parametrize(
    "desired, code, words",
    [
        ([{"VariantName": "Nope", "DesiredInstanceCount": 2}], "ValidationException", "is not present"),
        ([{"VariantName": "AllTraffic", "DesiredInstanceCount": 0}], "ValidationException", "at least 1"),
        ([{"VariantName": "AllTraffic"}], "ValidationException", "DesiredInstanceCount or DesiredWeight"),
        ([{"VariantName": "AllTraffic", "DesiredInstanceCount": 99}], "ResourceLimitExceeded", "at most"),
        ([{"VariantName": "AllTraffic", "DesiredWeight": 1.0}, {"VariantName": "AllTraffic", "DesiredWeight": 2.0}],
         "ValidationException", "more than once"),
    ],
)  # fmt: skip
def test_bad_capacity_updates_are_refused_and_change_nothing(platform, one_instance, desired, code, words):
    sm, name = platform.sagemaker(), one_instance
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sm.update_endpoint_weights_and_capacities(EndpointName=name, DesiredWeightsAndCapacities=desired)
    assert info.value.response["Error"]["Code"] == code
    assert words in info.value.response["Error"]["Message"]
    described = sm.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "InService"
    assert described["ProductionVariants"][0]["DesiredInstanceCount"] == 1


def test_capacity_update_of_a_missing_endpoint_is_a_validation_error(platform):
    with pytest.raises(botocore.exceptions.ClientError) as info:
        platform.sagemaker().update_endpoint_weights_and_capacities(
            EndpointName="no-such-endpoint", DesiredWeightsAndCapacities=[{"VariantName": "A", "DesiredWeight": 1.0}]
        )
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "Could not find endpoint" in info.value.response["Error"]["Message"]


def test_capacity_update_while_creating_is_refused(platform):
    sm = platform.sagemaker()
    name = deploy(sm, unique("creating"), env={"STUB_STARTUP_DELAY": "4"}, wait=False)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        _scale(sm, name, DesiredInstanceCount=2)
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "wait until it is InService" in info.value.response["Error"]["Message"]
    wait_in_service(sm, name)
    assert sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["DesiredInstanceCount"] == 1
