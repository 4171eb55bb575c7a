"""One endpoint instance: a model-server process on a free local port, or an external server URL.

An ``Instance`` knows how to start, prove healthy (``GET /ping`` answering 200 within the
variant's ContainerStartupHealthCheckTimeoutInSeconds), stop (SIGTERM so the server drains its
streams, SIGKILL after a grace period) and quote its own log when it fails, because "the
endpoint failed" is useless without the model server's last words.

Processes are started through a tiny shim that asks the kernel to SIGTERM them if the platform
dies (``PR_SET_PDEATHSIG``): a platform killed with SIGKILL must not leave model servers holding
memory and ports, and a restarted platform starts fresh ones. Each runs in its own session so a
Ctrl-C in the platform's terminal does not hit them before the platform can drain them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

log = logging.getLogger("streamhost.platform")

# Exec shim: set the parent-death signal, make sure the parent is still the one that started us,
# then become the real command (the signal setting survives exec).
# STREAMHOST_NICENESS: the priority to run at, set before exec so every thread of the server has it
# (Ray runs its workers at niceness 15; a model server started by one must not inherit that).
_SHIM = (
    "import ctypes,os,signal,sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))\n"
    "except Exception:\n"
    "    pass\n"
    "parent = int(os.environ.pop('STREAMHOST_PLATFORM_PID', '0') or 0)\n"
    "if parent and os.getppid() != parent:\n"
    "    sys.exit(0)\n"
    "nice = os.environ.pop('STREAMHOST_NICENESS', '')\n"
    "if nice:\n"
    "    try:\n"
    "        os.setpriority(os.PRIO_PROCESS, 0, int(nice))\n"
    "    except OSError as exc:\n"
    "        print(f'streamhost: could not run at niceness {nice} ({exc}); running at {os.getpriority(os.PRIO_PROCESS, 0)}, '\n"
    "              'below the node\\'s other work: start the Ray node with RAY_worker_niceness=0', flush=True)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)

STARTING, READY, UNHEALTHY, STOPPING, STOPPED = "starting", "ready", "unhealthy", "stopping", "stopped"
LOG_TAIL_LINES = 15


async def spawn_model_server(argv: list[str], env: dict[str, str], logfile: Any) -> asyncio.subprocess.Process:
    """Start ``streamhost container ARGV`` through the shim, in its own session, logging to ``logfile``.

    Local instances and Ray instances start their model servers the same way, so a server that
    dies with its parent or leaves a marked process behind behaves alike wherever it runs.
    """
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SHIM, *argv,
        stdin=asyncio.subprocess.DEVNULL, stdout=logfile, stderr=asyncio.subprocess.STDOUT,
        env=env, start_new_session=True,
    )  # fmt: skip


class StartupFailure(Exception):
    """An instance did not become healthy; the message is a FailureReason quoting its log."""


@dataclass
class LaunchSpec:
    """How to run an instance: ``argv`` + ``env`` for a process, or ``url`` for an external server."""

    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None

    @property
    def external(self) -> bool:
        return self.url is not None


class InstanceHandle(Protocol):
    """What the supervisor and gateway use of an instance, wherever it was placed (``placement``)."""

    endpoint: str
    variant: str
    index: int
    spec: LaunchSpec
    state: str
    in_flight: int
    served: int
    restarts: int
    node: str

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str | None: ...
    @property
    def exit_code(self) -> int | None: ...
    def describe(self) -> dict[str, Any]: ...
    async def launch(self) -> None: ...
    async def wait_healthy(self, timeout: float, client: httpx.AsyncClient) -> None: ...
    async def ping(self, client: httpx.AsyncClient, timeout: float = 5.0) -> tuple[bool, str]: ...
    def suspect(self) -> None: ...
    async def wait_exit_or_wake(self, timeout: float) -> bool: ...
    async def recent_log(self) -> str: ...
    async def kill(self) -> None: ...
    async def stop(self, grace: float = 15.0) -> None: ...
    def exited(self) -> None: ...


_recent_ports: deque[int] = deque(maxlen=64)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, not handed out recently (two instances must not race for one)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _recent_ports:
            _recent_ports.append(port)
            return port
    raise RuntimeError("could not find a free local port")


def read_tail(path: Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 16384) -> str:
    """The last ``lines`` lines of a log file (reading at most ``max_bytes`` from its end)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()]
    # Progress bars and tracebacks can make one line huge; a FailureReason should stay readable.
    return "\n".join(line if len(line) <= 300 else line[:297] + "..." for line in kept[-lines:])


class Instance:
    """One model server behind a variant. ``in_flight`` is maintained by the gateway."""

    def __init__(
        self, endpoint: str, variant: str, index: int, spec: LaunchSpec, log_dir: Path, host: str = "127.0.0.1"
    ):
        self.endpoint = endpoint
        self.variant = variant
        self.index = index
        self.spec = spec
        self.host = host
        self.log_path = log_dir / f"{variant}-{index}.log"
        self.state = STARTING
        self.process: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.in_flight = 0
        self.served = 0
        self.restarts = 0
        self.started_at = 0.0
        self.on_pid: list = []  # callbacks (pid, alive: bool) so the store can track live pids
        self.node = "local"  # where it runs: this machine (a Ray placement names the cluster node)
        self._wake = asyncio.Event()

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.index}"

    @property
    def url(self) -> str:
        if self.spec.external and self.spec.url:
            return self.spec.url
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "state": self.state,
            "url": self.url if (self.spec.external or self.port) else None,
            "node": self.node,
            "address": self.url if (self.spec.external or self.port) else None,
            "pid": self.pid,
            "in_flight": self.in_flight,
            "served": self.served,
            "restarts": self.restarts,
            "log": str(self.log_path) if not self.spec.external else None,
        }

    # ------------------------------------------------------------------ start

    async def launch(self) -> None:
        """Start the process on a fresh port (no-op for an external server)."""
        self.state = STARTING
        self.started_at = time.monotonic()
        if self.spec.external:
            return
        self.port = free_port(self.host)
        argv = [a.replace("{port}", str(self.port)).replace("{host}", self.host) for a in self.spec.argv]
        env = dict(self.spec.env)
        env["STREAMHOST_PLATFORM_PID"] = str(os.getpid())
        env.setdefault("SAGEMAKER_BIND_TO_PORT", str(self.port))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logfile:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            logfile.write(f"--- {stamp} starting {self.endpoint}/{self.name} on port {self.port}\n".encode())
            logfile.flush()
            self.process = await spawn_model_server(argv, env, logfile)
        for callback in self.on_pid:
            callback(self.process.pid, True)

    async def wait_healthy(self, timeout: float, client: httpx.AsyncClient) -> None:
        """Poll ``/ping`` until 200; raise StartupFailure (quoting the log) on exit or timeout."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if self.process is not None and self.process.returncode is not None:
                raise StartupFailure(self._failure(f"exited with code {self.process.returncode} during startup"))
            ok, last = await self.ping(client)
            if ok:
                self.state = READY
                return
            if time.monotonic() >= deadline:
                raise StartupFailure(
                    self._failure(
                        f"did not pass the health check within {timeout:g} seconds "
                        f"(ContainerStartupHealthCheckTimeoutInSeconds; last GET /ping: {last})"
                    )
                )
            await asyncio.sleep(0.2)

    async def ping(self, client: httpx.AsyncClient, timeout: float = 5.0) -> tuple[bool, str]:
        """``(healthy, what /ping said)``."""
        try:
            response = await client.get(f"{self.url}/ping", timeout=timeout)
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        return response.status_code == 200, f"HTTP {response.status_code}"

    def _failure(self, what: str) -> str:
        where = f"{self.spec.url}" if self.spec.external else f"port {self.port}"
        reason = f"Instance {self.name} of variant {self.variant} ({where}) {what}."
        if not self.spec.external:
            tail = read_tail(self.log_path)
            reason += (
                f" Last lines of its log ({self.log_path}):\n{tail}"
                if tail
                else f" Its log ({self.log_path}) is empty."
            )
        return reason

    def log_tail(self) -> str:
        return read_tail(self.log_path)

    async def recent_log(self) -> str:
        return self.log_tail()

    # ------------------------------------------------------------------ health while serving

    def suspect(self) -> None:
        """The gateway could not reach this instance: stop routing to it and re-check now."""
        if self.state == READY:
            self.state = UNHEALTHY
        self._wake.set()

    async def wait_exit_or_wake(self, timeout: float) -> bool:
        """Sleep up to ``timeout``; True if the process exited (woken early by exit or ``suspect``)."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
        if self.process is not None:
            waits.append(asyncio.ensure_future(self.process.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            self._wake.clear()
        return self.process is not None and self.process.returncode is not None

    # ------------------------------------------------------------------ stop

    async def kill(self) -> None:
        """SIGKILL now (a hung instance)."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM (the server drains its streams), SIGKILL after ``grace`` seconds."""
        self.state = STOPPING
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except asyncio.TimeoutError:
                log.warning("%s/%s did not stop within %.0f s; killing it", self.endpoint, self.name, grace)
                await self.kill()
        if process is not None:
            for callback in self.on_pid:
                callback(process.pid, False)
        self.state = STOPPED
        self._wake.set()

    def exited(self) -> None:
        """Forget a pid that exited on its own."""
        if self.process is not None:
            for callback in self.on_pid:
                callback(self.process.pid, False)


INSTANCE_MARKER = "STREAMHOST_INSTANCE_OF"


def kill_orphan(pid: int, owner: str) -> bool:
    """SIGKILL a model server left behind by an earlier platform with the same state directory.

    Only a process whose environment carries ``STREAMHOST_INSTANCE_OF=<owner>`` is touched, so a
    recycled pid that now belongs to something else is left alone.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    if f"{INSTANCE_MARKER}={owner}".encode() not in environ:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
        return True
    return False
