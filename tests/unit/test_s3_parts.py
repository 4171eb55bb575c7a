"""The embedded S3 store's pure parts: aws-chunked decoding, SigV4-scope routing, checksums, names."""

from __future__ import annotations

import base64
import io
import zlib

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from streamhost.platform.auth import SigV4Verifier
from streamhost.platform.s3.checksums import Crc32c, Crc64Nvme, checksum_factory
from streamhost.platform.s3.chunk_signing import ChunkSignatureChecker
from streamhost.platform.s3.chunked import AwsChunkedDecoder
from streamhost.platform.s3.errors import S3Error
from streamhost.platform.s3.routing import classify, signing_service
from streamhost.platform.s3.store import check_bucket_name, check_key


def botocore_chunked(payload: bytes, chunk_size: int) -> bytes:
    """The body botocore itself sends for an upload with a trailing CRC32."""
    wrapper = AwsChunkedWrapper(io.BytesIO(payload), checksum_cls=Crc32Checksum,
                                checksum_name="x-amz-checksum-crc32", chunk_size=chunk_size)  # fmt: skip
    return wrapper.read()


@pytest.mark.parametrize("piece", [1, 2, 7, 64, 100_000])
def test_decoder_handles_any_split(piece):
    payload = bytes(range(256)) * 40
    body = botocore_chunked(payload, chunk_size=1000)
    decoder = AwsChunkedDecoder()
    out = b"".join(decoder.feed(body[i : i + piece]) for i in range(0, len(body), piece))
    assert out == payload and decoder.done
    assert decoder.trailers["x-amz-checksum-crc32"] == base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()


def test_decoder_reads_signed_chunk_extensions():
    body = b"5;chunk-signature=abc\r\nhello\r\n0;chunk-signature=def\r\n\r\n"
    decoder = AwsChunkedDecoder()
    assert decoder.feed(body) == b"hello" and decoder.done and decoder.trailers == {}


@pytest.mark.parametrize("body", [
    b"zz\r\nhello\r\n0\r\n\r\n",  # size is not hex
    b"3\r\nhello\r\n0\r\n\r\n",  # chunk longer than declared
    b"5\r\nhello\r\n0\r\n\r\nextra",  # bytes after the end
    b"5\r\nhello\r\n0\r\nno-colon\r\n\r\n",  # malformed trailer
    b"f" * 5000,  # a header line that never ends
])  # fmt: skip
def test_decoder_refuses_malformed_bodies(body):
    with pytest.raises(S3Error) as exc:
        AwsChunkedDecoder().feed(body)
    assert exc.value.code == "InvalidRequest" and exc.value.status == 400


def _aws_example_checker():
    """AWS's published chunked-upload example (SigV4 docs: "Transferring Payload in Multiple Chunks")."""
    verifier = SigV4Verifier({"AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"})
    key = verifier.signing_key("AKIAIOSFODNN7EXAMPLE", "20130524", "us-east-1", "s3")
    seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    return ChunkSignatureChecker(key, "20130524T000000Z", "20130524/us-east-1/s3/aws4_request", seed)


_AWS_EXAMPLE_BODY = (
    b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n" + b"a" * 65536
    + b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n" + b"a" * 1024
    + b"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n"
)  # fmt: skip


def test_chunk_signatures_match_aws_example():
    decoder = AwsChunkedDecoder(_aws_example_checker().chunk)
    out = b"".join(decoder.feed(_AWS_EXAMPLE_BODY[i : i + 999]) for i in range(0, len(_AWS_EXAMPLE_BODY), 999))
    assert out == b"a" * 66560 and decoder.done


def test_a_changed_byte_breaks_the_chunk_signature():
    tampered = _AWS_EXAMPLE_BODY.replace(b"a" * 10, b"a" * 9 + b"b", 1)
    decoder = AwsChunkedDecoder(_aws_example_checker().chunk)
    with pytest.raises(S3Error) as exc:
        decoder.feed(tampered)
    assert exc.value.code == "SignatureDoesNotMatch" and exc.value.status == 403


def test_incomplete_body_is_not_done():
    decoder = AwsChunkedDecoder()
    decoder.feed(b"5\r\nhel")
    assert not decoder.done


def test_signing_service_from_header_and_presigned_query():
    auth = "AWS4-HMAC-SHA256 Credential=AK/20261203/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=ab"
    assert signing_service({"authorization": auth}, "") == "s3"
    assert signing_service({"authorization": auth.replace("/s3/", "/sagemaker/")}, "") == "sagemaker"
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20261203%2Fus-east-1%2Fsts%2Faws4_request&X-Amz-Date=1"
    )
    assert signing_service({}, query) == "sts"
    assert signing_service({}, "") is None


@pytest.mark.parametrize("method,path,query,headers,operation", [
    ("GET", "/", {}, {}, "ListBuckets"),
    ("PUT", "/b", {}, {}, "CreateBucket"),
    ("GET", "/b", {"list-type": "2", "prefix": "x"}, {}, "ListObjectsV2"),
    ("GET", "/b", {"prefix": "x"}, {}, "ListObjects"),
    ("POST", "/b", {"delete": ""}, {}, "DeleteObjects"),
    ("PUT", "/b/k", {}, {"x-amz-copy-source": "/b/j"}, "CopyObject"),
    ("PUT", "/b/k", {"partNumber": "1", "uploadId": "u"}, {}, "UploadPart"),
    ("POST", "/b/k/with/slashes", {"uploads": ""}, {}, "CreateMultipartUpload"),
    ("POST", "/b/k", {"uploadId": "u"}, {}, "CompleteMultipartUpload"),
    ("DELETE", "/b/k", {"uploadId": "u"}, {}, "AbortMultipartUpload"),
    ("HEAD", "/b/k", {}, {}, "HeadObject"),
])  # fmt: skip
def test_classify(method, path, query, headers, operation):
    assert classify(method, path, query, headers).operation == operation


def test_classify_keeps_encoded_keys_whole():
    request = classify("GET", "/bkt/..%2F..%2Fetc%2Fpasswd", {}, {})
    assert (request.bucket, request.key) == ("bkt", "../../etc/passwd")


@pytest.mark.parametrize("name", ["ab", "a" * 64, "Abc", "a_b", "a..b", "192.168.0.1", "-ab", "ab-", "xn--ab", "a.-b"])
def test_bad_bucket_names(name):
    with pytest.raises(S3Error) as exc:
        check_bucket_name(name)
    assert exc.value.code == "InvalidBucketName"


def test_good_bucket_names_and_key_limits():
    for name in ("abc", "sagemaker-us-east-1-123456789012", "a.b.c", "a" * 63):
        check_bucket_name(name)
    check_key("k" * 1024)
    with pytest.raises(S3Error, match="KeyTooLongError"):
        check_key("k" * 1025)
    with pytest.raises(S3Error, match="InvalidArgument"):
        check_key("a\x00b")


def test_crc_check_values():
    """The standard check values for ``123456789``."""
    for cls, expected in ((Crc32c, "e3069283"), (Crc64Nvme, "ae8b14860a799888")):
        checksum = cls()
        checksum.update(b"1234")
        checksum.update(b"56789")
        assert base64.b64decode(checksum.b64digest()).hex() == expected
    assert checksum_factory("crc32") is Crc32Checksum
    with pytest.raises(S3Error):
        checksum_factory("md4")
