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
    """SigV4Auth that signs exactly the headers the client listed, no more, no fewer."""

    def __init__(self, credentials: Credentials, service: str, region: str, signed: list[str]) -> None:
        super().__init__(credentials, service, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        header_map = HTTPHeaders()
        for name in self._signed:
            header_map[name] = request.headers.get(name, "")
        return header_map


class SigV4Verifier:
    def __init__(self, secrets: dict[str, str], now=lambda: dt.datetime.now(dt.timezone.utc)) -> None:
        self.secrets = secrets
        self.now = now

    def verify(self, method: str, raw_path: str, query: str, headers: dict[str, str], body: bytes) -> str:
        """Check the request's signature; returns the access key id or raises AuthError."""
        authorization = headers.get("authorization")
        if not authorization:
            raise AuthError("MissingAuthenticationTokenException", "Missing Authentication Token: sign requests with SigV4")
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
            raise AuthError("InvalidSignatureException", f"Signed header(s) missing from the request: {', '.join(missing)}")
        content_hash = headers.get("x-amz-content-sha256")
        if content_hash and content_hash != "UNSIGNED-PAYLOAD" and content_hash != hashlib.sha256(body).hexdigest():
            raise AuthError("InvalidSignatureException", "X-Amz-Content-SHA256 does not match the request body")

        url = f"http://{headers['host']}{raw_path}" + (f"?{query}" if query else "")
        request = AWSRequest(method=method, url=url, data=body, headers={h: headers[h] for h in signed})
        request.context["timestamp"] = amz_date
        signer = _Recompute(Credentials(access_key, secret), service, region, signed)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, match["sig"]):
            raise AuthError(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method.",
            )
        return access_key
