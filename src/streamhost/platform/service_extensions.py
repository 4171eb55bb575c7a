"""Where streamhost deliberately accepts more than the AWS service model: the one list.

The control plane checks every request against botocore's published service model
(``service_model.py``). A self-hosted platform has a few needs AWS does not: model data on a local
disk, a startup timeout shorter than a minute, timestamps typed by hand with curl. Each such
loosening is a shape-level override below, keyed by ``(service, shape name)``, so it applies
wherever the model uses that shape and nowhere else, and each says why. Nothing outside this file
may loosen the model; ``tests/unit/test_service_model.py`` pins every entry.

Things that need no entry, because the model already allows them:
- our image URIs (``streamhost``, ``streamhost:tgi``, a TGI or DJL image name, ``http://host:port``
  of an external server): ``ContainerImage`` is ``[\\S]+`` up to 255 characters and ``images.py``
  decides what each names;
- ``AlgorithmImage`` (a training job's image) is ``.*``.
"""

from __future__ import annotations

from dataclasses import dataclass

# A local path (no URL scheme) or a file:// URL, besides the model's own s3:// and https://.
_S3_OR_HTTPS = r"(https|s3)://([^/]+)/?(.*)"
_LOCAL = r"file://.+|(?![A-Za-z][A-Za-z0-9+.\-]*://).+"
LOCAL_OR_REMOTE_URI = f"{_S3_OR_HTTPS}|{_LOCAL}"
LOCAL_NOTE = "(streamhost also accepts a local path or a file:// URL)"


@dataclass(frozen=True)
class ShapeExtension:
    """Replacements for one shape's constraints (``None`` keeps the model's)."""

    why: str
    pattern: str | None = None
    pattern_note: str = ""  # said after the model's pattern when a value fails the loosened one
    min: int | None = None
    max: int | None = None


EXTENSIONS: dict[tuple[str, str], ShapeExtension] = {
    ("sagemaker", "Url"): ShapeExtension(
        why="ModelDataUrl may name a local model.tar.gz or folder, as a path or a file:// URL; the artifact "
        "store resolves it and confines it to the allowed roots",
        pattern=LOCAL_OR_REMOTE_URI,
        pattern_note=LOCAL_NOTE,
    ),
    ("sagemaker", "S3ModelUri"): ShapeExtension(
        why="ModelDataSource.S3DataSource.S3Uri may name a local folder or file:// URL, like ModelDataUrl",
        pattern=LOCAL_OR_REMOTE_URI,
        pattern_note=LOCAL_NOTE,
    ),
    ("sagemaker", "S3Uri"): ShapeExtension(
        why="training channels' S3Uri, OutputDataConfig.S3OutputPath and CheckpointConfig.S3Uri may name local "
        "folders or file:// URLs on a single machine",
        pattern=LOCAL_OR_REMOTE_URI,
        pattern_note=LOCAL_NOTE,
    ),
    ("sagemaker", "ProductionVariantContainerStartupHealthCheckTimeoutInSeconds"): ShapeExtension(
        why="AWS's floor is 60 s; locally a container that cannot start should fail in seconds, not a minute",
        min=1,
    ),
    ("sagemaker", "ProductionVariantModelDataDownloadTimeoutInSeconds"): ShapeExtension(
        why="AWS's floor is 60 s; a local copy of model data has no reason to be given that long to fail",
        min=1,
    ),
}

# JSON 1.1 sends timestamps as epoch seconds (botocore does); an ISO-8601 string is accepted too,
# because people write control-plane calls by hand with curl.
ISO_TIMESTAMPS = True


def extension(service: str, shape: str) -> ShapeExtension | None:
    return EXTENSIONS.get((service, shape))
