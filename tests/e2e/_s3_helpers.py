"""Helpers for the S3 tests: raw signed requests (for bodies boto3 will not send) and error codes."""

from __future__ import annotations

import hashlib
import socket
from urllib.parse import urlsplit

import httpx
from _platform_fixtures import ACCESS_KEY, REGION, SECRET_KEY
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def error_of(exc_info) -> tuple[str, int]:
    response = exc_info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def sign_s3(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None,
            trailer: bool = False, secret: str = SECRET_KEY) -> dict[str, str]:  # fmt: skip
    """Headers for a request signed as botocore signs S3 (``trailer``: an unsigned aws-chunked payload)."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    if trailer:
        request.context["checksum"] = {"request_algorithm": {"in": "trailer", "algorithm": "crc32"}}
    S3SigV4Auth(Credentials(ACCESS_KEY, secret), "s3", REGION).add_auth(request)
    return dict(request.headers.items())


def s3_request(base_url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
               trailer: bool = False) -> httpx.Response:  # fmt: skip
    url = f"{base_url}{path}"
    signed = sign_s3(method, url, body, headers, trailer=trailer)
    return httpx.request(method, url, content=body, headers=signed, timeout=30)


def aws_chunked(payload: bytes, trailer_name: str, trailer_value: str, chunk: int = 1000) -> bytes:
    """An aws-chunked body as S3 defines it, with one trailer."""
    out = b""
    for start in range(0, len(payload), chunk):
        piece = payload[start : start + chunk]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + f"0\r\n{trailer_name}:{trailer_value}\r\n\r\n".encode()


def send_truncated(base_url: str, path: str, body: bytes, sent: int) -> None:
    """A signed PUT that declares ``len(body)`` bytes, sends ``sent`` of them, then hangs up."""
    url = f"{base_url}{path}"
    headers = sign_s3("PUT", url, body, {"Content-Length": str(len(body))})
    parts = urlsplit(url)
    head = (
        f"PUT {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.encode() + body[:sent])
        sock.shutdown(socket.SHUT_WR)
        try:
            sock.recv(65536)
        except OSError:
            pass


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def signed_chunked_put(
    base_url: str, path: str, payload: bytes, chunk: int = 65536, tamper: bool = False
) -> httpx.Response:
    """A PUT as the SDKs that sign each chunk send it (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``).

    The seed signature comes from botocore's signer; each chunk's signature is SigV4's chunk rule
    (checked against AWS's published example in tests/unit/test_s3_parts.py). ``tamper`` flips one
    byte of the payload after signing.
    """
    import hmac

    from botocore.auth import SigV4Auth

    url = f"{base_url}{path}"
    headers = {"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "Content-Encoding": "aws-chunked",
               "X-Amz-Decoded-Content-Length": str(len(payload))}  # fmt: skip
    request = AWSRequest(method="PUT", url=url, headers=headers)
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION).add_auth(request)
    signed = dict(request.headers.items())
    amz_date = signed["X-Amz-Date"]
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    key = f"AWS4{SECRET_KEY}".encode()
    for part in (amz_date[:8], REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    previous = signed["Authorization"].rsplit("Signature=", 1)[1]
    empty = hashlib.sha256(b"").hexdigest()
    body = b""
    pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)] + [b""]
    for piece in pieces:
        text = "\n".join(
            ["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, empty, hashlib.sha256(piece).hexdigest()]
        )
        previous = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
        sent = piece
        if tamper and piece:
            sent = bytes([piece[0] ^ 1]) + piece[1:]
            tamper = False
        body += f"{len(piece):x};chunk-signature={previous}\r\n".encode() + sent + b"\r\n"
    return httpx.put(url, content=body, headers=signed, timeout=30)
