"""How platform code (model data, uploads, training outputs) reads and writes objects.

Two implementations of one small interface: ``EmbeddedAccess`` reads the embedded store's files
directly (no HTTP, no copy: a model.tar.gz is unpacked straight from its blob), and
``ExternalAccess`` talks to an external S3 endpoint with boto3 (``--s3-endpoint``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import S3Error
from .store import ObjectStore

_CHUNK = 1024 * 1024


class ObjectAccessError(Exception):
    """An object could not be read or written; ``code`` is S3's error code (NoSuchKey, NoSuchBucket...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code} {message}".strip())
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ObjectMeta:
    key: str
    size: int
    etag: str


class ObjectAccess(Protocol):
    def head(self, bucket: str, key: str) -> ObjectMeta: ...
    def list(self, bucket: str, prefix: str) -> list[ObjectMeta]: ...
    def local_path(self, bucket: str, key: str) -> Path | None: ...
    def download(self, bucket: str, key: str, target: Path, progress: Callable[[int], None]) -> None: ...
    def upload_file(self, path: Path, bucket: str, key: str) -> ObjectMeta: ...
    def ensure_bucket(self, bucket: str) -> None: ...


class EmbeddedAccess:
    """Direct file access to the embedded store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def _get(self, bucket: str, key: str):
        try:
            return self.store.get(bucket, key)
        except S3Error as exc:
            raise ObjectAccessError(exc.code, exc.message) from None

    def head(self, bucket: str, key: str) -> ObjectMeta:
        info = self._get(bucket, key)
        return ObjectMeta(info.key, info.size, info.etag)

    def list(self, bucket: str, prefix: str) -> list[ObjectMeta]:
        if not self.store.bucket_exists(bucket):
            raise ObjectAccessError("NoSuchBucket", f"The specified bucket does not exist: {bucket}")
        return [ObjectMeta(o.key, o.size, o.etag) for o in self.store.iter_keys(bucket, prefix, "")]

    def local_path(self, bucket: str, key: str) -> Path | None:
        """The object's file itself (read-only: blobs never change once written)."""
        return self.store.blob_path(self._get(bucket, key).blob)

    def download(self, bucket: str, key: str, target: Path, progress: Callable[[int], None]) -> None:
        source = self.local_path(bucket, key)
        assert source is not None
        with open(source, "rb") as src, open(target, "wb") as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                progress(len(chunk))

    def upload_file(self, path: Path, bucket: str, key: str) -> ObjectMeta:
        temp = self.store.new_temp()
        md5 = hashlib.md5()
        try:
            with open(path, "rb") as src, open(temp, "wb") as out:
                while chunk := src.read(_CHUNK):
                    md5.update(chunk)
                    out.write(chunk)
            size = os.path.getsize(temp)
            blob = self.store.adopt(temp)
        finally:
            temp.unlink(missing_ok=True)
        try:
            info = self.store.put(bucket, key, blob, size, f'"{md5.hexdigest()}"', {})
        except S3Error as exc:
            raise ObjectAccessError(exc.code, exc.message) from None
        return ObjectMeta(info.key, info.size, info.etag)

    def ensure_bucket(self, bucket: str) -> None:
        if not self.store.bucket_exists(bucket):
            try:
                self.store.create_bucket(bucket)
            except S3Error as exc:
                if exc.code != "BucketAlreadyOwnedByYou":
                    raise ObjectAccessError(exc.code, exc.message) from None


class ExternalAccess:
    """An external S3-compatible endpoint through boto3 (``endpoint_url`` None: boto3's own resolution)."""

    def __init__(self, endpoint_url: str | None = None, *, region: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 profile: str | None = None) -> None:  # fmt: skip
        self.endpoint_url = endpoint_url
        self._client_args: dict[str, Any] = {"endpoint_url": endpoint_url, "region_name": region}
        if access_key_id and secret_access_key:
            self._client_args.update(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key)
        self._profile = profile
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session(profile_name=self._profile) if self._profile else boto3
            # A self-hosted endpoint (SeaweedFS, MinIO, another streamhost) is addressed path-style;
            # AWS itself (no endpoint given) by botocore's own choice.
            s3_style = {"addressing_style": "path"} if self.endpoint_url else {}
            config = Config(s3=s3_style, connect_timeout=10, retries={"max_attempts": 3, "mode": "standard"})
            self._client = session.client("s3", config=config, **self._client_args)
        return self._client

    @staticmethod
    def _error(exc: Exception) -> ObjectAccessError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "error"))
            return ObjectAccessError({"404": "NoSuchKey"}.get(code, code), str(err.get("Message", "")))
        return ObjectAccessError("ConnectionError", str(exc))

    def head(self, bucket: str, key: str) -> ObjectMeta:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc) from None
        return ObjectMeta(key, int(head.get("ContentLength", 0)), str(head.get("ETag", "")))

    def list(self, bucket: str, prefix: str) -> list[ObjectMeta]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return [
                ObjectMeta(o["Key"], int(o.get("Size", 0)), str(o.get("ETag", "")))
                for p in pages
                for o in p.get("Contents", [])
            ]
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc) from None

    def local_path(self, bucket: str, key: str) -> Path | None:
        return None

    def download(self, bucket: str, key: str, target: Path, progress: Callable[[int], None]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            with open(target, "wb") as out:
                for chunk in body.iter_chunks(_CHUNK):
                    out.write(chunk)
                    progress(len(chunk))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc) from None

    def upload_file(self, path: Path, bucket: str, key: str) -> ObjectMeta:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(str(path), bucket, key)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc) from None
        return self.head(bucket, key)

    def ensure_bucket(self, bucket: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise self._error(exc) from None
        except BotoCoreError as exc:
            raise self._error(exc) from None
        try:
            self.client.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error(exc) from None
        except BotoCoreError as exc:
            raise self._error(exc) from None
