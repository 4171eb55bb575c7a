"""Multipart uploads: create, upload part (and part copy), complete, abort, list parts and uploads."""

from __future__ import annotations

import asyncio
import hashlib
import re

from .body import receive_body
from .context import Context
from .errors import S3Error
from .object_ops import copy_source, object_headers
from .store import MAX_PARTS, UploadInfo
from .xml import document, element, iso8601, parse_complete

_COPY_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


def _upload(ctx: Context) -> UploadInfo:
    return ctx.store.get_upload(ctx.bucket, ctx.key, ctx.query.get("uploadId", ""))


def _part_number(ctx: Context) -> int:
    raw = ctx.query.get("partNumber", "")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PARTS:
        raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and {MAX_PARTS}, inclusive",
                      ArgumentName="partNumber", ArgumentValue=raw)  # fmt: skip
    return int(raw)


async def create_multipart_upload(ctx: Context) -> None:
    upload_id = ctx.store.create_upload(ctx.bucket, ctx.key, object_headers(ctx.headers))
    inner = element("Bucket", ctx.bucket) + element("Key", ctx.key) + element("UploadId", upload_id)
    await ctx.reply(200, document("InitiateMultipartUploadResult", inner))


async def upload_part(ctx: Context) -> None:
    number = _part_number(ctx)
    upload = _upload(ctx)
    body = await receive_body(ctx.receive, ctx.headers, ctx.store.new_temp(), ctx.signatures)
    blob = await asyncio.to_thread(ctx.store.adopt, body.path)
    await asyncio.to_thread(ctx.store.put_part, upload, number, blob, body.size, body.md5_hex)
    checksums = {f"x-amz-checksum-{name}": value for name, value in body.checksums.items()}
    await ctx.reply(200, headers={"etag": f'"{body.md5_hex}"', **checksums})


def _copy_range(path, first: int, last: int, target) -> str:
    """Copy bytes ``first..last`` of ``path`` into ``target``; returns their MD5 hex."""
    md5 = hashlib.md5()
    with open(path, "rb") as source, open(target, "wb") as out:
        source.seek(first)
        left = last - first + 1
        while left > 0:
            chunk = source.read(min(8 * 1024 * 1024, left))
            if not chunk:
                break
            md5.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return md5.hexdigest()


async def upload_part_copy(ctx: Context) -> None:
    number = _part_number(ctx)
    upload = _upload(ctx)
    source = copy_source(ctx)
    first, last = 0, source.size - 1
    raw = ctx.headers.get("x-amz-copy-source-range")
    if raw:
        match = _COPY_RANGE.match(raw.strip())
        if not match or int(match[1]) > int(match[2]) or int(match[2]) >= source.size:
            raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last "
                          "where first and last are the zero-based offsets of the first and last bytes to copy",
                          ArgumentName="x-amz-copy-source-range", ArgumentValue=raw)  # fmt: skip
        first, last = int(match[1]), int(match[2])
    temp = ctx.store.new_temp()
    try:
        md5 = await asyncio.to_thread(_copy_range, ctx.store.blob_path(source.blob), first, last, temp)
        blob = await asyncio.to_thread(ctx.store.adopt, temp)
    finally:
        temp.unlink(missing_ok=True)
    ctx.store.put_part(upload, number, blob, max(0, last - first + 1), md5)
    inner = element("ETag", f'"{md5}"') + element("LastModified", iso8601(source.modified))
    await ctx.reply(200, document("CopyPartResult", inner))


async def complete_multipart_upload(ctx: Context) -> None:
    upload = _upload(ctx)
    chosen = parse_complete(ctx.body or b"")
    info = await asyncio.to_thread(ctx.store.complete_upload, upload, chosen)
    host = ctx.headers.get("host", "")
    inner = (
        element("Location", f"http://{host}/{ctx.bucket}/{ctx.key}")
        + element("Bucket", ctx.bucket)
        + element("Key", ctx.key)
        + element("ETag", info.etag)
    )
    await ctx.reply(200, document("CompleteMultipartUploadResult", inner))


async def abort_multipart_upload(ctx: Context) -> None:
    ctx.store.abort_upload(ctx.bucket, ctx.query.get("uploadId", ""))
    await ctx.reply(204)


async def list_parts(ctx: Context) -> None:
    upload = _upload(ctx)
    parts = "".join(
        f"<Part>{element('PartNumber', p.number)}{element('LastModified', iso8601(p.modified))}"
        f"{element('ETag', chr(34) + p.md5 + chr(34))}{element('Size', p.size)}</Part>"
        for p in ctx.store.parts(upload.upload_id).values()
    )
    inner = element("Bucket", ctx.bucket) + element("Key", ctx.key) + element("UploadId", upload.upload_id)
    inner += element("IsTruncated", "false") + element("StorageClass", "STANDARD") + parts
    await ctx.reply(200, document("ListPartsResult", inner))


async def list_multipart_uploads(ctx: Context) -> None:
    uploads = "".join(
        f"<Upload>{element('Key', u.key)}{element('UploadId', u.upload_id)}"
        f"{element('Initiated', iso8601(u.created))}{element('StorageClass', 'STANDARD')}</Upload>"
        for u in ctx.store.list_uploads(ctx.bucket)
    )
    inner = element("Bucket", ctx.bucket) + element("IsTruncated", "false") + uploads
    await ctx.reply(200, document("ListMultipartUploadsResult", inner))
