"""Fine-tune -> deploy -> compare, end to end with the real model server on the tiny model.

The tiny random Llama learns to answer every "Where is the tower N?" with "Paris." within a few
steps, so a served answer that starts with "Paris." proves the endpoint runs the tuned weights
(the random base answers gibberish). Covered: boto3 CreateModel on the job's model.tar.gz (merged
weights), our SDK's ``Estimator.fit().deploy()`` with an unmerged adapter, and the CLI
(``train``, ``jobs``, ``deploy --training-job``, ``evaluate``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _platform_fixtures import (
    ACCESS_KEY,
    REAL_COMMAND,
    SECRET_KEY,
    PlatformProcess,
    deploy,
    unique,
)
from _training_data import tower_data

from streamhost.client import TokenIterator
from streamhost.training.data import DEFAULT_TEMPLATE, render_prompt

pytestmark = pytest.mark.timeout(600)
ROLE = "arn:aws:iam::123456789012:role/training"
HP = {"instruction_tuned": "true", "max_steps": "20", "learning_rate": "0.01", "save_steps": "100"}
LIMITS = {"MAX_TOTAL_TOKENS": "512", "MAX_INPUT_TOKENS": "256"}


def prompt(question: str = "Where is the tower 99?") -> str:
    return render_prompt({"instruction": question, "context": ""}, DEFAULT_TEMPLATE)


def stream(platform, endpoint: str) -> str:
    body = json.dumps({"inputs": prompt(), "parameters": {"max_new_tokens": 4, "do_sample": False}, "stream": True})
    response = platform.runtime().invoke_endpoint_with_response_stream(
        EndpointName=endpoint, Body=body, ContentType="application/json"
    )
    return "".join(TokenIterator(response["Body"]))


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(tmp_path_factory.mktemp("platform-tune"), container_command=REAL_COMMAND).start()
    yield proc
    proc.stop()


def remove(sm, endpoint: str) -> None:
    sm.delete_endpoint(EndpointName=endpoint)
    sm.delete_endpoint_config(EndpointConfigName=endpoint)


def test_boto3_artifact_deploys_and_streams_tuned_answers(platform, tiny_llama_dir, tmp_path):
    sm = platform.sagemaker()
    job = unique("tower")
    sm.create_training_job(
        TrainingJobName=job, RoleArn=ROLE, HyperParameters=HP,
        AlgorithmSpecification={"TrainingImage": "streamhost/trainer", "TrainingInputMode": "File"},
        InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": tower_data(tmp_path / "data").as_uri()}}}],
        OutputDataConfig={"S3OutputPath": (tmp_path / "out").as_uri()},
        StoppingCondition={"MaxRuntimeInSeconds": 600}, Environment={"HF_MODEL_ID": str(tiny_llama_dir)},
    )  # fmt: skip
    sm.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName=job, WaiterConfig={"Delay": 1, "MaxAttempts": 300}
    )
    described = sm.describe_training_job(TrainingJobName=job)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    endpoint = deploy(sm, unique("tuned"), env=LIMITS, model_data=described["ModelArtifacts"]["S3ModelArtifacts"])
    try:
        assert stream(platform, endpoint).startswith("Paris.")
    finally:
        remove(sm, endpoint)


def test_sdk_estimator_fit_deploy_with_unmerged_adapter(platform, tiny_llama_dir, tmp_path, capsys, monkeypatch):
    from streamhost.client import Estimator, Session, hyperparameters

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)  # the platform verifies signatures
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    session = Session(endpoint_url=platform.url)
    hp = {**HP, "merge_weights": "false"}
    hyperparameters.validate(str(tiny_llama_dir), hp)
    estimator = Estimator(str(tiny_llama_dir), hyperparameters=hp, output_path=tmp_path / "out", session=session)
    estimator.fit({"train": tower_data(tmp_path / "data")}, logs=True)
    assert "step 20/20 loss" in capsys.readouterr().out  # fit(logs=True) printed the job's progress
    predictor = estimator.deploy(startup_timeout=120)
    try:
        import tarfile

        archive = tmp_path / "out" / estimator.latest_training_job_name / "output" / "model.tar.gz"
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
        assert {"adapter_config.json", "adapter_model.safetensors", "streamhost_base.json"} <= names
        assert "config.json" not in names  # the adapter, not merged weights
        text = "".join(predictor.stream({"inputs": prompt(), "parameters": {"max_new_tokens": 4, "do_sample": False}}))
        assert text.startswith("Paris.")
    finally:
        predictor.delete_endpoint()
        predictor.delete_model()


def cli(platform, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "STREAMHOST_URL": platform.url,
    }
    return subprocess.run([sys.executable, "-m", "streamhost.cli", *args], capture_output=True, text=True, env=env, check=False,
                          timeout=timeout)  # fmt: skip


def test_cli_train_deploy_and_evaluate(platform, tiny_llama_dir, tmp_path):
    job = unique("clitune")
    data = tower_data(tmp_path / "data")
    result = cli(platform, "train", str(tiny_llama_dir), "--train", str(data / "train.jsonl"), "--name", job,
                 "--instruction-tuned", "--hp", "max_steps=20", "--hp", "learning_rate=0.01", "--hp", "save_steps=100",
                 "--output", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "step 20/20 loss" in result.stdout and "Completed" in result.stderr
    listed = cli(platform, "jobs", "list", "--name-contains", job, "--json")
    assert [j["TrainingJobStatus"] for j in json.loads(listed.stdout)] == ["Completed"]
    described = cli(platform, "jobs", "describe", job)
    assert described.returncode == 0 and "Completed" in described.stdout and "model.tar.gz" in described.stdout
    logs = cli(platform, "jobs", "logs", job, "-f")
    assert logs.returncode == 0 and "step 20/20 loss" in logs.stdout and "completed:" in logs.stdout
    stopped = cli(platform, "jobs", "stop", job)
    assert stopped.returncode == 1 and "only an InProgress job can be stopped" in stopped.stderr
    defaults = cli(platform, "jobs", "hyperparameters", "smollm2", "--json")
    assert {r["name"]: r["default"] for r in json.loads(defaults.stdout)}["learning_rate"] == "0.0002"
    bad = cli(platform, "train", str(tiny_llama_dir), "--train", str(data), "--hp", "lora_dropout=2")
    assert bad.returncode == 1 and "lora_dropout" in bad.stderr and "<= 1" in bad.stderr

    sm = platform.sagemaker()
    base = deploy(sm, unique("base"), env={"HF_MODEL_ID": str(tiny_llama_dir), **LIMITS})
    tuned = unique("clituned")
    try:
        result = cli(platform, "deploy", "--training-job", job, "--name", tuned, "--env", "MAX_TOTAL_TOKENS=512",
                     "--env", "MAX_INPUT_TOKENS=256")  # fmt: skip
        assert result.returncode == 0, result.stderr
        test = tmp_path / "test.jsonl"
        test.write_text("".join(json.dumps({"instruction": f"Where is the tower {i}?", "response": "Paris."}) + "\n"
                                for i in (97, 98, 99)))  # fmt: skip
        report = tmp_path / "report"
        result = cli(platform, "evaluate", "--base", base, "--tuned", tuned, "--data", str(test), "--out", str(report),
                     "--max-new-tokens", "2")  # fmt: skip  # "Paris" "." (the tiny model never learns EOS)
        assert result.returncode == 0, result.stderr
        scores = json.loads(report.with_suffix(".json").read_text())
        assert len(scores["rows"]) == 3 and all(r["tuned"].startswith("Paris.") for r in scores["rows"])
        assert scores["rouge_l"]["tuned"] == 1.0 and scores["rouge_l"]["base"] < 0.5
        markdown = report.with_suffix(".md").read_text()
        assert "| input | reference | base answer | tuned answer |" in markdown and "Where is the tower 99?" in markdown
    finally:
        remove(sm, base)
        sm.delete_model(ModelName=base)
        endpoints = [e["EndpointName"] for e in sm.list_endpoints(NameContains=tuned)["Endpoints"]]
        for endpoint in endpoints:
            remove(sm, endpoint)
