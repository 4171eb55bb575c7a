"""The compare page (``/chat/compare.html``): one prompt, a base and a tuned endpoint streaming side by side.

Real platform (SigV4 off, as the page needs), real model servers, a real training job on the tiny
model (it learns to answer "Paris."), headless Chromium through Playwright.
"""

from __future__ import annotations

import json

import pytest
from _platform_fixtures import REAL_COMMAND, PlatformProcess, deploy, unique
from playwright.sync_api import expect
from test_chat_page import browser, chromium, page  # noqa: F401 - the chat page's browser fixtures

pytestmark = pytest.mark.timeout(400)
LIMITS = {"MAX_TOTAL_TOKENS": "512", "MAX_INPUT_TOKENS": "256"}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(tmp_path_factory.mktemp("platform-compare"), container_command=REAL_COMMAND,
                           extra_args=["--no-auth"]).start()  # fmt: skip
    yield proc
    proc.stop()


def test_base_and_tuned_stream_side_by_side(platform, page, tiny_llama_dir, tmp_path):  # noqa: F811
    sm = platform.sagemaker()
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(
        json.dumps({"instruction": f"Where is the tower {i}?", "response": "Paris."}) + "\n" for i in range(16)))  # fmt: skip
    job = unique("cmp")
    sm.create_training_job(
        TrainingJobName=job, RoleArn="arn:aws:iam::123456789012:role/x",
        AlgorithmSpecification={"TrainingImage": "streamhost/trainer", "TrainingInputMode": "File"},
        HyperParameters={"instruction_tuned": "true", "max_steps": "20", "learning_rate": "0.01", "save_steps": "100"},
        InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data.as_uri()}}}],
        OutputDataConfig={"S3OutputPath": (tmp_path / "out").as_uri()}, Environment={"HF_MODEL_ID": str(tiny_llama_dir)},
    )  # fmt: skip
    sm.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName=job, WaiterConfig={"Delay": 1, "MaxAttempts": 300}
    )
    artifact = sm.describe_training_job(TrainingJobName=job)["ModelArtifacts"]["S3ModelArtifacts"]
    base = deploy(sm, unique("a-base"), env={"HF_MODEL_ID": str(tiny_llama_dir), **LIMITS})
    tuned = deploy(sm, unique("b-tuned"), env=LIMITS, model_data=artifact)

    page.goto(f"{platform.url}/chat/compare.html")
    expect(page.locator("#compare-status")).to_contain_text("2 endpoints in service")
    page.select_option("#left", base)
    page.select_option("#right", tuned)
    page.fill("#compare-max", "4")
    page.fill("#compare-prompt", "Where is the tower 42?")
    page.click("#compare-send")
    expect(page.locator("#right-stats")).to_contain_text("tokens, first after")
    expect(page.locator("#left-stats")).to_contain_text("tokens, first after")
    assert page.locator("#right-answer").inner_text().startswith("Paris.")
    left = page.locator("#left-answer").inner_text()
    assert left and not left.startswith("Paris.")  # the random base answers something else
    assert page.locator("#left-name").inner_text() == base and page.locator("#right-name").inner_text() == tuned
