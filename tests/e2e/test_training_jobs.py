"""Training jobs end to end: a real platform process, boto3, real trainer processes on the tiny model.

Each job trains the 2-layer random Llama on a small instruction set the test writes, so a job
takes seconds; the platform runs the stand-in model server (no endpoint is deployed here; the
artifact deploys in test_training_deploy.py).
"""

from __future__ import annotations

import json
import os
import signal
import tarfile
import time
from pathlib import Path

import pytest
from _platform_fixtures import PlatformProcess, unique
from botocore.exceptions import ClientError, WaiterError

pytestmark = pytest.mark.timeout(300)
ROLE = "arn:aws:iam::123456789012:role/training"
TRAINING_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:2.0"


def write_instructions(folder: Path, count: int = 40, bad_line: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        lines.append(
            json.dumps({"instruction": f"Say the number {i}", "context": "", "response": f"The number is {i}."})
        )
    if bad_line is not None:
        lines[bad_line - 1] = '{"instruction": "no closing brace"'
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def create_job(
    sm, name: str, model: Path, data: Path, output: Path, max_runtime: int = 3600, **hyperparameters
) -> None:
    hp = {"instruction_tuned": "true", "max_steps": "12", "learning_rate": "0.01", "save_steps": "4",
          "per_device_train_batch_size": "4", **{k: str(v) for k, v in hyperparameters.items()}}  # fmt: skip
    sm.create_training_job(
        TrainingJobName=name,
        RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": TRAINING_IMAGE, "TrainingInputMode": "File"},
        HyperParameters=hp,
        InputDataConfig=[
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": data.as_uri(),
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
        ],
        OutputDataConfig={"S3OutputPath": output.as_uri()},
        ResourceConfig={"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": max_runtime},
        Environment={"HF_MODEL_ID": str(model)},
    )


def wait_done(sm, name: str) -> dict:
    sm.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 240}
    )
    return sm.describe_training_job(TrainingJobName=name)


def wait_training_step(platform, sm, name: str, step: int, timeout: float = 120) -> None:
    """Until the job's log shows optimizer step ``step`` (the job is mid-training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = platform.signed("GET", f"/_streamhost/training-jobs/{name}/log").text
        if f"step {step}/" in log:
            return
        status = sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
        assert status == "InProgress", f"{name} ended early ({status}):\n{log}"
        time.sleep(0.3)
    raise AssertionError(f"{name} never reached step {step}")


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(tmp_path_factory.mktemp("platform-training")).start()
    yield proc
    proc.stop()


def test_job_completes_loss_falls_and_artifacts_land(platform, tiny_llama_dir, tmp_path):
    sm = platform.sagemaker()
    name = unique("tune")
    create_job(sm, name, tiny_llama_dir, write_instructions(tmp_path / "data"), tmp_path / "out")
    first = sm.describe_training_job(TrainingJobName=name)
    assert first["TrainingJobStatus"] == "InProgress"
    described = wait_done(sm, name)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    assert described["SecondaryStatus"] == "Completed"
    statuses = [t["Status"] for t in described["SecondaryStatusTransitions"]]
    assert statuses == ["Starting", "Downloading", "Training", "Uploading", "Completed"]
    metrics = {m["MetricName"]: m["Value"] for m in described["FinalMetricDataList"]}
    assert metrics["steps"] == 12 and metrics["train_tokens_per_second"] > 0 and "eval_loss" in metrics
    # The hyperparameters the job ran with: given ones plus defaults, as strings.
    assert described["HyperParameters"]["learning_rate"] == "0.01"
    assert described["HyperParameters"]["lora_r"] == "8"
    artifact = described["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact == (tmp_path / "out").as_uri() + f"/{name}/output/model.tar.gz"
    archive = tmp_path / "out" / name / "output" / "model.tar.gz"
    assert (tmp_path / "out" / name / "output" / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        history = json.load(tar.extractfile("training_metrics.json"))["history"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "loss_curve.png"} <= set(names)
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # the loss falls
    # Progress reached the job log and the platform's metrics.
    log = platform.signed("GET", f"/_streamhost/training-jobs/{name}/log").text
    assert "step 12/12 loss" in log and "tokens/s" in log and "ETA" in log
    assert f'streamhost_training_step{{job="{name}"}} 12.0' in platform.signed("GET", "/metrics").text


def test_bad_hyperparameter_is_refused_naming_the_key(platform, tiny_llama_dir, tmp_path):
    sm = platform.sagemaker()
    name = unique("badhp")
    data = write_instructions(tmp_path / "data")
    for key, value, words in (("learning_rate", "-1", "learning_rate"), ("lora_r", "abc", "lora_r"),
                              ("lr_scheduler_type", "zigzag", "linear"), ("learning_rte", "0.1", "learning_rte")):  # fmt: skip
        with pytest.raises(ClientError) as err:
            create_job(sm, name, tiny_llama_dir, data, tmp_path / "out", **{key: value})
        assert err.value.response["Error"]["Code"] == "ValidationException"
        assert key in err.value.response["Error"]["Message"] and words in err.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as err:
        sm.describe_training_job(TrainingJobName=name)
    assert err.value.response["Error"]["Code"] == "ValidationException"  # no job was created
    names = [j["TrainingJobName"] for j in sm.list_training_jobs(NameContains="badhp")["TrainingJobSummaries"]]
    assert names == []


def test_bad_data_line_fails_before_training_naming_the_line(platform, tiny_llama_dir, tmp_path):
    sm = platform.sagemaker()
    name = unique("baddata")
    create_job(sm, name, tiny_llama_dir, write_instructions(tmp_path / "data", bad_line=3), tmp_path / "out")
    with pytest.raises(WaiterError):
        wait_done(sm, name)  # the waiter fails on Failed
    described = sm.describe_training_job(TrainingJobName=name)
    assert described["TrainingJobStatus"] == "Failed"
    assert "train.jsonl line 3" in described["FailureReason"]
    assert "Training" not in [t["Status"] for t in described["SecondaryStatusTransitions"]]


def test_channel_with_two_files_fails_naming_them(platform, tiny_llama_dir, tmp_path):
    sm = platform.sagemaker()
    name = unique("twofiles")
    data = write_instructions(tmp_path / "data")
    (data / "more.txt").write_text("hello\n")
    create_job(sm, name, tiny_llama_dir, data, tmp_path / "out")
    with pytest.raises(WaiterError):
        wait_done(sm, name)
    reason = sm.describe_training_job(TrainingJobName=name)["FailureReason"]
    assert "exactly one .jsonl or .txt" in reason and "more.txt" in reason and "train.jsonl" in reason


def test_stop_mid_run_keeps_the_weights_as_artifact(platform, tiny_llama_dir, tmp_path):
    sm = platform.sagemaker()
    name = unique("stopme")
    create_job(sm, name, tiny_llama_dir, write_instructions(tmp_path / "data"), tmp_path / "out", max_steps=100000)
    wait_training_step(platform, sm, name, 3)
    sm.stop_training_job(TrainingJobName=name)
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] in ("Stopping", "Stopped")
    described = wait_done(sm, name)
    assert described["TrainingJobStatus"] == "Stopped" and described["SecondaryStatus"] == "Stopped"
    steps = {m["MetricName"]: m["Value"] for m in described["FinalMetricDataList"]}["steps"]
    assert 3 <= steps < 100000
    assert (tmp_path / "out" / name / "output" / "model.tar.gz").is_file()
    with pytest.raises(ClientError) as err:
        sm.stop_training_job(TrainingJobName=name)  # stopping a stopped job is a client error
    assert err.value.response["Error"]["Code"] == "ValidationException"


def test_max_runtime_stops_the_job(platform, tiny_llama_dir, tmp_path):
    sm = platform.sagemaker()
    name = unique("timeout")
    create_job(sm, name, tiny_llama_dir, write_instructions(tmp_path / "data"), tmp_path / "out",
               max_runtime=8, max_steps=100000)  # fmt: skip
    described = wait_done(sm, name)
    assert described["TrainingJobStatus"] == "Stopped"
    assert described["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert "MaxRuntimeInSeconds" in " ".join(
        t.get("StatusMessage", "") for t in described["SecondaryStatusTransitions"]
    )


def test_list_filters_sorts_and_pages(platform, tiny_llama_dir, tmp_path):
    sm = platform.sagemaker()
    prefix = unique("lst")
    data = write_instructions(tmp_path / "data", count=8)
    names = [f"{prefix}-{i}" for i in range(3)]
    for name in names:
        create_job(sm, name, tiny_llama_dir, data, tmp_path / "out", max_steps=1)
    for name in names:
        wait_done(sm, name)
    page = sm.list_training_jobs(NameContains=prefix, SortBy="Name", SortOrder="Ascending", MaxResults=2)
    assert [j["TrainingJobName"] for j in page["TrainingJobSummaries"]] == names[:2]
    rest = sm.list_training_jobs(NameContains=prefix, SortBy="Name", SortOrder="Ascending", MaxResults=2,
                                 NextToken=page["NextToken"])  # fmt: skip
    assert [j["TrainingJobName"] for j in rest["TrainingJobSummaries"]] == names[2:] and "NextToken" not in rest
    done = sm.list_training_jobs(NameContains=prefix, StatusEquals="Completed")["TrainingJobSummaries"]
    assert len(done) == 3 and all(j["TrainingJobStatus"] == "Completed" for j in done)
    assert sm.list_training_jobs(NameContains=prefix, StatusEquals="Failed")["TrainingJobSummaries"] == []
    paginated = [j["TrainingJobName"] for p in sm.get_paginator("list_training_jobs").paginate(
        NameContains=prefix, PaginationConfig={"PageSize": 1}) for j in p["TrainingJobSummaries"]]  # fmt: skip
    assert sorted(paginated) == names


def test_duplicate_name_and_missing_train_channel(platform, tiny_llama_dir, tmp_path):
    sm = platform.sagemaker()
    name = unique("dup")
    data = write_instructions(tmp_path / "data", count=8)
    create_job(sm, name, tiny_llama_dir, data, tmp_path / "out", max_steps=1)
    with pytest.raises(ClientError) as err:
        create_job(sm, name, tiny_llama_dir, data, tmp_path / "out", max_steps=1)
    assert err.value.response["Error"]["Code"] == "ResourceInUse"
    with pytest.raises(ClientError) as err:
        sm.create_training_job(TrainingJobName=unique("nochan"), RoleArn=ROLE,
                               AlgorithmSpecification={"TrainingInputMode": "File"},
                               OutputDataConfig={"S3OutputPath": (tmp_path / "out").as_uri()},
                               Environment={"HF_MODEL_ID": str(tiny_llama_dir)})  # fmt: skip
    assert "'train'" in err.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as err:
        sm.create_training_job(TrainingJobName=unique("badchan"), RoleArn=ROLE,
                               AlgorithmSpecification={"TrainingInputMode": "File"},
                               InputDataConfig=[{"ChannelName": name, "DataSource": {"S3DataSource": {
                                   "S3DataType": "S3Prefix", "S3Uri": data.as_uri()}}} for name in ("training", "test")],
                               OutputDataConfig={"S3OutputPath": (tmp_path / "out").as_uri()},
                               Environment={"HF_MODEL_ID": str(tiny_llama_dir)})  # fmt: skip
    assert (
        "Unknown channel 'test'" in err.value.response["Error"]["Message"]
    )  # 'training' is JumpStart's name for train
    wait_done(sm, name)


def test_restart_mid_job_marks_it_failed_with_the_reason(tmp_path, tiny_llama_dir):
    platform = PlatformProcess(tmp_path / "state").start()
    try:
        sm = platform.sagemaker()
        name = unique("restart")
        create_job(sm, name, tiny_llama_dir, write_instructions(tmp_path / "data"), tmp_path / "out", max_steps=100000)
        wait_training_step(platform, sm, name, 5)
        pid = _trainer_pid(tmp_path / "state" / "training" / name)
        assert pid is not None
        platform.process.send_signal(signal.SIGKILL)
        platform.process.wait(10)
        platform.start()
        described = platform.sagemaker().describe_training_job(TrainingJobName=name)
        assert described["TrainingJobStatus"] == "Failed"
        checkpoints = tmp_path / "state" / "training" / name / "checkpoints"
        newest = max((int(c.name.split("-")[1]) for c in checkpoints.glob("checkpoint-*")), default=0)
        assert newest >= 4  # saved every 4 steps; the trainer may have saved more before the kill landed
        reason = described["FailureReason"]
        assert "platform restarted" in reason and reason.endswith(f"checkpoint-{newest}.")
        deadline = time.monotonic() + 10  # the trainer died with its platform (parent-death signal)
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pid)
    finally:
        platform.stop()


def _trainer_pid(job_dir: Path) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"streamhost.training.trainer" in cmdline and str(job_dir).encode() in cmdline:
                return int(entry.name)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "Z" not in (Path(f"/proc/{pid}/stat").read_text().split()[2])
    except OSError:
        return False


def test_s3_channels_model_and_output_in_the_embedded_store(platform, tiny_llama_dir, tmp_path):
    """Base model, data and output all as s3:// in the platform's own store (as the SageMaker SDK uploads them)."""
    s3 = platform.client("s3", s3={"addressing_style": "path"})
    bucket = "sagemaker-us-east-1-123456789012"  # exists from startup
    for path in tiny_llama_dir.iterdir():
        s3.upload_file(str(path), bucket, f"base/tiny/{path.name}")
    data = write_instructions(tmp_path / "data", count=12)
    s3.upload_file(str(data / "train.jsonl"), bucket, "data/train/train.jsonl")
    sm = platform.sagemaker()
    name = unique("s3tune")
    sm.create_training_job(
        TrainingJobName=name, RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": "streamhost/trainer", "TrainingInputMode": "File"},
        HyperParameters={"instruction_tuned": "true", "max_steps": "2", "save_steps": "100"},
        InputDataConfig=[
            {"ChannelName": "train", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/data/train"}}},
            {"ChannelName": "model", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/base/tiny/"}}},
        ],
        OutputDataConfig={"S3OutputPath": f"s3://{bucket}/out"},
    )  # fmt: skip
    described = wait_done(sm, name)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    assert described["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{bucket}/out/{name}/output/model.tar.gz"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"out/{name}/")["Contents"]}
    assert keys == {f"out/{name}/output/model.tar.gz", f"out/{name}/output/loss_curve.png"}
    archive = tmp_path / "model.tar.gz"
    s3.download_file(bucket, f"out/{name}/output/model.tar.gz", str(archive))
    with tarfile.open(archive) as tar:
        assert "model.safetensors" in tar.getnames()


def test_gated_base_model_needs_accept_eula(platform, tmp_path):
    sm = platform.sagemaker()
    data = write_instructions(tmp_path / "data", count=4)
    request = {
        "RoleArn": ROLE, "AlgorithmSpecification": {"TrainingImage": TRAINING_IMAGE, "TrainingInputMode": "File"},
        "HyperParameters": {"instruction_tuned": "true"},
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data.as_uri()}}}],
        "OutputDataConfig": {"S3OutputPath": (tmp_path / "out").as_uri()},
    }  # fmt: skip
    name = unique("gated")
    with pytest.raises(ClientError) as err:
        sm.create_training_job(
            TrainingJobName=name, Environment={"HF_MODEL_ID": "meta-textgeneration-llama-2-7b-f"}, **request
        )
    message = err.value.response["Error"]["Message"]
    assert (
        err.value.response["Error"]["Code"] == "ValidationException"
        and "accept_eula=true" in message
        and "llama2" in message
    )
    assert sm.list_training_jobs(NameContains="gated")["TrainingJobSummaries"] == []
    # Accepted (as JumpStartEstimator.fit(accept_eula=True) sends it): the job is created. This machine
    # cannot download Llama 2, so it then fails saying so, before any training.
    sm.create_training_job(TrainingJobName=name, Environment={"HF_MODEL_ID": "meta-textgeneration-llama-2-7b-f",
                                                              "accept_eula": "true"}, **request)  # fmt: skip
    with pytest.raises(WaiterError):
        wait_done(sm, name)
    described = sm.describe_training_job(TrainingJobName=name)
    assert described["TrainingJobStatus"] == "Failed" and "meta-llama/Llama-2-7b-chat-hf" in described["FailureReason"]


def test_sagemaker_sdk_prints_the_job_log(platform, tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """The SageMaker SDK's own log reader (CloudWatch Logs DescribeLogStreams/GetLogEvents) follows the job."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", platform.url)
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    import sagemaker

    name = unique("sdklogs")
    sm = platform.sagemaker()
    create_job(sm, name, tiny_llama_dir, write_instructions(tmp_path / "data", count=12), tmp_path / "out", max_steps=3)
    session = sagemaker.Session(boto_session=boto3.Session(aws_access_key_id="x", aws_secret_access_key="y",
                                                           region_name="us-east-1"))  # fmt: skip
    capsys.readouterr()
    session.logs_for_job(name, wait=True, poll=1)
    out = capsys.readouterr().out
    assert "step 3/3 loss" in out and "completed:" in out
    assert "Completed - Training job completed" in out  # the SDK's closing line, from DescribeTrainingJob
    logs = platform.client("logs")
    (stream,) = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{name}/")[
        "logStreams"
    ]
    first = logs.get_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream["logStreamName"],
                                startFromHead=True, limit=2)  # fmt: skip
    rest = logs.get_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream["logStreamName"],
                               nextToken=first["nextForwardToken"])  # fmt: skip
    assert (
        len(first["events"]) == 2
        and rest["events"]
        and rest["events"][0]["timestamp"] > first["events"][-1]["timestamp"]
    )
