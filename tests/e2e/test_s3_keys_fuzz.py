"""Arbitrary object keys round-trip through boto3 and the embedded store (property test, bounded).

Keys are any Unicode S3 accepts and XML can carry (spaces, ``+``, ``%``, ``?``, ``#``, ``\\r``, ``..``,
leading slashes, astral characters): each one must list back exactly, read back its own bytes, and
sort in S3's order (UTF-8 bytes).
"""

from __future__ import annotations

import hashlib

import pytest
from _platform_fixtures import PlatformProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

XML_CHARS = st.characters(
    blacklist_categories=("Cs",), blacklist_characters="".join(map(chr, [*range(9), 11, 12, *range(14, 32)]))
)
KEYS = st.text(st.one_of(XML_CHARS, st.just("/")), min_size=1, max_size=60).filter(lambda k: len(k.encode()) <= 1024)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    platform = PlatformProcess(tmp_path_factory.mktemp("s3-fuzz")).start()
    client = platform.client("s3")
    client.create_bucket(Bucket="fuzz-keys")
    yield client
    platform.stop()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(KEYS, min_size=1, max_size=4, unique=True))
def test_any_key_round_trips(s3, keys):
    for key in keys:
        s3.put_object(Bucket="fuzz-keys", Key=key, Body=hashlib.sha256(key.encode()).digest())
    listed = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="fuzz-keys")
              for o in page.get("Contents", [])]  # fmt: skip
    assert listed == sorted(keys, key=lambda k: k.encode())
    # A delimiter listing, one entry per page: S3's grouping, each common prefix exactly once.
    expected = sorted({k[: k.index("/") + 1] if "/" in k else k for k in keys})
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket="fuzz-keys", Delimiter="/", PaginationConfig={"PageSize": 1}
    )
    found = [entry for page in pages for entry in
             [p["Prefix"] for p in page.get("CommonPrefixes", [])] + [o["Key"] for o in page.get("Contents", [])]]  # fmt: skip
    assert sorted(found) == expected and len(found) == len(expected)
    for key in keys:
        assert s3.get_object(Bucket="fuzz-keys", Key=key)["Body"].read() == hashlib.sha256(key.encode()).digest()
        assert s3.list_objects(Bucket="fuzz-keys", Prefix=key)["Contents"][0]["Key"] == key
    s3.delete_objects(Bucket="fuzz-keys", Delete={"Objects": [{"Key": k} for k in keys]})
    assert s3.list_objects_v2(Bucket="fuzz-keys").get("KeyCount") == 0
