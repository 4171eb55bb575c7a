"""What runs on a Ray node for one endpoint instance: the ``InstanceHost`` actor.

The actor fetches the model data onto its node (cached per node, so a replacement or a second
instance on the same node downloads nothing), starts ``streamhost container`` on a free port of
the node, and reports where it listens; from then on the gateway talks to the model server over
HTTP exactly as to a local one. The model server is started through the same parent-death shim
as local instances, so when the actor's worker dies (its node lost, the platform gone) the
model server goes with it instead of holding memory and a port.

Model data arrives two ways, neither needing a disk shared with the platform:
- ``s3://`` (the platform's store or an external one): downloaded here with boto3;
- anything else (a local path or ``file://`` on the platform's machine): downloaded from the
  platform's ``/_streamhost/artifacts/{id}`` route with the platform's export token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .artifacts import ArtifactError, ArtifactStore, ModelData
from .instances import INSTANCE_MARKER, free_port, read_tail, spawn_model_server
from .s3.access import ExternalAccess

DEFAULT_CACHE_DIR = "~/.cache/streamhost/ray"
_CHUNK = 1024 * 1024


class _NodeArtifacts(ArtifactStore):
    """The platform's artifact cache logic, on a node, with the platform's S3 credentials when given."""

    def __init__(self, root: Path, s3_endpoint_url: str | None, credentials: dict[str, str] | None) -> None:
        super().__init__(
            root, s3_endpoint_url=s3_endpoint_url, objects=ExternalAccess(s3_endpoint_url, **(credentials or {}))
        )

    def fetch_export(self, source: dict[str, Any], deadline: float | None) -> Path:
        """Download a platform export once per node (keyed by its id) and unpack it like the platform would."""
        import httpx

        data = ModelData(source["url"], compressed=source.get("compressed"))

        def fill(folder: Path) -> None:
            with tempfile.TemporaryDirectory(dir=self.root) as scratch:
                local = Path(scratch) / (source.get("filename") or "model")
                with httpx.stream(
                    "GET", source["url"], headers={source["token_header"]: source["token"]}, timeout=60
                ) as r:
                    if r.status_code != 200:
                        raise ArtifactError(
                            f"{source['url']}: the platform answered HTTP {r.status_code}: {r.read()[:200]!r}"
                        )
                    with open(local, "wb") as out:
                        for chunk in r.iter_bytes(_CHUNK):
                            out.write(chunk)
                            if deadline is not None and time.monotonic() > deadline:
                                raise ArtifactError(f"{source['url']}: ModelDataDownloadTimeoutInSeconds elapsed")
                self._place_file(local, folder, data, deadline)

        return self._publish(f"export|{source['id']}", fill)


def node_dir(cache_dir: str | None, node_id: str) -> Path:
    """This node's own folder: nodes sharing a machine (tests) still keep separate caches."""
    return Path(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)) / node_id[:16]


def fetch_model(source: dict[str, Any], root: Path, timeout: float | None) -> Path:
    """The model data of ``source`` as a folder on this node (blocking)."""
    deadline = time.monotonic() + timeout if timeout else None
    store = _NodeArtifacts(root, source.get("s3_endpoint_url"), source.get("credentials"))
    if source["kind"] == "s3":
        return store.fetch(ModelData(source["url"], source.get("compressed"), bool(source.get("prefix"))), deadline)
    try:
        return store.fetch_export(source, deadline)
    except OSError as exc:
        raise ArtifactError(f"{source['url']}: {exc}") from None


def node_niceness() -> int:
    """The niceness ``ray start`` runs at on this node: what a model server or trainer should run at.

    Ray starts its worker processes 15 steps nicer than the raylet (``RAY_worker_niceness``), and a
    child inherits that: a model server left there loses the CPU to anything else on the node, which
    shows as tail latency. The shim resets it (allowed for root or with CAP_SYS_NICE; otherwise the
    server's log says how to start the node instead).
    """
    try:
        return os.getpriority(os.PRIO_PROCESS, int(os.environ["RAY_RAYLET_PID"]))
    except (KeyError, ValueError, OSError):
        return max(0, os.getpriority(os.PRIO_PROCESS, 0) - 15)


def _model_server_env(spec_env: dict[str, str], threads: int) -> dict[str, str]:
    """The node's environment minus model-server settings, then the model's Environment, as for a
    local instance (so both placements compute alike, whatever the node was started with); Ray
    sets its own OMP_NUM_THREADS in workers, ours follows the InstanceType."""
    from .supervisor import model_server_env

    return model_server_env(spec_env, threads)


class InstanceHost:
    """Ray actor (async): one model server on this node. Methods run concurrently, so ``wait_exit``
    can block for the life of the process while ``stop`` and ``log_tail`` still answer."""

    def __init__(self, launch: dict[str, Any]) -> None:
        self.launch = launch
        self.process: asyncio.subprocess.Process | None = None
        self.log_path: Path | None = None

    async def start(self) -> dict[str, Any]:
        """Fetch model data, start the model server; returns where it runs (node, host, port, pid, log)."""
        import ray

        launch = self.launch
        node_id = ray.get_runtime_context().get_node_id()
        node_ip = ray.util.get_node_ip_address()
        base = node_dir(launch.get("cache_dir"), node_id)
        self.log_path = base / "logs" / launch["log_name"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        folders: dict[str, str] = {}
        for placeholder, source in (launch.get("sources") or {}).items():
            try:
                folder = await asyncio.to_thread(
                    fetch_model, source, base / "artifacts", launch.get("download_timeout")
                )
            except ArtifactError as exc:
                return {"error": f"Failed to prepare model data on node {node_id[:12]} ({node_ip}): {exc}"}
            folders[placeholder] = str(folder)
        host = launch.get("bind_host") or node_ip
        port = free_port(host)
        values = {"{port}": str(port), "{host}": host, "{python}": sys.executable, **folders}

        def fill(text: str) -> str:
            for key, value in values.items():
                text = text.replace(key, value)
            return text

        argv = [fill(a) for a in launch["argv"]]
        env = _model_server_env({k: fill(v) for k, v in launch["env"].items()}, launch.get("threads", 1))
        env["STREAMHOST_PLATFORM_PID"] = str(os.getpid())
        env["STREAMHOST_NICENESS"] = str(node_niceness())
        env[INSTANCE_MARKER] = launch.get("owner", "ray")
        env.setdefault("SAGEMAKER_BIND_TO_PORT", str(port))
        with open(self.log_path, "ab") as logfile:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            logfile.write(
                f"--- {stamp} starting {launch['log_name']} on {host}:{port} (node {node_id[:12]})\n".encode()
            )
            logfile.flush()
            self.process = await spawn_model_server(argv, env, logfile)
        return {
            "node_id": node_id, "node_ip": node_ip, "hostname": socket.gethostname(), "host": host, "port": port,
            "pid": self.process.pid, "log": str(self.log_path),
        }  # fmt: skip

    async def wait_exit(self) -> int | None:
        """Block until the model server exits; its exit code."""
        if self.process is None:
            return None
        return await self.process.wait()

    async def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    async def stop(self, grace: float) -> int | None:
        """SIGTERM (the server drains its streams), SIGKILL after ``grace`` seconds."""
        process = self.process
        if process is None or process.returncode is not None:
            return process.returncode if process else None
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), grace)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return await process.wait()

    async def log_tail(self) -> str:
        return read_tail(self.log_path) if self.log_path else ""
