"""A training job's inputs as local folders: its base model and its data channels.

Sources are what CreateTrainingJob names: ``s3://`` URIs (any S3-compatible store), ``file://``
URIs and local paths, fetched with the platform's ``ArtifactStore`` so the same rules hold as for
model data (archives unpacked safely, local paths confined to the allowed roots, copies cached).
The base model may instead be a model reference (``HF_MODEL_ID``): a catalog id, a hub id or a
folder, resolved the way a model server resolves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streamhost.platform.artifacts import ArtifactStore, ModelData
from streamhost.platform.s3.access import ExternalAccess


def is_uri(reference: str) -> bool:
    return urlsplit(reference).scheme.lower() in ("s3", "file")


def object_access(spec: dict[str, Any]) -> ExternalAccess:
    """boto3 to the store the platform named: its external S3 endpoint or its own embedded one."""
    s3 = spec.get("s3") or {}
    return ExternalAccess(s3.get("endpoint_url"), region=s3.get("region"), profile=s3.get("profile"))


def artifact_store(spec: dict[str, Any], access: ExternalAccess) -> ArtifactStore:
    roots = spec.get("artifact_roots")
    return ArtifactStore(
        spec["artifacts_dir"],
        s3_endpoint_url=(spec.get("s3") or {}).get("endpoint_url"),
        objects=access,
        allowed_roots=[Path(r) for r in roots] if roots is not None else None,
    )


def fetch_channel(store: ArtifactStore, uri: str) -> Path:
    """A local folder (or file) holding the channel's objects; s3 keys are read as a prefix, as S3Prefix does."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "s3":
        return store.fetch(ModelData(uri, compressed=False, prefix=True))
    path = store._local_path(uri)  # confined like model data
    if not path.exists():
        from streamhost.platform.artifacts import ArtifactError

        raise ArtifactError(f"Could not access channel data at {uri}: no such file or folder")
    return path


def resolve_base_model(store: ArtifactStore, reference: str) -> Path:
    """The base model's local folder, from a ``model`` channel URI or a model reference."""
    from streamhost.engine.loader import resolve_model

    if is_uri(reference):
        folder = store.fetch(ModelData(reference, prefix=urlsplit(reference).scheme.lower() == "s3"
                                       and not reference.endswith((".tar.gz", ".tgz", ".tar"))))  # fmt: skip
        return resolve_model(folder)
    return resolve_model(reference)
