"""The S3 API on the platform's endpoint: authenticate, name the operation, run it, answer S3's way."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from ..asgi import BodyTooLarge, ClientGone, Receive, Scope, Send, header_map, read_body
from ..auth import AuthError, SigV4Verifier
from . import bucket_ops, multipart_ops, object_ops
from .chunk_signing import SIGNED_STREAMING, ChunkSignatureChecker
from .context import Context
from .errors import S3Error
from .routing import S3Request, classify, query_params
from .store import ObjectStore

log = logging.getLogger("streamhost.s3")
_SEED = re.compile(
    r"Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)/aws4_request"
    r".*Signature=(?P<signature>[0-9a-f]+)"
)

Handler = Callable[[Context], Awaitable[None]]
OPERATIONS: dict[str, Handler] = {
    "ListBuckets": bucket_ops.list_buckets,
    "CreateBucket": bucket_ops.create_bucket,
    "HeadBucket": bucket_ops.head_bucket,
    "DeleteBucket": bucket_ops.delete_bucket,
    "GetBucketLocation": bucket_ops.get_bucket_location,
    "ListObjectsV2": bucket_ops.list_objects_v2,
    "ListObjects": bucket_ops.list_objects,
    "PutObject": object_ops.put_object,
    "GetObject": object_ops.get_object,
    "HeadObject": object_ops.get_object,
    "DeleteObject": object_ops.delete_object,
    "DeleteObjects": object_ops.delete_objects,
    "CopyObject": object_ops.copy_object,
    "CreateMultipartUpload": multipart_ops.create_multipart_upload,
    "UploadPart": multipart_ops.upload_part,
    "UploadPartCopy": multipart_ops.upload_part_copy,
    "CompleteMultipartUpload": multipart_ops.complete_multipart_upload,
    "AbortMultipartUpload": multipart_ops.abort_multipart_upload,
    "ListParts": multipart_ops.list_parts,
    "ListMultipartUploads": multipart_ops.list_multipart_uploads,
}
# Operations whose body is a small XML document, read whole before authenticating.
_SMALL_BODY = {"CreateBucket": 64 * 1024, "DeleteObjects": 2 * 1024 * 1024, "CompleteMultipartUpload": 4 * 1024 * 1024}
# Our SigV4 errors (named as the JSON services name them) as S3 names them.
_AUTH_CODES = {
    "UnrecognizedClientException": "InvalidAccessKeyId",
    "InvalidSignatureException": "SignatureDoesNotMatch",
    "MissingAuthenticationTokenException": "AccessDenied",
    "IncompleteSignatureException": "AuthorizationHeaderMalformed",
}


class S3Service:
    """Serves the S3 API from an ``ObjectStore``; or, with ``external_url``, says where the store is."""

    def __init__(self, store: ObjectStore | None, *, region: str, account: str,
                 verifier: SigV4Verifier | None, external_url: str | None = None) -> None:  # fmt: skip
        self.store = store
        self.region = region
        self.account = account
        self.verifier = verifier
        self.external_url = external_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> tuple[str, int]:
        """Answer one request; returns the operation's name and the HTTP status (for metrics)."""
        request_id = uuid.uuid4().hex[:16].upper()
        headers = header_map(scope)
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1").split("?", 1)[0]
        query_string = scope.get("query_string", b"").decode("latin-1")
        query = query_params(query_string)
        ctx = Context(scope, receive, send, headers, query, S3Request("Unknown", None, None), self.store,  # type: ignore[arg-type]
                      self.region, self.account, request_id)  # fmt: skip
        try:
            if self.store is None:
                raise S3Error("NotImplemented", f"This platform keeps its objects in the external S3 store at "
                              f"{self.external_url}: send S3 requests there (set AWS_ENDPOINT_URL_S3)")  # fmt: skip
            ctx.request = classify(scope["method"], raw_path, query, headers)
            limit = _SMALL_BODY.get(ctx.request.operation)
            if limit is not None:
                try:
                    ctx.body = await read_body(receive, limit)
                except BodyTooLarge:
                    raise S3Error("MalformedXML", f"The request body is larger than {limit} bytes") from None
            self._authenticate(scope["method"], raw_path, query_string, headers, ctx.body)
            ctx.signatures = self._chunk_signatures(headers)
            owner = headers.get("x-amz-expected-bucket-owner")
            if owner is not None and owner != self.account and ctx.request.bucket is not None:
                # The SageMaker SDK probes its default bucket this way against bucket squatting.
                raise S3Error("AccessDenied", f"The bucket is owned by account {self.account}, not {owner}")
            await OPERATIONS[ctx.request.operation](ctx)
            return f"S3.{ctx.request.operation}", 200
        except ClientGone:
            return f"S3.{ctx.request.operation}", 499
        except S3Error as exc:
            await self._error(ctx, exc)
            return f"S3.{ctx.request.operation}", exc.status
        except OSError as exc:
            log.exception("S3 %s failed", ctx.request.operation)
            await self._error(
                ctx, S3Error("InternalError", f"The store could not complete the request: {exc.strerror or exc}")
            )
            return f"S3.{ctx.request.operation}", 500

    def _authenticate(
        self, method: str, raw_path: str, query: str, headers: dict[str, str], body: bytes | None
    ) -> None:
        if self.verifier is None:
            return
        try:
            self.verifier.verify(method, raw_path, query, headers, body)
        except AuthError as exc:
            code = _AUTH_CODES.get(exc.code, exc.code)
            raise S3Error(code, exc.message, 400 if code == "AuthorizationHeaderMalformed" else 403) from None

    def _chunk_signatures(self, headers: dict[str, str]) -> ChunkSignatureChecker | None:
        """A checker for a signed streaming upload's chunks (when signatures are verified at all)."""
        if self.verifier is None or headers.get("x-amz-content-sha256") not in SIGNED_STREAMING:
            return None
        match = _SEED.search(headers.get("authorization", ""))
        if match is None:
            raise S3Error("AccessDenied", "A signed streaming upload needs an Authorization header")
        key = self.verifier.signing_key(match["key"], match["date"], match["region"], match["service"])
        scope = f"{match['date']}/{match['region']}/{match['service']}/aws4_request"
        return ChunkSignatureChecker(key, headers.get("x-amz-date", ""), scope, match["signature"])

    @staticmethod
    async def _error(ctx: Context, exc: S3Error) -> None:
        bucket, key = ctx.request.bucket, ctx.request.key
        fields = dict(exc.fields)
        if exc.code == "NoSuchKey" and key:
            fields.setdefault("Key", key)
        if exc.code in ("NoSuchBucket", "BucketNotEmpty", "BucketAlreadyOwnedByYou") and bucket:
            fields.setdefault("BucketName", bucket)
        exc.fields = fields
        headers = {}
        if ctx.body is None and (ctx.headers.get("content-length", "0") != "0" or "transfer-encoding" in ctx.headers):
            # The body may be unread (a client that sent Expect: 100-continue never sends it): only a
            # closed connection keeps its bytes from being taken for the next request.
            headers["connection"] = "close"
        try:
            # A HEAD answer has no body: botocore then reports the bare status ("404", "Not Found").
            await ctx.reply(exc.status, exc.to_xml(ctx.request_id), headers)
        except RuntimeError:  # the response had already started (a body cut short): nothing more to say
            log.warning("S3 %s failed after its answer started: %s", ctx.request.operation, exc)
