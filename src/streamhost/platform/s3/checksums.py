"""Body digests S3 checks: Content-MD5 and the flexible ``x-amz-checksum-<algorithm>`` values.

CRC32, SHA-1 and SHA-256 use botocore's own checksum classes (zlib, hashlib), and so do CRC32C
and CRC64NVME when botocore has its CRT extra; without it they fall back to table-driven pure
Python here (correct but slow: only clients that themselves have the CRT send them). MD5 and
SHA-512 come from hashlib. The algorithm names are those of the ``ChecksumAlgorithm`` enum in
botocore's S3 service model; one we cannot compute (the XXHASH family) is refused, never skipped.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from botocore import httpchecksum

from .errors import S3Error


@functools.cache
def model_algorithms() -> tuple[str, ...]:
    """The checksum algorithms S3 defines, lower case, from botocore's S3 model (``ChecksumAlgorithm``)."""
    import botocore.session

    enum = botocore.session.get_session().get_service_model("s3").shape_for("ChecksumAlgorithm").enum
    return tuple(name.lower() for name in enum)


ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256", "sha512", "md5")  # those computed here


class Checksum(Protocol):
    def update(self, chunk: bytes) -> None: ...
    def b64digest(self) -> str: ...


def _reflected_table(poly: int, width: int) -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


class _TableCrc:
    """A reflected CRC with init and final xor of all ones (CRC32C and CRC64NVME are both such)."""

    POLY = 0
    WIDTH = 32
    _table: ClassVar[list[int]] = []

    def __init__(self) -> None:
        cls = type(self)
        if not cls._table:
            cls._table = _reflected_table(cls.POLY, cls.WIDTH)
        self._mask = (1 << cls.WIDTH) - 1
        self._crc = self._mask

    def update(self, chunk: bytes) -> None:
        crc, table = self._crc, self._table
        for byte in chunk:
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        self._crc = crc

    def b64digest(self) -> str:
        value = self._crc ^ self._mask
        return base64.b64encode(value.to_bytes(self.WIDTH // 8, "big")).decode()


class Crc32c(_TableCrc):
    POLY = 0x82F63B78
    WIDTH = 32
    _table: ClassVar[list[int]] = []


class Crc64Nvme(_TableCrc):
    POLY = 0x9A6C9329AC4BC9B5
    WIDTH = 64
    _table: ClassVar[list[int]] = []


class _HashlibChecksum:
    """A hashlib digest with botocore's checksum interface (``update``, ``b64digest``)."""

    NAME = "md5"

    def __init__(self) -> None:
        self._hash = hashlib.new(self.NAME)

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)

    def b64digest(self) -> str:
        return base64.b64encode(self._hash.digest()).decode()


class Md5Checksum(_HashlibChecksum):
    NAME = "md5"


class Sha512Checksum(_HashlibChecksum):
    NAME = "sha512"


def checksum_factory(algorithm: str) -> Callable[[], Any]:
    algorithm = algorithm.lower()
    cls = getattr(httpchecksum, "_CHECKSUM_CLS", {}).get(algorithm)
    if cls is not None:
        return cls
    fallback = {"crc32c": Crc32c, "crc64nvme": Crc64Nvme, "md5": Md5Checksum, "sha512": Sha512Checksum}
    if algorithm in fallback:
        return fallback[algorithm]
    raise S3Error(
        "InvalidRequest", f"Checksum algorithm {algorithm!r} is not supported; use one of {', '.join(ALGORITHMS)}"
    )


def declared_checksums(headers: dict[str, str]) -> dict[str, str]:
    """``{algorithm: base64 value}`` from ``x-amz-checksum-*`` headers (the trailer is named, not given)."""
    out = {}
    for algorithm in model_algorithms():
        value = headers.get(f"x-amz-checksum-{algorithm}")
        if value:
            checksum_factory(algorithm)  # one we cannot compute is refused, not stored unchecked
            out[algorithm] = value.strip()
    return out


def trailer_algorithm(headers: dict[str, str]) -> str | None:
    """The algorithm an aws-chunked body's trailer will carry (``X-Amz-Trailer: x-amz-checksum-crc32``)."""
    trailer = headers.get("x-amz-trailer", "").strip().lower()
    if not trailer:
        return None
    algorithm = trailer.removeprefix("x-amz-checksum-")
    if not trailer.startswith("x-amz-checksum-") or algorithm not in model_algorithms():
        raise S3Error("InvalidRequest", f"Unsupported x-amz-trailer {trailer!r}")
    checksum_factory(algorithm)
    return algorithm


def content_md5(headers: dict[str, str]) -> bytes | None:
    """The decoded Content-MD5 header, or None; InvalidDigest when it is not base64 of 16 bytes."""
    value = headers.get("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise S3Error("InvalidDigest", "The Content-MD5 you specified is not valid.")
    return digest


class BodyDigests:
    """Everything computed over a body as it streams: MD5 (the ETag), SHA-256 if signed, checksums."""

    def __init__(self, sha256: bool, algorithms: list[str]) -> None:
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256() if sha256 else None
        self.checksums = {name: checksum_factory(name)() for name in dict.fromkeys(algorithms)}
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.md5.update(chunk)
        if self.sha256 is not None:
            self.sha256.update(chunk)
        for checksum in self.checksums.values():
            checksum.update(chunk)

    def verify(self, declared: dict[str, str], md5: bytes | None) -> dict[str, str]:
        """Raise BadDigest on any mismatch; returns the verified ``{algorithm: base64}`` values."""
        if md5 is not None and md5 != self.md5.digest():
            raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.")
        verified = {}
        for algorithm, value in declared.items():
            actual = self.checksums[algorithm].b64digest()
            if actual != value:
                raise S3Error(
                    "BadDigest", f"The {algorithm.upper()} you specified did not match the calculated checksum."
                )
            verified[algorithm] = actual
        return verified
