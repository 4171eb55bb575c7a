"""SigV4 verification: the platform accepts exactly the requests boto3 signs with a known key.

The signature is recomputed with botocore's own ``SigV4Auth`` (canonical request, string to sign,
signing key), fed the request as it arrived: method, raw path, query, the headers the client
says it signed, the body, and the client's own timestamp, region and service. Reusing botocore
means our canonicalisation cannot drift from the client's. Secrets come from the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) and an AWS-style credentials file (every
profile in it).
"""

from __future__ import annotations

import configparser
import datetime as dt
import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

MAX_SKEW = dt.timedelta(minutes=15)
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]+)\s*$"
)


class AuthError(Exception):
    """403 with an AWS error code (InvalidSignatureException, UnrecognizedClientException, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = 403


def load_secrets(credentials_file: Path | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Access key id -> secret, from the environment and a credentials file (all its profiles)."""
    env = os.environ if environ is None else environ
    secrets: dict[str, str] = {}
    path = credentials_file
    if path is None:
        default = env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials")
        path = Path(default) if os.path.isfile(default) else None
    if path is not None:
        parser = configparser.RawConfigParser()
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, configparser.Error) as exc:
            raise ValueError(f"cannot read credentials file {path}: {exc}") from None
        for section in parser.sections():
            key = parser.get(section, "aws_access_key_id", fallback="").strip()
            secret = parser.get(section, "aws_secret_access_key", fallback="").strip()
            if key and secret:
                secrets[key] = secret
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        secrets[env["AWS_ACCESS_KEY_ID"]] = env["AWS_SECRET_ACCESS_KEY"]
    return secrets


class _Recompute(SigV4Auth):
    """SigV4Auth that signs exactly the headers the client listed, no more, no fewer.

    S3 signs its path as sent (no normalisation, no second encoding) and presigned URLs sign
    ``UNSIGNED-PAYLOAD``; the two flags reproduce botocore's ``S3SigV4Auth``/``S3SigV4QueryAuth``.
    """

    def __init__(self, credentials: Credentials, service: str, region: str, signed: list[str],
                 unsigned_payload: bool = False) -> None:  # fmt: skip
        super().__init__(credentials, service, region)
        self._signed = signed
        self._unsigned_payload = unsigned_payload

    def _normalize_url_path(self, path: str) -> str:
        return path if self._service_name == "s3" else super()._normalize_url_path(path)

    def payload(self, request: AWSRequest) -> str:
        return "UNSIGNED-PAYLOAD" if self._unsigned_payload else super().payload(request)

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        header_map = HTTPHeaders()
        for name in self._signed:
            header_map[name] = request.headers.get(name, "")
        return header_map


class SigV4Verifier:
    def __init__(self, secrets: dict[str, str], now=lambda: dt.datetime.now(dt.timezone.utc)) -> None:
        self.secrets = secrets
        self.now = now

    def verify(self, method: str, raw_path: str, query: str, headers: dict[str, str], body: bytes | None) -> str:
        """Check the request's signature; returns the access key id or raises AuthError.

        ``body=None``: the body has not been read (an S3 upload streams to disk); the signed
        ``X-Amz-Content-SHA256`` stands in for it and the caller checks the bytes against it.
        A request without an Authorization header but with ``X-Amz-Signature`` in its query
        is a presigned URL.
        """
        authorization = headers.get("authorization")
        if not authorization and "X-Amz-Signature=" in query:
            return self.verify_presigned(method, raw_path, query, headers)
        if not authorization and "AWSAccessKeyId=" in query:
            return self.verify_presigned_v2(method, raw_path, query, headers)
        if not authorization:
            raise AuthError(
                "MissingAuthenticationTokenException", "Missing Authentication Token: sign requests with SigV4"
            )
        match = _AUTH.match(authorization)
        if not match:
            raise AuthError(
                "IncompleteSignatureException",
                "Authorization header must be 'AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...'",
            )
        parts = match["cred"].split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise AuthError("IncompleteSignatureException", "Credential must be KEY/DATE/REGION/SERVICE/aws4_request")
        access_key, scope_date, region, service, _ = parts
        secret = self.secrets.get(access_key)
        if secret is None:
            raise AuthError("UnrecognizedClientException", "The security token included in the request is invalid.")
        amz_date = headers.get("x-amz-date", "")
        try:
            when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            raise AuthError("IncompleteSignatureException", "X-Amz-Date must be given as YYYYMMDDTHHMMSSZ") from None
        if scope_date != amz_date[:8]:
            raise AuthError("InvalidSignatureException", "Credential scope date does not match X-Amz-Date")
        if abs(self.now() - when) > MAX_SKEW:
            raise AuthError(
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is more than 15 minutes from the server time; check your clock",
            )
        signed = [h.strip().lower() for h in match["signed"].split(";") if h.strip()]
        if "host" not in signed:
            raise AuthError("InvalidSignatureException", "SignedHeaders must include host")
        missing = [h for h in signed if h not in headers]
        if missing:
            raise AuthError(
                "InvalidSignatureException", f"Signed header(s) missing from the request: {', '.join(missing)}"
            )
        content_hash = headers.get("x-amz-content-sha256")
        if body is None:
            if "x-amz-content-sha256" not in signed:
                raise AuthError("InvalidSignatureException", "Sign the x-amz-content-sha256 header (as S3 requires)")
        elif content_hash and content_hash != "UNSIGNED-PAYLOAD" and content_hash != hashlib.sha256(body).hexdigest():
            raise AuthError("InvalidSignatureException", "X-Amz-Content-SHA256 does not match the request body")
        self._check_signature(method, raw_path, query, headers, signed, access_key, secret, amz_date, region,
                              service, match["sig"], body or b"")  # fmt: skip
        return access_key

    def signing_key(self, access_key: str, scope_date: str, region: str, service: str) -> bytes:
        """SigV4's derived key (what signs the request, and each chunk of a signed streaming upload)."""
        secret = self.secrets.get(access_key)
        if secret is None:
            raise AuthError("UnrecognizedClientException", "The security token included in the request is invalid.")
        key = f"AWS4{secret}".encode()
        for part in (scope_date, region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        return key

    def verify_request(self, scope: dict[str, Any], headers: dict[str, str], body: bytes | None) -> str:
        """``verify`` for an ASGI request: the path as sent (undecoded) and the raw query string."""
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1").split("?", 1)[0]
        return self.verify(scope["method"], raw_path, scope.get("query_string", b"").decode("latin-1"), headers, body)

    def verify_presigned(self, method: str, raw_path: str, query: str, headers: dict[str, str]) -> str:
        """Check a presigned URL (``X-Amz-Credential``, ``X-Amz-Signature``... in the query)."""
        from urllib.parse import parse_qsl

        params = dict(parse_qsl(query, keep_blank_values=True))
        if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
            raise AuthError("IncompleteSignatureException", "X-Amz-Algorithm must be AWS4-HMAC-SHA256")
        parts = params.get("X-Amz-Credential", "").split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise AuthError(
                "IncompleteSignatureException", "X-Amz-Credential must be KEY/DATE/REGION/SERVICE/aws4_request"
            )
        access_key, scope_date, region, service, _ = parts
        secret = self.secrets.get(access_key)
        if secret is None:
            raise AuthError("UnrecognizedClientException", "The security token included in the request is invalid.")
        amz_date = params.get("X-Amz-Date", "")
        try:
            when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
            expires = int(params.get("X-Amz-Expires", "0"))
        except ValueError:
            raise AuthError("IncompleteSignatureException", "X-Amz-Date and X-Amz-Expires are malformed") from None
        if scope_date != amz_date[:8]:
            raise AuthError("InvalidSignatureException", "Credential scope date does not match X-Amz-Date")
        if not 1 <= expires <= 604800:
            raise AuthError("AuthorizationQueryParametersError", "X-Amz-Expires must be between 1 and 604800 seconds")
        now = self.now()
        if now > when + dt.timedelta(seconds=expires) or when - now > MAX_SKEW:
            raise AuthError("AccessDenied", "Request has expired")
        signed = [h.strip().lower() for h in params.get("X-Amz-SignedHeaders", "").split(";") if h.strip()]
        if "host" not in signed:
            raise AuthError("InvalidSignatureException", "X-Amz-SignedHeaders must include host")
        missing = [h for h in signed if h not in headers]
        if missing:
            raise AuthError(
                "InvalidSignatureException", f"Signed header(s) missing from the request: {', '.join(missing)}"
            )
        unsigned_query = "&".join(p for p in query.split("&") if not p.startswith("X-Amz-Signature="))
        self._check_signature(method, raw_path, unsigned_query, headers, signed, access_key, secret, amz_date,
                              region, service, params.get("X-Amz-Signature", ""), b"", unsigned_payload=True)  # fmt: skip
        return access_key

    def verify_presigned_v2(self, method: str, raw_path: str, query: str, headers: dict[str, str]) -> str:
        """Check an S3 presigned URL of the older kind (``AWSAccessKeyId``, ``Expires``, ``Signature``):
        boto3's ``generate_presigned_url`` still makes these for S3 unless told ``s3v4``."""
        from urllib.parse import parse_qsl, urlsplit

        from botocore.auth import HmacV1QueryAuth

        params = dict(parse_qsl(query, keep_blank_values=True))
        access_key = params.get("AWSAccessKeyId", "")
        secret = self.secrets.get(access_key)
        if secret is None:
            raise AuthError(
                "UnrecognizedClientException", "The AWS access key Id you provided does not exist in our records."
            )
        expires = params.get("Expires", "")
        if not expires.isdigit():
            raise AuthError("IncompleteSignatureException", "Expires must be a number of seconds since the epoch")
        if self.now().timestamp() > int(expires):
            raise AuthError("AccessDenied", "Request has expired")

        class _FixedExpiry(HmacV1QueryAuth):
            def _get_date(self) -> str:
                return expires

        signed = HTTPHeaders()
        for name, value in headers.items():
            if name in ("content-md5", "content-type") or name.startswith("x-amz-"):
                signed[name] = value
        expected = _FixedExpiry(Credentials(access_key, secret)).get_signature(
            method, urlsplit(f"http://host{raw_path}?{query}"), signed
        )
        if not hmac.compare_digest(expected, params.get("Signature", "")):
            raise AuthError(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )
        return access_key

    def _check_signature(self, method: str, raw_path: str, query: str, headers: dict[str, str], signed: list[str],
                         access_key: str, secret: str, amz_date: str, region: str, service: str, signature: str,
                         body: bytes, unsigned_payload: bool = False) -> None:  # fmt: skip
        url = f"http://{headers['host']}{raw_path}" + (f"?{query}" if query else "")
        request = AWSRequest(method=method, url=url, data=body, headers={h: headers[h] for h in signed})
        request.context["timestamp"] = amz_date
        signer = _Recompute(Credentials(access_key, secret), service, region, signed, unsigned_payload)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, signature):
            raise AuthError(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method.",
            )
