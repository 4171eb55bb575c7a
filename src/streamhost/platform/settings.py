"""Platform settings: one object built from the command line, passed to every part."""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .instance_types import DEFAULT_INSTANCE_TYPES, Resources


def default_container_command() -> list[str]:
    """How an instance is started (``--port``, ``--host``, ``--dialect``, ``--model-dir`` are appended)."""
    return [sys.executable, "-m", "streamhost.cli", "container"]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the platform reachable from this machine only."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class PlatformSettings:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    region: str = "us-east-1"
    account: str = "123456789012"
    container_command: list[str] = field(default_factory=default_container_command)
    instance_host: str = "127.0.0.1"
    auth: bool | None = None  # None: on unless bound to loopback
    credentials_file: Path | None = None
    s3_endpoint_url: str | None = None  # an external S3 store; None: the embedded one under state_dir/s3
    s3_access_key_id: str | None = None  # the external store's keys (None: boto3's usual chain)
    s3_secret_access_key: str | None = None
    s3_profile: str | None = None  # or a profile of the AWS shared files holding them
    artifact_roots: list[Path] | None = None  # None: any local path (loopback) / the state dir (otherwise)
    drain_timeout: float = 30.0  # how long old instances may finish in-flight requests
    stop_grace: float = 15.0  # SIGTERM -> SIGKILL
    health_interval: float = 5.0  # /ping period for a serving instance
    health_failures: int = 3  # consecutive failed pings before an instance is restarted
    ready_wait: float = 30.0  # how long an invocation waits for some instance to become ready
    max_instances: int = 16  # per endpoint
    threads_per_instance: int | None = None  # OMP_NUM_THREADS for instances; None: cores / instances
    # Ray placement (streamhost serve --ray): None keeps instances as local processes.
    ray_address: str | None = None  # "auto" or a cluster address (host:port, ray://...)
    ray_instance_types: dict[str, Resources] = field(default_factory=lambda: dict(DEFAULT_INSTANCE_TYPES))
    ray_cpu_scale: float = 1.0  # multiplies every CPU figure of the table (small nodes)
    ray_instance_host: str | None = None  # where instances bind on their node; None: the node's IP
    ray_platform_url: str | None = None  # how nodes reach this platform for model data; None: http://host:port
    ray_cache_dir: str | None = None  # per-node model-data cache and instance logs; None: ~/.cache/streamhost/ray

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).expanduser()
        if self.auth is None:
            self.auth = not is_loopback(self.host)
        if self.artifact_roots is None and not is_loopback(self.host):
            self.artifact_roots = [self.state_dir / "models"]

    @property
    def db_path(self) -> Path:
        return self.state_dir / "streamhost.db"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    @property
    def default_bucket(self) -> str:
        """The bucket the SageMaker SDK's ``Session().default_bucket()`` names: ``sagemaker-<region>-<account>``."""
        return f"sagemaker-{self.region}-{self.account}"

    @property
    def s3_dir(self) -> Path:
        """The embedded object store's files (named by id; the index is in ``db_path``)."""
        return self.state_dir / "s3"

    @staticmethod
    def cpu_count() -> int:
        try:
            return len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return os.cpu_count() or 1
