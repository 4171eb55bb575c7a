"""Object operations: PutObject, GetObject (ranges), HeadObject, DeleteObject(s), CopyObject."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import unquote

from .body import receive_body, stored_content_encoding
from .checksums import BodyDigests, content_md5, declared_checksums
from .context import Context
from .errors import S3Error
from .store import ObjectInfo, check_key
from .xml import document, element, http_date, iso8601, parse_delete

_STORED_HEADERS = ("content-type", "content-disposition", "content-language", "cache-control", "expires")
_RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-disposition": "content-disposition",
    "response-content-language": "content-language",
    "response-cache-control": "cache-control",
    "response-expires": "expires",
    "response-content-encoding": "content-encoding",
}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_READ_CHUNK = 1024 * 1024


def object_headers(headers: dict[str, str]) -> dict[str, str]:
    """The request headers S3 keeps with an object and returns on GET/HEAD."""
    kept = {name: headers[name] for name in _STORED_HEADERS if name in headers}
    encoding = stored_content_encoding(headers)
    if encoding:
        kept["content-encoding"] = encoding
    kept.update({name: value for name, value in headers.items() if name.startswith("x-amz-meta-")})
    return kept


def _checksum_headers(checksums: dict[str, str]) -> dict[str, str]:
    return {f"x-amz-checksum-{name}": value for name, value in checksums.items()}


async def put_object(ctx: Context) -> None:
    check_key(ctx.key)
    ctx.store.require_bucket(ctx.bucket)
    body = await receive_body(ctx.receive, ctx.headers, ctx.store.new_temp(), ctx.signatures)
    blob = await asyncio.to_thread(ctx.store.adopt, body.path)
    etag = f'"{body.md5_hex}"'
    # The commit waits for an fsync (synchronous=FULL): off the event loop, like the body's writes.
    await asyncio.to_thread(ctx.store.put, ctx.bucket, ctx.key, blob, body.size, etag, object_headers(ctx.headers),
                            body.checksums)  # fmt: skip
    await ctx.reply(200, headers={"etag": etag, **_checksum_headers(body.checksums)})


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` inclusive for a satisfiable Range; None for no or an unparsable one (S3 ignores those)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or (not match[1] and not match[2]):
        return None
    if not match[1]:  # suffix: the last N bytes
        length = int(match[2])
        if length == 0:
            raise S3Error("InvalidRange", ActualObjectSize=str(size), RangeRequested=header)
        return max(0, size - length), size - 1
    first = int(match[1])
    last = int(match[2]) if match[2] else size - 1
    if last < first:
        return None
    if first >= size:
        raise S3Error("InvalidRange", ActualObjectSize=str(size), RangeRequested=header)
    return first, min(last, size - 1)


def _conditional(ctx: Context, info: ObjectInfo) -> int | None:
    """304/412 for If-None-Match / If-Match (ETag comparisons only)."""
    if_match = ctx.headers.get("if-match")
    if if_match and if_match.strip() != "*" and info.etag not in [t.strip() for t in if_match.split(",")]:
        return 412
    if_none = ctx.headers.get("if-none-match")
    if if_none and (if_none.strip() == "*" or info.etag in [t.strip() for t in if_none.split(",")]):
        return 304
    return None


def _response_headers(ctx: Context, info: ObjectInfo) -> dict[str, str]:
    headers = {
        "content-type": "binary/octet-stream",
        **info.headers,
        "etag": info.etag,
        "last-modified": http_date(info.modified),
        "accept-ranges": "bytes",
    }
    for param, header in _RESPONSE_OVERRIDES.items():
        if param in ctx.query:
            headers[header] = ctx.query[param]
    return headers


async def _open_current(ctx: Context) -> tuple[ObjectInfo, Any]:
    """The object's record and an open handle on its blob.

    Blobs are immutable, but an overwrite or delete can unlink one between the lookup and the
    open; then the lookup is repeated, so the answer describes exactly the bytes it sends.
    """
    for _ in range(3):
        info = ctx.store.get(ctx.bucket, ctx.key)
        try:
            return info, await asyncio.to_thread(open, ctx.store.blob_path(info.blob), "rb")
        except FileNotFoundError:
            continue
    raise S3Error("InternalError", "The object kept changing while it was being read; retry")


async def get_object(ctx: Context) -> None:
    info, handle = await _open_current(ctx)
    try:
        await _send_object(ctx, info, handle)
    finally:
        handle.close()


async def _send_object(ctx: Context, info: ObjectInfo, handle: Any) -> None:
    headers = _response_headers(ctx, info)
    condition = _conditional(ctx, info)
    if condition is not None:
        if condition == 412:
            raise S3Error("PreconditionFailed", status=412)
        await ctx.reply(304, headers={"etag": info.etag, "last-modified": headers["last-modified"]})
        return
    span = _range(ctx.headers.get("range"), info.size)
    status = 200
    first, last = 0, info.size - 1
    if span is not None:
        first, last = span
        status = 206
        headers["content-range"] = f"bytes {first}-{last}/{info.size}"
    elif ctx.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
        headers.update(_checksum_headers(info.checksums))
    length = last - first + 1 if info.size else 0
    headers["content-length"] = str(length)
    if ctx.scope["method"] == "HEAD":
        await ctx.reply(status, headers=headers, content_type=None)
        return
    await ctx.start(status, headers)
    await asyncio.to_thread(handle.seek, first)
    left = length
    while left > 0:
        chunk = await asyncio.to_thread(handle.read, min(_READ_CHUNK, left))
        if not chunk:
            break  # cannot happen (blobs never change once written); end the body rather than hang
        left -= len(chunk)
        await ctx.send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
    if length == 0 or left > 0:
        await ctx.send({"type": "http.response.body", "body": b""})


async def delete_object(ctx: Context) -> None:
    ctx.store.delete(ctx.bucket, ctx.key)
    await ctx.reply(204)


async def delete_objects(ctx: Context) -> None:
    body = ctx.body or b""
    declared = declared_checksums(ctx.headers)
    md5 = content_md5(ctx.headers)
    digests = BodyDigests(sha256=False, algorithms=list(declared))
    digests.update(body)
    digests.verify(declared, md5)
    keys, quiet = parse_delete(body)
    ctx.store.require_bucket(ctx.bucket)
    results = []
    for key in keys:
        try:
            check_key(key)
            ctx.store.delete(ctx.bucket, key)
            if not quiet:
                results.append(f"<Deleted>{element('Key', key)}</Deleted>")
        except S3Error as exc:
            results.append(
                f"<Error>{element('Key', key)}{element('Code', exc.code)}{element('Message', exc.message)}</Error>"
            )
    await ctx.reply(200, document("DeleteResult", "".join(results)))


def copy_source(ctx: Context) -> ObjectInfo:
    """The object ``x-amz-copy-source`` names (``[/]bucket/key[?versionId=..]``, URL-encoded)."""
    raw = ctx.headers.get("x-amz-copy-source", "")
    path = unquote(raw.split("?", 1)[0]).lstrip("/")
    bucket, sep, key = path.partition("/")
    if not bucket or not sep or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                      ArgumentName="x-amz-copy-source", ArgumentValue=raw)  # fmt: skip
    return ctx.store.get(bucket, key)


async def copy_object(ctx: Context) -> None:
    check_key(ctx.key)
    ctx.store.require_bucket(ctx.bucket)
    source = copy_source(ctx)
    directive = ctx.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.", ArgumentName="x-amz-metadata-directive")
    if directive == "COPY" and (source.bucket, source.key) == (ctx.bucket, ctx.key):
        raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an object to itself "
                      "without changing the object's metadata, storage class, website redirect location or encryption "
                      "attributes.")  # fmt: skip
    headers = source.headers if directive == "COPY" else object_headers(ctx.headers)
    blob = await asyncio.to_thread(ctx.store.copy_blob, source.blob)
    info = ctx.store.put(ctx.bucket, ctx.key, blob, source.size, source.etag, headers, source.checksums)
    result = element("LastModified", iso8601(info.modified)) + element("ETag", info.etag)
    await ctx.reply(200, document("CopyObjectResult", result))
