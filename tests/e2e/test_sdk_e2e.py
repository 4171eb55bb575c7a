"""The SDK end to end: deploy -> predict -> stream -> delete against a real platform and model server.

The state directory's catalog extension adds a gated entry for the tiny test model, so the same
run checks EULA gating the way a Llama 2 deployment meets it: refused at deploy without
``accept_eula``, and refused at invoke by the platform without ``accept_eula=true``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from streamhost.catalog.specs import EulaRequiredError
from streamhost.client import CatalogModel, Predictor, Session

pytestmark = pytest.mark.skipif(
    find_spec("streamhost.platform.main") is None,
    reason="the platform (src/streamhost/platform/main.py, `streamhost serve`) is not built yet",
)

GATED_ID = "tiny-gated"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, tiny_llama_dir: Path) -> Iterator[tuple[Session, Path]]:
    """`streamhost serve` with real model servers; its catalog knows the tiny model as a gated entry."""
    from _platform_fixtures import ACCESS_KEY, REAL_COMMAND, SECRET_KEY, PlatformProcess

    state = tmp_path_factory.mktemp("sdk-platform")
    entry = {
        "id": GATED_ID,
        "hub_id": str(tiny_llama_dir),
        "name": "Tiny gated Llama",
        "licence": "test-licence",
        "eula_required": True,
        "eula_url": "https://example.com/licence",
        "default_env": {"MAX_TOTAL_TOKENS": "48", "MAX_INPUT_TOKENS": "32"},
    }
    (state / "catalog.json").write_text(json.dumps({"models": [entry]}))
    proc = PlatformProcess(state, container_command=REAL_COMMAND).start()
    try:
        # the platform verifies signatures: sign with the keys it knows
        keys = boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        yield Session(endpoint_url=proc.url, boto_session=keys), state
    finally:
        proc.stop()


def test_deploy_predict_stream_delete(platform):
    session, state = platform
    model = CatalogModel(GATED_ID, session=session, state_dir=state)
    with pytest.raises(EulaRequiredError, match="test-licence"):
        model.deploy(endpoint_name="sdk-e2e")

    statuses: list[str] = []
    predictor = model.deploy(
        accept_eula=True, endpoint_name="sdk-e2e", timeout=150, on_status=lambda status, _d: statuses.append(status)
    )
    assert statuses[-1] == "InService" and predictor.describe()["EndpointStatus"] == "InService"

    prompt = "The capital of France is"
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 8, "return_full_text": False}}
    answer = predictor.predict(body)
    text = answer[0]["generated_text"] if isinstance(answer, list) else answer["generated_text"]
    assert text, "the model generated nothing"
    # greedy decoding: the stream adds up to the complete answer
    assert "".join(predictor.stream(body)) == text
    assert isinstance(predictor.predict(prompt), str)

    # the platform refuses a caller that has not accepted the EULA
    with pytest.raises(ClientError) as info:
        Predictor("sdk-e2e", session=session).predict(body)
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert "eula" in info.value.response["Error"]["Message"].lower()

    model_names = predictor._lookup()[1]
    predictor.delete_endpoint()
    predictor.delete_model()
    deadline = time.monotonic() + 60
    while True:
        try:
            session.sagemaker.describe_endpoint(EndpointName="sdk-e2e")
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ValidationException"
            break
        assert time.monotonic() < deadline, "the endpoint was not gone 60 s after DeleteEndpoint"
        time.sleep(0.2)
    remaining = {m["ModelName"] for m in session.sagemaker.list_models()["Models"]}
    assert model_names and not remaining & set(model_names)
