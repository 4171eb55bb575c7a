"""Endpoint instances on a real three-node Ray cluster started by the tests (``make test-cluster``).

Nodes: a head and two workers, each its own ``ray start`` with 1 CPU; the platform maps
``ml.m5.xlarge`` (4 CPUs) to 1 CPU (``--ray-cpu-scale 0.25``), so each node holds one instance
and where an instance can go is unambiguous. The model is the tiny Llama, given as ModelDataUrl
(a folder on the platform's machine) so every node downloads it from the platform's export
route into its own cache. Instances bind 127.0.0.1 (all nodes share this machine).
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
import time

import httpx
import pytest
from _platform_fixtures import PlatformProcess, deploy, free_port, unique, wait_in_service
from _traffic import StatusWatch, StreamTraffic

from streamhost.testing_ray import RayCluster

pytest.importorskip("ray")
pytestmark = pytest.mark.cluster

REAL_COMMAND = f"{sys.executable} -m streamhost.cli container"
TINY_ENV = {"MAX_TOTAL_TOKENS": "256", "MAX_INPUT_TOKENS": "128"}


@pytest.fixture(scope="module")
def cluster(ray_cluster: RayCluster) -> RayCluster:
    return ray_cluster  # the session's cluster (conftest): head + 2 workers, 1 CPU each


@pytest.fixture(scope="module")
def s3_url():
    """A real S3 server (moto's, over HTTP on 127.0.0.1) that the Ray nodes fetch model data from."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def platform(cluster, s3_url, tmp_path_factory):
    state = tmp_path_factory.mktemp("platform-ray")
    proc = PlatformProcess(
        state, REAL_COMMAND,
        extra_args=["--ray", cluster.address, "--ray-cpu-scale", "0.25", "--ray-instance-host", "127.0.0.1",
                    "--ray-cache-dir", str(state / "node-cache"), "--s3-endpoint-url", s3_url],
        env={"AWS_REGION": "us-east-1"},
    ).start(timeout=120)  # fmt: skip
    proc.node_cache = state / "node-cache"  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def tiny_in_s3(s3_url, tiny_llama_dir, tmp_path_factory) -> str:
    """The tiny model as s3://models/tiny/model.tar.gz, packed as ``tar czf model.tar.gz tiny/`` (one top-level
    folder, as DJL users do): the platform finds the model inside, nodes unpack the archive themselves."""
    import boto3

    archive = tmp_path_factory.mktemp("tiny-tar") / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in tiny_llama_dir.iterdir():
            tar.add(path, arcname=f"tiny/{path.name}")
    s3 = boto3.client(
        "s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
    )
    s3.create_bucket(Bucket="models")
    s3.upload_file(str(archive), "models", "tiny/model.tar.gz")
    return "s3://models/tiny/model.tar.gz"


def _ready_instances(platform, name: str) -> list[dict]:
    view = platform.instances(name)
    return [i for v in view["variants"] for i in v["instances"] if i["state"] == "ready"]


def _wait_instances(
    platform, name: str, count: int, timeout: float = 180, exclude_nodes: set[str] = frozenset()
) -> list[dict]:
    deadline = time.monotonic() + timeout
    ready: list[dict] = []
    while time.monotonic() < deadline:
        ready = [i for i in _ready_instances(platform, name) if i["node"] not in exclude_nodes]
        if len(ready) == count:
            return ready
        time.sleep(0.5)
    raise AssertionError(
        f"{name}: {len(ready)} of {count} instances ready after {timeout} s: {platform.instances(name)}"
    )


def _deploy_tiny(platform, model_data, name: str, count: int, instance_type: str = "ml.m5.xlarge", wait: bool = True):
    variants = [{"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": count,
                 "InstanceType": instance_type, "ContainerStartupHealthCheckTimeoutInSeconds": 300}]  # fmt: skip
    return deploy(platform.sagemaker(), name, env=TINY_ENV, model_data=str(model_data), variants=variants, wait=wait)


def _delete(platform, name: str) -> None:
    sm = platform.sagemaker()
    sm.delete_endpoint(EndpointName=name)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})


def test_two_instances_on_two_nodes_stream_and_survive_a_node_kill(cluster, platform, tiny_llama_dir):
    name = _deploy_tiny(platform, tiny_llama_dir, unique("ray2"), count=2)
    ready = _ready_instances(platform, name)
    assert len(ready) == 2
    assert len({i["node"] for i in ready}) == 2, f"both instances on one node: {ready}"
    node_ids = {n.node_id for n in cluster.nodes}
    assert {i["node"] for i in ready} <= node_ids

    # Streaming through boto3: event-stream PayloadParts carrying TGI SSE lines, ending in generated_text.
    rt = platform.runtime()
    response = rt.invoke_endpoint_with_response_stream(
        EndpointName=name, ContentType="application/json",
        Body=json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": 6}, "stream": True}),
    )  # fmt: skip
    events = [json.loads(line[5:]) for part in response["Body"]
              for line in part["PayloadPart"]["Bytes"].split(b"\n") if line.startswith(b"data:")]  # fmt: skip
    assert len([e for e in events if "token" in e]) == 6 and events[-1]["generated_text"] is not None

    # /metrics says where each instance runs.
    metrics = httpx.get(f"{platform.url}/metrics", timeout=10).text
    for instance in ready:
        assert re.search(rf'streamhost_instance_info\{{[^}}]*endpoint="{name}"[^}}]*node="{instance["node"]}"', metrics)

    # Kill a worker node that holds an instance (the head holds the cluster's GCS and stays).
    victim = next(cluster.node_by_id(i["node"]) for i in ready
                  if cluster.node_by_id(i["node"]).name != "node_head")  # fmt: skip
    third = next(n for n in cluster.nodes if n.node_id not in {i["node"] for i in ready})
    sm = platform.sagemaker()
    with StatusWatch(sm, name) as watch, StreamTraffic(rt, name, threads=2) as traffic:
        traffic.wait_completed(4)
        killed_at = time.monotonic()
        cluster.kill_node(victim)
        replaced = _wait_instances(platform, name, 2, exclude_nodes={victim.node_id})
        replacement_s = time.monotonic() - killed_at
        done = traffic.completed
        traffic.wait_completed(done + 6)
    print(f"node kill -> replacement ready: {replacement_s:.1f} s; {traffic.completed} streams completed, "
          f"{len(traffic.mid_stream)} cut mid-stream")  # fmt: skip
    assert traffic.before_stream == [], traffic.before_stream[:3]
    assert third.node_id in {i["node"] for i in replaced}, f"replacement not on the third node: {replaced}"
    assert watch.statuses == ["InService"], watch.statuses
    assert traffic.completed > done

    # DeleteEndpoint on Ray: the actors go, and their placement group with them (the nodes free up).
    _delete(platform, name)
    cluster.add_worker("node_w3", 1)
    cluster.wait_nodes(3)


def test_gpu_variant_on_a_gpu_less_cluster_fails_naming_the_gpu(platform, tiny_llama_dir):
    sm = platform.sagemaker()
    name = _deploy_tiny(platform, tiny_llama_dir, unique("raygpu"), count=1, instance_type="ml.g5.xlarge", wait=False)
    deadline = time.monotonic() + 60
    while (status := sm.describe_endpoint(EndpointName=name))["EndpointStatus"] == "Creating":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert status["EndpointStatus"] == "Failed"
    reason = status["FailureReason"]
    assert "GPU: 1 (the most any node has: 0)" in reason and "ml.g5.xlarge" in reason, reason
    sm.delete_endpoint(EndpointName=name)


def test_scale_1_to_3_to_1_and_blue_green_update_under_traffic(cluster, platform, tiny_in_s3):
    # Model data from S3 this time: each node downloads and unpacks model.tar.gz into its own cache.
    name = _deploy_tiny(platform, tiny_in_s3, unique("rayscale"), count=1)
    sm, rt = platform.sagemaker(), platform.runtime()
    with StatusWatch(sm, name) as watch, StreamTraffic(rt, name, threads=2) as traffic:
        traffic.wait_completed(3)
        sm.update_endpoint_weights_and_capacities(
            EndpointName=name, DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 3}]
        )
        wait_in_service(sm, name, attempts=300)
        three = _ready_instances(platform, name)
        described = sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]
        mark = traffic.completed
        traffic.wait_completed(mark + 6)

        sm.update_endpoint_weights_and_capacities(
            EndpointName=name, DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 1}]
        )
        wait_in_service(sm, name, attempts=300)
        one = _ready_instances(platform, name)
        mark = traffic.completed
        traffic.wait_completed(mark + 4)

        # Blue/green UpdateEndpoint on Ray: a new config's instance starts beside the old one.
        sm.create_endpoint_config(EndpointConfigName=f"{name}-v2", ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1, "InstanceType": "ml.m5.xlarge",
             "ContainerStartupHealthCheckTimeoutInSeconds": 300}])  # fmt: skip
        sm.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-v2")
        time.sleep(1)
        wait_in_service(sm, name, attempts=300)
        mark = traffic.completed
        traffic.wait_completed(mark + 4)
    assert len(three) == 3 and len({i["node"] for i in three}) == 3, three
    for instance in three:  # one model-data cache per node
        cached = list((platform.node_cache / instance["node"][:16] / "artifacts").iterdir())
        assert any((folder / "tiny" / "config.json").is_file() for folder in cached), cached
    assert described["DesiredInstanceCount"] == 3 and described["CurrentInstanceCount"] == 3
    assert len(one) == 1
    assert platform.instances(name)["config"] == f"{name}-v2"
    assert traffic.before_stream == [] and traffic.mid_stream == [], (traffic.before_stream + traffic.mid_stream)[:3]
    assert traffic.completed > 14
    assert "Failed" not in watch.statuses and watch.statuses[-1] == "InService", watch.statuses
    _delete(platform, name)
