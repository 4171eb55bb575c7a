"""The XML documents S3 writes (listings, upload results) and reads (Delete, CompleteMultipartUpload).

Writing is plain string building with escaping; reading uses ElementTree on small bodies (the
caller bounds their size) and ignores namespaces, which clients send or omit.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from email.utils import formatdate
from xml.sax.saxutils import escape

from .errors import S3Error

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n'


def iso8601(timestamp: float) -> str:
    """S3's timestamp in XML bodies: ``2026-12-03T09:00:00.000Z``."""
    when = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def http_date(timestamp: float) -> str:
    """S3's timestamp in headers (Last-Modified): RFC 7231."""
    return formatdate(timestamp, usegmt=True)


def element(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def document(root: str, inner: str) -> bytes:
    return f'{HEADER}<{root} xmlns="{NS}">{inner}</{root}>'.encode()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse(body: bytes, root: str) -> ET.Element:
    """Parse ``body`` and check its root element's name; MalformedXML otherwise."""
    try:
        tree = ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML") from None
    if _local(tree.tag) != root:
        raise S3Error("MalformedXML", f"Expected a <{root}> document")
    return tree


def children(parent: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in parent if _local(child.tag) == name]


def text(parent: ET.Element, name: str) -> str | None:
    found = children(parent, name)
    return (found[0].text or "") if found else None


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """``<Delete><Object><Key>..</Key></Object>..<Quiet>true</Quiet></Delete>`` -> (keys, quiet)."""
    tree = parse(body, "Delete")
    keys = []
    for obj in children(tree, "Object"):
        key = text(obj, "Key")
        if key is None:
            raise S3Error("MalformedXML", "Every <Object> needs a <Key>")
        keys.append(key)
    if not keys or len(keys) > 1000:
        raise S3Error("MalformedXML", "DeleteObjects takes 1 to 1000 keys")
    return keys, (text(tree, "Quiet") or "").strip().lower() == "true"


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """``<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>..</ETag></Part>..`` -> [(n, etag)]."""
    tree = parse(body, "CompleteMultipartUpload")
    parts = []
    for part in children(tree, "Part"):
        number, etag = text(part, "PartNumber"), text(part, "ETag")
        if number is None or etag is None or not number.strip().isdigit():
            raise S3Error("MalformedXML", "Every <Part> needs a numeric <PartNumber> and an <ETag>")
        parts.append((int(number), etag))
    return parts


def parse_location(body: bytes) -> str | None:
    """The LocationConstraint of a CreateBucket body (None when the body is empty)."""
    if not body.strip():
        return None
    return text(parse(body, "CreateBucketConfiguration"), "LocationConstraint")
