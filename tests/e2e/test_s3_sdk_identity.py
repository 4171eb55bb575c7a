"""The SageMaker Python SDK 2.x's own identity and bucket calls against the platform's S3/STS/IAM.

``get_execution_role()``, ``Session.default_bucket()`` (with its ExpectedBucketOwner probe),
``upload_data`` and ``download_data`` run unchanged. One client-side setting: the SDK builds its
STS client with a hard-coded ``https://sts.<region>.amazonaws.com`` (PROTOCOLS §6), which no
environment variable redirects, so the test points that one function at the platform.
"""

from __future__ import annotations

import os

import pytest
from _platform_fixtures import ACCESS_KEY, REGION, SECRET_KEY, PlatformProcess

sagemaker = pytest.importorskip("sagemaker", reason="the SageMaker Python SDK 2.x is not installed")


@pytest.fixture()
def sdk_session(tmp_path, monkeypatch):
    platform = PlatformProcess(tmp_path / "state").start()
    try:
        for name, value in {"AWS_ENDPOINT_URL": platform.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                            "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
                            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(sagemaker.session, "sts_regional_endpoint", lambda region: platform.url)
        import boto3

        yield platform, sagemaker.Session(boto_session=boto3.Session(region_name=REGION))
    finally:
        platform.stop()


def test_execution_role_default_bucket_and_uploads(sdk_session, tmp_path):
    _platform, session = sdk_session
    assert sagemaker.get_execution_role(session) == "arn:aws:iam::123456789012:role/StreamhostExecutionRole"
    assert session.account_id() == "123456789012"
    bucket = session.default_bucket()
    assert bucket == "sagemaker-us-east-1-123456789012"
    source = tmp_path / "data"
    (source / "nested").mkdir(parents=True)
    (source / "train.jsonl").write_text('{"text": "hello"}\n')
    (source / "nested" / "more.jsonl").write_text('{"text": "again"}\n')
    uri = session.upload_data(str(source), key_prefix="datasets/demo")
    assert uri == f"s3://{bucket}/datasets/demo"
    assert sorted(session.list_s3_files(bucket, "datasets/demo/")) == [
        "datasets/demo/nested/more.jsonl", "datasets/demo/train.jsonl"]  # fmt: skip
    target = tmp_path / "back"
    session.download_data(str(target), bucket, key_prefix="datasets/demo/")
    assert (target / "nested" / "more.jsonl").read_text() == '{"text": "again"}\n'
    assert session.read_s3_file(bucket, "datasets/demo/train.jsonl") == '{"text": "hello"}\n'
