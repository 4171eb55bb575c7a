"""A real multi-node Ray cluster on one machine, for the placement tests and benchmark.

Each node is its own ``ray start --block`` process (head first, then workers joining its
address), so each has its own raylet, workers and model servers, and ``kill_node`` can take one
node down the hard way: SIGKILL to its whole process tree at once, as when a machine is lost.
Object stores are small and dashboards off so three nodes fit beside other work on a small box.
Ray's health checks are tightened so the cluster declares a lost node dead within seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE_BYTES = 100 * 1024 * 1024

# GCS marks a node dead after missing this many 500 ms health checks (default: 5 x 3 s).
FAST_FAILURE_DETECTION = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_initial_delay_ms": "1000",
}

# Ray's background work streamhost does not use (bench/ray_placement.py --idle-only measures it):
# the log monitor streams workers' stdout to drivers (the platform joins with log_to_driver=False
# and model servers log to files), and metrics collection feeds a Prometheus export nobody scrapes.
# Placement groups, actor health and node-loss detection do not depend on either.
LEAN_START_ARGS = ["--include-log-monitor=false"]
LEAN_ENV = {"RAY_enable_metrics_collection": "0"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (model servers in their own sessions included)."""
    tree = _children()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(tree.get(current, []))
    return out


_TICKS = os.sysconf("SC_CLK_TCK")

# What each process of a node is, from its command line (workers retitle themselves ``ray::...``).
_ROLES = (
    ("gcs_server", "gcs_server"),
    ("/raylet", "raylet"),
    ("ray::DashboardAgent", "dashboard_agent"),
    ("ray::RuntimeEnvAgent", "runtime_env_agent"),
    ("log_monitor.py", "log_monitor"),
    ("autoscaler/_private/monitor.py", "autoscaler_monitor"),
    ("dashboard/dashboard.py", "api_server"),
    ("ray::IDLE", "idle_worker"),
    ("ray::", "actor_worker"),
    ("streamhost", "model_server"),
    (" start --block", "ray_start"),
)


def process_role(pid: int) -> str:
    """``raylet``, ``gcs_server``, ``dashboard_agent``, ``model_server``, ... for a node's process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    return next((role for needle, role in _ROLES if needle in cmdline), "other")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15 of stat)


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    cpus: float
    node_id: str = ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class RayCluster:
    """Head + workers, each a separate ``ray start --block``; ``stop`` kills everything it started.

    ``lean`` (the default) starts the nodes with ``LEAN_START_ARGS`` and ``LEAN_ENV``: Ray's own
    background work that streamhost does not use, off (``lean=False``: Ray's defaults, to measure).
    """

    def __init__(self, log_dir: Path, lean: bool = True) -> None:
        self.log_dir = log_dir
        self.lean = lean
        self.temp_dir = tempfile.mkdtemp(prefix="shray")  # short: Ray's socket paths have a length limit
        self.port = free_port()
        self.nodes: list[Node] = []
        self.env = {
            **os.environ,
            **FAST_FAILURE_DETECTION,
            **(LEAN_ENV if lean else {}),
            "OMP_WAIT_POLICY": "PASSIVE",
            "RAY_USAGE_STATS_ENABLED": "0",
            # A stray ~/.ray/auth_token (left by any local ray.init()) makes `ray start` demand tokens
            # that drivers without RAY_AUTH_MODE=token never send: a test cluster on loopback has none.
            "RAY_AUTH_MODE": "disabled",
        }

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str], cpus: float) -> Node:
        log = open(self.log_dir / f"ray-{name}.log", "ab")
        argv = [RAY, "start", "--block", "--disable-usage-stats", f"--num-cpus={cpus:g}", "--num-gpus=0",
                f"--object-store-memory={OBJECT_STORE_BYTES}", f"--resources={json.dumps({name: 1})}",
                *(LEAN_START_ARGS if self.lean else []), *args]  # fmt: skip
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        node = Node(name, process, cpus)
        self.nodes.append(node)
        return node

    def start(self, head_cpus: float, workers: list[float], timeout: float = 120) -> RayCluster:
        self._start("node_head", ["--head", f"--port={self.port}", "--include-dashboard=false",
                                  f"--temp-dir={self.temp_dir}"], head_cpus)  # fmt: skip
        self.wait_nodes(1, timeout)
        for index, cpus in enumerate(workers):  # one at a time: a busy GCS times joining raylets out
            self.add_worker(f"node_w{index + 1}", cpus)
            self.wait_nodes(2 + index, timeout)
        return self

    def add_worker(self, name: str, cpus: float) -> Node:
        return self._start(name, [f"--address={self.address}"], cpus)

    def nodes_info(self) -> list[dict]:
        """``ray.nodes()`` from a short-lived driver (the test process itself stays out of the cluster)."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
            "print('NODES=' + json.dumps(ray.nodes()))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=60, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"ray.nodes() failed: {out.stderr[-2000:]}")
        line = next(x for x in out.stdout.splitlines() if x.startswith("NODES="))
        return json.loads(line[len("NODES=") :])

    def wait_nodes(self, count: int, timeout: float = 120) -> None:
        """Wait until ``count`` nodes are alive, and learn each node's id from its custom resource."""
        deadline = time.monotonic() + timeout
        alive: list[dict] = []
        while time.monotonic() < deadline:
            dead = [n.name for n in self.nodes if not n.alive and not n.node_id]
            if dead:
                raise RuntimeError(f"ray node(s) {dead} exited; see {self.log_dir}")
            try:
                alive = [n for n in self.nodes_info() if n.get("Alive")]
            except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError):
                alive = []
            if len(alive) >= count:
                for node in self.nodes:
                    for info in alive:
                        if node.name in info.get("Resources", {}):
                            node.node_id = info["NodeID"]
                return
            time.sleep(1)
        raise RuntimeError(f"only {len(alive)} of {count} ray nodes came up within {timeout} s")

    def node_by_id(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def kill_node(self, node: Node) -> list[int]:
        """SIGKILL the node's raylet, workers, model servers and ``ray start`` at once; returns the pids."""
        pids = descendants(node.process.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)  # freeze first so nothing reacts to its siblings' deaths
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.process.wait(10)
        return pids

    def processes(self) -> dict[int, str]:
        """Every live process of every node, with its role (``process_role``)."""
        return {pid: process_role(pid) for node in self.nodes if node.alive for pid in descendants(node.process.pid)}

    def stop(self) -> None:
        """Kill every process of every node (workers first, the head last)."""
        for node in reversed(self.nodes):
            if node.alive:
                pids = descendants(node.process.pid)
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                node.process.wait(10)
        # Processes the head started outside its tree (none expected) would keep the temp dir's sockets.
        subprocess.run(["rm", "-rf", self.temp_dir], check=False)
