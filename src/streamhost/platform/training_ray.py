"""Training jobs on a Ray cluster (``streamhost serve --ray``): the trainer as a Ray actor with the job's resources.

When the platform places endpoint instances on Ray, CreateTrainingJob runs its trainer there too:
one ``TrainerHost`` actor reserving what the job's ``ResourceConfig`` asks for (the InstanceType's
CPUs/GPUs/memory from the same table as endpoints, times InstanceCount, on one node: the trainer
is one process, it does not train data-parallel across nodes). The actor runs the very trainer a
local job runs (``python -m streamhost.training.trainer``, through the parent-death shim) in a
job folder on its node, with ``OMP_NUM_THREADS`` set to the CPUs it reserved.

No disk is shared with the platform:
- inputs given as local paths or ``file://`` (channels, the base model) are published on the
  platform's export route and downloaded by the node, as endpoint model data is; ``s3://`` inputs
  and the output are read and written by the trainer itself (the platform's embedded store is
  reached at the address nodes use for the platform); a local S3OutputPath is refused on Ray;
- the trainer's log and ``events.jsonl`` are mirrored into the platform's job folder every half
  second (``RayTrainer``), so the job log route, CloudWatch Logs and the runner's bookkeeping read
  exactly what they read for a local job.

A job that no node could ever hold fails at once with a FailureReason naming the missing
resources; one that fits but finds the cluster busy waits (Starting) until a node frees up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ray

from streamhost.training.events import EVENTS_FILE

from .instance_types import UnknownInstanceType, describe_resources, resources_for
from .instances import INSTANCE_MARKER, spawn_model_server
from .placement_ray import RayPlacement, alive_nodes, fits, missing_resources
from .ray_node import fetch_model, node_dir, node_niceness

log = logging.getLogger("streamhost.training")

LOG_FILE = "training.log"  # as training_runner.LOG_FILE (kept here to avoid an import cycle)
MIRROR_SECONDS = 0.5
_READ_LIMIT = 1024 * 1024


class TrainingPlacementError(Exception):
    """The job cannot run on this cluster; the message is its FailureReason."""


def trainer_resources(resource_config: dict[str, Any] | None, placement: RayPlacement) -> dict[str, float]:
    """What the job's trainer actor reserves: the InstanceType's resources times InstanceCount."""
    config = resource_config or {}
    count = max(1, int(config.get("InstanceCount") or 1))
    settings = placement.settings
    try:
        per_instance = resources_for(config.get("InstanceType"), settings.ray_instance_types, settings.ray_cpu_scale)
    except UnknownInstanceType as exc:
        raise TrainingPlacementError(f"Cannot run the training job on the Ray cluster: {exc}") from None
    return {k: round(v * count, 2) for k, v in per_instance.items()}


def unplaceable_reason(resource_config: dict[str, Any] | None, bundle: dict[str, float], nodes: list[dict]) -> str:
    config = resource_config or {}
    count = max(1, int(config.get("InstanceCount") or 1))
    kind = config.get("InstanceType") or "ml.m5.large"
    what = f"{count} x {kind}" if count > 1 else kind
    return (
        f"Cannot run the training job on the Ray cluster: ResourceConfig {what} needs {describe_resources(bundle)} "
        f"on one node (the trainer is one process) and no node ({len(nodes)} alive) has "
        f"{missing_resources(bundle, nodes)}. Add a node with these resources, choose a smaller InstanceType "
        "or InstanceCount, or map the type to fewer resources (--ray-instance-type, --ray-cpu-scale)."
    )


def _local_input(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() in ("file", "")


async def export_inputs(spec: dict[str, Any], artifacts: Any, placement: RayPlacement) -> dict[str, dict[str, Any]]:
    """Sources the node downloads for inputs on this machine: ``{"channel:<name>" | "model": source}``."""
    sources: dict[str, dict[str, Any]] = {}
    for name, uri in spec["channels"].items():
        if _local_input(uri):
            path = artifacts._local_path(uri)  # confined to the allowed roots, as for a local job
            sources[f"channel:{name}"] = await asyncio.to_thread(placement.export_source, path)
    model = spec["model"]
    if urlsplit(model).scheme.lower() == "file" or (
        not urlsplit(model).scheme and model.startswith((".", "/", "~")) and Path(os.path.expanduser(model)).exists()
    ):
        path = artifacts._local_path(model) if urlsplit(model).scheme else Path(os.path.expanduser(model))
        sources["model"] = await asyncio.to_thread(placement.export_source, path)
    return sources


class TrainerHost:
    """Ray actor (async): one trainer process on this node, its job folder, and reads of its log and events."""

    def __init__(self, launch: dict[str, Any]) -> None:
        self.launch = launch
        self.process: asyncio.subprocess.Process | None = None
        self.dir: Path | None = None

    async def start(self) -> dict[str, Any]:
        """Fetch inputs given as platform exports, write job.json, start the trainer; where it runs."""
        launch = self.launch
        spec = dict(launch["spec"])
        node_id = ray.get_runtime_context().get_node_id()
        node_ip = ray.util.get_node_ip_address()
        base = node_dir(launch.get("cache_dir"), node_id)
        self.dir = base / "training" / spec["name"]
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in (EVENTS_FILE, LOG_FILE):  # a job name is reused only after its record was gone
            (self.dir / stale).unlink(missing_ok=True)
        where = {"node_id": node_id, "node_ip": node_ip, "dir": str(self.dir)}
        channels = dict(spec["channels"])
        for key, source in (launch.get("sources") or {}).items():
            try:
                folder = await asyncio.to_thread(fetch_model, source, base / "artifacts", None)
            except Exception as exc:
                return {**where, "error": f"ClientError: could not download the job's input {key!r} onto Ray node "
                        f"{node_id[:12]} ({node_ip}): {exc}"}  # fmt: skip
            if key == "model":
                spec["model"] = str(folder)
            else:
                channels[key.split(":", 1)[1]] = str(folder)
        spec.update(channels=channels, artifacts_dir=str(base / "artifacts"), artifact_roots=[str(base)])
        (self.dir / "job.json").write_text(json.dumps(spec, indent=1))
        env = self._env()
        with open(self.dir / LOG_FILE, "ab") as logfile:
            argv = [sys.executable, "-m", "streamhost.training.trainer", str(self.dir)]
            self.process = await spawn_model_server(argv, env, logfile)
        return {**where, "pid": self.process.pid, "threads": env["OMP_NUM_THREADS"]}

    def _env(self) -> dict[str, str]:
        """The node's environment minus model-server settings, the platform's few, threads from the reservation."""
        from .supervisor import _model_server_setting

        launch = self.launch
        env = {k: v for k, v in os.environ.items() if not _model_server_setting(k)}
        env.update(launch.get("env") or {})
        env["OMP_NUM_THREADS"] = str(launch.get("threads", 1))  # Ray's own value follows num_cpus, ours the same
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env["STREAMHOST_PLATFORM_PID"] = str(os.getpid())  # the shim checks its parent is this actor
        env["STREAMHOST_NICENESS"] = str(node_niceness())  # not the Ray worker's 15
        env[INSTANCE_MARKER] = launch.get("owner", "ray")
        return env

    async def read(self, log_offset: int, events_offset: int) -> tuple[bytes, bytes, int | None]:
        """New log bytes, new complete event lines, and the trainer's exit code (None while it runs).

        The exit code is read first, so a caller that sees it knows the bytes returned with it are final
        once they come back empty.
        """
        code = self.process.returncode if self.process is not None else None
        assert self.dir is not None
        log_bytes = _read_from(self.dir / LOG_FILE, log_offset, _READ_LIMIT)
        events = _read_from(self.dir / EVENTS_FILE, events_offset, _READ_LIMIT)
        end = events.rfind(b"\n")
        return log_bytes, events[: end + 1] if end >= 0 else b"", code

    async def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def wait_exit(self) -> int | None:
        return await self.process.wait() if self.process is not None else None


def _read_from(path: Path, offset: int, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(limit)
    except OSError:
        return b""


class RayTrainer:
    """The platform's handle on a trainer actor, shaped like ``asyncio.subprocess.Process`` for the runner.

    A background task waits for the actor to start, then mirrors the trainer's log and events into
    the platform's job folder until the trainer has exited and everything it wrote has arrived.
    """

    pid = None  # the trainer's pid is on another node: nothing for a restarted platform to kill here

    def __init__(self, name: str, folder: Path, actor: Any, bundle: dict[str, float]) -> None:
        self.name = name
        self.folder = folder
        self.actor = actor
        self.bundle = bundle
        self.returncode: int | None = None
        self.where: dict[str, Any] = {}
        self._stopped_before_start = False
        self._pump = asyncio.ensure_future(self._mirror())

    @classmethod
    async def launch(cls, name: str, spec: dict[str, Any], folder: Path, env: dict[str, str],
                     resource_config: dict[str, Any] | None, placement: RayPlacement, artifacts: Any) -> RayTrainer:  # fmt: skip
        """Check the cluster could hold the job, publish local inputs, create the actor (it may wait for room)."""
        bundle = trainer_resources(resource_config, placement)
        nodes = await asyncio.to_thread(alive_nodes)
        if not any(fits(n, bundle) for n in nodes):
            raise TrainingPlacementError(unplaceable_reason(resource_config, bundle, nodes))
        try:
            sources = await export_inputs(spec, artifacts, placement)
        except Exception as exc:
            raise TrainingPlacementError(
                f"ClientError: could not publish the job's inputs to the Ray nodes: {exc}"
            ) from None
        settings = placement.settings
        launch = {
            "spec": spec, "sources": sources, "env": env, "cache_dir": settings.ray_cache_dir,
            "threads": max(1, int(bundle.get("CPU", 1))), "owner": str(settings.state_dir.resolve()),
        }  # fmt: skip
        options: dict[str, Any] = {"max_restarts": 0, "max_concurrency": 8, "num_cpus": bundle.get("CPU", 0.0)}
        if bundle.get("GPU"):
            options["num_gpus"] = bundle["GPU"]
        if bundle.get("memory"):
            options["memory"] = bundle["memory"]
        custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")}
        if custom:
            options["resources"] = custom
        actor = ray.remote(TrainerHost).options(**options).remote(launch)
        return cls(name, folder, actor, bundle)

    # ------------------------------------------------------------------ the Process surface

    async def wait(self) -> int | None:
        await asyncio.shield(self._pump)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """SIGTERM reaches the trainer on its node; before it started, the actor is simply removed."""
        if not self.where:
            self._stopped_before_start = True
            self.kill()
            return
        self.actor.signal.remote(int(signum))

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)

    # ------------------------------------------------------------------ mirroring

    def _append(self, filename: str, data: bytes) -> None:
        if data:
            with open(self.folder / filename, "ab") as handle:
                handle.write(data)

    def _event(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"type": kind, "time": time.time(), **fields}, separators=(",", ":"))
        self._append(EVENTS_FILE, (line + "\n").encode())

    def _say(self, message: str) -> None:
        self._append(LOG_FILE, f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n".encode())

    async def _mirror(self) -> None:
        try:
            await self._run_mirror()
        except Exception as exc:  # never leave the runner waiting on a broken mirror
            log.exception("training job %s: mirroring its Ray trainer failed", self.name)
            self._event("done", outcome="failed", reason=f"AlgorithmError: lost track of the Ray trainer: {exc}")
            self.returncode = 1
            self.kill()

    async def _run_mirror(self) -> None:
        self._say(f"waiting for a Ray node with {describe_resources(self.bundle)} free")
        try:
            where = await asyncio.wrap_future(self.actor.start.remote().future())
        except ray.exceptions.RayError as exc:
            if self._stopped_before_start:
                self._event("done", outcome="stopped", metrics={}, reason="Stopped before training started")
                self.returncode = 0
            else:
                self._event(
                    "done", outcome="failed", reason=f"AlgorithmError: the Ray trainer actor failed to start: {exc}"
                )
                self.returncode = 1
            return
        node = f"Ray node {where['node_id'][:12]} ({where['node_ip']})"
        if "error" in where:
            self._say(f"{where['error']}")
            self._event("done", outcome="failed", reason=where["error"])
            self.returncode = 1
            self.kill()
            return
        self.where = where
        message = f"Running on {node}, node id {where['node_id']}, with {describe_resources(self.bundle)} " \
                  f"({where['threads']} threads)"  # fmt: skip
        self._say(message)
        self._event("status", status="Starting", message=message)
        log_offset = events_offset = 0
        while True:
            try:
                log_bytes, events, code = await asyncio.wrap_future(
                    self.actor.read.remote(log_offset, events_offset).future()
                )
            except ray.exceptions.RayError as exc:
                reason = (f"AlgorithmError: the Ray node running the trainer ({node}) or its actor was lost "
                          f"({type(exc).__name__}); start a new training job")  # fmt: skip
                self._say(reason)
                self._event("done", outcome="failed", reason=reason)
                self.returncode = -signal.SIGKILL
                return
            self._append(LOG_FILE, log_bytes)
            self._append(EVENTS_FILE, events)
            log_offset += len(log_bytes)
            events_offset += len(events)
            if code is not None and not log_bytes and not events:
                self.returncode = code
                self.kill()
                return
            if not log_bytes and not events:
                await asyncio.sleep(MIRROR_SECONDS)
