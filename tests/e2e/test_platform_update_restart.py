"""Blue/green UpdateEndpoint under traffic, rollback, and a platform killed with SIGKILL and restarted."""

from __future__ import annotations

import json
import os
import threading
import time

import botocore.exceptions
import pytest
from _platform_fixtures import PlatformProcess, deploy, tgi_body, unique, wait_in_service

from streamhost.client.iterators import LineIterator


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(tmp_path_factory.mktemp("platform-update")).start()
    yield proc
    proc.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return "Z" not in open(f"/proc/{pid}/stat").read().split()[2]
    except OSError:
        return False


class Traffic:
    """Streams continuously from a few threads and records every outcome."""

    def __init__(self, rt, endpoint: str, threads: int = 3) -> None:
        self.rt, self.endpoint = rt, endpoint
        self.ok: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.rt.invoke_endpoint_with_response_stream(
                    EndpointName=self.endpoint,
                    ContentType="application/json",
                    Body=tgi_body(4, stream=True, delay=0.02),
                )
                lines = [line for line in LineIterator(response["Body"]) if line.startswith(b"data:")]
                events = [json.loads(line[5:]) for line in lines]
                if len(events) != 4:
                    self.failures.append(f"short stream: {events}")
                else:
                    self.ok.append(events[-1]["instance"])
            except Exception as exc:
                self.failures.append(repr(exc))

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def _model(sm, name: str, **env: str) -> str:
    sm.create_model(ModelName=name, PrimaryContainer={"Image": "streamhost", "Environment": env})
    return name


def _config(sm, name: str, model: str, count: int = 1, timeout: int = 60) -> str:
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": model, "InitialInstanceCount": count,
         "ContainerStartupHealthCheckTimeoutInSeconds": timeout}])  # fmt: skip
    return name


def test_update_under_traffic_loses_no_request(platform):
    sm, rt = platform.sagemaker(), platform.runtime()
    name = unique("bg")
    _config(sm, f"{name}-blue", _model(sm, f"{name}-blue", STUB_NAME="blue"))
    _config(sm, f"{name}-green", _model(sm, f"{name}-green", STUB_NAME="green", STUB_STARTUP_DELAY="1.5"), count=2)
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-blue")
    wait_in_service(sm, name)
    blue_pids = [i["pid"] for i in platform.instances(name)["variants"][0]["instances"]]

    with Traffic(rt, name) as traffic:
        time.sleep(0.5)
        sm.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-green")
        described = sm.describe_endpoint(EndpointName=name)
        assert described["EndpointStatus"] == "Updating"
        assert described["PendingDeploymentSummary"]["EndpointConfigName"] == f"{name}-green"
        wait_in_service(sm, name)
        time.sleep(1.0)
    assert traffic.failures == []
    assert "blue" in traffic.ok and traffic.ok[-1] == "green"
    described = sm.describe_endpoint(EndpointName=name)
    assert described["EndpointConfigName"] == f"{name}-green"
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in blue_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in blue_pids), "old instances were not stopped after draining"
    sm.delete_endpoint(EndpointName=name)


def test_failed_update_rolls_back(platform):
    sm, rt = platform.sagemaker(), platform.runtime()
    name = unique("rb")
    _config(sm, f"{name}-good", _model(sm, f"{name}-good", STUB_NAME="good"))
    _config(sm, f"{name}-bad", _model(sm, f"{name}-bad", STUB_FAIL_ON_START="weights are corrupt"))
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-good")
    wait_in_service(sm, name)
    with Traffic(rt, name, threads=2) as traffic:
        sm.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-bad")
        seen = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            described = sm.describe_endpoint(EndpointName=name)
            seen.add(described["EndpointStatus"])
            if described["EndpointStatus"] == "InService" and "FailureReason" in described:
                break
            time.sleep(0.05)
    assert traffic.failures == []
    assert set(traffic.ok) == {"good"}
    assert described["EndpointConfigName"] == f"{name}-good"
    assert "weights are corrupt" in described["FailureReason"]
    assert seen <= {"Updating", "RollingBack", "InService"}
    sm.delete_endpoint(EndpointName=name)


def test_platform_sigkill_and_restart_keeps_everything(tmp_path):
    platform = PlatformProcess(tmp_path / "state").start()
    try:
        sm, rt = platform.sagemaker(), platform.runtime()
        serving = deploy(sm, unique("keep"), count=2)
        failed = unique("broken")
        deploy(sm, failed, env={"STUB_FAIL_ON_START": "nope"}, wait=False)
        with pytest.raises(botocore.exceptions.WaiterError):
            wait_in_service(sm, failed, attempts=30)
        spare = unique("spare")
        sm.create_model(ModelName=spare, PrimaryContainer={"Image": "streamhost"})
        old_pids = [i["pid"] for i in platform.instances(serving)["variants"][0]["instances"]]
        before = {
            "models": sorted(m["ModelName"] for m in sm.list_models(MaxResults=100)["Models"]),
            "configs": sorted(
                c["EndpointConfigName"] for c in sm.list_endpoint_configs(MaxResults=100)["EndpointConfigs"]
            ),
            "endpoints": sorted(
                (e["EndpointName"], e["EndpointStatus"]) for e in sm.list_endpoints(MaxResults=100)["Endpoints"]
            ),
        }

        platform.kill()
        deadline = time.monotonic() + 10  # the parent-death signal stops the orphaned model servers
        while any(_alive(p) for p in old_pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in old_pids)

        platform.start()
        wait_in_service(sm, serving)
        after = {
            "models": sorted(m["ModelName"] for m in sm.list_models(MaxResults=100)["Models"]),
            "configs": sorted(
                c["EndpointConfigName"] for c in sm.list_endpoint_configs(MaxResults=100)["EndpointConfigs"]
            ),
            "endpoints": sorted(
                (e["EndpointName"], e["EndpointStatus"]) for e in sm.list_endpoints(MaxResults=100)["Endpoints"]
            ),
        }
        assert after == before
        assert sm.describe_endpoint(EndpointName=failed)["FailureReason"]
        response = rt.invoke_endpoint(EndpointName=serving, ContentType="application/json", Body=tgi_body(2))
        assert json.loads(response["Body"].read())[0]["generated_text"] == "t0 t1 "
        new = platform.instances(serving)["variants"][0]["instances"]
        assert len(new) == 2 and all(i["state"] == "ready" for i in new)
    finally:
        platform.stop()
