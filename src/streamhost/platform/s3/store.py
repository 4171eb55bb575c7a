"""Buckets, objects and multipart uploads: metadata in the platform's SQLite, bytes in files by id.

An object's bytes live in ``<root>/blobs/<id[:2]>/<id>``, a name we make up, never one derived
from the key: a key like ``../../etc/passwd``, ``/abs`` or one holding NUL is only a string in a
table. Blobs are written once under ``<root>/tmp`` and renamed into place, then the row that names
them is committed; an overwritten or deleted object's blob is unlinked after its row is gone.
A crash can at worst leave an unreferenced blob (swept at start), never a row without bytes.

The tables sit in the platform's database file (``streamhost.db``), in WAL mode with
``synchronous=FULL`` like the rest of the platform's state, on a connection of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import S3Error

SCHEMA = """
CREATE TABLE IF NOT EXISTS s3_buckets (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS s3_objects (
    bucket TEXT NOT NULL REFERENCES s3_buckets(name),
    key TEXT NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    modified REAL NOT NULL,
    headers TEXT NOT NULL,
    checksums TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS s3_uploads (
    upload_id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL REFERENCES s3_buckets(name),
    key TEXT NOT NULL,
    headers TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS s3_parts (
    upload_id TEXT NOT NULL REFERENCES s3_uploads(upload_id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    modified REAL NOT NULL,
    PRIMARY KEY (upload_id, number)
);
"""

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PARTS = 10000
MAX_KEY_BYTES = 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
# Characters XML 1.0 cannot carry: a key holding one could never be listed back.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def check_bucket_name(name: str) -> None:
    """S3's bucket naming rules (general purpose buckets); InvalidBucketName otherwise."""
    if (
        not _BUCKET.match(name)
        or ".." in name
        or ".-" in name
        or "-." in name
        or _IPV4.match(name)
        or name.startswith(("xn--", "sthree-", "amzn-s3-demo-"))
        or name.endswith(("-s3alias", "--ol-s3", ".mrap", "--x-s3"))
    ):
        raise S3Error("InvalidBucketName", BucketName=name)


def check_key(key: str) -> None:
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", f"Object keys are at most {MAX_KEY_BYTES} bytes of UTF-8")
    if _XML_INVALID.search(key):
        raise S3Error("InvalidArgument", "Object keys must not hold NUL or other characters XML 1.0 cannot carry")


def past_prefix(prefix: str) -> str | None:
    """The least string that sorts after every string starting with ``prefix`` (None if there is none
    we can write: the prefix ends in U+10FFFF)."""
    last = ord(prefix[-1])
    if last == 0x10FFFF:
        return None
    bumped = 0xE000 if last == 0xD7FF else last + 1  # never a lone surrogate (not UTF-8)
    return prefix[:-1] + chr(bumped)


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    blob: str
    size: int
    etag: str  # with its quotes, as S3 sends it
    modified: float
    headers: dict[str, str]  # Content-Type and friends, x-amz-meta-*
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartInfo:
    number: int
    blob: str
    size: int
    md5: str  # hex
    modified: float


@dataclass(frozen=True)
class UploadInfo:
    upload_id: str
    bucket: str
    key: str
    headers: dict[str, str]
    created: float


class ObjectStore:
    """The embedded store's state. Blocking calls; the handlers run the slow ones in threads."""

    def __init__(self, root: Path, db_path: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._sweep()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ blobs

    def new_temp(self) -> Path:
        """A fresh temporary file path for a body being received."""
        return self.tmp / uuid.uuid4().hex

    def blob_path(self, blob: str) -> Path:
        return self.blobs / blob[:2] / blob

    def adopt(self, temp: Path) -> str:
        """Move a fully received temporary file into the blob folder; returns its new id.

        The bytes are flushed to disk first (blocking: call from a worker thread), so the row that
        will name the blob is never durable before the blob is, as with the rest of the platform's
        state (``synchronous=FULL``): an answered PUT survives a power cut, not only a crash.
        """
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        blob = uuid.uuid4().hex
        target = self.blob_path(blob)
        target.parent.mkdir(exist_ok=True)
        os.replace(temp, target)
        return blob

    def _drop_blob(self, blob: str) -> None:
        try:
            self.blob_path(blob).unlink()
        except FileNotFoundError:
            pass

    def _sweep(self) -> None:
        """Remove temporary files and blobs no row names (left by a crash between the two steps)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        with self._lock:
            named = {r[0] for r in self._db.execute("SELECT blob FROM s3_objects UNION SELECT blob FROM s3_parts")}
        for folder in self.blobs.iterdir():
            for path in folder.iterdir() if folder.is_dir() else ():
                if path.name not in named:
                    path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ buckets

    def create_bucket(self, name: str) -> None:
        check_bucket_name(name)
        with self._lock:
            try:
                self._db.execute("INSERT INTO s3_buckets (name, created) VALUES (?, ?)", (name, time.time()))
            except sqlite3.IntegrityError:
                raise S3Error("BucketAlreadyOwnedByYou", BucketName=name) from None

    def bucket_exists(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM s3_buckets WHERE name = ?", (name,)).fetchone() is not None

    def require_bucket(self, name: str) -> None:
        if not self.bucket_exists(name):
            raise S3Error("NoSuchBucket", BucketName=name)

    def list_buckets(self) -> list[tuple[str, float]]:
        with self._lock:
            return [(r["name"], r["created"]) for r in self._db.execute("SELECT * FROM s3_buckets ORDER BY name")]

    def delete_bucket(self, name: str) -> None:
        with self._lock:
            self.require_bucket(name)
            if self._db.execute("SELECT 1 FROM s3_objects WHERE bucket = ? LIMIT 1", (name,)).fetchone():
                raise S3Error("BucketNotEmpty", BucketName=name)
            uploads = [r[0] for r in self._db.execute("SELECT upload_id FROM s3_uploads WHERE bucket = ?", (name,))]
        for upload_id in uploads:
            self.abort_upload(name, upload_id)
        with self._lock:
            self._db.execute("DELETE FROM s3_buckets WHERE name = ?", (name,))

    # ------------------------------------------------------------------ objects

    @staticmethod
    def _object(row: sqlite3.Row) -> ObjectInfo:
        return ObjectInfo(
            row["bucket"], row["key"], row["blob"], row["size"], row["etag"], row["modified"],
            json.loads(row["headers"]), json.loads(row["checksums"]),
        )  # fmt: skip

    def get(self, bucket: str, key: str) -> ObjectInfo:
        with self._lock:
            row = self._db.execute("SELECT * FROM s3_objects WHERE bucket = ? AND key = ?", (bucket, key)).fetchone()
            if row is None:
                self.require_bucket(bucket)
                raise S3Error("NoSuchKey", Key=key)
        return self._object(row)

    def put(self, bucket: str, key: str, blob: str, size: int, etag: str, headers: dict[str, str],
            checksums: dict[str, str] | None = None) -> ObjectInfo:  # fmt: skip
        """Record a received blob as ``bucket/key`` (replacing any previous object, whose blob goes)."""
        check_key(key)
        info = ObjectInfo(bucket, key, blob, size, etag, time.time(), headers, checksums or {})
        with self._lock:
            if not self.bucket_exists(bucket):
                self._drop_blob(blob)
                raise S3Error("NoSuchBucket", BucketName=bucket)
            old = self._db.execute("SELECT blob FROM s3_objects WHERE bucket = ? AND key = ?", (bucket, key)).fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO s3_objects (bucket, key, blob, size, etag, modified, headers, checksums)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (bucket, key, blob, size, etag, info.modified, json.dumps(headers), json.dumps(info.checksums)),
            )
        if old is not None and old["blob"] != blob:
            self._drop_blob(old["blob"])
        return info

    def delete(self, bucket: str, key: str) -> bool:
        """Delete ``bucket/key``; False when there was no such object (S3 answers 204 either way)."""
        with self._lock:
            self.require_bucket(bucket)
            row = self._db.execute("SELECT blob FROM s3_objects WHERE bucket = ? AND key = ?", (bucket, key)).fetchone()
            if row is None:
                return False
            self._db.execute("DELETE FROM s3_objects WHERE bucket = ? AND key = ?", (bucket, key))
        self._drop_blob(row["blob"])
        return True

    def copy_blob(self, blob: str) -> str:
        """A new blob with the same bytes (a hard link where the file system allows: blobs never change)."""
        new = uuid.uuid4().hex
        target = self.blob_path(new)
        target.parent.mkdir(exist_ok=True)
        try:
            os.link(self.blob_path(blob), target)
        except OSError:
            shutil.copyfile(self.blob_path(blob), target)
        return new

    def iter_keys(self, bucket: str, prefix: str, after: str, at_least: str | None = None) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, sorts after ``after`` and not before ``at_least``,
        in UTF-8 byte order (S3's)."""
        cursor = after
        lower = max(prefix, at_least) if at_least is not None else prefix
        # Keys with the prefix sort between the prefix itself and the prefix with its last character bumped.
        upper = past_prefix(prefix) if prefix else None
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT * FROM s3_objects WHERE bucket = ? AND key > ? AND key >= ? AND (? IS NULL OR key <= ?)"
                    " AND substr(key, 1, ?) = ? ORDER BY key LIMIT 500",
                    (bucket, cursor, lower, upper, upper, len(prefix), prefix),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield self._object(row)
            cursor = rows[-1]["key"]

    # ------------------------------------------------------------------ multipart

    def create_upload(self, bucket: str, key: str, headers: dict[str, str]) -> str:
        check_key(key)
        upload_id = uuid.uuid4().hex + uuid.uuid4().hex
        with self._lock:
            self.require_bucket(bucket)
            self._db.execute(
                "INSERT INTO s3_uploads (upload_id, bucket, key, headers, created) VALUES (?, ?, ?, ?, ?)",
                (upload_id, bucket, key, json.dumps(headers), time.time()),
            )
        return upload_id

    def get_upload(self, bucket: str, key: str, upload_id: str) -> UploadInfo:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM s3_uploads WHERE upload_id = ? AND bucket = ? AND key = ?", (upload_id, bucket, key)
            ).fetchone()
            if row is None:
                self.require_bucket(bucket)
                raise S3Error("NoSuchUpload", UploadId=upload_id)
        return UploadInfo(row["upload_id"], row["bucket"], row["key"], json.loads(row["headers"]), row["created"])

    def list_uploads(self, bucket: str) -> list[UploadInfo]:
        with self._lock:
            self.require_bucket(bucket)
            rows = self._db.execute(
                "SELECT * FROM s3_uploads WHERE bucket = ? ORDER BY key, created", (bucket,)
            ).fetchall()
        return [UploadInfo(r["upload_id"], r["bucket"], r["key"], json.loads(r["headers"]), r["created"]) for r in rows]

    def put_part(self, upload: UploadInfo, number: int, blob: str, size: int, md5: str) -> None:
        with self._lock:
            if self._db.execute("SELECT 1 FROM s3_uploads WHERE upload_id = ?", (upload.upload_id,)).fetchone() is None:
                self._drop_blob(blob)
                raise S3Error("NoSuchUpload", UploadId=upload.upload_id)
            old = self._db.execute(
                "SELECT blob FROM s3_parts WHERE upload_id = ? AND number = ?", (upload.upload_id, number)
            ).fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO s3_parts (upload_id, number, blob, size, md5, modified) VALUES (?, ?, ?, ?, ?, ?)",
                (upload.upload_id, number, blob, size, md5, time.time()),
            )
        if old is not None:
            self._drop_blob(old["blob"])

    def parts(self, upload_id: str) -> dict[int, PartInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM s3_parts WHERE upload_id = ? ORDER BY number", (upload_id,)
            ).fetchall()
        return {r["number"]: PartInfo(r["number"], r["blob"], r["size"], r["md5"], r["modified"]) for r in rows}

    def complete_upload(self, upload: UploadInfo, chosen: list[tuple[int, str]]) -> ObjectInfo:
        """Join the named parts (``[(number, etag)]``) into the object; S3's checks and ETag rule.

        Blocking (the parts are concatenated into one new blob): call it from a worker thread.
        """
        if not chosen:
            raise S3Error("MalformedXML", "CompleteMultipartUpload needs at least one part")
        numbers = [n for n, _ in chosen]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise S3Error("InvalidPartOrder")
        stored = self.parts(upload.upload_id)
        selected: list[PartInfo] = []
        for number, etag in chosen:
            part = stored.get(number)
            if part is None or etag.strip().strip('"') != part.md5:
                raise S3Error("InvalidPart", UploadId=upload.upload_id, PartNumber=str(number), ETag=etag)
            selected.append(part)
        for part in selected[:-1]:
            if part.size < MIN_PART_SIZE:
                raise S3Error(
                    "EntityTooSmall", f"Part {part.number} is {part.size} bytes; every part but the last must be at "
                    f"least {MIN_PART_SIZE} bytes", ProposedSize=str(part.size), MinSizeAllowed=str(MIN_PART_SIZE),
                )  # fmt: skip
        temp = self.new_temp()
        try:
            with open(temp, "wb") as out:
                for part in selected:
                    with open(self.blob_path(part.blob), "rb") as source:
                        shutil.copyfileobj(source, out, 8 * 1024 * 1024)
            blob = self.adopt(temp)
        finally:
            temp.unlink(missing_ok=True)
        combined = hashlib.md5(b"".join(bytes.fromhex(p.md5) for p in selected)).hexdigest()
        etag = f'"{combined}-{len(selected)}"'
        with self._lock:
            if self._db.execute("SELECT 1 FROM s3_uploads WHERE upload_id = ?", (upload.upload_id,)).fetchone() is None:
                self._drop_blob(blob)  # aborted (or completed) while we were joining
                raise S3Error("NoSuchUpload", UploadId=upload.upload_id)
            info = self.put(upload.bucket, upload.key, blob, sum(p.size for p in selected), etag, upload.headers)
            self._forget_upload(upload.upload_id)
        return info

    def abort_upload(self, bucket: str, upload_id: str) -> None:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM s3_uploads WHERE upload_id = ? AND bucket = ?", (upload_id, bucket)
            ).fetchone()
            if row is None:
                self.require_bucket(bucket)
                raise S3Error("NoSuchUpload", UploadId=upload_id)
            self._forget_upload(upload_id)

    def _forget_upload(self, upload_id: str) -> None:
        with self._lock:
            blobs = [r[0] for r in self._db.execute("SELECT blob FROM s3_parts WHERE upload_id = ?", (upload_id,))]
            self._db.execute("DELETE FROM s3_uploads WHERE upload_id = ?", (upload_id,))  # parts cascade
        for blob in blobs:
            self._drop_blob(blob)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM s3_objects").fetchone()
        return {"objects": row[0], "bytes": row[1]}
