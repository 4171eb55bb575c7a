"""The embedded S3 store, driven by real boto3 against a real ``streamhost serve`` (SigV4 on).

Every S3 operation the SageMaker SDK, boto3's transfer manager and the AWS CLI use, on the same
endpoint URL that serves SageMaker; S3's error shapes for bad input, with nothing stored; keys
that try to escape the store's folder; objects that survive a SIGKILL and restart.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from pathlib import Path

import botocore.exceptions
import httpx
import pytest
from _platform_fixtures import PlatformProcess
from _s3_helpers import aws_chunked, error_of, md5_hex, s3_request, send_truncated, signed_chunked_put
from boto3.s3.transfer import TransferConfig

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(tmp_path_factory.mktemp("s3-store")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def s3(platform):
    return platform.client("s3")


@pytest.fixture()
def bucket(s3, request):
    name = "t-" + hashlib.md5(request.node.name.encode()).hexdigest()[:12]
    s3.create_bucket(Bucket=name)
    return name


def keys_of(s3, bucket: str, **kwargs) -> list[str]:
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, **kwargs)
            for o in page.get("Contents", [])]  # fmt: skip


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def test_one_endpoint_serves_sagemaker_s3_sts_and_iam(platform, s3):
    assert platform.sagemaker().list_endpoints()["Endpoints"] == []
    assert "Buckets" in s3.list_buckets()
    identity = platform.client("sts").get_caller_identity()
    assert identity["Account"] == "123456789012"
    assert ":assumed-role/" in identity["Arn"]
    role = identity["Arn"].split("/")[1]
    assert platform.client("iam").get_role(RoleName=role)["Role"]["Arn"] == f"arn:aws:iam::123456789012:role/{role}"


def test_identity_errors_in_query_protocol_shape(platform):
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        platform.client("iam").get_role(RoleName="bad/name")
    assert error_of(exc) == ("ValidationError", 400)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        platform.client("sts").get_session_token()
    assert error_of(exc) == ("InvalidAction", 400)


def test_bucket_lifecycle_and_errors(s3):
    name = "lifecycle-bucket"
    s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.create_bucket(Bucket="lifecycle-other")
    pages = s3.get_paginator("list_buckets").paginate(Prefix="lifecycle-", PaginationConfig={"PageSize": 1})
    assert [b["Name"] for page in pages for b in page["Buckets"]] == ["lifecycle-bucket", "lifecycle-other"]
    s3.delete_bucket(Bucket="lifecycle-other")
    assert s3.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == "us-east-1"
    s3.head_bucket(Bucket=name, ExpectedBucketOwner="123456789012")  # the SDK's default_bucket() probe
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.head_bucket(Bucket=name, ExpectedBucketOwner="999999999999")
    assert exc.value.response["Error"] == {"Code": "403", "Message": "Forbidden"}
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.create_bucket(Bucket=name)
    assert error_of(exc) == ("BucketAlreadyOwnedByYou", 409)
    s3.put_object(Bucket=name, Key="k", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.delete_bucket(Bucket=name)
    assert error_of(exc) == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.head_bucket(Bucket=name)
    assert exc.value.response["Error"] == {
        "Code": "404",
        "Message": "Not Found",
    }  # what the SDK's default_bucket checks
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.list_objects_v2(Bucket=name)
    assert error_of(exc) == ("NoSuchBucket", 404)
    assert exc.value.response["Error"]["BucketName"] == name


@pytest.mark.parametrize("name", ["ab", "Upper-Case", "under_score", "192.168.1.10", "a..b", "-leading", "x" * 64])
def test_bucket_names_s3_rejects(s3, name):
    with pytest.raises((botocore.exceptions.ClientError, botocore.exceptions.ParamValidationError)) as exc:
        s3.create_bucket(Bucket=name)
    if isinstance(exc.value, botocore.exceptions.ClientError):
        assert error_of(exc) == ("InvalidBucketName", 400)
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_put_get_head_range_metadata(s3, bucket):
    data = os.urandom(3000)
    put = s3.put_object(Bucket=bucket, Key="dir/obj.bin", Body=data, ContentType="application/x-test",
                        Metadata={"origin": "test"})  # fmt: skip
    assert put["ETag"] == f'"{md5_hex(data)}"'
    got = s3.get_object(Bucket=bucket, Key="dir/obj.bin")
    assert got["Body"].read() == data
    assert got["ContentType"] == "application/x-test" and got["Metadata"] == {"origin": "test"}
    head = s3.head_object(Bucket=bucket, Key="dir/obj.bin")
    assert head["ContentLength"] == 3000 and head["ETag"] == put["ETag"]
    part = s3.get_object(Bucket=bucket, Key="dir/obj.bin", Range="bytes=100-199")
    assert part["Body"].read() == data[100:200] and part["ContentRange"] == "bytes 100-199/3000"
    assert s3.get_object(Bucket=bucket, Key="dir/obj.bin", Range="bytes=-10")["Body"].read() == data[-10:]
    assert s3.get_object(Bucket=bucket, Key="dir/obj.bin", Range="bytes=2990-")["Body"].read() == data[2990:]
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="dir/obj.bin", Range="bytes=3000-3100")
    assert error_of(exc) == ("InvalidRange", 416)
    # botocore asks for the checksum back and verifies it
    assert s3.get_object(Bucket=bucket, Key="dir/obj.bin", ChecksumMode="ENABLED")["ChecksumCRC32"] == crc32_b64(data)
    empty = s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert empty["ETag"] == f'"{md5_hex(b"")}"'
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""


def test_missing_key_and_bucket(s3, bucket):
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="nope/missing.txt")
    assert error_of(exc) == ("NoSuchKey", 404)
    assert exc.value.response["Error"]["Key"] == "nope/missing.txt"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="nope")
    assert error_of(exc) == ("404", 404)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.put_object(Bucket="no-such-bucket-here", Key="k", Body=b"x")
    assert error_of(exc) == ("NoSuchBucket", 404)


def test_delete_copy_and_delete_objects(s3, bucket):
    for key in ("a", "b", "c"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode() * 10, Metadata={"k": key})
    copied = s3.copy_object(Bucket=bucket, Key="a-copy", CopySource={"Bucket": bucket, "Key": "a"})
    assert copied["CopyObjectResult"]["ETag"] == f'"{md5_hex(b"a" * 10)}"'
    assert s3.get_object(Bucket=bucket, Key="a-copy")["Metadata"] == {"k": "a"}
    s3.copy_object(
        Bucket=bucket, Key="b-new", CopySource=f"{bucket}/b", MetadataDirective="REPLACE", Metadata={"n": "1"}
    )
    assert s3.head_object(Bucket=bucket, Key="b-new")["Metadata"] == {"n": "1"}
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "missing"})
    assert error_of(exc) == ("NoSuchKey", 404)
    s3.delete_object(Bucket=bucket, Key="a")
    s3.delete_object(Bucket=bucket, Key="never-existed")  # 204 as on S3
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "b"}, {"Key": "c"}, {"Key": "zzz"}]})
    assert sorted(d["Key"] for d in result["Deleted"]) == ["b", "c", "zzz"]
    assert keys_of(s3, bucket) == ["a-copy", "b-new"]


def test_list_objects_v2_prefix_delimiter_pages(s3, bucket):
    keys = [f"logs/2026/{i:03d}.txt" for i in range(7)] + ["logs/top.txt", "other/x", "with space+plus/ü.txt", "z"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"1")
    assert keys_of(s3, bucket) == sorted(keys)
    assert keys_of(s3, bucket, PaginationConfig={"PageSize": 2}) == sorted(keys)
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 3}))
    assert len(pages) == 4 and all(p["KeyCount"] <= 3 for p in pages)
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["logs/", "other/", "with space+plus/"]
    assert [o["Key"] for o in top["Contents"]] == ["z"]
    logs = s3.list_objects_v2(Bucket=bucket, Prefix="logs/", Delimiter="/")
    assert [p["Prefix"] for p in logs["CommonPrefixes"]] == ["logs/2026/"]
    assert [o["Key"] for o in logs["Contents"]] == ["logs/top.txt"]
    assert keys_of(s3, bucket, Prefix="logs/2026/", StartAfter="logs/2026/004.txt") == [
        "logs/2026/005.txt", "logs/2026/006.txt"]  # fmt: skip
    assert s3.list_objects_v2(Bucket=bucket, Prefix="nothing-here").get("Contents") is None
    v1 = s3.list_objects(Bucket=bucket, Prefix="logs/", MaxKeys=3)
    assert v1["IsTruncated"] and len(v1["Contents"]) == 3
    # Paged with a delimiter: every common prefix once, none of the keys under it
    for operation in ("list_objects_v2", "list_objects"):
        pages = list(
            s3.get_paginator(operation).paginate(Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 1})
        )
        found = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
        found += [o["Key"] for page in pages for o in page.get("Contents", [])]
        assert sorted(found) == ["logs/", "other/", "with space+plus/", "z"], operation


def test_multipart_through_the_transfer_manager(s3, bucket, tmp_path):
    data = os.urandom(11 * MiB + 123)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2)
    s3.upload_file(str(source), bucket, "big.bin", Config=config)
    parts = [data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["ETag"] == f'"{expected}-3"' and head["ContentLength"] == len(data)
    target = tmp_path / "back.bin"
    s3.download_file(bucket, "big.bin", str(target), Config=config)  # ranged GETs in parallel
    assert target.read_bytes() == data
    s3.copy({"Bucket": bucket, "Key": "big.bin"}, bucket, "big-copy.bin", Config=config)  # UploadPartCopy
    assert s3.get_object(Bucket=bucket, Key="big-copy.bin")["Body"].read() == data
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads") is None


def test_incomplete_multipart_uploads_store_nothing(s3, bucket):
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    first = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1, Body=b"a" * (5 * MiB))
    small = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=2, Body=b"b" * 100)
    listed = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, 5 * MiB), (2, 100)]
    cases = [
        ([{"PartNumber": 1, "ETag": first["ETag"]}, {"PartNumber": 3, "ETag": small["ETag"]}], "InvalidPart"),
        ([{"PartNumber": 1, "ETag": '"0123456789abcdef0123456789abcdef"'}], "InvalidPart"),
        ([{"PartNumber": 2, "ETag": small["ETag"]}, {"PartNumber": 1, "ETag": first["ETag"]}], "InvalidPartOrder"),
        ([{"PartNumber": 2, "ETag": small["ETag"]}, {"PartNumber": 3, "ETag": small["ETag"]}], "InvalidPart"),
    ]
    for parts, code in cases:
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": parts})
        assert error_of(exc) == (code, 400), parts
    upload2 = s3.create_multipart_upload(Bucket=bucket, Key="mp2")["UploadId"]
    p1 = s3.upload_part(Bucket=bucket, Key="mp2", UploadId=upload2, PartNumber=1, Body=b"x" * 100)
    p2 = s3.upload_part(Bucket=bucket, Key="mp2", UploadId=upload2, PartNumber=2, Body=b"y" * 100)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="mp2", UploadId=upload2, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": p1["ETag"]}, {"PartNumber": 2, "ETag": p2["ETag"]}]})  # fmt: skip
    assert error_of(exc) == ("EntityTooSmall", 400)
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=3, Body=b"c")
    assert error_of(exc) == ("NoSuchUpload", 404)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": first["ETag"]}]})  # fmt: skip
    assert error_of(exc) == ("NoSuchUpload", 404)
    assert keys_of(s3, bucket) == []


def test_truncated_body_stores_nothing(platform, s3, bucket):
    send_truncated(platform.url, f"/{bucket}/cut", os.urandom(200_000), sent=70_000)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="cut")
    assert error_of(exc) == ("404", 404)
    assert not any((platform.state_dir / "s3" / "tmp").iterdir())


def test_wrong_checksums_are_refused_and_nothing_is_stored(platform, s3, bucket):
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="bad-crc", Body=b"payload", ChecksumCRC32=crc32_b64(b"other"))
    assert error_of(exc) == ("BadDigest", 400)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="bad-md5", Body=b"payload", ContentMD5=base64.b64encode(b"0" * 16).decode())
    assert error_of(exc) == ("BadDigest", 400)
    good = os.urandom(5000)
    bad = s3_request(platform.url, "PUT", f"/{bucket}/bad-trailer", aws_chunked(good, "x-amz-checksum-crc32", crc32_b64(b"no")),
                     {"Content-Encoding": "aws-chunked", "X-Amz-Trailer": "x-amz-checksum-crc32",
                      "X-Amz-Decoded-Content-Length": str(len(good))}, trailer=True)  # fmt: skip
    assert bad.status_code == 400 and "<Code>BadDigest</Code>" in bad.text
    cut = s3_request(platform.url, "PUT", f"/{bucket}/no-final-chunk", aws_chunked(good, "x", "y")[:3000],
                     {"Content-Encoding": "aws-chunked", "X-Amz-Trailer": "x-amz-checksum-crc32"}, trailer=True)  # fmt: skip
    assert cut.status_code == 400 and "<Code>IncompleteBody</Code>" in cut.text
    assert keys_of(s3, bucket) == []


@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256", "SHA512", "CRC32"])
def test_flexible_checksums_are_verified_and_returned(s3, bucket, algorithm):
    data = os.urandom(20_000)
    s3.put_object(Bucket=bucket, Key="summed", Body=data, ChecksumAlgorithm=algorithm)  # botocore computes it
    got = s3.get_object(Bucket=bucket, Key="summed", ChecksumMode="ENABLED")
    assert got["Body"].read() == data  # botocore verified the returned checksum while reading
    assert got["ResponseMetadata"]["HTTPHeaders"][f"x-amz-checksum-{algorithm.lower()}"]
    wrong = base64.b64encode(hashlib.new(algorithm.lower() if algorithm != "CRC32" else "md5", b"x").digest()).decode()
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="summed", Body=b"other", **{f"Checksum{algorithm}": wrong})
    assert error_of(exc) == ("BadDigest", 400)
    assert s3.get_object(Bucket=bucket, Key="summed")["Body"].read() == data  # the old object is untouched


def test_checksums_we_cannot_compute_are_refused(platform, s3, bucket):
    response = s3_request(platform.url, "PUT", f"/{bucket}/xx", b"data", {"x-amz-checksum-xxhash64": "AAAAAAAAAAA="})
    assert response.status_code == 400 and "<Code>InvalidRequest</Code>" in response.text
    assert keys_of(s3, bucket) == []


def test_aws_chunked_upload_as_botocore_sends_it(platform, s3, bucket):
    """botocore sends aws-chunked bodies with a trailing CRC over TLS; make it do so here too."""

    def use_trailer(params, **_):
        params["context"]["checksum"]["request_algorithm"]["in"] = "trailer"

    client = platform.client("s3")
    client.meta.events.register("before-call.s3.PutObject", use_trailer)
    data = os.urandom(300_000)
    put = client.put_object(Bucket=bucket, Key="chunked", Body=data)
    assert put["ChecksumCRC32"] == crc32_b64(data)
    assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == data  # decoded bytes stored
    signed = s3_request(platform.url, "PUT", f"/{bucket}/chunked2", aws_chunked(data, "x-amz-checksum-crc32", crc32_b64(data), 7000),
                        {"Content-Encoding": "aws-chunked", "X-Amz-Trailer": "x-amz-checksum-crc32",
                         "X-Amz-Decoded-Content-Length": str(len(data))}, trailer=True)  # fmt: skip
    assert signed.status_code == 200, signed.text
    assert s3.get_object(Bucket=bucket, Key="chunked2")["Body"].read() == data


def test_signed_chunks_are_checked(platform, s3, bucket):
    data = os.urandom(150_000)
    good = signed_chunked_put(platform.url, f"/{bucket}/signed", data)
    assert good.status_code == 200, good.text
    assert s3.get_object(Bucket=bucket, Key="signed")["Body"].read() == data
    forged = signed_chunked_put(platform.url, f"/{bucket}/forged", data, tamper=True)
    assert forged.status_code == 403 and "<Code>SignatureDoesNotMatch</Code>" in forged.text
    assert keys_of(s3, bucket) == ["signed"]


def test_keys_never_escape_the_store(platform, s3, bucket):
    keys = ["../../../../etc/passwd-test", "/absolute/path", "a/../../b", "..", "./.", "dir//double", "%2e%2e/enc"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    assert keys_of(s3, bucket) == sorted(keys)
    for key in keys:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()
    store = platform.state_dir / "s3"
    for path in platform.state_dir.rglob("*"):
        if path.is_file() and path.read_bytes() in {k.encode() for k in keys}:
            assert store / "blobs" in path.parents
    assert not (Path("/etc") / "passwd-test").exists()
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="nul\x00byte", Body=b"x")
    assert error_of(exc) == ("InvalidArgument", 400)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b"x")
    assert error_of(exc) == ("KeyTooLongError", 400)


def test_signatures_and_presigned_urls(platform, s3, bucket):
    s3.put_object(Bucket=bucket, Key="shared.txt", Body=b"shared")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared.txt"}, ExpiresIn=60)
    assert httpx.get(url, timeout=10).content == b"shared"
    tampered = url.replace("shared.txt", "other.txt")
    assert httpx.get(tampered, timeout=10).status_code == 403
    v4 = platform.client("s3", signature_version="s3v4")
    url = v4.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared.txt"}, ExpiresIn=60)
    assert "X-Amz-Credential=" in url and httpx.get(url, timeout=10).content == b"shared"
    assert httpx.get(url.replace("shared.txt", "other.txt"), timeout=10).status_code == 403
    anonymous = httpx.get(f"{platform.url}/{bucket}/shared.txt", timeout=10)
    assert anonymous.status_code == 403 and "<Code>AccessDenied</Code>" in anonymous.text
    import boto3

    wrong = boto3.client("s3", endpoint_url=platform.url, region_name="us-east-1", aws_access_key_id="x",
                         aws_secret_access_key="wrong")  # fmt: skip
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        wrong.put_object(Bucket=bucket, Key="forged", Body=b"x")
    assert error_of(exc) == ("SignatureDoesNotMatch", 403)
    assert keys_of(s3, bucket) == ["shared.txt"]


@pytest.mark.parametrize(
    "method,path,body,headers,code,status",
    [
        ("POST", "/{b}?delete", b"<Delete><Object></Object></Delete>", {}, "MalformedXML", 400),
        ("POST", "/{b}?delete", b"not xml at all", {}, "MalformedXML", 400),
        ("POST", "/{b}?delete", b"<Other/>", {}, "MalformedXML", 400),
        ("GET", "/{b}?list-type=2&max-keys=many", b"", {}, "InvalidArgument", 400),
        ("GET", "/{b}?list-type=2&continuation-token=%%%", b"", {}, "InvalidArgument", 400),
        ("GET", "/{b}?list-type=2&encoding-type=base64", b"", {}, "InvalidArgument", 400),
        ("PUT", "/{b}/k?partNumber=0&uploadId=x", b"x", {}, "InvalidArgument", 400),
        ("PUT", "/{b}/k?partNumber=1&uploadId=nope", b"x", {}, "NoSuchUpload", 404),
        ("POST", "/{b}/k?uploadId=nope", b"<CompleteMultipartUpload/>", {}, "NoSuchUpload", 404),
        ("PUT", "/{b}/k", b"x", {"Content-MD5": "not-base64!"}, "InvalidDigest", 400),
        ("PUT", "/{b}/k", b"x", {"x-amz-copy-source": "no-slash"}, "InvalidArgument", 400),
        ("PUT", "/{b}/k", b"x", {"x-amz-copy-source": "/{b}/src", "x-amz-metadata-directive": "MOVE"}, "InvalidArgument", 400),
        ("PUT", "/{b}/k?acl", b"x", {}, "NotImplemented", 501),
        ("GET", "/{b}?policy", b"", {}, "NotImplemented", 501),
        ("POST", "/{b}/k", b"x", {}, "MethodNotAllowed", 405),
        ("PUT", "/{b}/k", b"x", {"Content-Encoding": "aws-chunked", "X-Amz-Trailer": "x-amz-checksum-md4"}, "InvalidRequest", 400),
    ],
)  # fmt: skip
def test_bad_requests_get_s3_errors_and_store_nothing(platform, s3, bucket, method, path, body, headers, code, status):
    s3.put_object(Bucket=bucket, Key="src", Body=b"source")
    headers = {k: v.replace("{b}", bucket) for k, v in headers.items()}
    trailer = "aws-chunked" in headers.get("Content-Encoding", "")
    response = s3_request(platform.url, method, path.replace("{b}", bucket), body, headers, trailer=trailer)
    assert response.status_code == status, response.text
    assert f"<Code>{code}</Code>" in response.text and "<RequestId>" in response.text
    assert keys_of(s3, bucket) == ["src"]  # nothing stored, the store still answers


def test_presigned_put_uploads(platform, s3, bucket):
    v4 = platform.client("s3", signature_version="s3v4")
    url = v4.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "via-url"}, ExpiresIn=60)
    assert httpx.put(url, content=b"uploaded by url", timeout=10).status_code == 200
    assert s3.get_object(Bucket=bucket, Key="via-url")["Body"].read() == b"uploaded by url"
    forged = url.replace("via-url", "other")
    assert httpx.put(forged, content=b"x", timeout=10).status_code == 403
    assert keys_of(s3, bucket) == ["via-url"]
