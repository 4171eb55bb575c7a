"""The seed notebooks, run as written by the real SageMaker Python SDK 2.x against a real platform.

Each notebook (``tests/e2e/notebooks/*.py``) runs in its own Python process with nothing but the
environment ``streamhost sdk-env`` produces, as a user's kernel would; the platform runs real model
servers on the tiny test model. What the notebook saw comes back as one ``RESULT {json}`` line.

The SDK's deploy waiter (``Session.wait_for_endpoint`` -> ``_wait_until`` -> ``_deploy_done``)
sleeps ``poll`` = 30 s before each DescribeEndpoint. The runner shortens that default to 1 s by
rewriting the function's default argument, so the SDK's own waiter code still runs, only with a
shorter sleep (the bench, ``bench/sdk_notebook.py``, runs the unpatched 30 s waiter).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

pytest.importorskip("sagemaker", minversion="2.250")

sys.path.insert(0, str(Path(__file__).resolve().parent / "notebooks"))
from notebook_runner import NotebookRun, notebook_env, run_notebook

GATED_ID = "huggingface-textgeneration-tiny-gated"
TUNABLE_ID = "huggingface-textgeneration-tiny"
EULA_URL = "https://example.com/tiny-licence"
BUCKET = "notebook-default-bucket"
ACCOUNT = "210987654321"  # not the default, so sdk-env must ask the platform
POLL_S = 1


@pytest.fixture(scope="module")
def platform(tmp_path_factory, tiny_llama_dir: Path) -> Iterator[tuple]:
    """`streamhost serve` with real model servers; its catalog adds the tiny model as a gated JumpStart id."""
    from _platform_fixtures import ACCESS_KEY, REAL_COMMAND, SECRET_KEY, PlatformProcess

    from streamhost.cli.sdk_env import build_sdk_environment

    state = tmp_path_factory.mktemp("notebook-platform")
    # a copy: the catalog gates invocations of models whose HF_MODEL_ID is a gated entry's hub id,
    # and the other notebooks deploy the tiny model by its own path, ungated
    gated_weights = shutil.copytree(tiny_llama_dir, state / "tiny-gated")
    entry = {"id": GATED_ID, "hub_id": str(gated_weights), "name": "Tiny gated Llama", "licence": "tiny-licence",
             "eula_required": True, "eula_url": EULA_URL, "default_env": {"MAX_TOTAL_TOKENS": "256"}}  # fmt: skip
    tunable = {"id": TUNABLE_ID, "hub_id": str(tiny_llama_dir), "name": "Tiny Llama", "licence": "apache-2.0"}
    (state / "catalog.json").write_text(json.dumps({"models": [entry, tunable]}))
    proc = PlatformProcess(state, container_command=REAL_COMMAND, extra_args=["--account-id", ACCOUNT]).start()
    try:
        sdk = build_sdk_environment(proc.url, state / "sdk", bucket=BUCKET, state_dir=state,
                                    credentials=(ACCESS_KEY, SECRET_KEY))  # fmt: skip
        yield proc, sdk.env
    finally:
        proc.stop()


def notebook(name: str, sdk_env: dict[str, str], **extra: str) -> NotebookRun:
    return run_notebook(name, notebook_env(sdk_env, **extra), poll=POLL_S)


def assert_gone(platform, endpoint: str, model: str, timeout: float = 60.0) -> None:
    sm = platform.sagemaker()
    deadline = time.monotonic() + timeout
    while True:
        try:
            sm.describe_endpoint(EndpointName=endpoint)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ValidationException"
            break
        assert time.monotonic() < deadline, f"endpoint {endpoint} still there {timeout} s after DeleteEndpoint"
        time.sleep(0.2)
    assert model not in {m["ModelName"] for m in sm.list_models()["Models"]}
    assert endpoint not in {c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]}


def test_sdk_env_asks_the_platform_for_its_account_and_default_bucket(platform, tmp_path):
    from _platform_fixtures import ACCESS_KEY, SECRET_KEY

    proc, _ = platform
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    done = subprocess.run(
        [sys.executable, "-m", "streamhost.cli", "sdk-env", "--json", "--url", proc.url, "--state-dir", str(proc.state_dir),
         "--config-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout)
    assert result["account"] == ACCOUNT
    assert result["default_bucket"] == f"sagemaker-us-east-1-{ACCOUNT}"
    assert result["env"]["AWS_ACCESS_KEY_ID"] == ACCESS_KEY  # boto3's own credential chain
    proc.client("s3").head_bucket(Bucket=result["default_bucket"])  # the platform created it at start
    manifest = Path(result["jumpstart_dir"]) / "models_manifest.json"
    assert GATED_ID in manifest.read_text()  # the state directory's catalog extension is in


def test_huggingface_model_deploy_predict_stream_delete(platform, tiny_llama_dir):
    proc, sdk_env = platform
    run = notebook("hf_tgi", sdk_env, NOTEBOOK_MODEL=str(tiny_llama_dir))
    result = run.result

    assert "huggingface-pytorch-tgi-inference" in result["image"]
    assert result["model"].startswith("huggingface-pytorch-tgi-inference-")
    tokens = result["sdk_tokens"]
    assert tokens, "the SDK's LineIterator read no token"
    # greedy decoding: every reader sees the same tokens, and they add up to predict()'s answer
    assert result["sample_tokens"] == tokens
    assert result["sample_iterator_via_sdk"] == tokens
    assert result["answer"][0]["generated_text"] == "".join(tokens)
    # the waiter's status marks: the last DescribeEndpoint said InService, none said Failed
    assert run.status_marks.endswith("!") and "*" not in run.status_marks
    assert_gone(proc, result["endpoint"], result["model"])


def _lmi_tarball(folder: Path, weights: Path) -> Path:
    """model.tar.gz as the LMI samples build it: serving.properties and the weights at the archive root."""
    (folder / "serving.properties").write_text(
        "engine=Python\noption.rolling_batch=auto\noption.max_rolling_batch_size=4\n"
    )
    tarball = folder / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder / "serving.properties", arcname="serving.properties")
        for item in sorted(weights.iterdir()):
            tar.add(item, arcname=item.name)
    return tarball


def test_upload_data_then_lmi_model_from_s3_streams(platform, tiny_llama_dir, tmp_path):
    proc, sdk_env = platform
    tarball = _lmi_tarball(tmp_path, tiny_llama_dir)
    result = notebook("lmi_s3", sdk_env, NOTEBOOK_TARBALL=str(tarball)).result

    assert result["bucket"] == BUCKET  # the SDK config file's DefaultS3Bucket
    assert result["model_data"] == f"s3://{BUCKET}/large-model-lmi/code/model.tar.gz"
    stored = proc.client("s3").head_object(Bucket=BUCKET, Key="large-model-lmi/code/model.tar.gz")
    assert stored["ContentLength"] == tarball.stat().st_size
    assert result["sdk_tokens"], "the LMI stream carried no token"
    assert result["sample_tokens"] == result["sdk_tokens"]
    assert "".join(result["sdk_tokens"]) == result["answer"]["generated_text"]
    assert_gone(proc, result["endpoint"], result["model"])


def test_jumpstart_catalog_gated_deploy_and_listing(platform):
    from streamhost.catalog.specs import load_catalog
    from streamhost.platform.jumpstart import MANIFEST_KEY, metadata_objects

    proc, sdk_env = platform
    result = notebook("jumpstart", sdk_env, NOTEBOOK_MODEL_ID=GATED_ID).result

    catalog_ids = set(load_catalog(proc.state_dir).ids())
    assert GATED_ID in catalog_ids
    assert set(result["all_models"]) == catalog_ids
    # the SDK's task filter reads the id's second part (meta-textgeneration-llama-2-7b-f)
    assert GATED_ID in result["text_generation"] and "meta-textgeneration-llama-2-7b-f" in result["text_generation"]
    assert "smollm2" not in result["text_generation"]
    # a filter on a spec field: the SDK reads every spec from the platform's JumpStart bucket
    objects = metadata_objects(load_catalog(proc.state_dir), region="us-east-1", account="123456789012")
    specs = [json.loads(objects[h["spec_key"]]) for h in json.loads(objects[MANIFEST_KEY])]
    gpu = sorted(
        [s["model_id"], s["version"]] for s in specs if s["default_inference_instance_type"] == "ml.g5.2xlarge"
    )
    assert gpu and sorted(result["gpu_defaults"]) == gpu

    # without accept_eula, CreateModel refuses the gated model data (as SageMaker does)
    assert result["refusal"]["code"] == "ValidationException"
    assert "EULA" in result["refusal"]["message"] and EULA_URL in result["refusal"]["message"]
    assert GATED_ID in result["unknown"]  # the SDK's own unknown-id error, from our manifest

    source = result["container"]["ModelDataSource"]["S3DataSource"]
    assert source["ModelAccessConfig"] == {"AcceptEula": True}
    assert source["S3Uri"].endswith(f"/streamhost-models/{GATED_ID}/")
    # SageMaker's /invocations answers with the prompt in front (TGI's return_full_text default there)
    text = result["answer"][0]["generated_text"]
    streamed = "".join(e["token"]["text"] for e in result["stream"] if not e["token"]["special"])
    assert streamed and text == result["prompt"] + streamed
    assert result["stream"][-1]["generated_text"] == text
    assert_gone(proc, result["endpoint"], result["model"])
    # the refused deploy left nothing behind
    assert not [m for m in proc.sagemaker().list_models()["Models"] if GATED_ID in m["ModelName"]]


def test_jumpstart_estimator_fine_tunes_a_catalog_model(platform, tmp_path):
    """JumpStartEstimator: defaults and ranges from the trainer's table, the base model by catalog id."""
    hp = pytest.importorskip("streamhost.training.hyperparameters", reason="training jobs (issue 15) not merged")
    from streamhost.catalog.specs import load_catalog

    proc, sdk_env = platform
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"example {i}: a line of text to learn"}) + "\n" for i in range(16)))
    run = notebook("jumpstart_finetune", sdk_env, NOTEBOOK_MODEL_ID=TUNABLE_ID, NOTEBOOK_TRAIN_FILE=str(train))
    result = run.result

    expected = hp.to_strings(hp.defaults_for(load_catalog(proc.state_dir).get(TUNABLE_ID).training_defaults))
    expected.pop("accept_eula", None)
    assert result["defaults"] == expected
    assert result["status"] == "Completed"
    assert result["environment"]["HF_MODEL_ID"] == TUNABLE_ID
    assert result["image"].endswith("/streamhost-training:1.0")
    assert result["hyperparameters"]["max_steps"] == "2" and result["hyperparameters"]["epoch"] == "1"
    bucket, _, key = result["model_artifact"][len("s3://") :].partition("/")
    assert proc.client("s3").head_object(Bucket=bucket, Key=key)["ContentLength"] > 0
    # fit() tailed the job's log through the CloudWatch Logs API: its lines are in the notebook's output
    (job_log,) = (proc.state_dir / "training").glob(f"{result['job'].lower()}/*.log")
    lines = [line for line in job_log.read_text().splitlines() if line.strip()]
    assert lines and all(line in run.output for line in lines[:3])


def test_endpoint_logs_read_through_the_cloudwatch_logs_api(platform, tiny_llama_dir):
    """boto3's logs client and the SDK's multi_stream_iter read an instance's log from the platform."""
    from _platform_fixtures import deploy, unique
    from sagemaker.logs import multi_stream_iter

    proc, _ = platform
    sm, logs = proc.sagemaker(), proc.client("logs")
    name = deploy(sm, unique("logs"), image="huggingface-pytorch-tgi-inference:2.0",
                  env={"HF_MODEL_ID": str(tiny_llama_dir)})  # fmt: skip
    try:
        group = f"/aws/sagemaker/Endpoints/{name}"
        streams = [s["logStreamName"] for s in logs.describe_log_streams(logGroupName=group)["logStreams"]]
        assert len(streams) == 1 and streams[0].startswith("AllTraffic/")
        events = [event for _i, event in multi_stream_iter(logs, group, streams)]
        instance_log = next((proc.state_dir / "logs" / name).glob("*/*.log"))
        complete = [line.rstrip("\r") for line in instance_log.read_bytes().decode("utf-8", "replace").split("\n")[:-1]]
        assert [e["message"] for e in events] == complete[: len(events)] and events
        with pytest.raises(ClientError) as missing:
            logs.describe_log_streams(logGroupName="/aws/sagemaker/Endpoints/no-such-endpoint")
        assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    finally:
        sm.delete_endpoint(EndpointName=name)
        sm.delete_endpoint_config(EndpointConfigName=name)
        sm.delete_model(ModelName=name)
