"""SigV4 verification against requests signed by botocore itself."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from streamhost.platform.auth import AuthError, SigV4Verifier, load_secrets


def signed(url: str, body: bytes, headers: dict[str, str], secret: str = "secret", key: str = "AKID"):
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(Credentials(key, secret), "sagemaker", "us-east-1").add_auth(request)
    parts = urlsplit(url)
    sent = {k.lower(): v for k, v in request.headers.items()}
    sent["host"] = parts.netloc
    return parts.path, parts.query, sent


@pytest.fixture
def verifier():
    return SigV4Verifier({"AKID": "secret"})


def test_accepts_what_botocore_signs(verifier):
    path, query, headers = signed(
        "http://127.0.0.1:8080/", b'{"ModelName":"m"}', {"X-Amz-Target": "SageMaker.DescribeModel"}
    )
    assert verifier.verify("POST", path, query, headers, b'{"ModelName":"m"}') == "AKID"


def test_accepts_encoded_path_and_query(verifier):
    url = "http://localhost:9000/endpoints/my-ep/invocations-response-stream?x=1&a=b%20c"
    path, query, headers = signed(url, b"{}", {"Content-Type": "application/json"})
    assert verifier.verify("POST", path, query, headers, b"{}") == "AKID"


@pytest.mark.parametrize("tamper", ["body", "header", "path"])
def test_rejects_tampering(verifier, tamper):
    path, query, headers = signed("http://h:1/", b"{}", {"X-Amz-Target": "SageMaker.ListModels"})
    body = b"{}"
    if tamper == "body":
        body = b'{"MaxResults": 1}'
    elif tamper == "header":
        headers["x-amz-target"] = "SageMaker.DeleteModel"
    else:
        path = "/other"
    with pytest.raises(AuthError) as info:
        verifier.verify("POST", path, query, headers, body)
    assert info.value.code == "InvalidSignatureException"
    assert info.value.status == 403


def test_wrong_secret_and_unknown_key(verifier):
    path, query, headers = signed("http://h:1/", b"{}", {}, secret="wrong")
    with pytest.raises(AuthError, match="signature we calculated does not match"):
        verifier.verify("POST", path, query, headers, b"{}")
    path, query, headers = signed("http://h:1/", b"{}", {}, key="OTHER")
    with pytest.raises(AuthError) as info:
        verifier.verify("POST", path, query, headers, b"{}")
    assert info.value.code == "UnrecognizedClientException"


def test_missing_and_malformed_authorization(verifier):
    with pytest.raises(AuthError) as info:
        verifier.verify("POST", "/", "", {"host": "h"}, b"")
    assert info.value.code == "MissingAuthenticationTokenException"
    with pytest.raises(AuthError) as info:
        verifier.verify("POST", "/", "", {"host": "h", "authorization": "Basic abc"}, b"")
    assert info.value.code == "IncompleteSignatureException"


def test_old_signature_expires():
    path, query, headers = signed("http://h:1/", b"{}", {})
    later = SigV4Verifier({"AKID": "secret"}, now=lambda: dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=20))
    with pytest.raises(AuthError, match="Signature expired"):
        later.verify("POST", path, query, headers, b"{}")


def test_load_secrets_reads_env_and_every_profile(tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text(
        "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n[other]\naws_access_key_id=A2\naws_secret_access_key=S2\n"
    )
    secrets = load_secrets(creds, environ={"AWS_ACCESS_KEY_ID": "A3", "AWS_SECRET_ACCESS_KEY": "S3"})
    assert secrets == {"A1": "S1", "A2": "S2", "A3": "S3"}
    assert load_secrets(None, environ={"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}) == {}
