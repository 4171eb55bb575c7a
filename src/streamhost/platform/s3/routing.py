"""Which AWS service a request is for, and which S3 operation a path-style request names.

One endpoint URL serves SageMaker, SageMaker runtime, S3, STS and IAM: botocore names the
service it signed for in the SigV4 credential scope (``Credential=AK/DATE/REGION/<service>/
aws4_request`` in the Authorization header, or ``X-Amz-Credential`` in a presigned URL's
query). SageMaker and its runtime both sign as ``sagemaker``; their paths tell them apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from .errors import S3Error

_SCOPE = re.compile(r"Credential=[^/,\s]*/\d{8}/[^/,\s]*/(?P<service>[^/,\s]+)/aws4_request")


def signing_service(headers: dict[str, str], query_string: str) -> str | None:
    """The service named in the request's SigV4 scope, or None for an unsigned request."""
    authorization = headers.get("authorization", "")
    match = _SCOPE.search(authorization)
    if match:
        return match["service"]
    if "X-Amz-Credential=" not in query_string:
        return None
    parts = query_params(query_string).get("X-Amz-Credential", "").split("/")
    return parts[3] if len(parts) == 5 and parts[4] == "aws4_request" else None


def query_params(query_string: str) -> dict[str, str]:
    """The query as a dict (blank values kept: ``?uploads`` and ``?delete`` are flags)."""
    return dict(parse_qsl(query_string, keep_blank_values=True))


@dataclass(frozen=True)
class S3Request:
    """A path-style S3 request: ``/bucket/key``; the operation comes from method, query and headers."""

    operation: str
    bucket: str | None
    key: str | None


def _split_path(raw_path: str) -> tuple[str | None, str | None]:
    """``/bucket/key`` from the raw (still percent-encoded) path; keys keep every character."""
    path = raw_path.removeprefix("/")
    if not path:
        return None, None
    bucket, sep, key = path.partition("/")
    return unquote(bucket), (unquote(key) if sep and key else None)


def classify(method: str, raw_path: str, query: dict[str, str], headers: dict[str, str]) -> S3Request:
    """Name the operation, as botocore's S3 model names it; S3Error for what we do not serve."""
    bucket, key = _split_path(raw_path)
    if bucket is None:
        if method == "GET":
            return S3Request("ListBuckets", None, None)
        raise S3Error("MethodNotAllowed")
    if key is None:
        operation = {
            ("PUT", False): "CreateBucket",
            ("HEAD", False): "HeadBucket",
            ("DELETE", False): "DeleteBucket",
            ("POST", True): "DeleteObjects",
        }.get((method, "delete" in query))
        if method == "GET":
            if "location" in query:
                operation = "GetBucketLocation"
            elif "uploads" in query:
                operation = "ListMultipartUploads"
            elif query.get("list-type") == "2":
                operation = "ListObjectsV2"
            elif not (set(query) - {"prefix", "delimiter", "marker", "max-keys", "encoding-type"}):
                operation = "ListObjects"
            else:
                unknown = sorted(set(query) - {"prefix", "delimiter", "marker", "max-keys", "encoding-type"})
                raise S3Error("NotImplemented", f"Bucket subresource ?{unknown[0]} is not implemented by this store")
        if operation is None:
            raise S3Error("MethodNotAllowed", f"{method} is not allowed on a bucket here")
        return S3Request(operation, bucket, None)
    if method == "PUT":
        if "partNumber" in query or "uploadId" in query:
            return S3Request("UploadPartCopy" if "x-amz-copy-source" in headers else "UploadPart", bucket, key)
        if "x-amz-copy-source" in headers:
            return S3Request("CopyObject", bucket, key)
        if "tagging" in query or "acl" in query:
            raise S3Error("NotImplemented", "Object tagging and ACLs are not implemented by this store")
        return S3Request("PutObject", bucket, key)
    if method == "GET":
        if "uploadId" in query:
            return S3Request("ListParts", bucket, key)
        return S3Request("GetObject", bucket, key)
    if method == "HEAD":
        return S3Request("HeadObject", bucket, key)
    if method == "DELETE":
        return S3Request("AbortMultipartUpload" if "uploadId" in query else "DeleteObject", bucket, key)
    if method == "POST":
        if "uploads" in query:
            return S3Request("CreateMultipartUpload", bucket, key)
        if "uploadId" in query:
            return S3Request("CompleteMultipartUpload", bucket, key)
    raise S3Error("MethodNotAllowed", f"{method} is not allowed on an object here")
