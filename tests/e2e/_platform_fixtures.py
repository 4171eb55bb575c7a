"""Helpers for platform end-to-end tests: a real ``streamhost serve`` process and real boto3 clients.

``PlatformProcess`` starts the platform as a subprocess on a free port with its own state
directory, SigV4 auth on (keys ``x``/``y``), and a model-server command (the stand-in stub by
default, or the real ``streamhost container``). It can be killed with SIGKILL and started again
on the same state directory and port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from streamhost.launcher import ServerProcess, free_port, streamhost_command

REPO = Path(__file__).resolve().parents[2]
STUB = REPO / "tests" / "e2e" / "_stub_container.py"
STUB_COMMAND = f"{sys.executable} {STUB}"
REAL_COMMAND = f"{sys.executable} -m streamhost.cli container"
ACCESS_KEY, SECRET_KEY = "x", "y"
REGION = "us-east-1"


class PlatformProcess:
    def __init__(self, state_dir: Path, container_command: str = STUB_COMMAND, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.state_dir = state_dir
        self.port = free_port()
        self.container_command = container_command
        self.extra_args = extra_args or []
        self.env = env or {}
        self.server: ServerProcess | None = None
        self.log_path = state_dir / "platform.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> PlatformProcess:
        """Start on this state directory and port (again, after a stop or a kill)."""
        env = dict(os.environ)
        env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "HF_HUB_OFFLINE": "1"})
        env.update(self.env)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = streamhost_command(
            "serve", "--port", str(self.port), "--state-dir", str(self.state_dir), "--auth",
            "--container-command", self.container_command, "--health-interval", "1", "--drain-timeout", "10",
            *self.extra_args,
        )  # fmt: skip
        # The platform's own group is not used: a SIGKILL must leave its instances to be adopted.
        self.server = ServerProcess(argv, self.port, self.log_path, env, cwd=REPO, own_group=False)
        self.server.spawn().wait_ready(timeout)
        return self

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.server.proc if self.server else None

    def log_tail(self, chars: int = 4000) -> str:
        return self.server.log_tail(chars) if self.server else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.server:
            self.server.kill()

    def stop(self, timeout: float = 30.0) -> None:
        if self.server:
            self.server.stop(timeout)

    # ------------------------------------------------------------------ clients

    def client(self, service: str, **config: Any):
        return boto3.client(
            service, endpoint_url=self.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, config=Config(retries={"max_attempts": 1, "mode": "standard"}, **config),
        )  # fmt: skip

    def sagemaker(self, **config: Any):
        return self.client("sagemaker", **config)

    def runtime(self, **config: Any):
        return self.client("sagemaker-runtime", **config)

    def signed(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
               secret: str = SECRET_KEY) -> httpx.Response:  # fmt: skip
        """A raw request signed like botocore signs (for bodies boto3 would refuse to send)."""
        request = AWSRequest(method=method, url=f"{self.url}{path}", data=body, headers=headers or {})
        SigV4Auth(Credentials(ACCESS_KEY, secret), "sagemaker", REGION).add_auth(request)
        return httpx.request(
            method, f"{self.url}{path}", content=body, headers=dict(request.headers.items()), timeout=30
        )

    def control(self, operation: str, params: Any, raw: bytes | None = None) -> httpx.Response:
        body = raw if raw is not None else json.dumps(params).encode()
        headers = {"X-Amz-Target": f"SageMaker.{operation}", "Content-Type": "application/x-amz-json-1.1"}
        return self.signed("POST", "/", body, headers)

    def instances(self, endpoint: str) -> dict[str, Any]:
        response = self.signed("GET", f"/_streamhost/endpoints/{endpoint}")
        response.raise_for_status()
        return response.json()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def deploy(sm, name: str, *, image: str = "streamhost", env: dict[str, str] | None = None, count: int = 1,
           model_data: str | None = None, variants: list[dict[str, Any]] | None = None, wait: bool = True,
           startup_timeout: int = 60) -> str:  # fmt: skip
    """Create model + config + endpoint ``name`` (one variant unless ``variants``); wait for InService."""
    container: dict[str, Any] = {"Image": image, "Environment": env or {}}
    if model_data:
        container["ModelDataUrl"] = model_data
    sm.create_model(ModelName=name, PrimaryContainer=container, ExecutionRoleArn="arn:aws:iam::123456789012:role/x")
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=variants
        or [{"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": count,
             "InstanceType": "ml.m5.xlarge", "ContainerStartupHealthCheckTimeoutInSeconds": max(60, startup_timeout)}],
    )  # fmt: skip
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    if wait:
        wait_in_service(sm, name)
    return name


def wait_in_service(sm, name: str, attempts: int = 120) -> None:
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": attempts})


def stub_stats(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/stats", timeout=5).json()


def tgi_body(tokens: int = 8, stream: bool = False, **parameters: Any) -> bytes:
    return json.dumps(
        {"inputs": "Hello", "parameters": {"max_new_tokens": tokens, **parameters}, "stream": stream}
    ).encode()
