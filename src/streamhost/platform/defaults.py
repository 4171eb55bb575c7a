"""``streamhost serve --deploy-default``: an endpoint named ``smollm2`` running the embedded model.

It goes through the control plane like any client would (same validation, same records), and
creates only what is missing, so restarting with the flag never duplicates anything.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import PlatformApp

DEFAULT_NAME = "smollm2"
DEFAULT_VARIANT = "AllTraffic"


def _default_env() -> dict[str, str]:
    env = {"HF_MODEL_ID": DEFAULT_NAME}
    try:
        from streamhost.catalog.specs import load_catalog

        entry = load_catalog().find(DEFAULT_NAME)
        if entry is not None:
            env.update(entry.default_env)
    except Exception:
        pass
    return env


async def _call(app: PlatformApp, operation: str, params: dict[str, Any]) -> None:
    status, payload = await app.control.handle(f"SageMaker.{operation}", json.dumps(params).encode())
    if status != 200:
        raise RuntimeError(f"{operation} failed: {payload.get('message')}")


def howto(base_url: str, name: str = DEFAULT_NAME, auth: bool = False) -> str:
    """Copy-paste ways to call the endpoint: curl (whole answer) and boto3 (streamed)."""
    body = '{"inputs": "What is deep learning?", "parameters": {"max_new_tokens": 64}}'
    py = (
        "import boto3; from streamhost.client.iterators import TokenIterator; "
        f"rt = boto3.client('sagemaker-runtime', endpoint_url='{base_url}', region_name='us-east-1', "
        "aws_access_key_id='x', aws_secret_access_key='x'); "
        f"r = rt.invoke_endpoint_with_response_stream(EndpointName='{name}', ContentType='application/json', "
        'Body=b\'{"inputs": "What is deep learning?", "parameters": {"max_new_tokens": 64}, "stream": true}\'); '
        "[print(t, end='', flush=True) for t in TokenIterator(r['Body'])]; print()"
    )
    return (
        f"Invoke endpoint '{name}':\n"
        f"  curl -s {base_url}/endpoints/{name}/invocations -H 'Content-Type: application/json' \\\n"
        f"       -d '{body}'\n"
        f'  python -c "{py.replace(chr(34), chr(92) + chr(34))}"\n'
        f"Chat with it:\n"
        f"  in a browser: {base_url}/chat\n"
        f"  in a terminal: .venv/bin/streamhost chat {name}"
        + (
            "\n(SigV4 auth is on: use keys the platform knows instead of x/x, and sign the curl request)"
            if auth
            else ""
        )
    )


async def deploy_default(app: PlatformApp) -> None:
    """Create model, config and endpoint ``smollm2`` if missing; report when it serves."""
    base_url = f"http://{_display_host(app.settings.host)}:{app.settings.port}"
    if app.store.get_endpoint(DEFAULT_NAME) is None:
        if app.store.get_model(DEFAULT_NAME) is None:
            await _call(app, "CreateModel", {
                "ModelName": DEFAULT_NAME,
                "PrimaryContainer": {"Image": "streamhost", "Environment": _default_env()},
                "ExecutionRoleArn": f"arn:aws:iam::{app.settings.account}:role/streamhost",
            })  # fmt: skip
        if app.store.get_config(DEFAULT_NAME) is None:
            await _call(app, "CreateEndpointConfig", {
                "EndpointConfigName": DEFAULT_NAME,
                "ProductionVariants": [{
                    "VariantName": DEFAULT_VARIANT, "ModelName": DEFAULT_NAME, "InitialInstanceCount": 1,
                    "InstanceType": "ml.m5.xlarge", "ContainerStartupHealthCheckTimeoutInSeconds": 900,
                }],
            })  # fmt: skip
        await _call(app, "CreateEndpoint", {"EndpointName": DEFAULT_NAME, "EndpointConfigName": DEFAULT_NAME})
        print(f"streamhost: creating endpoint '{DEFAULT_NAME}' (the first start converts the bundled model, ~20 s)",
              file=sys.stderr, flush=True)  # fmt: skip
    asyncio.ensure_future(_announce(app, base_url))


async def _announce(app: PlatformApp, base_url: str) -> None:
    while True:
        record = app.store.get_endpoint(DEFAULT_NAME)
        if record is None:
            return
        if record.status == "InService":
            print(
                f"streamhost: endpoint '{DEFAULT_NAME}' is InService.\n{howto(base_url, auth=bool(app.settings.auth))}",
                file=sys.stderr,
                flush=True,
            )
            return
        if record.status == "Failed":
            print(f"streamhost: endpoint '{DEFAULT_NAME}' failed: {record.failure_reason}", file=sys.stderr, flush=True)
            return
        await asyncio.sleep(0.5)


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
