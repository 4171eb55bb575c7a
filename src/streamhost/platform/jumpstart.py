"""JumpStart metadata generated from our catalog, so ``JumpStartModel(model_id)`` deploys our models.

The SageMaker SDK 2.x reads its model catalogue from the JumpStart content bucket
(``jumpstart-cache-prod-<region>``): ``models_manifest.json`` lists ids, versions and spec keys,
one spec file per model says which image to run, which model data to mount, which environment
to set, and (for fine-tuning) which hyperparameters exist. ``AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE``
and ``AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE`` make it read the open-weights files from a
folder; ``list_jumpstart_models`` still reads the proprietary manifest and, for filters on spec
fields, the spec files from the bucket itself, so the platform serves the same documents there
too (:func:`metadata_objects`).

What the specs point at:

- **image**: ``<account>.dkr.ecr.<region>.amazonaws.com/streamhost-tgi-inference:<version>`` for
  every instance family, which the platform runs as our model server in the TGI dialect;
- **model data**: an uncompressed S3 prefix ``s3://<jumpstart bucket>/streamhost-models/<id>/``.
  The SDK sends it as ``ModelDataSource`` (``S3Prefix``, with ``ModelAccessConfig.AcceptEula``
  when ``deploy(accept_eula=...)`` is given). The platform does not copy weights into the bucket:
  :class:`CatalogArtifacts` resolves such a prefix to the catalog entry's own weights (the
  bundled default model, a local folder, or a hub download), and refuses a EULA-gated entry whose
  request did not accept the EULA, the way SageMaker's CreateModel refuses gated model data;
- **environment**: ``HF_MODEL_ID=/opt/ml/model`` (the mounted model data, as JumpStart's TGI
  specs do) plus the entry's ``default_env``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from streamhost.catalog.specs import Catalog, CatalogError, CatalogModel, load_catalog

if TYPE_CHECKING:
    from .artifacts import ModelData
    from .s3.access import ObjectAccess

__all__ = [
    "ARTIFACT_PREFIX",
    "MANIFEST_KEY",
    "PROPRIETARY_MANIFEST_KEY",
    "SPEC_VERSION",
    "CatalogArtifacts",
    "content_bucket",
    "image_uri",
    "metadata_objects",
    "model_spec",
    "publish_to_store",
    "write_local_metadata",
]

MANIFEST_KEY = "models_manifest.json"  # sagemaker.jumpstart.constants.JUMPSTART_DEFAULT_MANIFEST_FILE_S3_KEY
PROPRIETARY_MANIFEST_KEY = "proprietary-sdk-manifest.json"  # ...JUMPSTART_DEFAULT_PROPRIETARY_MANIFEST_KEY
SPEC_VERSION = "1.0.0"
MIN_SDK_VERSION = "2.0.0"
ARTIFACT_PREFIX = "streamhost-models/"
EULA_PREFIX = "streamhost-eula/"
TRAINING_SCRIPT_KEY = "streamhost-training/sourcedir.tar.gz"
IMAGE_REPOSITORY = "streamhost-tgi-inference"
TRAINING_IMAGE_REPOSITORY = "streamhost-training"
IMAGE_TAG = "1.0"
CPU_INSTANCE = "ml.m5.xlarge"
GPU_INSTANCE = "ml.g5.2xlarge"
# Instance families a notebook may name; the spec maps each to our image (the SDK looks the
# exact type up first, then its family as sagemaker.utils.get_instance_type_family spells it:
# "g5" for ml.g5.2xlarge, and fails when neither is listed).
INSTANCE_FAMILIES = (
    "t2", "t3", "m4", "m5", "m5d", "m6i", "m7i", "c4", "c5", "c6i", "c7i", "r5", "r6i",
    "g4dn", "g5", "g6", "g6e", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "inf2", "trn1",
)  # fmt: skip
# list_jumpstart_models indexes the proprietary manifest's first entry unconditionally, so it may not be
# empty. This placeholder needs an SDK far newer than any release, so the SDK never lists or loads it.
_PROPRIETARY_PLACEHOLDER = {
    "model_id": "streamhost-no-proprietary-models",
    "version": SPEC_VERSION,
    "min_version": "9999.0.0",
    "spec_key": "proprietary-models/streamhost-no-proprietary-models/proprietary_specs_1.0.0.json",
}


def content_bucket(region: str) -> str:
    """The SDK's default JumpStart content bucket for ``region`` (``get_jumpstart_content_bucket``)."""
    return f"jumpstart-cache-prod-{region}"


def image_uri(region: str, account: str, repository: str = IMAGE_REPOSITORY) -> str:
    """The inference image our specs name; the platform runs it as our model server (TGI dialect)."""
    return f"{account}.dkr.ecr.{region}.amazonaws.com/{repository}:{IMAGE_TAG}"


def spec_key(model_id: str) -> str:
    return f"community_models/{model_id}/specs_v{SPEC_VERSION}.json"


def artifact_key(model_id: str) -> str:
    return f"{ARTIFACT_PREFIX}{model_id}/"


def eula_key(model_id: str) -> str:
    return f"{EULA_PREFIX}{model_id}.txt"


def _instance_variants(image: str, region: str) -> dict[str, Any]:
    return {
        "regional_aliases": {region: {"alias_ecr_uri_1": image}},
        "variants": {
            family: {"regional_properties": {"image_uri": "$alias_ecr_uri_1"}} for family in INSTANCE_FAMILIES
        },
    }


def _training_variants(model: CatalogModel, image: str, region: str) -> dict[str, Any]:
    """Our image for every family, and ``HF_MODEL_ID=<catalog id>`` in the training job's Environment."""
    variants = _instance_variants(image, region)
    for properties in variants["variants"].values():
        properties["properties"] = {"environment_variables": {"HF_MODEL_ID": model.id}}
    return variants


def _env_var(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "type": "text", "default": value, "scope": "container", "required_for_model_class": True}


def _is_gpu_model(model: CatalogModel) -> bool:
    return model.source != "bundled" and "GPU" in model.min_resources.upper()


def _hyperparameters(model: CatalogModel) -> list[dict[str, Any]] | None:
    """JumpStart hyperparameter entries from the trainer's table, or None when training is not built."""
    try:
        from streamhost.training.hyperparameters import SPECS, defaults_for
    except ImportError:
        return None
    defaults = defaults_for(getattr(model, "training_defaults", None) or {})
    entries = []
    for name, spec in SPECS.items():
        if name == "accept_eula":  # the SDK passes EULA acceptance itself (ModelAccessConfig)
            continue
        kind = {bool: "text", int: "int", float: "float"}.get(spec.type, "text")
        value = defaults[name]
        entry: dict[str, Any] = {"name": name, "type": kind, "scope": "algorithm"}
        entry["default"] = str(value).lower() if spec.type is bool else value
        if spec.type is bool:
            entry["options"] = ["true", "false"]
        elif spec.choices:
            entry["options"] = list(spec.choices)
        if spec.min is not None and spec.type is not bool:
            entry["exclusive_min" if spec.min_exclusive else "min"] = spec.min
        if spec.max is not None and spec.type is not bool:
            entry["max"] = spec.max
        entries.append(entry)
    return entries


def model_spec(model: CatalogModel, *, region: str, account: str) -> dict[str, Any]:
    """The JumpStart spec document (``specs_v<version>.json``) for one catalog entry."""
    image = image_uri(region, account)
    default_instance = GPU_INSTANCE if _is_gpu_model(model) else CPU_INSTANCE
    env = {"HF_MODEL_ID": "/opt/ml/model", **model.default_env}
    spec: dict[str, Any] = {
        "model_id": model.id,
        "url": model.eula_url or f"https://huggingface.co/{model.hub_id}",
        "version": SPEC_VERSION,
        "min_sdk_version": MIN_SDK_VERSION,
        "incremental_training_supported": False,
        "hosting_ecr_specs": {"framework": "huggingface-llm", "framework_version": "2.0.0", "py_version": "py310"},
        "hosting_instance_type_variants": _instance_variants(image, region),
        "hosting_artifact_key": artifact_key(model.id),
        "hosting_prepacked_artifact_key": artifact_key(model.id),
        "hosting_use_script_uri": False,
        "hosting_script_key": None,
        "inference_environment_variables": [_env_var(k, v) for k, v in env.items()],
        "inference_vulnerable": False,
        "inference_dependencies": [],
        "inference_vulnerabilities": [],
        "training_vulnerable": False,
        "training_dependencies": [],
        "training_vulnerabilities": [],
        "deprecated": False,
        "default_inference_instance_type": default_instance,
        "supported_inference_instance_types": sorted({default_instance, CPU_INSTANCE, GPU_INSTANCE}),
        "inference_enable_network_isolation": False,
        "dynamic_container_deployment_supported": False,
        "model_kwargs": {},
        "deploy_kwargs": {"model_data_download_timeout": 1200, "container_startup_health_check_timeout": 1200},
        "predictor_specs": {
            "supported_content_types": ["application/json"],
            "supported_accept_types": ["application/json"],
            "default_content_type": "application/json",
            "default_accept_type": "application/json",
        },
        "gated_bucket": False,
        "usage_info_message": model.description or None,
    }
    if model.eula_required:
        spec["hosting_eula_key"] = eula_key(model.id)
    hyperparameters = _hyperparameters(model)
    spec["training_supported"] = hyperparameters is not None
    if hyperparameters is not None:
        spec.update({
            "training_ecr_specs": {"framework": "huggingface", "framework_version": "2.0.0", "py_version": "py310"},
            "training_instance_type_variants": _training_variants(
                model, image_uri(region, account, TRAINING_IMAGE_REPOSITORY), region
            ),
            # No model channel: the trainer takes the base model from HF_MODEL_ID (the catalog id, set
            # per instance family below), as the TGI-style training jobs do; the key must be present.
            "training_artifact_key": None,
            "training_script_key": TRAINING_SCRIPT_KEY,
            "training_prepacked_script_key": None,
            "hyperparameters": hyperparameters,
            "default_training_instance_type": default_instance,
            "supported_training_instance_types": sorted({default_instance, CPU_INSTANCE, GPU_INSTANCE}),
            "training_enable_network_isolation": False,
            "estimator_kwargs": {},
            "fit_kwargs": {},
        })  # fmt: skip
    return spec


def _header(model: CatalogModel) -> dict[str, Any]:
    keywords = sorted({model.task, model.framework, model.licence, model.hub_id, *model.name.lower().split()})
    return {
        "model_id": model.id,
        "version": SPEC_VERSION,
        "min_version": MIN_SDK_VERSION,
        "spec_key": spec_key(model.id),
        "search_keywords": keywords,
    }


def _eula_text(model: CatalogModel) -> str:
    return (
        f"{model.name} ({model.hub_id}) is under the {model.licence} licence.\n"
        f"Read it at {model.eula_url} before accepting it with deploy(accept_eula=True).\n"
    )


def metadata_objects(catalog: Catalog, *, region: str, account: str) -> dict[str, bytes]:
    """Every object of the JumpStart content bucket, key -> body: manifests, specs, EULA texts."""
    models = list(catalog)
    objects = {
        MANIFEST_KEY: _dump([_header(m) for m in models]),
        PROPRIETARY_MANIFEST_KEY: _dump([_PROPRIETARY_PLACEHOLDER]),
    }
    for model in models:
        spec = model_spec(model, region=region, account=account)
        objects[spec_key(model.id)] = _dump(spec)
        if model.eula_required:
            objects[eula_key(model.id)] = _eula_text(model).encode()
        if spec["training_supported"]:
            objects[TRAINING_SCRIPT_KEY] = _training_sourcedir()
    return objects


def _training_sourcedir() -> bytes:
    """The ``source_dir`` JumpStartEstimator names: a stub, as the platform runs its own trainer.

    Built byte-for-byte the same every time (fixed mtimes), so republishing leaves it alone.
    """
    import gzip
    import io
    import tarfile

    script = (
        b'"""streamhost runs its own trainer (streamhost.training) for JumpStart training jobs; '
        b'this entry point is never executed."""\n'
    )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("transfer_learning.py")
        info.size, info.mtime, info.mode = len(script), 0, 0o644
        tar.addfile(info, io.BytesIO(script))
    return gzip.compress(raw.getvalue(), mtime=0)


def _dump(document: Any) -> bytes:
    return json.dumps(document, indent=1, sort_keys=True).encode()


def write_local_metadata(folder: Path, catalog: Catalog, *, region: str, account: str) -> Path:
    """Write the manifest and specs under ``folder`` (the two LOCAL_ROOT_DIR_OVERRIDE variables' value)."""
    for key, body in metadata_objects(catalog, region=region, account=account).items():
        target = folder / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(body)
        tmp.replace(target)  # a notebook reading meanwhile sees the old or the new file, never half
    return folder


def publish_to_store(access: ObjectAccess, catalog: Catalog, *, region: str, account: str) -> int:
    """Put the metadata into the JumpStart bucket of the platform's object store; returns how many changed.

    ``access`` is the embedded store or an external S3 endpoint (``platform.s3.access``). Runs at
    every platform start: an object whose bytes are unchanged (same MD5 ETag) is left alone, so
    restarts do not churn the store, and an edited catalog extension shows up.
    """
    import hashlib
    import tempfile

    from .s3.access import ObjectAccessError

    bucket = content_bucket(region)
    access.ensure_bucket(bucket)
    changed = 0
    with tempfile.TemporaryDirectory(prefix="jumpstart-") as scratch:
        for key, body in metadata_objects(catalog, region=region, account=account).items():
            etag = f'"{hashlib.md5(body).hexdigest()}"'
            try:
                if access.head(bucket, key).etag == etag:
                    continue
            except ObjectAccessError:  # NoSuchKey: write it
                pass
            source = Path(scratch) / "object"
            source.write_bytes(body)
            access.upload_file(source, bucket, key)
            changed += 1
    return changed


# --------------------------------------------------------------------------- model data references


class CatalogArtifacts:
    """Resolves ``s3://<jumpstart bucket>/streamhost-models/<id>/`` to the catalog entry's weights.

    The artifact store consults it before going to S3 (see ``ArtifactStore(references=...)``).
    ``check`` runs at CreateModel: an unknown id, or a EULA-gated entry whose request did not set
    ``ModelAccessConfig.AcceptEula=true``, is refused there, so nothing is deployed.
    """

    def __init__(self, state_dir: Path | str | None, region: str) -> None:
        self.state_dir = state_dir
        self.bucket = content_bucket(region)
        self.region = region

    def model_id_of(self, url: str) -> str | None:
        """The catalog id a model-data URL refers to, or None when the URL is ordinary model data."""
        parts = urlsplit(url)
        key = parts.path.lstrip("/")
        if parts.scheme.lower() != "s3" or parts.netloc != self.bucket or not key.startswith(ARTIFACT_PREFIX):
            return None
        return key[len(ARTIFACT_PREFIX) :].strip("/").split("/", 1)[0]

    def owns(self, url: str) -> bool:
        return self.model_id_of(url) is not None

    def _entry(self, url: str) -> CatalogModel:
        from .artifacts import ArtifactError

        model_id = self.model_id_of(url) or ""
        try:
            return load_catalog(self.state_dir).get(model_id)
        except CatalogError as exc:
            raise ArtifactError(f"Could not access model data at {url}: {exc}") from None

    def check(self, data: ModelData) -> None:
        """Refuse an unknown catalog id, or a gated entry without AcceptEula=true (CreateModel time)."""
        from .artifacts import ArtifactError

        model = self._entry(data.url)
        if model.eula_required and data.accept_eula is not True:
            raise ArtifactError(
                f"Model '{model.id}' requires accepting end-user license agreement (EULA). "
                f"See {model.eula_url} for terms of use. Accept it with deploy(accept_eula=True), which sends "
                "ModelDataSource.S3DataSource.ModelAccessConfig.AcceptEula=true."
            )

    def fetch(self, data: ModelData) -> Path:
        """The entry's weights as a local folder (the bundled model, a folder, or a hub download)."""
        from streamhost.engine.loader import ModelNotFoundError, resolve_model

        from .artifacts import ArtifactError

        self.check(data)
        model = self._entry(data.url)
        try:
            return resolve_model(model.hub_id, token=None)
        except (ModelNotFoundError, OSError) as exc:
            raise ArtifactError(f"Could not access model data at {data.url} ({model.hub_id}): {exc}") from None


def catalog_ids(objects: Mapping[str, bytes]) -> Iterable[str]:
    """The model ids a generated manifest lists (for tests and `sdk-env --json`)."""
    return [header["model_id"] for header in json.loads(objects[MANIFEST_KEY])]
