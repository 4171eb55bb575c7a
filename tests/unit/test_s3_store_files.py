"""The embedded store's bookkeeping: blobs named by id, replaced and swept, never left behind."""

from __future__ import annotations

import pytest

from streamhost.platform.s3.errors import S3Error
from streamhost.platform.s3.store import ObjectStore, past_prefix


def blob_files(store: ObjectStore) -> list[str]:
    return sorted(p.name for p in store.blobs.rglob("*") if p.is_file())


def put_bytes(store: ObjectStore, bucket: str, key: str, data: bytes) -> str:
    temp = store.new_temp()
    temp.write_bytes(data)
    blob = store.adopt(temp)
    store.put(bucket, key, blob, len(data), '"x"', {})
    return blob


def test_overwrite_and_delete_remove_old_blobs(tmp_path):
    store = ObjectStore(tmp_path / "s3", tmp_path / "db.sqlite")
    store.create_bucket("bucket-a")
    first = put_bytes(store, "bucket-a", "../escape", b"one")
    second = put_bytes(store, "bucket-a", "../escape", b"two")
    assert blob_files(store) == [second] and first != second
    assert store.blob_path(store.get("bucket-a", "../escape").blob).read_bytes() == b"two"
    assert store.delete("bucket-a", "../escape") and blob_files(store) == []
    assert not store.delete("bucket-a", "../escape")
    assert not (tmp_path / "escape").exists()


def test_restart_sweeps_what_a_crash_left(tmp_path):
    store = ObjectStore(tmp_path / "s3", tmp_path / "db.sqlite")
    store.create_bucket("bucket-a")
    kept = put_bytes(store, "bucket-a", "kept", b"kept")
    received = store.new_temp()
    received.write_bytes(b"orphan")
    orphan = store.adopt(received)  # received, but the platform died before recording it
    store.new_temp().write_bytes(b"half an upload")
    store.close()
    again = ObjectStore(tmp_path / "s3", tmp_path / "db.sqlite")
    assert blob_files(again) == [kept] and orphan != kept
    assert list(again.tmp.iterdir()) == []
    assert again.get("bucket-a", "kept").size == 4


def test_parts_of_an_aborted_upload_are_removed(tmp_path):
    store = ObjectStore(tmp_path / "s3", tmp_path / "db.sqlite")
    store.create_bucket("bucket-a")
    upload_id = store.create_upload("bucket-a", "k", {})
    upload = store.get_upload("bucket-a", "k", upload_id)
    temp = store.new_temp()
    temp.write_bytes(b"part")
    store.put_part(upload, 1, store.adopt(temp), 4, "0" * 32)
    assert len(blob_files(store)) == 1
    store.abort_upload("bucket-a", upload_id)
    assert blob_files(store) == []
    with pytest.raises(S3Error, match="NoSuchUpload"):
        store.get_upload("bucket-a", "k", upload_id)


def test_past_prefix_sorts_after_everything_under_it():
    for prefix in ("logs/", "a", "\ud7ff", "z\uffff"):
        bound = past_prefix(prefix)
        assert bound is not None and bound.encode() > (prefix + "\U0010ffff" * 3).encode()
        assert bound.encode() > prefix.encode()
    assert past_prefix("x\U0010ffff") is None
