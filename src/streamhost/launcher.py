"""Start a server as a child process and wait until its health route answers.

The end-to-end tests, the benchmarks and the examples all start servers the same way (a model
server, the platform, a peer such as ``transformers serve``): a free loopback port, the log in a
file, readiness by polling a health path, SIGTERM to the process group with a SIGKILL fallback.
One implementation keeps their behaviour (and their failure messages) the same.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def streamhost_command(verb: str, *args: str) -> list[str]:
    """``python -m streamhost.cli VERB ARGS``: runs the same code as the installed command."""
    return [sys.executable, "-m", "streamhost.cli", verb, *args]


class ServerProcess:
    """A server process we started: its own process group, its log in a file, health by HTTP GET.

    ``start`` raises with the log's tail if the process exits or is not healthy in time, so a failed
    start says why without anyone opening the log.
    """

    def __init__(
        self,
        command: Sequence[str],
        port: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        health_path: str = "/ping",
        cwd: Path | None = None,
        own_group: bool = True,
    ) -> None:
        self.command = list(command)
        self.port = port
        self.log_path = Path(log_path)
        self.env = dict(os.environ if env is None else env)
        self.health_path = health_path
        self.cwd = cwd
        # In its own process group, stop/kill reach the server's children too; a supervisor whose
        # children must outlive it (the platform in restart tests) runs with own_group=False.
        self.own_group = own_group
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> ServerProcess:
        """Start the process without waiting for it to become healthy (the log is appended to)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.cwd, start_new_session=self.own_group,
            )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 180.0, poll_s: float = 0.1) -> ServerProcess:
        """Poll the health path until it answers 200; raise with the log's tail otherwise."""
        assert self.proc is not None, "spawn() first"
        started = time.perf_counter()
        url = self.url + self.health_path
        with httpx.Client(timeout=2, trust_env=False) as client:
            while time.perf_counter() - started < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{' '.join(self.command)} exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if client.get(url).status_code == 200:
                        self.startup_s = time.perf_counter() - started
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(poll_s)
        self.stop()
        raise RuntimeError(f"{self.command[0]} was not ready at {url} within {timeout:.0f} s:\n{self.log_tail()}")

    def start(self, timeout: float = 180.0) -> ServerProcess:
        return self.spawn().wait_ready(timeout)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server process itself (not its group)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM the process group, SIGKILL it if it has not exited after ``grace`` seconds."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        try:
            self._send(signal.SIGTERM)
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self._send(signal.SIGKILL)
            return self.proc.wait(10)
        except ProcessLookupError:
            return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL (the group, if it has its own): no shutdown code runs (crash tests)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self._send(signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def _send(self, signum: int) -> None:
        assert self.proc is not None
        if self.own_group:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]
