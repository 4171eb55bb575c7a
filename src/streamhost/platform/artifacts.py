"""Model data: turn ``ModelDataUrl`` / ``ModelDataSource`` into a local folder a model server can load.

Accepted sources: a local path, ``file://``, or ``s3://bucket/key``: read from the platform's
embedded object store directly (its files, no HTTP), or, with ``--s3-endpoint``, from that external
S3-compatible store through boto3 (``s3/access.py``). A ``model.tar.gz`` (or any tar)
is unpacked with ``streamhost.archive.unpack_model_archive``, which refuses traversal, links and
oversize archives before writing anything. Unpacked copies are cached under the state directory,
keyed by the source and its fingerprint (size+mtime, or the S3 ETag), and published by an atomic
rename so a crash never leaves a half-unpacked folder that looks complete.

Local paths can be confined to ``allowed_roots``: a platform reachable from the network must not
let a caller point a model at ``/etc`` or another user's files.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from streamhost.archive import DEFAULT_MAX_UNPACKED_BYTES, UnsafeArchiveError, unpack_model_archive

from .s3.access import ExternalAccess, ObjectAccess, ObjectAccessError


class ArtifactError(Exception):
    """Model data could not be fetched or unpacked; the message says which source and why."""


@dataclass(frozen=True)
class ModelData:
    """Where a container's model data lives. ``compressed`` None means: decide from the file."""

    url: str
    compressed: bool | None = None
    prefix: bool = False  # S3Prefix: every object under the key prefix
    accept_eula: bool | None = None  # S3DataSource.ModelAccessConfig.AcceptEula (gated model data)


def model_data_of(container: dict[str, Any]) -> ModelData | None:
    """The model data a ContainerDefinition names, or None (then the model id comes from Environment)."""
    if container.get("ModelDataUrl"):
        return ModelData(str(container["ModelDataUrl"]))
    source = (container.get("ModelDataSource") or {}).get("S3DataSource")
    if source and source.get("S3Uri"):
        compression = source.get("CompressionType", "None")
        return ModelData(
            str(source["S3Uri"]),
            compressed=compression == "Gzip",
            prefix=source.get("S3DataType", "S3Object") == "S3Prefix",
            accept_eula=(source.get("ModelAccessConfig") or {}).get("AcceptEula"),
        )
    return None


def _deadline_check(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise ArtifactError(f"{what}: ModelDataDownloadTimeoutInSeconds elapsed")


def _file_name(key: str) -> str:
    """A safe local file name for an object key's last segment (never ``..`` or empty)."""
    name = key.rsplit("/", 1)[-1]
    return name if name not in ("", ".", "..") and "\x00" not in name else "model"


class ArtifactStore:
    """Fetches and unpacks model data into ``root`` (the state directory's ``artifacts`` folder)."""

    def __init__(
        self,
        root: str | Path,
        *,
        s3_endpoint_url: str | None = None,
        objects: ObjectAccess | None = None,
        allowed_roots: list[Path] | None = None,
        max_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
        references: Any = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.s3_endpoint_url = s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or None
        # s3:// model data: the platform's object access (embedded or external), else plain boto3.
        self.objects: ObjectAccess = objects or ExternalAccess(self.s3_endpoint_url)
        self.allowed_roots = [p.resolve() for p in allowed_roots] if allowed_roots is not None else None
        self.max_bytes = max_bytes
        # Resolves URLs that name catalog models rather than stored objects (platform.jumpstart.CatalogArtifacts).
        self.references = references

    # ------------------------------------------------------------------ validation at CreateModel

    def check(self, data: ModelData) -> None:
        """Cheap checks at CreateModel time: the scheme is known and a local source exists and is allowed."""
        if self.references is not None and self.references.owns(data.url):
            return self.references.check(data)
        scheme = urlsplit(data.url).scheme.lower()
        if scheme == "s3":
            bucket, _key = self._split_s3(data.url)
            if not bucket:
                raise ArtifactError(f"{data.url}: an S3 URL needs a bucket (s3://bucket/key)")
            return
        if scheme not in ("", "file"):
            raise ArtifactError(f"{data.url}: unsupported scheme {scheme!r}; use a local path, file:// or s3://")
        path = self._local_path(data.url)
        if not path.exists():
            raise ArtifactError(f"Could not access model data at {data.url}: no such file or folder")

    # ------------------------------------------------------------------ fetching

    async def fetch_async(self, data: ModelData, timeout: float | None) -> Path:
        """``fetch`` in a worker thread, giving up after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout if timeout else None
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.fetch, data, deadline), timeout)
        except asyncio.TimeoutError:
            raise ArtifactError(
                f"{data.url}: downloading and unpacking took longer than ModelDataDownloadTimeoutInSeconds ({timeout:g} s)"
            ) from None

    def fetch(self, data: ModelData, deadline: float | None = None) -> Path:
        """A local folder holding the model data (blocking)."""
        scheme = urlsplit(data.url).scheme.lower()
        if self.references is not None and self.references.owns(data.url):
            return self.references.fetch(data)
        try:
            if scheme == "s3":
                return self._fetch_s3(data, deadline)
            if scheme in ("", "file"):
                return self._fetch_local(data, deadline)
        except UnsafeArchiveError as exc:
            raise ArtifactError(f"{data.url}: unsafe model archive: {exc}") from None
        except OSError as exc:
            raise ArtifactError(f"{data.url}: {exc.strerror or exc}") from None
        raise ArtifactError(f"{data.url}: unsupported scheme {scheme!r}; use a local path, file:// or s3://")

    def _local_path(self, url: str) -> Path:
        parts = urlsplit(url)
        if parts.scheme.lower() == "file":
            if parts.netloc not in ("", "localhost"):
                raise ArtifactError(f"{url}: file:// URLs must name a local file (file:///path)")
            raw = unquote(parts.path)
        else:
            raw = url
        path = Path(os.path.expanduser(raw)).resolve()
        if self.allowed_roots is not None and not any(path == r or r in path.parents for r in self.allowed_roots):
            roots = ", ".join(str(r) for r in self.allowed_roots)
            raise ArtifactError(f"{url}: local model data must be under one of: {roots} (see --artifact-root)")
        return path

    def _fetch_local(self, data: ModelData, deadline: float | None) -> Path:
        path = self._local_path(data.url)
        if path.is_dir():
            return path
        if not path.is_file():
            raise ArtifactError(f"Could not access model data at {data.url}: no such file or folder")
        stat = path.stat()
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        return self._publish(key, lambda tmp: self._place_file(path, tmp, data, deadline))

    def _place_file(self, source: Path, folder: Path, data: ModelData, deadline: float | None,
                    name: str | None = None) -> None:  # fmt: skip
        """Unpack an archive into ``folder``, or copy a single file there (as ``name``, default its own)."""
        _deadline_check(deadline, data.url)
        if data.compressed or (data.compressed is None and tarfile.is_tarfile(source)):
            unpack_model_archive(source, folder, max_bytes=self.max_bytes)
        else:
            if source.stat().st_size > self.max_bytes:
                raise ArtifactError(f"{data.url}: larger than the {self.max_bytes}-byte limit")
            shutil.copy2(source, folder / (name or source.name))
        _deadline_check(deadline, data.url)

    def _publish(self, key: str, fill) -> Path:
        """Fill a temporary folder, then rename it into the cache: complete or absent, never half."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        final = self.root / digest
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=self.root))
        try:
            fill(tmp)
            try:
                tmp.rename(final)
            except OSError:
                if not final.is_dir():  # not a concurrent publisher of the same data
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    # ------------------------------------------------------------------ S3

    @staticmethod
    def _split_s3(url: str) -> tuple[str, str]:
        parts = urlsplit(url)
        return parts.netloc, parts.path.lstrip("/")

    def _fetch_s3(self, data: ModelData, deadline: float | None) -> Path:
        bucket, key = self._split_s3(data.url)
        try:
            if data.prefix or key.endswith("/") or not key:
                return self._fetch_s3_prefix(bucket, key, data, deadline)
            head = self.objects.head(bucket, key)
            if head.size > self.max_bytes:
                raise ArtifactError(f"{data.url}: larger than the {self.max_bytes}-byte limit")
            fingerprint = f"{data.url}|{head.etag}|{head.size}"

            def fill(folder: Path) -> None:
                local = self.objects.local_path(bucket, key)
                if local is not None:  # the embedded store: unpack straight from its file
                    self._place_file(local, folder, data, deadline, name=_file_name(key))
                    return
                with tempfile.TemporaryDirectory(dir=self.root) as scratch:
                    local = Path(scratch) / _file_name(key)
                    self._download(bucket, key, local, deadline, data.url)
                    self._place_file(local, folder, data, deadline)

            return self._publish(fingerprint, fill)
        except ObjectAccessError as exc:
            raise ArtifactError(f"Could not access model data at {data.url}: {exc}") from None

    def _download(self, bucket: str, key: str, target: Path, deadline: float | None, url: str) -> None:
        written = 0

        def progress(count: int) -> None:
            nonlocal written
            written += count
            if written > self.max_bytes:
                raise ArtifactError(f"{url}: larger than the {self.max_bytes}-byte limit")
            _deadline_check(deadline, url)

        self.objects.download(bucket, key, target, progress)

    def _fetch_s3_prefix(self, bucket: str, prefix: str, data: ModelData, deadline: float | None) -> Path:
        objects = self.objects.list(bucket, prefix)
        if not objects:
            raise ArtifactError(f"Could not access model data at {data.url}: no objects under this prefix")
        fingerprint = data.url + "|" + "|".join(f"{o.key}:{o.etag}" for o in objects)

        def fill(folder: Path) -> None:
            total = 0
            for obj in objects:
                relative = obj.key[len(prefix) :].lstrip("/")
                if not relative or relative.endswith("/"):
                    continue
                target = (folder / relative).resolve()
                if folder.resolve() not in target.parents:
                    raise ArtifactError(f"{data.url}: object key {obj.key!r} points outside the model folder")
                total += obj.size
                if total > self.max_bytes:
                    raise ArtifactError(f"{data.url}: larger than the {self.max_bytes}-byte limit")
                target.parent.mkdir(parents=True, exist_ok=True)
                self._download(bucket, obj.key, target, deadline, data.url)

        return self._publish(fingerprint, fill)
