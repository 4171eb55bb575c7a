"""The platform's control plane and runtime API fuzzed with requests generated from botocore's models.

A real ``streamhost serve`` (SigV4 on) runs the tiny model behind one endpoint. Every request is
signed like botocore signs, so it reaches the code behind authentication:

- control plane: every operation the platform supports (it lists them when asked for an unknown
  one, so operations added later are fuzzed too), bodies from ``ShapeStrategies`` over the
  SageMaker model, plus raw junk bodies and wrong ``X-Amz-Target`` headers;
- runtime: InvokeEndpoint and InvokeEndpointWithResponseStream with the header members of the
  sagemaker-runtime model, endpoint names good and bad, and bodies generated from the model
  server's own ``/openapi.json``.

Asserted, for at least ``REQUESTS_PER_API`` requests each: no 5xx (nor a 424 hiding a model
server's 5xx), AWS's error shapes, no exception event inside a stream, no traceback in any log,
the platform still answers, and a greedy stream running alongside returns the same tokens as alone.

Names the generator uses are drawn from small pools, so Create/Describe/Update/Delete meet each
other's resources; the only endpoint config that fuzzed CreateEndpoint/UpdateEndpoint can name
fronts an external server at a dead port, so fuzzing never starts model processes, and the
streaming endpoint's name is never generated.
"""

from __future__ import annotations

import json
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import botocore.session
import httpx
import pytest
from _fuzz_helpers import (
    REQUESTS_PER_API,
    SHRINK,
    AlongsideStream,
    Budget,
    assert_no_traceback,
    fuzz_settings,
)
from _platform_fixtures import (
    ACCESS_KEY,
    REAL_COMMAND,
    REGION,
    SECRET_KEY,
    PlatformProcess,
    deploy,
    unique,
)
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import event, given
from hypothesis import strategies as st

from streamhost.client.iterators import TokenIterator
from streamhost.fuzzing import (
    ANY_JSON,
    JSON_SCALARS,
    NASTY_STRINGS,
    ShapeStrategies,
    openapi_bodies,
)
from streamhost.protocols.eventstream import EventStreamDecoder

pytestmark = pytest.mark.timeout(600)

SMALL = {"MAX_TOTAL_TOKENS": "32", "MAX_INPUT_TOKENS": "24", "MAX_CONCURRENT_REQUESTS": "8"}
GREEDY = {
    "inputs": "Fuzzing must not change this",
    "parameters": {"max_new_tokens": 12, "do_sample": False},
    "stream": True,
}
CONTROL_ERRORS = {"ValidationException", "SerializationException", "UnknownOperationException", "ResourceLimitExceeded",
                  "ResourceNotFound", "ResourceInUse", "ConflictException"}  # fmt: skip
RUNTIME_ERRORS = {"ValidationError", "ModelError", "ModelNotReadyException"}
DEAD_URL = "http://127.0.0.1:9"  # the discard port: nothing listens there
SIGNER = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "sagemaker", REGION)


def pool(*names: str) -> st.SearchStrategy:
    """A name from ``names`` most of the time, junk otherwise."""
    return st.one_of(
        st.sampled_from(names), st.sampled_from(names), st.sampled_from(names), JSON_SCALARS, NASTY_STRINGS
    )


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    proc = PlatformProcess(tmp_path_factory.mktemp("platform-fuzz"), container_command=REAL_COMMAND).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def streaming(platform, tiny_llama_dir) -> str:
    """The endpoint whose stream must not notice the fuzzing (tiny model, greedy), and an external config."""
    sm = platform.sagemaker()
    name = deploy(sm, unique("stream"), env={"HF_MODEL_ID": str(tiny_llama_dir), **SMALL}, startup_timeout=120)
    sm.create_model(ModelName="fz-external", PrimaryContainer={"Image": DEAD_URL})
    sm = platform.sagemaker(parameter_validation=False)  # a 2 s timeout: our extension, below AWS's 60 s floor
    sm.create_endpoint_config(EndpointConfigName="fz-external", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "fz-external", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.xlarge", "ContainerStartupHealthCheckTimeoutInSeconds": 2}])  # fmt: skip
    return name


def greedy_stream(platform: PlatformProcess, endpoint: str) -> str:
    response = platform.runtime().invoke_endpoint_with_response_stream(
        EndpointName=endpoint, Body=json.dumps(GREEDY), ContentType="application/json"
    )
    return "".join(TokenIterator(response["Body"]))


def signed_send(client: httpx.Client, method: str, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    SIGNER.add_auth(request)
    return client.send(
        client.build_request(method, url, content=body, headers=dict(request.headers.items())), stream=True
    )


def all_logs(platform: PlatformProcess) -> list[Path]:
    return [platform.log_path, *Path(platform.state_dir).rglob("*.log")]


# ---------------------------------------------------------------------- control plane


def supported_operations(platform: PlatformProcess) -> list[str]:
    message = platform.control("NoSuchOperationForFuzzing", {}).json()["message"]
    return message.split("supported: ", 1)[1].split(", ")


def control_requests(operations: list[str]) -> st.SearchStrategy:
    """(target header, body bytes) for the control plane."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    names = {"ModelName": pool("fz-m1", "fz-m2"), "EndpointName": pool("fz-e1", "fz-e2"),
             "VariantName": pool("AllTraffic", "v2")}  # fmt: skip
    configs_in_use = {"EndpointConfigName": pool("fz-external", "fz-missing")}
    configs_made = {"EndpointConfigName": pool("fz-c1", "fz-c2")}
    per_op = []
    for op in operations:
        if model.operation_model(op).input_shape is None:
            continue
        uses = configs_in_use if op in ("CreateEndpoint", "UpdateEndpoint") else configs_made
        bodies = ShapeStrategies(model, overrides={**names, **uses}, max_depth=3).body(op)
        per_op.append(st.tuples(st.just(f"SageMaker.{op}"), bodies.map(lambda b: json.dumps(b).encode())))
    visible = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20)  # legal in a header
    junk_targets = st.one_of(st.none(), st.just("SageMaker."), visible.map(lambda t: f"SageMaker.{t}"),
                             st.sampled_from([f"Foo.{op}" for op in operations]))  # fmt: skip
    junk = st.one_of(
        st.tuples(st.sampled_from([f"SageMaker.{op}" for op in operations]), st.binary(max_size=40)),
        st.tuples(
            st.sampled_from([f"SageMaker.{op}" for op in operations]), ANY_JSON.map(lambda b: json.dumps(b).encode())
        ),
        st.tuples(junk_targets, st.just(b"{}")),
    )
    return st.one_of(*per_op, *per_op, *per_op, junk)


def check_control_answer(response: httpx.Response) -> None:
    body = response.read()
    assert response.status_code < 500, (response.status_code, body[:500])
    payload = json.loads(body)
    assert isinstance(payload, dict), payload
    if response.status_code >= 400:
        assert payload.get("__type") in CONTROL_ERRORS | {"InvalidSignatureException"}, payload
        assert isinstance(payload.get("message"), str) and payload["message"], payload


def send_control(
    client: httpx.Client, platform: PlatformProcess, target: str | None, body: bytes
) -> tuple[str | None, int]:
    """One signed control-plane call (the example's calls run at once, racing each other's resources)."""
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    if target is not None:
        headers["X-Amz-Target"] = target
    response = signed_send(client, "POST", platform.url + "/", body, headers)
    try:
        check_control_answer(response)
    finally:
        response.close()
    return target, response.status_code


def test_control_plane_survives_generated_requests(platform, streaming) -> None:
    operations = supported_operations(platform)
    assert {"CreateModel", "CreateEndpointConfig", "CreateEndpoint", "UpdateEndpoint", "DeleteEndpoint"} <= set(
        operations
    )
    budget = Budget()
    batch = 5

    @fuzz_settings(REQUESTS_PER_API // batch + 1)
    @given(calls=st.lists(control_requests(operations), min_size=batch, max_size=batch))
    def run(calls: list) -> None:
        for target, status in pool.map(lambda call: send_control(client, platform, *call), calls):
            budget.count(status)
            event(f"{(target or '')[:40]} {status}")

    alongside = AlongsideStream(lambda: greedy_stream(platform, streaming))
    with alongside, httpx.Client(timeout=30) as client, ThreadPoolExecutor(batch) as pool:
        run()
    alongside.check()
    print(f"{budget.sent} requests, answers by status: {dict(sorted(budget.statuses.items()))}")
    assert budget.sent >= REQUESTS_PER_API and 200 in budget.statuses, budget.statuses
    assert httpx.get(platform.url + "/ping").status_code == 200
    assert platform.sagemaker().describe_endpoint(EndpointName=streaming)["EndpointStatus"] == "InService"
    assert_no_traceback(*all_logs(platform))


# ---------------------------------------------------------------------- runtime


def header_values() -> st.SearchStrategy[str]:
    printable = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip)
    return st.one_of(printable, st.sampled_from(["application/json", "text/event-stream", "application/jsonlines",
                                                 "accept_eula=true", "AllTraffic", "", "*/*"]))  # fmt: skip


def runtime_requests(endpoint: str, openapi: dict) -> st.SearchStrategy:
    """(path, headers, body) for both runtime operations."""
    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    header_names = sorted({
        member.serialization["name"]
        for op in ("InvokeEndpoint", "InvokeEndpointWithResponseStream")
        for member in model.operation_model(op).input_shape.members.values()
        if member.serialization.get("location") == "header"
    })  # fmt: skip
    kinds = {
        "ours": st.just(endpoint),
        "failed": st.just("fz-e1"),
        "text": st.text(max_size=70),
        "nasty": NASTY_STRINGS,
    }
    names = st.sampled_from(["ours"] * 7 + ["failed", "text", "nasty"]).flatmap(kinds.__getitem__)  # 70% ours
    suffix = st.sampled_from(["/invocations", "/invocations-response-stream"])
    headers = st.one_of(
        st.just({}), st.just({}), st.dictionaries(st.sampled_from(header_names), header_values(), max_size=3)
    )
    content_type = st.sampled_from(["application/json"] * 4 + ["text/plain", "application/octet-stream"])
    valid = openapi_bodies(openapi, "/invocations", shrink=SHRINK).map(lambda b: json.dumps(b).encode())
    bodies = st.one_of(valid, valid, valid, st.binary(max_size=64))
    return st.tuples(names, suffix, headers, content_type, bodies).map(
        lambda t: (f"/endpoints/{_segment(t[0])}{t[1]}", {"Content-Type": t[3], **t[2]}, t[4])
    )


def _segment(name: str) -> str:
    """A name as one percent-encoded path segment (a lone surrogate goes as its invalid UTF-8 bytes)."""
    return urllib.parse.quote(name.encode("utf-8", "surrogatepass"), safe="")


def check_runtime_answer(response: httpx.Response) -> None:
    body = response.read()
    status = response.status_code
    assert status < 500, (status, response.headers, body[:500])
    if status >= 400:
        code = response.headers.get("x-amzn-errortype")
        assert code in RUNTIME_ERRORS | {"InvalidSignatureException"}, (status, code, body[:300])
        payload = json.loads(body)
        assert payload.get("message") or payload.get("Message"), payload
        if code == "ModelError":
            assert payload["OriginalStatusCode"] < 500, payload  # a model server's 5xx must not hide behind 424
        return
    if response.headers.get("content-type", "").startswith("application/vnd.amazon.eventstream"):
        decoder = EventStreamDecoder()
        messages = decoder.feed(body)
        decoder.close()
        for message in messages:
            assert message.message_type == "event", (message.headers, message.payload[:300])


def send_runtime(
    client: httpx.Client, platform: PlatformProcess, path: str, headers: dict, body: bytes
) -> tuple[str, int]:
    """One signed invocation (the example's invocations run at once and meet in the engine's batches)."""
    response = signed_send(client, "POST", platform.url + path, body, headers)
    try:
        check_runtime_answer(response)
    finally:
        response.close()
    return path, response.status_code


def test_runtime_survives_generated_requests(platform, streaming) -> None:
    instances = [i for v in platform.instances(streaming)["variants"] for i in v["instances"]]
    openapi = httpx.get(instances[0]["url"] + "/openapi.json", timeout=10).json()  # the model server's own
    budget = Budget()
    batch = 4

    @fuzz_settings(REQUESTS_PER_API // batch + 1)
    @given(calls=st.lists(runtime_requests(streaming, openapi), min_size=batch, max_size=batch))
    def run(calls: list) -> None:
        for path, status in pool.map(lambda call: send_runtime(client, platform, *call), calls):
            budget.count(status)
            event(f"{path.rsplit('/', 1)[-1]} {status}")

    alongside = AlongsideStream(lambda: greedy_stream(platform, streaming))
    with alongside, httpx.Client(timeout=60) as client, ThreadPoolExecutor(batch) as pool:
        run()
    alongside.check()
    print(f"{budget.sent} requests, answers by status: {dict(sorted(budget.statuses.items()))}")
    assert budget.sent >= REQUESTS_PER_API and 200 in budget.statuses, budget.statuses
    assert httpx.get(platform.url + "/ping").status_code == 200
    assert_no_traceback(*all_logs(platform))
