"""The LMI packaging that DJL Serving and the posts use, end to end with boto3 and real archives.

The posts write ``mymodel/serving.properties``, run ``tar czvf model.tar.gz mymodel/``, upload it
to S3 and create a model with a DJL image and that ModelDataUrl. Here the archive is built with the
real ``tar`` command, uploaded to a real S3 server (moto's, on a local port) with boto3, and served
by the platform with the real model server on the tiny model; answers are streamed with
``invoke_endpoint_with_response_stream``. Packages that name nothing loadable fail the endpoint
with a FailureReason that says what was looked for and where.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import boto3
import httpx
import pytest
from _platform_fixtures import REAL_COMMAND, PlatformProcess, unique

from streamhost.client.iterators import LineIterator

pytestmark = pytest.mark.timeout(300)

LMI_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.26.0-deepspeed0.12.6-cu121"
BUCKET = "lmi-models"
# The posts' serving.properties, with option.model_id naming the weights' folder inside the archive.
POSTS_PROPERTIES = """option.model_id=tiny-llama
option.rolling_batch=auto
option.output_formatter=jsonlines
option.enable_streaming=true
"""


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
    )
    client.create_bucket(Bucket=BUCKET)
    yield url, client
    server.stop()


@pytest.fixture(scope="module")
def platform(tmp_path_factory, s3_server):
    url, _client = s3_server
    proc = PlatformProcess(tmp_path_factory.mktemp("platform-lmi"), container_command=REAL_COMMAND,
                           extra_args=["--s3-endpoint-url", url], env={"AWS_DEFAULT_REGION": "us-east-1"})  # fmt: skip
    proc.start()
    yield proc
    proc.stop()


def tar_czvf(workdir: Path, folder: str) -> Path:
    """``tar czvf model.tar.gz <folder>`` run in ``workdir``, as the posts do."""
    subprocess.run(["tar", "czvf", "model.tar.gz", folder], cwd=workdir, check=True, capture_output=True)
    return workdir / "model.tar.gz"


def upload(s3_server, path: Path, key: str) -> str:
    _url, client = s3_server
    client.upload_file(str(path), BUCKET, key)
    return f"s3://{BUCKET}/{key}"


def create_endpoint(platform: PlatformProcess, model_data: str, env: dict[str, str] | None = None) -> str:
    sm = platform.sagemaker()
    name = unique("lmi")
    sm.create_model(ModelName=name, ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
                    PrimaryContainer={"Image": LMI_IMAGE, "ModelDataUrl": model_data, "Environment": env or {}})  # fmt: skip
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1, "InstanceType": "ml.g5.2xlarge",
        "ContainerStartupHealthCheckTimeoutInSeconds": 180}])  # fmt: skip
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    return name


def settled(platform: PlatformProcess, name: str, timeout: float = 180) -> dict:
    sm = platform.sagemaker()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        description = sm.describe_endpoint(EndpointName=name)
        if description["EndpointStatus"] not in ("Creating", "Updating"):
            return description
        time.sleep(0.5)
    raise AssertionError(f"{name} still {description['EndpointStatus']} after {timeout} s:\n{platform.log_tail()}")


def stream_lines(platform: PlatformProcess, name: str, tokens: int = 8, **extra) -> tuple[str, list[dict]]:
    response = platform.runtime().invoke_endpoint_with_response_stream(
        EndpointName=name, ContentType="application/json",
        Body=json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": tokens}, **extra}))  # fmt: skip
    return response["ContentType"], [json.loads(line) for line in LineIterator(response["Body"]) if line]


def instance_info(platform: PlatformProcess, name: str) -> dict:
    view = platform.instances(name)
    url = next(i["url"] for v in view["variants"] for i in v["instances"])
    return httpx.get(f"{url}/info", timeout=10).json()


def test_the_posts_package_serves_and_streams(platform, s3_server, tiny_llama_dir, tmp_path):
    shutil.copytree(tiny_llama_dir, tmp_path / "mymodel" / "tiny-llama")
    (tmp_path / "mymodel" / "serving.properties").write_text(POSTS_PROPERTIES)
    name = create_endpoint(platform, upload(s3_server, tar_czvf(tmp_path, "mymodel/"), "posts/model.tar.gz"))
    description = settled(platform, name)
    assert description["EndpointStatus"] == "InService", description.get("FailureReason")
    content_type, lines = stream_lines(platform, name)
    assert content_type == "application/jsonlines"
    assert len(lines) == 8 and all(set(line["token"]) >= {"id", "text", "log_prob"} for line in lines)
    assert lines[-1]["generated_text"] == "".join(
        line["token"]["text"] for line in lines if not line["token"].get("special_token")
    )
    report = instance_info(platform, name)["serving_properties"]
    assert report["file"].endswith("mymodel/serving.properties")
    assert set(report["honoured"]) == {
        "option.model_id",
        "option.rolling_batch",
        "option.output_formatter",
        "option.enable_streaming",
    }
    assert report["honoured"]["option.model_id"]["value"] == "tiny-llama"


def test_model_id_as_an_s3_prefix_and_recorded_keys(platform, s3_server, tiny_llama_dir, tmp_path):
    for file in sorted(tiny_llama_dir.iterdir()):
        upload(s3_server, file, f"weights/tiny/{file.name}")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "serving.properties").write_text(
        "engine=Python\n"
        "option.entryPoint=djl_python.huggingface\n"
        f"option.model_id=s3://{BUCKET}/weights/tiny/\n"
        "option.tensor_parallel_degree=1\n"
        "option.paged_attention=true\n"
        "option.max_rolling_batch_size=4\n"
        "option.rolling_batch=lmi-dist\n"
    )
    subprocess.run(
        ["tar", "czvf", "../model.tar.gz", "serving.properties"], cwd=tmp_path / "pkg", check=True, capture_output=True
    )
    name = create_endpoint(platform, upload(s3_server, tmp_path / "model.tar.gz", "s3pkg/model.tar.gz"))
    description = settled(platform, name)
    assert description["EndpointStatus"] == "InService", description.get("FailureReason")
    # No output_formatter: the request's "stream": true asks for jsonlines (LMI 0.26+).
    content_type, lines = stream_lines(platform, name, tokens=5, stream=True)
    assert content_type == "application/jsonlines" and len(lines) == 5 and "generated_text" in lines[-1]
    report = instance_info(platform, name)["serving_properties"]
    assert set(report["recorded"]) == {
        "engine",
        "option.entryPoint",
        "option.tensor_parallel_degree",
        "option.paged_attention",
    }
    assert report["recorded"]["option.paged_attention"]["value"] == "true"
    assert report["honoured"]["option.max_rolling_batch_size"]["sets"] == "MAX_BATCH_SIZE"
    assert report["honoured"]["option.model_id"]["value"] == f"s3://{BUCKET}/weights/tiny/"


@pytest.mark.parametrize(
    ("layout", "says"),
    [
        (
            {
                "mymodel/serving.properties": "option.model_id=./weights\noption.rolling_batch=auto\n",
                "mymodel/README": "",
            },
            [
                "option.model_id='./weights'",
                "mymodel/serving.properties in s3://",
                "names nothing loadable",
                "mymodel/weights",
            ],
        ),
        (
            {"mymodel/serving.properties": "option.model_id=TheBloke/Llama-2-7B-fp16\n"},
            [
                "option.model_id='TheBloke/Llama-2-7B-fp16'",
                "looked for",
                "mymodel/TheBloke/Llama-2-7B-fp16",
                "Hugging Face hub could not provide it",
            ],
        ),
        (
            {"mymodel/serving.properties": "option.rolling_batch=auto\n", "mymodel/model.py": ""},
            ["sets no option.model_id", "holds no config.json or .gguf file", "model.py"],
        ),
        (
            {"mymodel/README": "weights go here"},
            ["holds no serving.properties, config.json or .gguf file", "looked in mymodel of s3://", "it holds README"],
        ),
        (
            {"mymodel/serving.properties": f"option.model_id=s3://{BUCKET}/nothing-here/\n"},
            [f"option.model_id='s3://{BUCKET}/nothing-here/'", "no objects under this prefix"],
        ),
    ],
    ids=["missing-path", "hub-offline", "no-model-id-no-weights", "no-properties-no-weights", "empty-s3-prefix"],
)
def test_a_package_naming_nothing_loadable_fails_with_what_and_where(platform, s3_server, tmp_path, layout, says):
    for relative, text in layout.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    name = create_endpoint(
        platform, upload(s3_server, tar_czvf(tmp_path, "mymodel/"), f"bad/{unique('pkg')}/model.tar.gz")
    )
    description = settled(platform, name)
    assert description["EndpointStatus"] == "Failed"
    reason = description["FailureReason"]
    for part in says:
        assert part in reason, reason
