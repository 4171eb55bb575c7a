"""Issue 12's requests end to end: real boto3 (and raw signed requests for shapes boto3 refuses to send)
against a real platform, and SigV4 refusals on every authenticated route.

Validation: what gave ``500 InternalFailure`` before now gets AWS's 4xx in its JSON 1.1 error shape.
SigV4: a wrong secret, a date outside the 15-minute window, and a body or header changed after
signing each get 403 with AWS's error code, from boto3's own signer on the control plane,
InvokeEndpoint and InvokeEndpointWithResponseStream, and on the operator view.
"""

from __future__ import annotations

import datetime as dt
import json
from unittest import mock

import boto3
import botocore.exceptions
import httpx
import pytest
from _platform_fixtures import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    PlatformProcess,
    deploy,
    unique,
)
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

AMZ_JSON = "application/x-amz-json-1.1"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(tmp_path_factory.mktemp("platform-validation")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def endpoint(platform) -> str:
    return deploy(platform.sagemaker(), unique("valid"))


def client_error(call) -> botocore.exceptions.ClientError:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call()
    return info.value


# ---------------------------------------------------------------------- validation from the service model


def test_issue_12_requests_get_aws_4xx_not_500(platform) -> None:
    """The shapes that answered 500 InternalFailure, sent by boto3 with its own checks switched off."""
    sm = platform.sagemaker(parameter_validation=False)
    cases = [
        (lambda: sm.describe_model(ModelName=["m"]), "SerializationException", "Start of list found where not expected (at 'modelName'"),
        (lambda: sm.list_models(MaxResults="ten"), "SerializationException", "STRING_VALUE can not be converted to an Integer (at 'maxResults')"),
        (lambda: sm.delete_endpoint(EndpointName=5), "SerializationException", "NUMBER_VALUE can not be converted to a String (at 'endpointName')"),
        (lambda: sm.update_endpoint(EndpointName="e", EndpointConfigName={"a": 1}), "SerializationException",
         "Start of structure or map found where not expected (at 'endpointConfigName'"),
        (lambda: sm.list_endpoints(SortOrder=True), "SerializationException", "TRUE_VALUE can not be converted to a String"),
    ]  # fmt: skip
    for call, code, message in cases:
        error = client_error(call)
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert error.response["Error"]["Code"] == code
        assert message in error.response["Error"]["Message"]


def test_constraints_boto3_does_not_check_get_aws_validation_messages(platform) -> None:
    sm = platform.sagemaker()  # botocore checks types and minimums, not maximums, patterns or enums
    cases = [
        (lambda: sm.list_models(MaxResults=1000),
         ("1 validation error detected: Value 1000 at 'maxResults' failed to satisfy constraint: "
          "Member must have value less than or equal to 100")),
        (lambda: sm.delete_endpoint(EndpointName="bad_name"),
         ("1 validation error detected: Value 'bad_name' at 'endpointName' failed to satisfy constraint: "
          "Member must satisfy regular expression pattern: ")),
        (lambda: sm.list_endpoints(StatusEquals="Sleeping"),
         "Value 'Sleeping' at 'statusEquals' failed to satisfy constraint: Member must satisfy enum value set: [OutOfService"),
        (lambda: sm.describe_endpoint(EndpointName="x" * 64),
         "at 'endpointName' failed to satisfy constraint: Member must have length less than or equal to 63"),
        (lambda: sm.create_model(ModelName="m", PrimaryContainer={"Image": "streamhost", "ModelDataUrl": "ftp://h/m"}),
         ("Value 'ftp://h/m' at 'primaryContainer.modelDataUrl' failed to satisfy constraint: Member must satisfy "
          "regular expression pattern: (https|s3)://([^/]+)/?(.*) (streamhost also accepts a local path or a file:// URL)")),
    ]  # fmt: skip
    for call, message in cases:
        error = client_error(call)
        assert error.response["Error"]["Code"] == "ValidationException"
        assert message in error.response["Error"]["Message"]


def test_members_the_operation_does_not_define_are_ignored_as_aws_does(platform, endpoint) -> None:
    """botocore drops unmodeled members before sending; a raw request carries them, and AWS ignores them."""
    answer = platform.control("ListEndpoints", {"ProductionVariants": True, "NameContains": endpoint})
    assert answer.status_code == 200, answer.text
    assert [e["EndpointName"] for e in answer.json()["Endpoints"]] == [endpoint]
    answer = platform.control("DescribeEndpoint", {"EndpointName": endpoint, "Containers": 5, "ModelName": {}})
    assert (answer.status_code, answer.json()["EndpointName"]) == (200, endpoint)
    answer = platform.control("CreateEndpointConfig", {"EndpointConfigName": "c", "ProductionVariants": True})
    assert (answer.status_code, answer.json()["__type"]) == (400, "SerializationException")  # botocore cannot send it
    assert "TRUE_VALUE can not be converted to a List (at 'productionVariants')" in answer.json()["message"]
    answer = platform.control("DeleteEndpoint", {"EndpointName": "no-such-endpoint", "ProductionVariants": [1]})
    assert (answer.status_code, answer.json()["__type"]) == (400, "ValidationException")
    assert answer.json()["message"].startswith('Could not find endpoint "arn:aws:sagemaker:')


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"[1, 2]", "SerializationException"), (b"null", "SerializationException"), (b'{"MaxResults": NaN}', "SerializationException"),
     (b'{"NameContains": "\\ud800"}', "SerializationException"), (b"{" * 20_000, "SerializationException"),
     (b'{"MaxResults": ' + b"9" * 5000 + b"}", "SerializationException"), (b"\xff\xfe{}", "SerializationException")],
)  # fmt: skip
def test_bodies_boto3_cannot_send(platform, body: bytes, code: str) -> None:
    answer = platform.control("ListModels", None, raw=body)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == AMZ_JSON
    assert answer.json()["__type"] == code and answer.json()["message"]


# ---------------------------------------------------------------------- SigV4: 403 on every route


def signer_at(when: dt.datetime):
    """What botocore's clock would read on a client whose clock is at ``when``."""
    return mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None))


def tamper_body(request, **kwargs) -> None:
    """A proxy that changes one byte of the body after boto3 signed it (same length)."""
    body = request.body if isinstance(request.body, bytes) else (request.body or "").encode()
    request.body = body.replace(b"Hello", b"Jello") if b"Hello" in body else body[:-1] + b" "


def tamper_target(request, **kwargs) -> None:
    if "X-Amz-Target" in request.headers:
        request.headers["X-Amz-Target"] = "SageMaker.DeleteModel"


def calls(platform: PlatformProcess, endpoint: str, secret: str = SECRET_KEY):
    """(service, operation event name, call) for each authenticated operation, with boto3 clients."""
    config = Config(retries={"max_attempts": 1, "mode": "standard"})
    sm = boto3.client("sagemaker", endpoint_url=platform.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=secret, config=config)  # fmt: skip
    rt = boto3.client("sagemaker-runtime", endpoint_url=platform.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=secret, config=config)  # fmt: skip
    body = json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    return [
        (sm, "ListModels", lambda: sm.list_models()),
        (sm, "DescribeEndpoint", lambda: sm.describe_endpoint(EndpointName=endpoint)),
        (rt, "InvokeEndpoint", lambda: rt.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType="application/json")),
        (rt, "InvokeEndpointWithResponseStream", lambda: rt.invoke_endpoint_with_response_stream(
            EndpointName=endpoint, Body=body, ContentType="application/json")),
    ]  # fmt: skip


def assert_403(error: botocore.exceptions.ClientError, code: str, fragment: str) -> None:
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error.response["Error"]["Code"] == code
    assert fragment in error.response["Error"]["Message"]


def test_the_right_key_works_on_every_route(platform, endpoint) -> None:
    for _client, _op, call in calls(platform, endpoint):
        call()


def test_wrong_secret_is_403_on_every_route(platform, endpoint) -> None:
    for _client, _op, call in calls(platform, endpoint, secret="not-the-secret"):
        assert_403(client_error(call), "InvalidSignatureException", "does not match the signature you provided")


@pytest.mark.parametrize("skew", [dt.timedelta(minutes=-20), dt.timedelta(minutes=20)])
def test_date_outside_the_window_is_403_on_every_route(platform, endpoint, skew) -> None:
    for _client, _op, call in calls(platform, endpoint):
        with signer_at(dt.datetime.now(dt.timezone.utc) + skew):
            error = client_error(call)
        assert_403(error, "InvalidSignatureException", "Signature expired")


@pytest.mark.parametrize("tamper", [tamper_body, tamper_target])
def test_request_changed_after_signing_is_403_on_every_route(platform, endpoint, tamper) -> None:
    for client, op, call in calls(platform, endpoint):
        if tamper is tamper_target and client.meta.service_model.service_name != "sagemaker":
            continue  # the runtime has no X-Amz-Target; its body is covered by tamper_body
        event = f"before-send.{client.meta.service_model.service_id.hyphenize()}.{op}"
        client.meta.events.register(event, tamper)
        try:
            assert_403(client_error(call), "InvalidSignatureException", "does not match")
        finally:
            client.meta.events.unregister(event, tamper)


def signed(platform: PlatformProcess, method: str, path: str, body: bytes = b"", headers: dict | None = None,
           secret: str = SECRET_KEY, when: dt.datetime | None = None) -> httpx.Response:  # fmt: skip
    request = AWSRequest(method=method, url=platform.url + path, data=body, headers=headers or {})
    signer = SigV4Auth(Credentials(ACCESS_KEY, secret), "sagemaker", REGION)
    if when is None:
        signer.add_auth(request)
    else:
        with signer_at(when):
            signer.add_auth(request)
    return httpx.request(method, platform.url + path, content=body, headers=dict(request.headers.items()), timeout=30)


def test_raw_requests_get_403_in_each_routes_error_shape(platform, endpoint) -> None:
    """The JSON shape per route: ``__type`` on the control plane, ``x-amzn-ErrorType`` on the runtime."""
    late = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    routes = [
        ("POST", "/", {"X-Amz-Target": "SageMaker.ListModels", "Content-Type": AMZ_JSON}, "control"),
        ("POST", f"/endpoints/{endpoint}/invocations", {"Content-Type": "application/json"}, "runtime"),
        ("POST", f"/endpoints/{endpoint}/invocations-response-stream", {"Content-Type": "application/json"}, "runtime"),
        ("GET", f"/_streamhost/endpoints/{endpoint}", {}, "control"),
    ]
    for method, path, headers, shape in routes:
        body = b"{}" if method == "POST" else b""
        answers = {
            "InvalidSignatureException": [signed(platform, method, path, body, headers, secret="wrong"),
                                          signed(platform, method, path, body, headers, when=late)],
            "MissingAuthenticationTokenException": [httpx.request(method, platform.url + path, content=body, headers=headers)],
        }  # fmt: skip
        for code, responses in answers.items():
            for response in responses:
                assert response.status_code == 403, (path, response.text)
                if shape == "control":
                    assert response.json()["__type"] == code and response.json()["message"], (path, response.text)
                else:
                    assert response.headers["x-amzn-errortype"] == code, (path, response.headers)
                    assert response.json()["message"], (path, response.text)
        assert signed(platform, method, path, body, headers).status_code == 200, path
