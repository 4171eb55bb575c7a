"""Control-plane operations in process: shapes, AWS error codes and messages, pagination."""

from __future__ import annotations

import asyncio
import json

import pytest

from streamhost.platform.artifacts import ArtifactStore
from streamhost.platform.control_plane import ControlPlane
from streamhost.platform.store import Store


class FakeLifecycle:
    def __init__(self):
        self.calls = []

    def endpoint_created(self, name):
        self.calls.append(("created", name))

    def endpoint_updated(self, name):
        self.calls.append(("updated", name))

    def endpoint_deleted(self, name):
        self.calls.append(("deleted", name))

    def runtime_view(self, name):
        return {"AllTraffic": {"ready": 1, "status": ""}}


@pytest.fixture
def plane(tmp_path):
    store = Store(tmp_path / "s.db")
    lifecycle = FakeLifecycle()
    cp = ControlPlane(store, lifecycle, ArtifactStore(tmp_path / "a"), region="us-east-1", account="111122223333",
                      eula_lookup=lambda c: (c.get("Environment") or {}).get("HF_MODEL_ID") == "gated")  # fmt: skip
    cp.lifecycle_calls = lifecycle.calls
    return cp


def call(cp, op, params=None, raw=None):
    body = raw if raw is not None else json.dumps(params or {}).encode()
    return asyncio.run(cp.handle(f"SageMaker.{op}", body))


def ok(cp, op, params=None):
    status, out = call(cp, op, params)
    assert status == 200, out
    return out


def make_all(cp, name="m", count=1):
    ok(cp, "CreateModel", {"ModelName": name, "PrimaryContainer": {"Image": "streamhost"}})
    ok(cp, "CreateEndpointConfig", {"EndpointConfigName": name, "ProductionVariants": [
        {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": count, "InstanceType": "ml.m5.xlarge"}]})  # fmt: skip
    return ok(cp, "CreateEndpoint", {"EndpointName": name, "EndpointConfigName": name})


def test_create_and_describe_shapes(plane):
    out = make_all(plane)
    assert out == {"EndpointArn": "arn:aws:sagemaker:us-east-1:111122223333:endpoint/m"}
    assert plane.lifecycle_calls == [("created", "m")]
    model = ok(plane, "DescribeModel", {"ModelName": "m"})
    assert model["ModelArn"] == "arn:aws:sagemaker:us-east-1:111122223333:model/m"
    assert model["PrimaryContainer"] == {"Image": "streamhost"}
    assert isinstance(model["CreationTime"], float)
    config = ok(plane, "DescribeEndpointConfig", {"EndpointConfigName": "m"})
    assert config["EndpointConfigArn"].endswith(":endpoint-config/m")
    assert config["ProductionVariants"][0]["VariantName"] == "AllTraffic"
    endpoint = ok(plane, "DescribeEndpoint", {"EndpointName": "m"})
    assert endpoint["EndpointStatus"] == "Creating"
    assert endpoint["EndpointConfigName"] == "m"
    variant = endpoint["ProductionVariants"][0]
    assert (variant["CurrentInstanceCount"], variant["DesiredInstanceCount"], variant["CurrentWeight"]) == (1, 1, 1.0)
    assert variant["DeployedImages"][0]["SpecifiedImage"] == "streamhost"


def test_arn_lowercases_name(plane):
    out = ok(plane, "CreateModel", {"ModelName": "MyModel", "PrimaryContainer": {"Image": "x"}})
    assert out["ModelArn"].endswith(":model/mymodel")


@pytest.mark.parametrize(
    "op, params, code, fragment",
    [
        (
            "DescribeModel",
            {"ModelName": "nope"},
            "ValidationException",
            'Could not find model "arn:aws:sagemaker:us-east-1:111122223333:model/nope".',
        ),
        ("DescribeEndpoint", {"EndpointName": "nope"}, "ValidationException", 'Could not find endpoint "arn:'),
        (
            "DeleteEndpointConfig",
            {"EndpointConfigName": "nope"},
            "ValidationException",
            "Could not find endpoint configuration",
        ),
        (
            "CreateModel",
            {},
            "ValidationException",
            "1 validation error detected: Value null at 'modelName' failed to satisfy constraint: Member must not be null",
        ),
        (
            "CreateModel",
            {"ModelName": "bad_name!", "PrimaryContainer": {}},
            "ValidationException",
            "Value 'bad_name!' at 'modelName' failed to satisfy constraint: Member must satisfy regular expression pattern",
        ),
        ("CreateModel", {"ModelName": "m2"}, "ValidationException", "PrimaryContainer or Containers"),
        (
            "CreateEndpoint",
            {"EndpointName": "e", "EndpointConfigName": "nope"},
            "ValidationException",
            "Could not find endpoint configuration",
        ),
        (
            "CreateEndpointConfig",
            {
                "EndpointConfigName": "c",
                "ProductionVariants": [{"VariantName": "v", "ModelName": "ghost", "InitialInstanceCount": 1}],
            },
            "ValidationException",
            "Could not find model",
        ),
        (
            "ListModels",
            {"MaxResults": "ten"},
            "SerializationException",
            "STRING_VALUE can not be converted to an Integer",
        ),
        (
            "CreateModel",
            {"ModelName": "m3", "PrimaryContainer": {"Image": "x", "ModelDataUrl": "/no/such/model.tar.gz"}},
            "ValidationException",
            "Could not access model data",
        ),
    ],
)
def test_errors_have_aws_codes(plane, op, params, code, fragment):
    status, out = call(plane, op, params)
    assert status == 400
    assert out["__type"] == code
    assert fragment in out["message"]


def test_unknown_operation(plane):
    status, out = asyncio.run(plane.handle("SageMaker.CreateCluster", b"{}"))
    assert (status, out["__type"]) == (400, "UnknownOperationException")
    assert "CreateCluster" in out["message"]
    status, out = asyncio.run(plane.handle(None, b"{}"))
    assert out["__type"] == "UnknownOperationException"


def test_malformed_json_is_a_serialization_error(plane):
    status, out = call(plane, "CreateModel", raw=b'{"ModelName": ')
    assert (status, out["__type"]) == (400, "SerializationException")
    status, out = call(plane, "CreateModel", raw=b"[1, 2]")
    assert out["__type"] == "SerializationException"


def test_duplicates_are_refused(plane):
    make_all(plane)
    for op, params, kind in [
        ("CreateModel", {"ModelName": "M", "PrimaryContainer": {"Image": "x"}}, "model"),
        ("CreateEndpointConfig", {"EndpointConfigName": "m", "ProductionVariants": [
            {"VariantName": "v", "ModelName": "m", "InitialInstanceCount": 1}]}, "endpoint configuration"),
        ("CreateEndpoint", {"EndpointName": "m", "EndpointConfigName": "m"}, "endpoint"),
    ]:  # fmt: skip
        status, out = call(plane, op, params)
        assert (status, out["__type"]) == (400, "ValidationException")
        assert out["message"].startswith(f'Cannot create already existing {kind} "arn:aws:sagemaker:')


def test_variant_rules(plane):
    ok(plane, "CreateModel", {"ModelName": "m", "PrimaryContainer": {"Image": "x"}})
    variant = {"VariantName": "v", "ModelName": "m", "InitialInstanceCount": 1}
    status, out = call(
        plane, "CreateEndpointConfig", {"EndpointConfigName": "c", "ProductionVariants": [variant, variant]}
    )
    assert "more than once" in out["message"]
    status, out = call(plane, "CreateEndpointConfig", {"EndpointConfigName": "c", "ProductionVariants": [
        {**variant, "RoutingConfig": {"RoutingStrategy": "ROUND_ROBIN"}}]})  # fmt: skip
    assert "at 'productionVariants.1.member.routingConfig.routingStrategy'" in out["message"]
    assert "Member must satisfy enum value set: [LEAST_OUTSTANDING_REQUESTS, RANDOM" in out["message"]
    status, out = call(plane, "CreateEndpointConfig", {"EndpointConfigName": "c", "ProductionVariants": [
        {**variant, "RoutingConfig": {"RoutingStrategy": "KV_AWARE"}}]})  # fmt: skip
    assert (status, out["__type"]) == (400, "ValidationException")
    assert "KV_AWARE" in out["message"] and "not one of" in out["message"]
    status, out = call(plane, "CreateEndpointConfig", {"EndpointConfigName": "c", "ProductionVariants": [
        {**variant, "InitialInstanceCount": 50}]})  # fmt: skip
    assert (status, out["__type"]) == (400, "ResourceLimitExceeded")
    # A short startup timeout is accepted (AWS's floor is 60 s; locally a broken container should fail fast).
    ok(plane, "CreateEndpointConfig", {"EndpointConfigName": "c", "ProductionVariants": [
        {**variant, "ContainerStartupHealthCheckTimeoutInSeconds": 5}]})  # fmt: skip


def test_config_and_model_in_use_can_be_deleted(plane):
    make_all(plane)
    ok(plane, "DeleteEndpointConfig", {"EndpointConfigName": "m"})
    ok(plane, "DeleteModel", {"ModelName": "m"})
    endpoint = ok(plane, "DescribeEndpoint", {"EndpointName": "m"})
    assert endpoint["EndpointConfigName"] == "m"  # still names what it runs


def test_update_needs_in_service(plane):
    make_all(plane)
    status, out = call(plane, "UpdateEndpoint", {"EndpointName": "m", "EndpointConfigName": "m"})
    assert status == 400 and "Cannot update in-progress endpoint" in out["message"]
    plane.store.transition("m", None, "InService")
    ok(plane, "UpdateEndpoint", {"EndpointName": "m", "EndpointConfigName": "m"})
    endpoint = ok(plane, "DescribeEndpoint", {"EndpointName": "m"})
    assert endpoint["EndpointStatus"] == "Updating"
    assert endpoint["PendingDeploymentSummary"]["EndpointConfigName"] == "m"
    assert ("updated", "m") in plane.lifecycle_calls


def test_delete_endpoint_marks_deleting(plane):
    make_all(plane)
    ok(plane, "DeleteEndpoint", {"EndpointName": "m"})
    assert plane.store.get_endpoint("m").status == "Deleting"
    assert ("deleted", "m") in plane.lifecycle_calls


def test_pagination_walks_every_item_once(plane):
    names = [f"model-{i:02d}" for i in range(23)]
    for name in names:
        ok(plane, "CreateModel", {"ModelName": name, "PrimaryContainer": {"Image": "x"}})
    for order in ("Ascending", "Descending"):
        seen, token = [], None
        while True:
            params = {"MaxResults": 5, "SortBy": "Name", "SortOrder": order}
            if token:
                params["NextToken"] = token
            out = ok(plane, "ListModels", params)
            seen += [m["ModelName"] for m in out["Models"]]
            token = out.get("NextToken")
            if not token:
                break
        assert seen == sorted(names, reverse=order == "Descending")
    out = ok(
        plane, "ListModels", {"NameContains": "MODEL-1", "SortBy": "Name", "SortOrder": "Ascending", "MaxResults": 100}
    )
    assert [m["ModelName"] for m in out["Models"]] == [f"model-1{i}" for i in range(10)]
    status, out = call(plane, "ListModels", {"NextToken": "garbage"})
    assert (status, out["__type"]) == (400, "ValidationException")


def test_list_endpoints_filters_by_status(plane):
    make_all(plane, "a")
    make_all(plane, "b")
    plane.store.transition("b", None, "InService")
    out = ok(plane, "ListEndpoints", {"StatusEquals": "InService"})
    assert [e["EndpointName"] for e in out["Endpoints"]] == ["b"]
    assert set(out["Endpoints"][0]) == {
        "EndpointName",
        "EndpointArn",
        "CreationTime",
        "LastModifiedTime",
        "EndpointStatus",
    }


def test_eula_flag_comes_from_the_lookup(plane):
    ok(
        plane,
        "CreateModel",
        {"ModelName": "g", "PrimaryContainer": {"Image": "x", "Environment": {"HF_MODEL_ID": "gated"}}},
    )
    ok(
        plane,
        "CreateModel",
        {"ModelName": "f", "PrimaryContainer": {"Image": "x", "Environment": {"HF_MODEL_ID": "free"}}},
    )
    assert plane.store.get_model("g").eula_required
    assert not plane.store.get_model("f").eula_required


def test_eula_flag_from_the_catalog_or_the_models_own_environment(tmp_path):
    from streamhost.platform.app import EULA_ENV, catalog_eula_lookup

    lookup = catalog_eula_lookup(tmp_path)
    assert lookup({"Environment": {"HF_MODEL_ID": "meta-llama/Llama-2-7b-chat-hf"}})
    assert not lookup({"Environment": {"HF_MODEL_ID": "smollm2"}})
    assert lookup({"Environment": {"HF_MODEL_ID": "/models/mine", EULA_ENV: "true"}})
    assert not lookup({"Environment": {"HF_MODEL_ID": "/models/mine", EULA_ENV: "false"}})
