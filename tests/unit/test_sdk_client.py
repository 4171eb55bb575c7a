"""The SDK without a platform: payloads, names, sessions, and the exact SageMaker calls it makes.

botocore's Stubber checks each control-plane call's operation and parameters in order, so these
tests pin what the SDK sends (and that it sends nothing when it must refuse).
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from hypothesis import given
from hypothesis import strategies as st

from streamhost.catalog.specs import EulaRequiredError, eula_accepted
from streamhost.client import CatalogModel, DeploymentError, Model, Predictor, Session, list_models
from streamhost.client.sdk import (
    EULA_ENV,
    EulaNotAcceptedError,
    build_payload,
    custom_attributes,
    generated_text,
    name_from_base,
    platform_url,
    wait_for_endpoint,
)
from streamhost.protocols.sagemaker import valid_name

ARN = "arn:aws:sagemaker:us-east-1:000000000000:"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def _no_aws(monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "STREAMHOST_URL", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("STREAMHOST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr("streamhost.client.sdk.time.sleep", lambda s: None)


@pytest.fixture
def session():
    s = Session("http://127.0.0.1:1")
    with Stubber(s.sagemaker) as stub:
        s.stub = stub
        yield s
        stub.assert_no_pending_responses()


def _describe(name: str, status: str, reason: str | None = None) -> dict:
    out = {
        "EndpointName": name,
        "EndpointArn": f"{ARN}endpoint/{name}",
        "EndpointConfigName": name,
        "EndpointStatus": status,
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
    }
    if reason:
        out["FailureReason"] = reason
    return out


# --------------------------------------------------------------------------- pure helpers


def test_a_prompt_string_becomes_a_generate_body_and_stream_adds_the_flag():
    assert build_payload("Hi") == {"inputs": "Hi"}
    assert build_payload("Hi", stream=True) == {"inputs": "Hi", "stream": True}
    body = {"messages": [{"role": "user", "content": "Hi"}]}
    assert build_payload(body, stream=True) == {**body, "stream": True}
    assert "stream" not in body  # the caller's dict is not modified
    with pytest.raises(TypeError, match="prompt string or a JSON object"):
        build_payload(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "response, text",
    [
        ([{"generated_text": "tgi"}], "tgi"),
        ({"generated_text": "lmi"}, "lmi"),
        ({"choices": [{"message": {"role": "assistant", "content": "chat"}}]}, "chat"),
        ({"choices": [{"text": "completion"}]}, "completion"),
        ({"other": 1}, None),
        ([], None),
    ],
)
def test_generated_text_reads_every_answer_shape(response, text):
    assert generated_text(response) == text


@given(st.text(max_size=120))
def test_generated_names_are_valid_sagemaker_names(base):
    name = name_from_base(base, now=NOW)
    assert valid_name(name), name
    assert name.endswith("-2024-05-01-12-00-00-000")


def test_generated_names_keep_a_readable_base():
    assert name_from_base("HuggingFaceTB/SmolLM2 135M", now=NOW) == "huggingfacetb-smollm2-135m-2024-05-01-12-00-00-000"


def test_custom_attributes_accept_the_eula_and_keep_the_callers_pairs():
    assert custom_attributes(False) is None
    assert custom_attributes(True) == "accept_eula=true"
    assert custom_attributes(True, "trace=1") == "accept_eula=true;trace=1"
    assert eula_accepted(custom_attributes(True, "trace=1"))
    assert not eula_accepted(custom_attributes(False, "trace=1"))


def test_session_points_both_clients_at_the_platform(monkeypatch):
    assert platform_url() == "http://127.0.0.1:8080"
    monkeypatch.setenv("STREAMHOST_URL", "http://example.test:9000/")
    s = Session()
    assert s.endpoint_url == "http://example.test:9000"
    assert s.sagemaker.meta.endpoint_url == "http://example.test:9000"
    assert s.runtime.meta.endpoint_url == "http://example.test:9000"
    assert s.sagemaker.meta.region_name == "us-east-1"
    # no AWS credentials configured: placeholder keys, so signing works without any setup
    assert s.sagemaker._request_signer._credentials.access_key == "streamhost"


def test_session_uses_the_users_aws_credentials_when_present(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUSER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert Session().sagemaker._request_signer._credentials.access_key == "AKIDUSER"


def test_model_container_names_the_model_and_flags_the_eula(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    local = Model(str(folder), env={"MAX_TOTAL_TOKENS": 512}, session=Session("http://x"))
    assert local.container()["Environment"] == {"HF_MODEL_ID": str(folder.resolve()), "MAX_TOTAL_TOKENS": "512"}
    hub = Model("org/model", eula_required=True, session=Session("http://x"), image="img")
    assert hub.container() == {"Image": "img", "Environment": {"HF_MODEL_ID": "org/model", EULA_ENV: "true"}}
    with pytest.raises(ValueError, match="empty"):
        Model("  ")


def test_list_models_filters_the_catalog():
    ids = [m.id for m in list_models("task == llm and eula_required == false")]
    assert "smollm2" in ids
    assert not any(m.eula_required for m in list_models("task == llm and eula_required == false"))
    assert all(m.eula_required for m in list_models("eula_required == true"))


# --------------------------------------------------------------------------- deploy


def test_deploy_creates_model_config_endpoint_and_waits_for_in_service(session):
    model = Model("org/model", name="m1", session=session, env={"MAX_TOTAL_TOKENS": "512"})
    stub = session.stub
    stub.add_response(
        "create_model",
        {"ModelArn": f"{ARN}model/m1"},
        {
            "ModelName": "m1",
            "PrimaryContainer": {
                "Image": "streamhost/tgi",
                "Environment": {"HF_MODEL_ID": "org/model", "MAX_TOTAL_TOKENS": "512"},
            },
        },
    )
    stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{ARN}endpoint-config/ep"},
        {
            "EndpointConfigName": "ep",
            "ProductionVariants": [
                {"VariantName": "AllTraffic", "ModelName": "m1", "InitialInstanceCount": 2, "InitialVariantWeight": 1.0}
            ],
        },
    )
    stub.add_response(
        "create_endpoint", {"EndpointArn": f"{ARN}endpoint/ep"}, {"EndpointName": "ep", "EndpointConfigName": "ep"}
    )
    stub.add_response("describe_endpoint", _describe("ep", "Creating"), {"EndpointName": "ep"})
    stub.add_response("describe_endpoint", _describe("ep", "InService"), {"EndpointName": "ep"})
    seen = []
    predictor = model.deploy(instance_count=2, endpoint_name="ep", on_status=lambda status, _d: seen.append(status))
    assert isinstance(predictor, Predictor) and predictor.endpoint_name == "ep"
    assert seen == ["Creating", "InService"]


def test_a_failed_endpoint_raises_with_its_failure_reason(session):
    session.stub.add_response("describe_endpoint", _describe("ep", "Failed", "instance 0 exited: out of memory"))
    with pytest.raises(DeploymentError, match="Failed: instance 0 exited: out of memory") as info:
        wait_for_endpoint(session, "ep")
    assert info.value.reason == "instance 0 exited: out of memory"


def test_waiting_gives_up_after_the_timeout(session):
    session.stub.add_response("describe_endpoint", _describe("ep", "Creating"))
    with pytest.raises(DeploymentError, match="still Creating after 0 s"):
        wait_for_endpoint(session, "ep", timeout=0)


def test_a_rejected_endpoint_removes_the_config_and_model_it_created(session):
    stub = session.stub
    stub.add_response("create_model", {"ModelArn": f"{ARN}model/m1"})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}endpoint-config/ep"})
    stub.add_client_error(
        "create_endpoint", "ValidationException", "Cannot create already existing endpoint", http_status_code=400
    )
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "ep"})
    stub.add_response("delete_model", {}, {"ModelName": "m1"})
    with pytest.raises(Exception, match="already existing endpoint"):
        Model("org/model", name="m1", session=session).deploy(endpoint_name="ep")


def test_eula_models_are_refused_before_any_call(session):
    with pytest.raises(EulaNotAcceptedError, match="accept_eula=True"):
        Model("org/gated", eula_required=True, session=session).deploy()
    with pytest.raises(EulaRequiredError, match="llama2 licence"):
        CatalogModel("meta-textgeneration-llama-2-7b-f", session=session).deploy()


def test_catalog_model_deploys_its_entry_with_the_eula_flag(session):
    stub = session.stub
    stub.add_response(
        "create_model",
        {"ModelArn": f"{ARN}model/x"},
        {
            "ModelName": ANY,
            "PrimaryContainer": {
                "Image": "streamhost/tgi",
                "Environment": {
                    "HF_MODEL_ID": "meta-llama/Llama-2-7b-chat-hf",
                    "SM_NUM_GPUS": "1",
                    "MAX_INPUT_TOKENS": "1024",  # the caller's override wins over the catalog
                    "MAX_TOTAL_TOKENS": "4096",
                    "MAX_BATCH_PREFILL_TOKENS": "4096",
                    "MAX_CONCURRENT_REQUESTS": "128",
                    EULA_ENV: "true",
                },
            },
        },
    )
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}endpoint-config/x"})
    stub.add_response("create_endpoint", {"EndpointArn": f"{ARN}endpoint/x"})
    model = CatalogModel("meta-textgeneration-llama-2-7b-f", session=session, env={"MAX_INPUT_TOKENS": "1024"})
    predictor = model.deploy(accept_eula=True, wait=False)
    assert predictor.accept_eula is True
    assert predictor.endpoint_name.startswith("meta-textgeneration-llama-2-7b-f-")
    assert model.prompt_template == "llama2"


def test_the_bundled_default_model_deploys_by_its_alias():
    model = CatalogModel("smollm2", session=Session("http://x")).model()
    assert model.container()["Environment"]["HF_MODEL_ID"] == "smollm2"
    assert model.container()["Environment"]["MAX_TOTAL_TOKENS"] == "4096"


# --------------------------------------------------------------------------- predictor


def test_delete_endpoint_deletes_config_then_endpoint_and_remembers_the_models(session):
    stub = session.stub
    stub.add_response("describe_endpoint", _describe("ep", "InService"))
    stub.add_response(
        "describe_endpoint_config",
        {
            "EndpointConfigName": "cfg",
            "EndpointConfigArn": f"{ARN}endpoint-config/cfg",
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "m1"}],
            "CreationTime": NOW,
        },
        {"EndpointConfigName": "ep"},
    )
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "ep"})
    stub.add_response("delete_endpoint", {}, {"EndpointName": "ep"})
    stub.add_response("delete_model", {}, {"ModelName": "m1"})
    predictor = Predictor("ep", session=session)
    predictor.delete_endpoint()
    predictor.delete_model()  # works after the endpoint is gone


def test_delete_endpoint_tolerates_a_config_deleted_earlier(session):
    stub = session.stub
    stub.add_response("describe_endpoint", _describe("ep", "InService"))
    stub.add_client_error(
        "describe_endpoint_config", "ValidationException", 'Could not find endpoint configuration "ep".'
    )
    stub.add_client_error(
        "delete_endpoint_config", "ValidationException", 'Could not find endpoint configuration "ep".'
    )
    stub.add_response("delete_endpoint", {}, {"EndpointName": "ep"})
    Predictor("ep", session=session).delete_endpoint()


class FakeRuntime:
    """Records runtime calls; answers with canned bodies."""

    def __init__(self, body=b"", events=()):
        self.calls = []
        self.body = body
        self.events = list(events)
        self.closed = False

    def invoke_endpoint(self, **kwargs):
        self.calls.append(("invoke_endpoint", kwargs))
        return {"Body": StreamingBody(io.BytesIO(self.body), len(self.body)), "ContentType": "application/json"}

    def invoke_endpoint_with_response_stream(self, **kwargs):
        self.calls.append(("invoke_endpoint_with_response_stream", kwargs))
        fake = self

        class Body:
            def __iter__(self):
                return iter(fake.events)

            def close(self):
                fake.closed = True

        return {"Body": Body()}


def _runtime_session(runtime) -> Session:
    s = Session("http://x")
    s._runtime = runtime
    return s


def test_predict_returns_text_for_a_prompt_and_json_for_a_body():
    runtime = FakeRuntime(body=b'[{"generated_text":" Paris."}]')
    predictor = Predictor("ep", session=_runtime_session(runtime), accept_eula=True)
    assert predictor.predict("The capital of France is") == " Paris."
    assert predictor.predict({"inputs": "x", "parameters": {"max_new_tokens": 3}}) == [{"generated_text": " Paris."}]
    _op, first = runtime.calls[0]
    assert json.loads(first["Body"]) == {"inputs": "The capital of France is"}
    assert first["ContentType"] == "application/json" and first["Accept"] == "application/json"
    assert first["CustomAttributes"] == "accept_eula=true"
    assert json.loads(runtime.calls[1][1]["Body"])["parameters"] == {"max_new_tokens": 3}


def _sse(*texts: str) -> list[dict]:
    events = []
    for i, text in enumerate(texts):
        line = json.dumps({"index": i, "token": {"id": i, "text": text, "logprob": 0, "special": False}})
        events.append({"PayloadPart": {"Bytes": f"data:{line}\n\n".encode()}})
    return events


def test_stream_asks_for_a_stream_and_yields_the_text_pieces():
    runtime = FakeRuntime(events=_sse("Hel", "lo", " wörld"))
    predictor = Predictor("ep", session=_runtime_session(runtime))
    assert list(predictor.stream({"inputs": "x", "parameters": {"max_new_tokens": 3}})) == ["Hel", "lo", " wörld"]
    op, call = runtime.calls[0]
    assert op == "invoke_endpoint_with_response_stream"
    assert json.loads(call["Body"]) == {"inputs": "x", "parameters": {"max_new_tokens": 3}, "stream": True}
    assert "CustomAttributes" not in call
    assert runtime.closed


def test_closing_a_stream_early_closes_the_connection():
    runtime = FakeRuntime(events=_sse("a", "b", "c"))
    stream = Predictor("ep", session=_runtime_session(runtime)).stream("x")
    assert next(stream) == "a"
    stream.close()
    assert runtime.closed


def _stub_model_lookup(session, endpoint: str, environment: dict) -> None:
    session.stub.add_response("describe_endpoint", _describe(endpoint, "InService"), {"EndpointName": endpoint})
    session.stub.add_response(
        "describe_endpoint_config",
        {"EndpointConfigName": endpoint, "EndpointConfigArn": f"{ARN}endpoint-config/{endpoint}", "CreationTime": NOW,
         "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "m1"}]},
        {"EndpointConfigName": endpoint},
    )  # fmt: skip
    session.stub.add_response(
        "describe_model",
        {"ModelName": "m1", "ModelArn": f"{ARN}model/m1", "CreationTime": NOW,
         "PrimaryContainer": {"Image": "tgi", "Environment": environment}},
        {"ModelName": "m1"},
    )  # fmt: skip


def test_chat_uses_the_server_chat_template_and_the_catalogs_parameters(session):
    """The default model's catalog entry says 'tokenizer': the question goes as messages."""
    _stub_model_lookup(session, "ep", {"HF_MODEL_ID": "smollm2"})
    predictor = Predictor("ep", session=session)
    body = predictor.chat_body("What is the capital of France?", stream=True, max_new_tokens=32)
    assert body["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert body["max_tokens"] == 32 and body["temperature"] == 0 and body["stream"] is True
    # Looked up once: a second question makes no control-plane call.
    again = predictor.chat_body([{"role": "user", "content": "Hi"}], system="Be brief.")
    assert again["messages"][0] == {"role": "system", "content": "Be brief."} and "stream" not in again


def test_chat_renders_a_catalog_template_as_a_generate_request(session):
    _stub_model_lookup(session, "llama", {"HF_MODEL_ID": "meta-llama/Llama-2-7b-chat-hf", EULA_ENV: "true"})
    with pytest.raises(EulaNotAcceptedError):
        Predictor("llama", session=session).chat_body("Hello")
    _stub_model_lookup(session, "llama", {"HF_MODEL_ID": "meta-llama/Llama-2-7b-chat-hf", EULA_ENV: "true"})
    body = Predictor("llama", session=session, accept_eula=True).chat_body("Hello", stop=["###"])
    assert body["inputs"] == "<s>[INST] Hello [/INST]"
    assert body["parameters"]["return_full_text"] is False and body["parameters"]["stop"] == ["###", "</s>"]
