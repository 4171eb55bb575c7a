"""The real default model (SmolLM2-135M-Instruct): a short LoRA run makes ROUGE-L against the references go up.

The instruction set (``streamhost.training.samples``) has one terse house style per question
kind; the base model answers in its own words, the tuned one in the references' style. Base and
tuned are deployed as real endpoints and compared with ``streamhost evaluate`` on held-out
examples, as a user would do it.
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

from streamhost.training.samples import instruction_set, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
LIMITS = {"MAX_TOTAL_TOKENS": "1024", "MAX_INPUT_TOKENS": "512"}


def test_short_lora_run_raises_rouge_l(tmp_path, smollm2_dir):
    train, held_out = instruction_set(train=64, held_out=8, seed=1)
    data = write_jsonl(train, tmp_path / "data" / "train.jsonl").parent
    test = write_jsonl(held_out, tmp_path / "test.jsonl")
    platform = PlatformProcess(tmp_path / "state", container_command=REAL_COMMAND).start()
    try:
        sm = platform.sagemaker()
        job = unique("smol-lora")
        sm.create_training_job(
            TrainingJobName=job, RoleArn="arn:aws:iam::123456789012:role/x",
            AlgorithmSpecification={"TrainingImage": "streamhost/trainer", "TrainingInputMode": "File"},
            HyperParameters={"instruction_tuned": "true", "max_steps": "8", "learning_rate": "0.001",
                             "validation_split_ratio": "0.1", "save_steps": "100"},
            InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data.as_uri()}}}],
            OutputDataConfig={"S3OutputPath": (tmp_path / "out").as_uri()},
            Environment={"HF_MODEL_ID": "smollm2"},
        )  # fmt: skip
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName=job, WaiterConfig={"Delay": 2, "MaxAttempts": 500}
        )
        described = sm.describe_training_job(TrainingJobName=job)
        assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
        assert described["HyperParameters"]["lora_r"] == "8"  # smollm2's catalog training defaults applied
        base = deploy(sm, unique("smol-base"), env={"HF_MODEL_ID": "smollm2", **LIMITS}, startup_timeout=300)
        tuned = deploy(sm, unique("smol-tuned"), env=LIMITS, model_data=described["ModelArtifacts"]["S3ModelArtifacts"],
                       startup_timeout=300)  # fmt: skip
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "STREAMHOST_URL": platform.url,
        }
        report = tmp_path / "report"
        result = subprocess.run([sys.executable, "-m", "streamhost.cli", "evaluate", "--base", base, "--tuned", tuned,
                                 "--data", str(test), "--out", str(report), "--max-new-tokens", "24"],
                                capture_output=True, text=True, env=env, check=False, timeout=900)  # fmt: skip
        assert result.returncode == 0, result.stderr
        scores = json.loads(report.with_suffix(".json").read_text())["rouge_l"]
        assert scores["tuned"] > scores["base"], scores
    finally:
        platform.stop()
