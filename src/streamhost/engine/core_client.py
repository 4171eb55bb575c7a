"""How the front end reaches the engine core: in a thread of this process, or in a process of its own.

Both clients take a :class:`CoreInput` with ``send`` and call ``on_output`` with each step's
:class:`CoreOutput` and ``on_exit`` once if the core ends without being asked to (from a thread of
their own: the engine moves both onto the event loop).

The channel to the process is a pair of ZeroMQ PUSH/PULL sockets on ``ipc://`` paths carrying
pickled messages, as vLLM v1's EngineCoreClient does (msgpack there). Measured with
``bench/core_channel.py`` on this machine (a 16-stream step's output, ~1 KB pickled): see
docs/architecture.md ("The channel"): about 40 us per round trip, under 0.2% of a decode step.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from streamhost.engine.config import EngineConfig
from streamhost.engine.core_messages import CoreInfo, CoreInput, CoreOutput
from streamhost.engine.core_placement import CorePlacement, pin_this_process

log = logging.getLogger(__name__)

OutputHandler = Callable[[CoreOutput], None]
ExitHandler = Callable[[str], None]

STOP_TIMEOUT_S = 10.0  # a core told to stop that has not exited by then is killed
# Barrier spins of the core's OpenMP threads before they sleep (libgomp's GOMP_SPINCOUNT, about
# 0.1 ms here): raw llama.cpp decode 27 tok/s with 0, 77 with 10,000, 78 with 100,000 (quiet);
# with other agents on the 2 cores 100,000 collapsed single-stream decode (docs/architecture.md).
DEFAULT_OMP_SPIN = 10_000


class InProcessCore:
    """The core in a thread of the server process (``engine_process=False``: debugging, unit tests)."""

    def __init__(self, executor: Any, config: EngineConfig) -> None:
        from streamhost.engine.core import EngineCore

        self.core = EngineCore(executor, config)
        self.info: CoreInfo = self.core.info()
        self._loop: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, on_output: OutputHandler, on_exit: ExitHandler) -> None:
        from streamhost.engine.core import CoreLoop

        self._loop = CoreLoop(self.core, on_output)

        def run() -> None:
            try:
                self._loop.run()
            except BaseException as exc:
                log.exception("the engine core thread failed")
                on_exit(f"the engine core failed: {type(exc).__name__}: {exc}")
            else:
                if not self._stopping:
                    on_exit("the engine core stopped")

        self._thread = threading.Thread(target=run, name="streamhost-engine", daemon=True)
        self._thread.start()

    def send(self, message: CoreInput) -> None:
        if self._loop is not None:
            self._loop.submit(message)

    def close(self) -> None:
        """Stop the loop and wait for it (blocking)."""
        self._stopping = True
        if self._loop is not None and self._thread is not None:
            self._loop.submit(CoreInput(shutdown=True))
            self._thread.join()


class ProcessCore:
    """The core in its own process (the default): spawned, pinned, reached over ZeroMQ."""

    def __init__(self, model: str, config: EngineConfig, placement: CorePlacement, log_level: str = "INFO") -> None:
        import zmq

        from streamhost.engine.core_proc import CoreSpec

        self.placement = placement
        self._dir = tempfile.mkdtemp(prefix="streamhost-core-")
        input_address = f"ipc://{self._dir}/in"
        output_address = f"ipc://{self._dir}/out"
        self._zmq = zmq
        self._context = zmq.Context()
        self._in = self._context.socket(zmq.PUSH)
        self._in.bind(input_address)
        self._out = self._context.socket(zmq.PULL)
        self._out.bind(output_address)
        self._send_lock = threading.Lock()
        self._closing = False
        self._exited = threading.Event()
        self._receiver: threading.Thread | None = None
        threads = core_threads(placement, os.environ.get("OMP_NUM_THREADS"))
        spec = CoreSpec(model, config, input_address, output_address, placement.engine_cpus, threads, log_level)
        # A fresh interpreter (not a fork: the server's torch and tokenizer threads would be copied in
        # an undefined state; not multiprocessing's spawn: it re-runs the parent's __main__), with
        # the OpenMP pool sized to its cores in its environment before torch loads.
        env = core_environment(dict(os.environ), threads, config.omp_spin)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamhost.engine.core_proc"], stdin=subprocess.PIPE, env=env
        )
        assert self.process.stdin is not None
        self.process.stdin.write(pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL))
        self.process.stdin.close()
        self._pidfd = os.pidfd_open(self.process.pid)
        try:
            self.info: CoreInfo = self._await_ready()
        except BaseException:
            self._kill()
            self._cleanup()
            raise
        log.info(
            "engine core process %d: %s, %s torch threads", self.process.pid, placement.describe(), self.info.threads
        )
        if placement.frontend_cpus is not None:
            pin_this_process(placement.frontend_cpus)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None and not self._exited.is_set()

    def _await_ready(self) -> CoreInfo:
        poller = self._zmq.Poller()
        poller.register(self._out, self._zmq.POLLIN)
        poller.register(self._pidfd, self._zmq.POLLIN)
        while True:
            events = dict(poller.poll())
            if self._out in events:
                kind, payload = pickle.loads(self._out.recv())
                if kind == "ready":
                    return payload
                if kind == "error":
                    raise RuntimeError(payload)
            elif events:
                code = self.process.wait(5)
                raise RuntimeError(f"the engine core process exited while loading ({_exit_text(code)})")

    def start(self, on_output: OutputHandler, on_exit: ExitHandler) -> None:
        self._receiver = threading.Thread(
            target=self._receive, args=(on_output, on_exit), name="streamhost-core-out", daemon=True
        )
        self._receiver.start()

    def _receive(self, on_output: OutputHandler, on_exit: ExitHandler) -> None:
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self._out, zmq.POLLIN)
        poller.register(self._pidfd, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll(500))
                if self._out in events:
                    while True:
                        try:
                            raw = self._out.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        kind, payload = pickle.loads(raw)
                        if kind == "out":
                            on_output(payload)
                elif events or self.process.poll() is not None:
                    code = self.process.wait(5)
                    self._exited.set()
                    if not self._closing:
                        on_exit(f"the engine core process exited ({_exit_text(code)})")
                    return
                elif self._closing:
                    return
        finally:
            self._out.close(linger=0)

    def send(self, message: CoreInput) -> None:
        raw = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._send_lock:
            if not self._closing:
                self._in.send(raw)

    def close(self) -> None:
        """Tell the core to stop, wait for it (then kill it), release the sockets (blocking)."""
        with self._send_lock:
            if self._closing:
                return
            self._closing = True
            if self.process.poll() is None:
                self._in.send(pickle.dumps(CoreInput(shutdown=True)))
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("the engine core did not stop within %g s: killing it", STOP_TIMEOUT_S)
            self._kill()
        self._cleanup()

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)

    def _cleanup(self) -> None:
        self._in.close(linger=0)
        if self._receiver is None:
            self._out.close(linger=0)
        else:
            self._receiver.join(2)  # it closes its own socket (a ZeroMQ socket belongs to one thread)
        os.close(self._pidfd)
        shutil.rmtree(self._dir, ignore_errors=True)


def core_environment(env: dict[str, str], threads: int, spin: int | None) -> dict[str, str]:
    """The core process's environment: its OpenMP pool sized to its cores and, unless the operator
    chose ``OMP_WAIT_POLICY=ACTIVE`` or a ``GOMP_SPINCOUNT`` of their own, threads that spin ``spin``
    times (default :data:`DEFAULT_OMP_SPIN`) at each barrier before they sleep.

    Sleeping at once (PASSIVE) made llama.cpp decode 3x slower and torch 1.6x slower here: a step
    is hundreds of short parallel regions, each woken through the kernel. Spinning without end
    (ACTIVE, or libgomp's ~3 ms default) collapsed decode when other processes shared the cores,
    since a spinning thread holds a core its peer needs. See docs/architecture.md, "OpenMP spin"."""
    env = {**env, "OMP_NUM_THREADS": str(threads)}
    if env.get("OMP_WAIT_POLICY", "").strip().upper() != "ACTIVE":
        env.setdefault("GOMP_SPINCOUNT", str(DEFAULT_OMP_SPIN if spin is None else spin))
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the spin count above still applies
    return env


def core_threads(placement: CorePlacement, omp_num_threads: str | None) -> int:
    """One torch thread per core of the engine, or fewer when OMP_NUM_THREADS says so (the platform
    sets it for instances that share a machine)."""
    threads = placement.threads
    if omp_num_threads and omp_num_threads.strip().isdigit() and int(omp_num_threads) > 0:
        threads = min(threads, int(omp_num_threads))
    return threads


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
