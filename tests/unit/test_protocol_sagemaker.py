"""SageMaker errors as boto3 itself parses them: a real client whose HTTP send is answered in-process."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError

from streamhost.protocols import sagemaker as sm


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *args, **kwargs):
        yield self._body

    def read(self, *args, **kwargs):
        return self._body


def _client(service: str, status: int, headers: dict, body: bytes):
    client = boto3.client(
        service,
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="AK",
        aws_secret_access_key="SK",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )

    def answer(request, **kwargs):
        return AWSResponse(request.url, status, headers, _Raw(body))

    client.meta.events.register_first("before-send", answer)
    return client


def _invoke_error(status, headers, body) -> ClientError:
    client = _client("sagemaker-runtime", status, headers, body)
    with pytest.raises(ClientError) as info:
        client.invoke_endpoint(EndpointName="ep", Body=b"{}", ContentType="application/json")
    return info.value


@pytest.mark.parametrize(
    ("code", "status"),
    [("ValidationError", 400), ("ModelNotReadyException", 429), ("InternalFailure", 500), ("ServiceUnavailable", 503)],
)
def test_runtime_errors_parse_in_boto3(code, status):
    got_status, headers, body = sm.runtime_error(code, f"{code} happened")
    assert got_status == status and headers["x-amzn-ErrorType"] == code
    err = _invoke_error(got_status, headers, body)
    assert err.response["Error"] == {"Code": code, "Message": f"{code} happened"}
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert type(err).__name__ == code  # boto3's modeled exception class


def test_model_error_fields_reach_boto3():
    status, headers, body = sm.model_error(
        422,
        b'{"error":"Input validation error: `temperature` must be strictly positive","error_type":"validation"}',
        log_stream_arn="arn:aws:logs:us-east-1:000000000000:log-group:/aws/sagemaker/Endpoints/ep",
    )
    err = _invoke_error(status, headers, body)
    assert status == 424 and err.response["Error"]["Code"] == "ModelError"
    assert err.response["Error"]["Message"].startswith(
        'Received client error (422) from primary with message "{"error"'
    )
    assert err.response["OriginalStatusCode"] == 422
    assert json.loads(err.response["OriginalMessage"])["error_type"] == "validation"
    assert err.response["LogStreamArn"].endswith("/aws/sagemaker/Endpoints/ep")


def test_model_error_server_wording_and_see():
    _, _, body = sm.model_error(500, "boom", see="/var/log/ep.log")
    assert (
        json.loads(body)["Message"]
        == 'Received server error (500) from primary with message "boom". See /var/log/ep.log for more information.'
    )


def test_endpoint_not_found_wording():
    status, headers, body = sm.endpoint_not_found("missing", "000000000000")
    err = _invoke_error(status, headers, body)
    assert err.response["Error"] == {
        "Code": "ValidationError",
        "Message": "Endpoint missing of account 000000000000 not found.",
    }


def test_unknown_runtime_code_is_refused():
    with pytest.raises(ValueError, match="unknown SageMaker runtime error code"):
        sm.runtime_error("ValidationException", "x")


def test_control_plane_errors_parse_in_boto3():
    status, body = sm.could_not_find("endpoint", "ep")
    client = _client("sagemaker", status, {"Content-Type": sm.AMZ_JSON_CONTENT_TYPE}, json.dumps(body).encode())
    with pytest.raises(ClientError) as info:
        client.describe_endpoint(EndpointName="ep")
    assert info.value.response["Error"] == {"Code": "ValidationException", "Message": 'Could not find endpoint "ep".'}

    status, body = sm.control_plane_error("ResourceLimitExceeded", "too many")
    client = _client("sagemaker", status, {"Content-Type": sm.AMZ_JSON_CONTENT_TYPE}, json.dumps(body).encode())
    with pytest.raises(client.exceptions.ResourceLimitExceeded):
        client.create_endpoint(EndpointName="ep", EndpointConfigName="cfg")


def test_already_exists_and_arn():
    resource = sm.arn("us-east-1", "000000000000", "endpoint", "My-Endpoint")
    assert resource == "arn:aws:sagemaker:us-east-1:000000000000:endpoint/my-endpoint"
    assert sm.already_exists("endpoint", resource) == (
        400,
        {"__type": "ValidationException", "message": f'Cannot create already existing endpoint "{resource}".'},
    )


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("ep", True),
        ("my-endpoint-1", True),
        ("a--b", True),
        ("A" * 63, True),
        ("A" * 64, False),
        ("-ep", False),
        ("ep-", False),
        ("ep_1", False),
        ("", False),
        ("ép", False),
        ("ep\n", False),
    ],
)
def test_endpoint_name_rule(name, ok):
    assert sm.valid_endpoint_name(name) is ok


def test_name_error_says_the_rule():
    assert "1-63 letters, digits and hyphens" in sm.name_error("Endpoint", "bad_name")
