"""Model data packaged for DJL Serving / LMI: find the model folder and fetch what ``option.model_id`` names.

After the artifact store has unpacked a ``model.tar.gz``, the platform reads it the way a DJL
container would, before any model server starts (so a bad package fails the endpoint at once,
with a FailureReason that says what was looked for and where):

- the model folder is the archive's root, or its single top-level folder (``tar czvf model.tar.gz
  mymodel/``), see ``server.model_folder.model_root``;
- its ``serving.properties`` (merged with the model's Environment, the file winning) names the
  weights with ``option.model_id``: a folder inside the model folder (the model server loads it),
  an ``s3://`` prefix (downloaded here through the artifact store, like ModelDataUrl), or a
  Hugging Face hub id (downloaded here through huggingface_hub; with ``HF_HUB_OFFLINE=1`` or no
  network this fails with the hub's reason);
- without serving.properties the folder must hold the weights, unless the Environment names the
  model (``HF_MODEL_ID``).

The model server then gets ``--model-dir`` (the model folder) and, for downloaded weights,
``--model-id`` (their local folder), which wins over the file's ``option.model_id``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from streamhost.server.model_folder import (
    SERVING_PROPERTIES,
    ModelFolderError,
    ModelLocation,
    holds_weights,
    locate_model,
    model_root,
)
from streamhost.server.serving_properties import ServingProperties, ServingPropertiesError

from .artifacts import ArtifactError, ArtifactStore, ModelData

_ARCHIVES = (".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class PreparedModel:
    """What the model server is started with: ``--model-dir`` and, when downloaded here, ``--model-id``."""

    model_dir: Path
    model_id: str | None = None


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


async def prepare_model_data(
    artifacts: ArtifactStore,
    fetched: Path,
    source_url: str,
    environment: dict[str, str],
    timeout: float | None,
) -> PreparedModel:
    """Resolve the model folder inside ``fetched`` (the unpacked ``source_url``); raises ArtifactError."""
    root = model_root(fetched)
    props_file = root / SERVING_PROPERTIES
    where = f"{_relative(root, fetched) if root != fetched else 'the top'} of {source_url}"
    if not props_file.is_file():
        named = environment.get("HF_MODEL_ID") or environment.get("OPTION_MODEL_ID")
        if not named and not holds_weights(root):
            raise ArtifactError(
                f"{source_url} holds no serving.properties, config.json or .gguf file: looked in {where} "
                f"({_listing(root)}). Package the weights (config.json + safetensors), or a serving.properties "
                "whose option.model_id names them, at the archive's root or in its single top-level folder"
            )
        return PreparedModel(root)
    origin = f"{_relative(props_file, fetched)} in {source_url}"
    try:
        properties = ServingProperties.load(props_file.read_text(encoding="utf-8"), environment)
        location = locate_model(root, properties.model_id, origin)
    except (ServingPropertiesError, ModelFolderError) as exc:
        raise ArtifactError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read {origin}: {exc}") from None
    if location.kind == "s3":
        return PreparedModel(root, await _fetch_s3_weights(artifacts, location, origin, timeout))
    if location.kind == "hub":
        revision = environment.get("HF_MODEL_REVISION") or properties.get("option.revision")
        token = environment.get("HF_TOKEN") or environment.get("HUGGING_FACE_HUB_TOKEN")
        return PreparedModel(root, await _fetch_hub_weights(location, origin, revision, token, timeout))
    if not Path(location.reference).resolve().is_relative_to(root.resolve()):
        artifacts.check(ModelData(location.reference))  # an absolute path elsewhere obeys --artifact-root
    return PreparedModel(root)


def _listing(folder: Path, limit: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    if not names:
        return "it is empty"
    return "it holds " + ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


async def _fetch_s3_weights(
    artifacts: ArtifactStore, location: ModelLocation, origin: str, timeout: float | None
) -> str:
    url = location.reference
    is_archive = url.endswith(_ARCHIVES)
    data = ModelData(url, compressed=True if is_archive else None, prefix=not is_archive)
    try:
        folder = model_root(await artifacts.fetch_async(data, timeout))
    except ArtifactError as exc:
        raise ArtifactError(f"option.model_id={url!r} (from {origin}): {exc}") from None
    if not holds_weights(folder):
        raise ArtifactError(
            f"option.model_id={url!r} (from {origin}) was downloaded, but holds no config.json or .gguf file "
            f"({_listing(folder)})"
        )
    return str(folder)


async def _fetch_hub_weights(
    location: ModelLocation, origin: str, revision: str | None, token: str | None, timeout: float | None
) -> str:
    from streamhost.engine.loader import ModelNotFoundError, download_from_hub

    hub_id = location.reference
    try:
        job = asyncio.to_thread(download_from_hub, hub_id, revision, token)
        folder = await (asyncio.wait_for(job, timeout) if timeout else job)
    except ModelNotFoundError as exc:
        reason = str(exc.__cause__ or exc)
        raise ArtifactError(
            f"option.model_id={hub_id!r} (from {origin}) is not a folder in the model data (looked for "
            f"{location.looked_at}) and the Hugging Face hub could not provide it: {reason}"
        ) from None
    except asyncio.TimeoutError:
        raise ArtifactError(
            f"option.model_id={hub_id!r} (from {origin}): the hub download took longer than "
            f"ModelDataDownloadTimeoutInSeconds ({timeout:g} s)"
        ) from None
    return str(folder)
