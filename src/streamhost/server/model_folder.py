"""Where the weights are in an LMI model folder: DJL Serving's rules, with failures that say where we looked.

The posts package a model as ``mymodel/serving.properties`` and ``tar czvf model.tar.gz mymodel/``,
so the unpacked archive holds one folder. DJL treats a folder whose only entry is one sub-folder
as that sub-folder (``model_root``). Its ``serving.properties`` names the weights with
``option.model_id`` (``locate_model``):

- unset: the model folder itself holds them (``config.json`` or a ``.gguf`` file);
- a path: relative to the model folder (it may not climb out of it), or absolute;
- ``s3://bucket/prefix``: downloaded by whoever fetched the model data (the platform's artifact
  store); a model server on its own cannot;
- anything else shaped like ``name`` or ``org/name``: a Hugging Face hub id.

A reference that names nothing loadable raises ``ModelFolderError`` naming the key, its value,
the file it came from and every place that was looked at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SERVING_PROPERTIES = "serving.properties"
_IGNORED_ENTRIES = ("__MACOSX",)  # what macOS tar/zip add beside the real folder
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class ModelFolderError(ValueError):
    """The model folder or its ``option.model_id`` names nothing loadable; the message says what and where."""


@dataclass(frozen=True)
class ModelLocation:
    """Where the weights are: ``kind`` is ``folder`` / ``file`` (local path), ``s3`` or ``hub``."""

    kind: str
    reference: str  # a local path, an s3:// URL or a hub id
    looked_at: str = ""  # the local path tried first, for hub ids (quoted when the hub fails too)


def holds_weights(folder: Path) -> bool:
    """A Hugging Face model folder (``config.json``), a folder with a ``.gguf`` file, or a training job's
    LoRA adapter (``adapter_config.json``; the loader merges it into the base it names)."""
    return (
        (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file() or any(folder.glob("*.gguf"))
    )


def _visible_entries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in _IGNORED_ENTRIES]


def model_root(folder: Path) -> Path:
    """The model folder inside unpacked model data: ``folder``, or its single sub-folder (DJL's rule).

    Only unwraps when ``folder`` has no serving.properties or weights of its own and its one
    visible entry is a folder (``tar czvf model.tar.gz mymodel/``).
    """
    folder = Path(folder)
    if not folder.is_dir() or (folder / SERVING_PROPERTIES).is_file() or holds_weights(folder):
        return folder
    entries = _visible_entries(folder)
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def _describe_contents(folder: Path, limit: int = 8) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in _visible_entries(folder))
    except OSError:
        return "unreadable"
    if not names:
        return "it is empty"
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f"it holds {shown}"


def locate_model(folder: Path, model_id: str | None, origin: str) -> ModelLocation:
    """Where ``option.model_id`` (``None``: the folder itself) points; ``origin`` names the file it came from."""
    folder = Path(folder)
    if not model_id:
        if holds_weights(folder):
            return ModelLocation("folder", str(folder))
        raise ModelFolderError(
            f"{origin} sets no option.model_id, so the weights must be beside it, but {folder} holds no "
            f"config.json or .gguf file ({_describe_contents(folder)}). Set option.model_id to a folder "
            "inside the model data, an s3:// prefix or a Hugging Face hub id"
        )
    if model_id.startswith("s3://"):
        return ModelLocation("s3", model_id)
    if "://" in model_id:
        raise ModelFolderError(
            f"option.model_id={model_id!r} (from {origin}) is not loadable: use a folder inside the model data, "
            "an s3:// prefix or a Hugging Face hub id"
        )
    given = Path(model_id).expanduser()
    local = given if given.is_absolute() else folder / given
    if not given.is_absolute():
        resolved, base = local.resolve(), folder.resolve()
        if resolved != base and base not in resolved.parents:
            raise ModelFolderError(
                f"option.model_id={model_id!r} (from {origin}) points outside the model folder {folder}"
            )
    if local.is_dir():
        local = model_root(local)  # HF_MODEL_ID=/opt/ml/model over an archive holding one folder
        if holds_weights(local):
            return ModelLocation("folder", str(local))
        raise ModelFolderError(
            f"option.model_id={model_id!r} (from {origin}) is the folder {local}, which holds no config.json "
            f"or .gguf file ({_describe_contents(local)})"
        )
    if local.is_file():
        if local.suffix == ".gguf" or local.name.endswith(_ARCHIVE_SUFFIXES):
            return ModelLocation("file", str(local))
        raise ModelFolderError(
            f"option.model_id={model_id!r} (from {origin}) is the file {local}, which is not a model folder, "
            ".gguf file or model archive"
        )
    if not given.is_absolute() and not model_id.startswith((".", "~")) and _HUB_ID.match(model_id):
        return ModelLocation("hub", model_id, looked_at=str(local))
    raise ModelFolderError(
        f"option.model_id={model_id!r} (from {origin}) names nothing loadable: there is no file or folder at "
        f"{local}, and it is not an s3:// URL or a Hugging Face hub id"
    )


def served_model(folder: Path, model_id: str | None, origin: str) -> str:
    """What a model server loads for an LMI folder: a local path or a hub id (the loader takes both).

    ``s3://`` cannot be fetched here (the model server has no artifact store): the platform
    downloads it before starting the server and passes the local folder as ``--model-id``.
    """
    location = locate_model(folder, model_id, origin)
    if location.kind == "s3":
        raise ModelFolderError(
            f"option.model_id={model_id!r} (from {origin}): this server loads local folders, .gguf files, "
            "model archives and hub ids; download s3:// artifacts first (the platform does this for endpoints)"
        )
    return location.reference
