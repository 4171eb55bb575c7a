"""Bucket operations: ListBuckets, CreateBucket, HeadBucket, DeleteBucket, GetBucketLocation, listings."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote
from xml.sax.saxutils import escape

from .context import Context
from .errors import S3Error
from .store import check_bucket_name, past_prefix
from .xml import document, element, iso8601, parse_location

MAX_KEYS = 1000


async def list_buckets(ctx: Context) -> None:
    """ListBuckets, with the newer ``prefix``, ``max-buckets`` and ``continuation-token`` parameters."""
    prefix = ctx.query.get("prefix", "")
    after = ctx.query.get("continuation-token", "")
    raw_max = ctx.query.get("max-buckets", "10000")
    if not raw_max.isdigit() or not 1 <= int(raw_max) <= 10000:
        raise S3Error("InvalidArgument", "max-buckets must be an integer from 1 to 10000", ArgumentName="max-buckets")
    chosen = [(n, c) for n, c in ctx.store.list_buckets() if n.startswith(prefix) and n > after]
    page, more = chosen[: int(raw_max)], len(chosen) > int(raw_max)
    buckets = "".join(
        f"<Bucket>{element('Name', name)}{element('CreationDate', iso8601(created))}"
        f"{element('BucketRegion', ctx.region)}</Bucket>"
        for name, created in page
    )
    owner = f"<Owner>{element('ID', ctx.account)}{element('DisplayName', 'streamhost')}</Owner>"
    extra = element("ContinuationToken", page[-1][0]) if more else ""
    extra += element("Prefix", prefix) if "prefix" in ctx.query else ""
    await ctx.reply(200, document("ListAllMyBucketsResult", f"{owner}<Buckets>{buckets}</Buckets>{extra}"))


async def create_bucket(ctx: Context) -> None:
    check_bucket_name(ctx.bucket)
    parse_location(ctx.body or b"")  # any region is accepted: there is one store
    ctx.store.create_bucket(ctx.bucket)
    await ctx.reply(200, headers={"location": f"/{ctx.bucket}"})


async def head_bucket(ctx: Context) -> None:
    ctx.store.require_bucket(ctx.bucket)
    await ctx.reply(200, headers={"x-amz-bucket-region": ctx.region})


async def delete_bucket(ctx: Context) -> None:
    ctx.store.delete_bucket(ctx.bucket)
    await ctx.reply(204)


async def get_bucket_location(ctx: Context) -> None:
    ctx.store.require_bucket(ctx.bucket)
    region = "" if ctx.region == "us-east-1" else ctx.region  # S3 answers an empty constraint for us-east-1
    await ctx.reply(200, document("LocationConstraint", escape(region)))


def _max_keys(ctx: Context) -> int:
    raw = ctx.query.get("max-keys", str(MAX_KEYS))
    try:
        value = int(raw)
    except ValueError:
        raise S3Error(
            "InvalidArgument", "max-keys must be an integer", ArgumentName="max-keys", ArgumentValue=raw
        ) from None
    if value < 0:
        raise S3Error("InvalidArgument", "max-keys must not be negative", ArgumentName="max-keys", ArgumentValue=raw)
    return min(value, MAX_KEYS)


def _is_common_prefix(key: str, prefix: str, delimiter: str) -> bool:
    """Whether ``key`` is a CommonPrefix of this listing (it ends at its first delimiter after ``prefix``)."""
    if not delimiter or not key.startswith(prefix):
        return False
    cut = key.find(delimiter, len(prefix))
    return cut >= 0 and cut == len(key) - len(delimiter)


def _scan(ctx: Context, prefix: str, delimiter: str, after: str, limit: int,
          resume: bool = False) -> tuple[list, list[str], bool, str]:  # fmt: skip
    """Objects and common prefixes after ``after``, at most ``limit`` together: (objects, prefixes, truncated, last).

    A common prefix is reported once: the scan then jumps past every key under it (one query, however
    many keys it holds). ``resume``: ``after`` came from a continuation token or marker, so if it is a
    common prefix the keys under it were already reported as that prefix.
    """
    objects: list = []
    prefixes: list[str] = []
    last = ""
    if limit == 0:
        return objects, prefixes, False, last
    skip: str | None = after if resume and _is_common_prefix(after, prefix, delimiter) else None
    start_at = past_prefix(skip) if skip else None
    while True:
        jumped = False
        for info in ctx.store.iter_keys(ctx.bucket, prefix, after, start_at):
            if skip is not None and info.key.startswith(skip):
                continue  # only when the prefix could not be jumped past (it ends in U+10FFFF)
            if len(objects) + len(prefixes) == limit:
                return objects, prefixes, True, last
            cut = info.key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = info.key[: cut + len(delimiter)]
                prefixes.append(common)
                last = skip = common
                start_at = past_prefix(common)
                jumped = start_at is not None
                if jumped:
                    break
                continue
            objects.append(info)
            last = info.key
        if not jumped:
            return objects, prefixes, False, last


def _contents(objects: list, encode) -> str:
    return "".join(
        f"<Contents>{element('Key', encode(o.key))}{element('LastModified', iso8601(o.modified))}"
        f"{element('ETag', o.etag)}{element('Size', o.size)}{element('StorageClass', 'STANDARD')}</Contents>"
        for o in objects
    )


def _encoder(ctx: Context):
    encoding = ctx.query.get("encoding-type")
    if encoding not in (None, "url"):
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request", ArgumentName="encoding-type")
    return (lambda s: quote(s, safe="/")) if encoding == "url" else (lambda s: s)


def _common(prefixes: list[str], encode) -> str:
    return "".join(f"<CommonPrefixes>{element('Prefix', encode(p))}</CommonPrefixes>" for p in prefixes)


async def list_objects_v2(ctx: Context) -> None:
    ctx.store.require_bucket(ctx.bucket)
    encode = _encoder(ctx)
    prefix, delimiter = ctx.query.get("prefix", ""), ctx.query.get("delimiter", "")
    limit = _max_keys(ctx)
    token = ctx.query.get("continuation-token")
    start_after = ctx.query.get("start-after", "")
    after = start_after
    if token is not None:
        try:
            after = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                          ArgumentName="continuation-token") from None  # fmt: skip
    objects, prefixes, truncated, last = _scan(ctx, prefix, delimiter, after, limit, resume=token is not None)
    parts = [element("Name", ctx.bucket), element("Prefix", encode(prefix))]
    if delimiter:
        parts.append(element("Delimiter", encode(delimiter)))
    parts += [element("MaxKeys", limit), element("KeyCount", len(objects) + len(prefixes))]
    if "encoding-type" in ctx.query:
        parts.append(element("EncodingType", "url"))
    if token is not None:
        parts.append(element("ContinuationToken", token))
    if start_after:
        parts.append(element("StartAfter", encode(start_after)))
    parts.append(element("IsTruncated", "true" if truncated else "false"))
    if truncated:
        parts.append(element("NextContinuationToken", base64.urlsafe_b64encode(last.encode()).decode()))
    parts += [_contents(objects, encode), _common(prefixes, encode)]
    await ctx.reply(200, document("ListBucketResult", "".join(parts)))


async def list_objects(ctx: Context) -> None:
    """ListObjects (version 1: ``marker``/``NextMarker``), which boto3's resource collections still use."""
    ctx.store.require_bucket(ctx.bucket)
    encode = _encoder(ctx)
    prefix, delimiter = ctx.query.get("prefix", ""), ctx.query.get("delimiter", "")
    marker = ctx.query.get("marker", "")
    limit = _max_keys(ctx)
    objects, prefixes, truncated, last = _scan(ctx, prefix, delimiter, marker, limit, resume=True)
    parts = [element("Name", ctx.bucket), element("Prefix", encode(prefix)), element("Marker", encode(marker))]
    if delimiter:
        parts.append(element("Delimiter", encode(delimiter)))
    parts += [element("MaxKeys", limit), element("IsTruncated", "true" if truncated else "false")]
    if "encoding-type" in ctx.query:
        parts.append(element("EncodingType", "url"))
    if truncated:
        parts.append(element("NextMarker", encode(last)))
    parts += [_contents(objects, encode), _common(prefixes, encode)]
    await ctx.reply(200, document("ListBucketResult", "".join(parts)))
