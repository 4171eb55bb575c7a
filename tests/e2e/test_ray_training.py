"""Training jobs on a real Ray cluster started by the tests (``make test-cluster``).

Nodes: the session's cluster (a head and workers with 1 CPU each, each its own ``ray start``) plus
a worker with 2 CPUs. The platform maps CPU figures by 0.5 (``--ray-cpu-scale``), so a job on
``ml.m5.xlarge`` (4 CPUs) reserves 2 and only that worker can hold it, while ``ml.m5.4xlarge``
(8 after scaling) fits no node. Inputs are
on the platform's machine (the tiny Llama's folder, a ``file://`` channel): the node downloads
them from the platform's export route; the output goes to the platform's own S3 store, from
where the tuned model deploys (on Ray too) and streams.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest
from _platform_fixtures import REAL_COMMAND, PlatformProcess, deploy, unique
from _training_data import tower_data
from botocore.exceptions import ClientError

from streamhost.client import TokenIterator
from streamhost.testing_ray import RayCluster
from streamhost.training.data import DEFAULT_TEMPLATE, render_prompt

pytest.importorskip("ray")
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

ROLE = "arn:aws:iam::123456789012:role/training"
BUCKET = "sagemaker-us-east-1-123456789012"  # the platform's default bucket, there from startup
LIMITS = {"MAX_TOTAL_TOKENS": "256", "MAX_INPUT_TOKENS": "128"}


@pytest.fixture(scope="module")
def cluster(ray_cluster: RayCluster):
    """The session's cluster (1-CPU nodes) plus a 2-CPU worker for these tests, killed after them."""
    node = ray_cluster.add_worker("node_train", 2)
    try:
        ray_cluster.wait_nodes(len([n for n in ray_cluster.nodes if n.alive]))
        yield ray_cluster
    finally:
        ray_cluster.kill_node(node)


@pytest.fixture(scope="module")
def platform(cluster, tmp_path_factory):
    state = tmp_path_factory.mktemp("platform-ray-train")
    proc = PlatformProcess(
        state, REAL_COMMAND,
        extra_args=["--ray", cluster.address, "--ray-cpu-scale", "0.5", "--ray-instance-host", "127.0.0.1",
                    "--ray-cache-dir", str(state / "node-cache")],
    ).start(timeout=120)  # fmt: skip
    yield proc
    proc.stop()


def create_job(sm, name: str, model: Path, data: Path, instance_type: str, output: str | None = None, **hp) -> None:
    hyperparameters = {"instruction_tuned": "true", "max_steps": "20", "learning_rate": "0.01", "save_steps": "100",
                       **{k: str(v) for k, v in hp.items()}}  # fmt: skip
    sm.create_training_job(
        TrainingJobName=name, RoleArn=ROLE, HyperParameters=hyperparameters,
        AlgorithmSpecification={"TrainingImage": "streamhost/trainer", "TrainingInputMode": "File"},
        InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": data.as_uri()}}}],
        OutputDataConfig={"S3OutputPath": output or f"s3://{BUCKET}/ray-out"},
        ResourceConfig={"InstanceType": instance_type, "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 600}, Environment={"HF_MODEL_ID": str(model)},
    )  # fmt: skip


def wait_done(sm, name: str) -> dict:
    sm.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 300}
    )
    return sm.describe_training_job(TrainingJobName=name)


def cloudwatch_log(platform, name: str) -> str:
    logs = platform.client("logs")
    events = logs.get_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=f"{name}/algo-1", startFromHead=True
    )["events"]
    return "\n".join(e["message"] for e in events)


def thread_niceness(pid: int) -> set[int]:
    """The niceness of every thread of ``pid`` (Linux keeps it per thread)."""
    values = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            values.add(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))
    return values


def trainer_pid(name: str) -> int | None:
    """The trainer process of job ``name`` on its node (every node is on this machine)."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"streamhost.training.trainer" in argv and any(a.endswith(f"/{name}".encode()) for a in argv):
                return int(entry.name)
    return None


def artifact_key(described: dict) -> str:
    uri = described["ModelArtifacts"]["S3ModelArtifacts"]
    assert uri.startswith(f"s3://{BUCKET}/"), uri
    return uri[len(f"s3://{BUCKET}/") :]


def test_job_runs_on_the_node_with_its_resources_and_its_model_deploys_and_streams(
    cluster, platform, tiny_llama_dir, tmp_path
):
    sm = platform.sagemaker()
    name = unique("raytune")
    create_job(sm, name, tiny_llama_dir, tower_data(tmp_path / "data"), "ml.m5.xlarge")  # 4 CPUs x 0.5 = 2
    described = wait_done(sm, name)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")

    # It ran on the only node with 2 CPUs, with 2 threads, and said so in its status transitions.
    worker = next(n for n in cluster.nodes if n.name == "node_train")
    placed = " ".join(t.get("StatusMessage", "") for t in described["SecondaryStatusTransitions"])
    assert worker.node_id in placed and "CPU: 2" in placed and "(2 threads)" in placed, placed

    # Its log reached CloudWatch Logs like a local job's, progress lines and all.
    text = cloudwatch_log(platform, name)
    assert "step 20/20 loss" in text and "completed:" in text, text[-2000:]

    # The artifact is in the platform's S3 store where ModelArtifacts points; it deploys (on Ray) and streams.
    s3 = platform.client("s3", s3={"addressing_style": "path"})
    s3.head_object(Bucket=BUCKET, Key=artifact_key(described))
    endpoint = deploy(sm, unique("raytuned"), env=LIMITS, model_data=described["ModelArtifacts"]["S3ModelArtifacts"])
    try:
        prompt = render_prompt({"instruction": "Where is the tower 99?", "context": ""}, DEFAULT_TEMPLATE)
        body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": 4, "do_sample": False}, "stream": True})
        response = platform.runtime().invoke_endpoint_with_response_stream(
            EndpointName=endpoint, Body=body, ContentType="application/json"
        )
        assert "".join(TokenIterator(response["Body"])).startswith("Paris.")  # the tuned weights answer
        # The model server runs at the node's priority, not at the Ray worker's niceness 15 (tail latency).
        pids = [i["pid"] for v in platform.instances(endpoint)["variants"] for i in v["instances"]]
        assert pids and all(thread_niceness(pid) == {os.nice(0)} for pid in pids), [thread_niceness(p) for p in pids]
    finally:
        sm.delete_endpoint(EndpointName=endpoint)


def test_stop_ends_the_ray_job_and_keeps_the_weights(platform, tiny_llama_dir, tmp_path):
    sm = platform.sagemaker()
    name = unique("raystop")
    create_job(sm, name, tiny_llama_dir, tower_data(tmp_path / "data"), "ml.m5.xlarge", max_steps=100000)
    deadline = time.monotonic() + 180
    while "step 3/" not in (log := platform.signed("GET", f"/_streamhost/training-jobs/{name}/log").text):
        status = sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
        assert status == "InProgress" and time.monotonic() < deadline, f"{status}:\n{log}"
        time.sleep(0.3)
    pid = trainer_pid(name)
    assert pid is not None and thread_niceness(pid) == {os.nice(0)}, "the trainer must not run at Ray's niceness 15"
    sm.stop_training_job(TrainingJobName=name)
    described = wait_done(sm, name)
    assert described["TrainingJobStatus"] == "Stopped" and described["SecondaryStatus"] == "Stopped", described
    steps = {m["MetricName"]: m["Value"] for m in described["FinalMetricDataList"]}["steps"]
    assert 3 <= steps < 100000
    s3 = platform.client("s3", s3={"addressing_style": "path"})
    assert s3.head_object(Bucket=BUCKET, Key=artifact_key(described))["ContentLength"] > 0
    assert "stop requested" in cloudwatch_log(platform, name)


def test_a_job_no_node_can_hold_fails_naming_the_resources(platform, tiny_llama_dir, tmp_path):
    sm = platform.sagemaker()
    name = unique("raybig")
    create_job(sm, name, tiny_llama_dir, tower_data(tmp_path / "data"), "ml.m5.4xlarge")  # 16 CPUs x 0.5 = 8
    deadline = time.monotonic() + 60  # fails at once: no waiting for a node that will never come
    while (described := sm.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] == "InProgress":
        assert time.monotonic() < deadline, described
        time.sleep(0.3)
    assert described["TrainingJobStatus"] == "Failed"
    reason = described["FailureReason"]
    assert "CPU: 8 (the most any node has: 2)" in reason and "ml.m5.4xlarge" in reason, reason

    # A local output folder cannot be written from another node: refused before any job exists.
    with pytest.raises(ClientError) as err:
        create_job(sm, unique("raylocal"), tiny_llama_dir, tmp_path / "data", "ml.m5.large",
                   output=(tmp_path / "out").as_uri())  # fmt: skip
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "s3://" in err.value.response["Error"]["Message"]
