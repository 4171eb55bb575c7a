"""JumpStart metadata generated from our catalog, read by the real SageMaker SDK 2.x (no network).

The SDK's own accessors parse the files ``streamhost sdk-env`` writes (through the local-override
variables), so these tests fail when a field the SDK needs is missing or misshapen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamhost.catalog.specs import load_catalog
from streamhost.platform.artifacts import ArtifactError, ArtifactStore, ModelData, model_data_of
from streamhost.platform.jumpstart import (
    MANIFEST_KEY,
    PROPRIETARY_MANIFEST_KEY,
    CatalogArtifacts,
    content_bucket,
    metadata_objects,
    write_local_metadata,
)

sagemaker = pytest.importorskip("sagemaker", minversion="2.250")

REGION, ACCOUNT = "us-east-1", "123456789012"
GATED = "meta-textgeneration-llama-2-7b-f"


@pytest.fixture
def jumpstart_env(tmp_path, monkeypatch) -> Path:
    """The catalog's metadata in a folder, the SDK pointed at it, and its caches cleared."""
    from sagemaker.jumpstart import accessors

    folder = write_local_metadata(tmp_path / "js", load_catalog(), region=REGION, account=ACCOUNT)
    monkeypatch.setenv("AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE", str(folder))
    monkeypatch.setenv("AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE", str(folder))
    for key, value in {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                       "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_EC2_METADATA_DISABLED": "true"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    accessors.JumpStartModelsAccessor.reset_cache()
    yield folder
    accessors.JumpStartModelsAccessor.reset_cache()


def _session():
    import boto3

    return sagemaker.Session(boto3.Session(region_name=REGION))


def test_every_catalog_entry_is_in_the_manifest_with_a_parseable_spec(jumpstart_env):
    from sagemaker.jumpstart.accessors import JumpStartModelsAccessor

    manifest = json.loads((jumpstart_env / MANIFEST_KEY).read_text())
    assert sorted(h["model_id"] for h in manifest) == sorted(load_catalog().ids())
    for header in manifest:
        specs = JumpStartModelsAccessor.get_model_specs(region=REGION, model_id=header["model_id"], version="*")
        assert specs.model_id == header["model_id"]
        assert not specs.deprecated and not specs.inference_vulnerable


def test_jumpstart_model_resolves_our_image_model_data_and_environment(jumpstart_env):
    from sagemaker.jumpstart.model import JumpStartModel

    model = JumpStartModel(model_id="smollm2", role="arn:aws:iam::123456789012:role/x", sagemaker_session=_session())
    assert model.image_uri.endswith(".amazonaws.com/streamhost-tgi-inference:1.0")
    assert model.instance_type == "ml.m5.xlarge"
    source = model.model_data["S3DataSource"]
    assert source["S3Uri"] == f"s3://{content_bucket(REGION)}/streamhost-models/smollm2/"
    assert source["S3DataType"] == "S3Prefix" and source["CompressionType"] == "None"
    assert model.env["HF_MODEL_ID"] == "/opt/ml/model"
    assert model.env["MAX_TOTAL_TOKENS"] == load_catalog().get("smollm2").default_env["MAX_TOTAL_TOKENS"]

    container = model.prepare_container_def(accept_eula=True)
    assert container["ModelDataSource"]["S3DataSource"]["ModelAccessConfig"] == {"AcceptEula": True}


def test_gated_entry_carries_a_eula_key_and_a_gpu_default(jumpstart_env):
    from sagemaker.jumpstart.accessors import JumpStartModelsAccessor
    from sagemaker.jumpstart.model import JumpStartModel

    specs = JumpStartModelsAccessor.get_model_specs(region=REGION, model_id=GATED, version="*")
    assert specs.is_gated_model() and specs.hosting_eula_key
    assert (jumpstart_env / specs.hosting_eula_key).read_text().startswith("Llama 2 7B Chat")
    model = JumpStartModel(model_id=GATED, role="arn:aws:iam::123456789012:role/x", sagemaker_session=_session())
    assert model.instance_type == "ml.g5.2xlarge"
    # any instance family a notebook names maps to our image
    other = JumpStartModel(model_id=GATED, instance_type="ml.p4d.24xlarge", role="arn:aws:iam::1:role/x",
                           sagemaker_session=_session())  # fmt: skip
    assert other.image_uri == model.image_uri


def test_hyperparameters_come_from_the_trainer_table(jumpstart_env):
    hp = pytest.importorskip("streamhost.training.hyperparameters")
    from sagemaker import hyperparameters

    defaults = hyperparameters.retrieve_default(model_id="smollm2", model_version="*", region=REGION)
    expected = hp.to_strings(hp.defaults_for(load_catalog().get("smollm2").training_defaults))
    expected.pop("accept_eula", None)
    assert defaults == expected
    hyperparameters.validate(model_id="smollm2", model_version="*", region=REGION, hyperparameters=defaults)
    with pytest.raises(Exception, match="learning_rate"):
        hyperparameters.validate(model_id="smollm2", model_version="*", region=REGION,
                                 hyperparameters={**defaults, "learning_rate": "7"})  # fmt: skip


def test_bucket_objects_hold_the_same_documents_and_a_nonempty_proprietary_manifest():
    objects = metadata_objects(load_catalog(), region=REGION, account=ACCOUNT)
    # list_jumpstart_models indexes the proprietary manifest's first entry: it must not be empty,
    # and its placeholder must need an SDK newer than any release so it is never listed
    (placeholder,) = json.loads(objects[PROPRIETARY_MANIFEST_KEY])
    assert int(placeholder["min_version"].split(".")[0]) > int(sagemaker.__version__.split(".")[0])
    for header in json.loads(objects[MANIFEST_KEY]):
        assert json.loads(objects[header["spec_key"]])["model_id"] == header["model_id"]


# --------------------------------------------------------------------------- catalog references


def _references(tmp_path: Path, tiny: Path | None = None) -> CatalogArtifacts:
    if tiny is not None:
        entry = {"id": "tiny-gated", "hub_id": str(tiny), "name": "Tiny", "licence": "test-licence",
                 "eula_required": True, "eula_url": "https://example.com/licence"}  # fmt: skip
        (tmp_path / "catalog.json").write_text(json.dumps({"models": [entry]}))
    return CatalogArtifacts(tmp_path, REGION)


def test_gated_reference_needs_accept_eula_at_create_model(tmp_path):
    refs = _references(tmp_path)
    store = ArtifactStore(tmp_path / "artifacts", references=refs)
    url = f"s3://{content_bucket(REGION)}/streamhost-models/{GATED}/"
    refused = model_data_of({"ModelDataSource": {"S3DataSource": {"S3Uri": url, "S3DataType": "S3Prefix",
                                                                  "CompressionType": "None"}}})  # fmt: skip
    with pytest.raises(ArtifactError, match=r"requires accepting end-user license agreement.*accept_eula=True"):
        store.check(refused)
    declined = model_data_of({"ModelDataSource": {"S3DataSource": {
        "S3Uri": url, "S3DataType": "S3Prefix", "CompressionType": "None", "ModelAccessConfig": {"AcceptEula": False}}}})  # fmt: skip
    with pytest.raises(ArtifactError, match="EULA"):
        store.check(declined)
    accepted = model_data_of({"ModelDataSource": {"S3DataSource": {
        "S3Uri": url, "S3DataType": "S3Prefix", "CompressionType": "None", "ModelAccessConfig": {"AcceptEula": True}}}})  # fmt: skip
    store.check(accepted)  # no error
    store.check(ModelData(f"s3://{content_bucket(REGION)}/streamhost-models/smollm2/", prefix=True))  # not gated


def test_unknown_reference_is_refused_and_other_urls_are_not_references(tmp_path):
    refs = _references(tmp_path)
    with pytest.raises(ArtifactError, match="no model 'nope'"):
        refs.check(ModelData(f"s3://{content_bucket(REGION)}/streamhost-models/nope/", prefix=True))
    assert not refs.owns(f"s3://{content_bucket(REGION)}/other/key.tar.gz")
    assert not refs.owns("s3://my-bucket/streamhost-models/smollm2/")
    assert not refs.owns(f"s3://{content_bucket('eu-west-1')}/streamhost-models/smollm2/")


def test_reference_resolves_to_the_catalog_entry_weights(tmp_path, tiny_llama_dir):
    refs = _references(tmp_path, tiny_llama_dir)
    store = ArtifactStore(tmp_path / "artifacts", references=refs)
    url = f"s3://{content_bucket(REGION)}/streamhost-models/tiny-gated/"
    with pytest.raises(ArtifactError, match="EULA"):
        store.fetch(ModelData(url, prefix=True))
    assert store.fetch(ModelData(url, prefix=True, accept_eula=True)) == tiny_llama_dir


# --------------------------------------------------------------------------- sdk-env


def test_sdk_env_writes_a_config_the_sdk_loads(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[2] / "src"), env.get("PYTHONPATH")])
    )
    out = subprocess.run(
        [sys.executable, "-m", "streamhost.cli", "--url", "http://127.0.0.1:8765", "sdk-env", "--json",
         "--state-dir", str(tmp_path), "--bucket", "notebook-bucket"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout)
    variables = result["env"]
    assert variables["AWS_ENDPOINT_URL"] == "http://127.0.0.1:8765"
    assert variables["AWS_DEFAULT_REGION"] == "us-east-1"
    assert Path(variables["AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE"], MANIFEST_KEY).is_file()

    shell = subprocess.run(
        [sys.executable, "-m", "streamhost.cli", "sdk-env", "--shell", "--state-dir", str(tmp_path),
         "--config-dir", str(tmp_path / "other")],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    assert "export SAGEMAKER_USER_CONFIG_OVERRIDE=" in shell.stdout and shell.stderr == ""

    from sagemaker.config import load_sagemaker_config

    config = load_sagemaker_config([variables["SAGEMAKER_USER_CONFIG_OVERRIDE"]])
    modules = config["SageMaker"]["PythonSDK"]["Modules"]
    assert modules["Session"]["DefaultS3Bucket"] == "notebook-bucket"
    assert modules["TelemetryOptOut"] is True


# --------------------------------------------------------------------------- the JumpStart bucket


def test_publishing_into_the_embedded_store_is_idempotent_and_follows_the_catalog(tmp_path):
    from streamhost.platform.jumpstart import publish_to_store
    from streamhost.platform.s3.access import EmbeddedAccess
    from streamhost.platform.s3.store import ObjectStore

    store = ObjectStore(tmp_path / "s3", tmp_path / "db.sqlite")
    try:
        access = EmbeddedAccess(store)
        catalog = load_catalog()
        expected = metadata_objects(catalog, region=REGION, account=ACCOUNT)
        assert publish_to_store(access, catalog, region=REGION, account=ACCOUNT) == len(expected)
        for key, body in expected.items():
            assert access.local_path(content_bucket(REGION), key).read_bytes() == body
        assert publish_to_store(access, catalog, region=REGION, account=ACCOUNT) == 0  # a restart rewrites nothing

        (tmp_path / "catalog.json").write_text(json.dumps({"models": [{"id": "smollm2", "description": "changed"}]}))
        # the manifest is unchanged; only smollm2's spec (its usage message) is rewritten
        assert publish_to_store(access, load_catalog(tmp_path), region=REGION, account=ACCOUNT) == 1
    finally:
        store.close()
