"""A finished (or stopped) job's outputs: the model folder, the loss curve, model.tar.gz, the upload.

``model.tar.gz`` is laid out as SageMaker lays out ``/opt/ml/model``: the model's files at the top
level, so CreateModel with that ModelDataUrl serves it as is. With merged weights it is a plain
Hugging Face folder; with ``merge_weights=false`` it holds the LoRA adapter plus
``streamhost_base.json`` naming the base model, which the model server's loader merges on load.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

MODEL_ARCHIVE = "model.tar.gz"
LOSS_CURVE = "loss_curve.png"
METRICS_FILE = "training_metrics.json"
BASE_REFERENCE = "streamhost_base.json"


def output_prefix(s3_output_path: str, job_name: str) -> str:
    """``S3OutputPath/<job>/output`` (no trailing slash), as SageMaker places a job's artifacts."""
    return f"{s3_output_path.rstrip('/')}/{job_name}/output"


def model_artifact_uri(s3_output_path: str, job_name: str) -> str:
    return f"{output_prefix(s3_output_path, job_name)}/{MODEL_ARCHIVE}"


def plot_loss_curve(history: list[dict[str, Any]], target: Path, title: str) -> Path | None:
    """Train and eval loss against the step, as a PNG (None when nothing was logged)."""
    train = [(h["step"], h["loss"]) for h in history if h.get("loss") is not None]
    evals = [(h["step"], h["eval_loss"]) for h in history if h.get("eval_loss") is not None]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
    return target


def write_archive(folder: Path, archive: Path) -> Path:
    """``folder``'s files at the archive's top level; gzip level 1 (weights barely compress)."""
    tmp = archive.with_name(archive.name + ".partial")
    with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(folder)))
    os.replace(tmp, archive)
    return archive


def _local_target(uri: str) -> Path:
    parts = urlsplit(uri)
    return Path(unquote(parts.path) if parts.scheme.lower() == "file" else uri).expanduser()


def upload(files: list[Path], prefix: str, access: Any, allowed_roots: list[str] | None) -> list[str]:
    """Copy ``files`` under ``prefix`` (s3:// through ``access.client``, file:// or a path); returns their URIs."""
    scheme = urlsplit(prefix).scheme.lower()
    uris = []
    if scheme == "s3":
        parts = urlsplit(prefix)
        client = access.client
        for path in files:
            key = f"{parts.path.strip('/')}/{path.name}".lstrip("/")
            client.upload_file(str(path), parts.netloc, key)
            uris.append(f"s3://{parts.netloc}/{key}")
        return uris
    target = _local_target(prefix).resolve()
    if allowed_roots is not None and not any(target == Path(r).resolve() or Path(r).resolve() in target.parents
                                             for r in allowed_roots):  # fmt: skip
        raise PermissionError(f"{prefix}: outputs must go under one of: {', '.join(allowed_roots)}")
    target.mkdir(parents=True, exist_ok=True)
    import shutil

    for path in files:
        shutil.copyfile(path, target / path.name)
        uris.append(f"{prefix.rstrip('/')}/{path.name}")
    return uris


def write_metrics(folder: Path, metrics: dict[str, Any], history: list[dict[str, Any]]) -> Path:
    path = folder / METRICS_FILE
    path.write_text(json.dumps({"final": metrics, "history": history}, indent=1))
    return path
