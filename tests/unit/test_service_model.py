"""Requests read and checked against botocore's service models, with AWS's error codes and words."""

from __future__ import annotations

import asyncio
import json

import pytest
from botocore.model import ServiceModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamhost.fuzzing import ShapeStrategies
from streamhost.platform.artifacts import ArtifactStore
from streamhost.platform.control_plane import ControlPlane
from streamhost.platform.service_extensions import EXTENSIONS
from streamhost.platform.service_model import (
    RequestError,
    ServiceValidator,
    parse_json_object,
)
from streamhost.platform.store import Store

SM = ServiceValidator.for_service("sagemaker")


def error_of(op: str, body: bytes | dict, validator: ServiceValidator = SM) -> RequestError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestError) as info:
        validator.load(op, raw)
    return info.value


# ---------------------------------------------------------------------- a small model of our own

TOY = ServiceModel({
    "metadata": {"protocol": "json", "jsonVersion": "1.1", "targetPrefix": "Toy", "serviceId": "Toy",
                 "signatureVersion": "v4", "apiVersion": "2020-01-01", "endpointPrefix": "toy"},
    "operations": {"Put": {"name": "Put", "http": {"method": "POST", "requestUri": "/"}, "input": {"shape": "PutInput"}}},
    "shapes": {
        "PutInput": {"type": "structure", "required": ["Name"], "members": {
            "Name": {"shape": "Name"}, "Count": {"shape": "Count"}, "Ratio": {"shape": "Ratio"},
            "When": {"shape": "When"}, "Tags": {"shape": "Tags"}, "Items": {"shape": "Items"},
            "Choice": {"shape": "Choice"}, "Data": {"shape": "Data"}, "Flag": {"shape": "Flag"},
            "Big": {"shape": "Big"}, "Doc": {"shape": "Doc"}}},
        "Name": {"type": "string", "min": 1, "max": 8, "pattern": "^[a-z]+$"},
        "Count": {"type": "integer", "min": 1, "max": 100},
        "Ratio": {"type": "double", "min": 0},
        "When": {"type": "timestamp"},
        "Tags": {"type": "map", "key": {"shape": "Name"}, "value": {"shape": "Value"}, "max": 2},
        "Value": {"type": "string", "max": 3},
        "Items": {"type": "list", "member": {"shape": "Item"}, "min": 1, "max": 2},
        "Item": {"type": "structure", "required": ["Kind"], "members": {"Kind": {"shape": "Kind"}}},
        "Kind": {"type": "string", "enum": ["A", "B"]},
        "Choice": {"type": "structure", "union": True, "members": {"Left": {"shape": "Value"}, "Right": {"shape": "Count"}}},
        "Data": {"type": "blob", "max": 4},
        "Flag": {"type": "boolean"},
        "Big": {"type": "long"},
        "Doc": {"type": "structure", "members": {}, "document": True},
    },
}, service_name="toy")  # fmt: skip
T = ServiceValidator("toy", TOY)


def test_typed_input_drops_unknown_members_and_nulls():
    out = T.load("Put", json.dumps({"Name": "abc", "Count": 3.0, "When": "2024-01-01T00:00:00Z", "Stranger": [1],
                                    "Ratio": 2, "Flag": None, "Doc": {"any": ["thing", 1]}}).encode())  # fmt: skip
    assert out == {"Name": "abc", "Count": 3, "When": 1704067200.0, "Ratio": 2.0, "Doc": {"any": ["thing", 1]}}
    assert isinstance(out["Count"], int) and isinstance(out["Ratio"], float)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"Name": 5}, "NUMBER_VALUE can not be converted to a String (at 'name')"),
        ({"Name": True}, "TRUE_VALUE can not be converted to a String (at 'name')"),
        ({"Name": "a", "Count": "3"}, "STRING_VALUE can not be converted to an Integer (at 'count')"),
        ({"Name": "a", "Count": 1.5}, "1.5 at 'count' is not a whole number"),
        ({"Name": "a", "Count": 2**31}, "2147483648 at 'count' does not fit in an Integer (32-bit)"),
        ({"Name": "a", "Big": 2**63}, "does not fit in a Long (64-bit)"),
        ({"Name": "a", "Tags": []}, "Start of list found where not expected (at 'tags', which must be a Map)"),
        ({"Name": "a", "Items": {"Kind": "A"}}, "Start of structure or map found where not expected (at 'items'"),
        ({"Name": "a", "Items": [None]}, "null is not allowed in the list at 'items'"),
        (
            {"Name": "a", "Items": [{"Kind": 1}]},
            "NUMBER_VALUE can not be converted to a String (at 'items.1.member.kind')",
        ),
        ({"Name": "a", "Choice": {"Left": "x", "Right": 1}}, "must set exactly one member, got 2"),
        ({"Name": "a", "Choice": {"Middle": "x"}}, "Unknown member 'Middle' in the union at 'choice'"),
        ({"Name": "a", "Choice": {}}, "must set exactly one member, got 0"),
        ({"Name": "a", "Data": "not base64!"}, "The value at 'data' is not valid base64"),
        ({"Name": "a", "When": "yesterday"}, "STRING_VALUE can not be converted to a Timestamp"),
        ({"Name": "a", "Flag": "true"}, "STRING_VALUE can not be converted to a Boolean (at 'flag')"),
        ({"Name": "a\ud800"}, "Invalid UTF-8 in a string at 'name' (lone UTF-16 surrogate)"),
        ({"Name": "a", "Doc": {"k": ["\udfff"]}}, "lone UTF-16 surrogate"),
    ],
)
def test_wrong_json_types_are_serialization_exceptions(body, message):
    error = error_of("Put", body, T)
    assert (error.status, error.code) == (400, "SerializationException")
    assert message in error.message


@pytest.mark.parametrize(
    "raw",
    [
        b"[1]",
        b"7",
        b"null",
        b'"x"',
        b'{"Name": ',
        b"\xff\xfe",
        b"{" * 100_000,
        b'{"Name": NaN}',
        b'{"Count": ' + b"9" * 5000 + b"}",
    ],
)
def test_bodies_that_are_not_json_objects(raw):
    with pytest.raises(RequestError) as info:
        parse_json_object(raw)
    assert info.value.code == "SerializationException"


def test_constraints_are_one_validation_exception_in_aws_words():
    error = error_of("Put", {"Count": 0, "Tags": {"UPPER": "long", "ok": "x"}, "Items": [{"Kind": "C"}, {}],
                             "Data": "AAAAAAAA", "Ratio": -1}, T)  # fmt: skip
    assert error.code == "ValidationException"
    assert error.message == (
        "8 validation errors detected: "
        "Value null at 'name' failed to satisfy constraint: Member must not be null; "
        "Value 0 at 'count' failed to satisfy constraint: Member must have value greater than or equal to 1; "
        "Value 'UPPER' at 'tags' failed to satisfy constraint: Map keys must satisfy constraint: "
        "[Member must satisfy regular expression pattern: ^[a-z]+$]; "
        "Value 'long' at 'tags.UPPER' failed to satisfy constraint: Map value must satisfy constraint: "
        "[Member must have length less than or equal to 3]; "
        "Value 'C' at 'items.1.member.kind' failed to satisfy constraint: Member must satisfy enum value set: [A, B]; "
        "Value null at 'items.2.member.kind' failed to satisfy constraint: Member must not be null; "
        "Value 'AAAAAAAA' at 'data' failed to satisfy constraint: Member must have length less than or equal to 4; "
        "Value -1.0 at 'ratio' failed to satisfy constraint: Member must have value greater than or equal to 0"
    )


def test_non_finite_numbers_fail_any_bound():
    assert T.load("Put", b'{"Name": "a", "Ratio": "Infinity"}')["Ratio"] == float("inf")
    error = error_of("Put", {"Name": "a", "Ratio": "NaN"}, T)
    assert (
        "Value nan at 'ratio' failed to satisfy constraint: Member must have value greater than or equal to 0"
        in error.message
    )


def test_unknown_operation():
    error = error_of("Get", {}, T)
    assert error.code == "UnknownOperationException"


# ---------------------------------------------------------------------- SageMaker, as issue 12 found it


@pytest.mark.parametrize(
    ("op", "body", "code", "message"),
    [
        ("ListEndpoints", {"ProductionVariants": True}, None, None),  # not a ListEndpoints member: dropped
        (
            "DescribeModel",
            {"ModelName": ["m"]},
            "SerializationException",
            "Start of list found where not expected (at 'modelName'",
        ),
        (
            "ListModels",
            {"MaxResults": "10"},
            "SerializationException",
            "STRING_VALUE can not be converted to an Integer",
        ),
        ("DeleteEndpoint", {"EndpointName": {"x": 1}}, "SerializationException", "Start of structure or map"),
        ("UpdateEndpoint", {"EndpointName": "x", "EndpointConfigName": 7}, "SerializationException", "NUMBER_VALUE"),
        (
            "DeleteEndpoint",
            {"EndpointName": "x" * 64},
            "ValidationException",
            "failed to satisfy constraint: Member must have length less than or equal to 63",
        ),
        (
            "DeleteEndpoint",
            {"EndpointName": "bad_name"},
            "ValidationException",
            (
                "1 validation error detected: Value 'bad_name' at 'endpointName' failed to satisfy constraint: "
                "Member must satisfy regular expression pattern: "
            ),
        ),
        (
            "ListEndpoints",
            {"StatusEquals": "Sleeping"},
            "ValidationException",
            (
                "Value 'Sleeping' at 'statusEquals' failed to satisfy constraint: Member must satisfy enum value set: "
                "[OutOfService, Creating, Updating, SystemUpdating, RollingBack, InService, Deleting, Failed"
            ),
        ),
        (
            "ListModels",
            {"MaxResults": 101},
            "ValidationException",
            "Value 101 at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 100",
        ),
        (
            "CreateEndpointConfig",
            {"EndpointConfigName": "c", "ProductionVariants": [{"VariantName": "v"}] * 11},
            "ValidationException",
            "at 'productionVariants' failed to satisfy constraint: Member must have length less than or equal to 10",
        ),
    ],
)
def test_sagemaker_requests(op, body, code, message):
    if code is None:
        assert SM.load(op, json.dumps(body).encode()) == {}
        return
    error = error_of(op, body)
    assert error.code == code
    assert message in error.message


# ---------------------------------------------------------------------- our extensions, one by one


def test_every_extension_names_a_shape_of_its_model_and_says_why():
    for (service, shape), ext in EXTENSIONS.items():
        assert shape in ServiceValidator.for_service(service).model.shape_names
        assert len(ext.why) > 20


@pytest.mark.parametrize("url", ["s3://bucket/model.tar.gz", "https://host/m.tar.gz", "/srv/models/tiny",
                                 "models/tiny", "file:///srv/models/model.tar.gz"])  # fmt: skip
def test_model_data_may_be_local(url):
    container = {"Image": "streamhost", "ModelDataUrl": url, "ModelDataSource": {"S3DataSource": {
        "S3Uri": url, "S3DataType": "S3Prefix", "CompressionType": "None"}}}  # fmt: skip
    assert SM.load("CreateModel", json.dumps({"ModelName": "m", "PrimaryContainer": container}).encode())


def test_other_schemes_stay_refused_and_the_message_says_what_we_accept():
    error = error_of("CreateModel", {"ModelName": "m", "PrimaryContainer": {"ModelDataUrl": "ftp://host/m"}})
    assert "Value 'ftp://host/m' at 'primaryContainer.modelDataUrl' failed to satisfy constraint: Member must " \
           "satisfy regular expression pattern: (https|s3)://([^/]+)/?(.*) (streamhost also accepts a local path " \
           "or a file:// URL)" in error.message  # fmt: skip


def test_training_paths_may_be_local():
    body = {"TrainingJobName": "t", "RoleArn": "arn:aws:iam::123456789012:role/r",
            "OutputDataConfig": {"S3OutputPath": "/srv/out"},
            "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": "file:///srv/data"}}}],
            "CheckpointConfig": {"S3Uri": "ckpt"}}  # fmt: skip
    assert SM.load("CreateTrainingJob", json.dumps(body).encode())["OutputDataConfig"] == {"S3OutputPath": "/srv/out"}


@pytest.mark.parametrize(("seconds", "accepted"), [(1, True), (59, True), (3600, True), (0, False), (3601, False)])
def test_short_timeouts(seconds, accepted):
    variant = {
        "VariantName": "v",
        "ModelName": "m",
        "InitialInstanceCount": 1,
        "ContainerStartupHealthCheckTimeoutInSeconds": seconds,
        "ModelDataDownloadTimeoutInSeconds": seconds,
    }
    body = json.dumps({"EndpointConfigName": "c", "ProductionVariants": [variant]}).encode()
    if accepted:
        assert SM.load("CreateEndpointConfig", body)
    else:
        assert error_of("CreateEndpointConfig", body).message.startswith("2 validation errors detected")


def test_our_image_names_fit_the_model():
    for image in (
        "streamhost",
        "streamhost:tgi",
        "http://127.0.0.1:8081",
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.29.0-lmi11.0.0-cu124",
    ):
        assert SM.load("CreateModel", json.dumps({"ModelName": "m", "PrimaryContainer": {"Image": image}}).encode())


# ---------------------------------------------------------------------- the control plane uses it for every operation


class _Lifecycle:
    def __getattr__(self, name):
        return lambda *args: {}


def test_registered_operations_are_checked_by_name(tmp_path):
    plane = ControlPlane(Store(tmp_path / "s.db"), _Lifecycle(), ArtifactStore(tmp_path / "a"))
    seen = []
    plane.register("CreateTrainingJob", lambda p: seen.append(p) or {"TrainingJobArn": "arn"})
    plane.register("OurOwnOperation", lambda p: seen.append(p) or {})
    status, out = asyncio.run(plane.handle("SageMaker.CreateTrainingJob", b'{"TrainingJobName": "t"}'))
    assert (status, out["__type"]) == (400, "ValidationException")
    assert "Value null at 'roleArn'" in out["message"] and "Value null at 'outputDataConfig'" in out["message"]
    assert seen == []
    body = {
        "TrainingJobName": "t",
        "RoleArn": "arn:aws:iam::123456789012:role/r",
        "Unmodeled": 1,
        "OutputDataConfig": {"S3OutputPath": "s3://b/p"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60.0},
    }
    assert asyncio.run(plane.handle("SageMaker.CreateTrainingJob", json.dumps(body).encode()))[0] == 200
    assert seen[-1] == {
        "TrainingJobName": "t",
        "RoleArn": "arn:aws:iam::123456789012:role/r",
        "OutputDataConfig": {"S3OutputPath": "s3://b/p"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
    }
    assert asyncio.run(plane.handle("SageMaker.OurOwnOperation", b'{"Free": [1]}')) == (200, {})
    assert seen[-1] == {"Free": [1]}


# ---------------------------------------------------------------------- every SageMaker operation, generated

_STRATEGIES = ShapeStrategies(SM.model, max_depth=3)
_OPERATIONS = sorted(SM.model.operation_names)


@settings(max_examples=1000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(data=st.data())
def test_every_operation_reads_any_body_without_failing(data):
    op = data.draw(st.sampled_from(_OPERATIONS), label="operation")
    body = data.draw(_STRATEGIES.body(op), label="body")
    raw = json.dumps(body).encode()
    try:
        typed = SM.load(op, raw)
    except RequestError as exc:
        assert exc.code in ("SerializationException", "ValidationException") and exc.message
        return
    assert SM.load(op, json.dumps(typed).encode()) == typed  # reading what was read changes nothing
