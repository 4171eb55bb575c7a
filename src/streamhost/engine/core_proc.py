"""The engine-core process: load the model, then run :class:`~streamhost.engine.core.CoreLoop`.

Started as ``python -m streamhost.engine.core_proc`` with its spec pickled on stdin (a fork would
copy the server's torch and tokenizer threads in an undefined state). Before torch is imported it
pins itself to its cores and sizes the OpenMP pool to them; ``OMP_WAIT_POLICY`` comes from the
server's environment, PASSIVE unless set (engine/core_client.py says why). It speaks to the front
end over two ZeroMQ PUSH/PULL sockets on ``ipc://`` paths, one pickled message per step each way.
It exits when told to, and on its own when the server process that started it is gone.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

from streamhost.log_setup import configure_logging  # logging and sys only: safe before torch

log = logging.getLogger("streamhost.engine.core")

PARENT_CHECK_S = 1.0  # how often the input thread checks that the server process still exists


@dataclass(frozen=True)
class CoreSpec:
    """What the process needs to start: the model, the config, where to talk, where to run."""

    model: str
    config: Any  # EngineConfig
    input_address: str
    output_address: str
    cpus: tuple[int, ...]
    threads: int
    log_level: str = "INFO"


def main(spec: CoreSpec) -> None:
    """Run the core described by ``spec`` until told to stop."""
    parent = os.getppid()
    # The server decides when its core stops: a Ctrl+C or a SIGTERM sent to the whole process group
    # starts the server's drain, which needs the core until the last stream has ended.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    threads = spec.threads
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch loads (the parent sets it too)
    configure_logging(spec.log_level, "streamhost core")

    import zmq

    context = zmq.Context()
    inbound = context.socket(zmq.PULL)
    inbound.connect(spec.input_address)
    outbound = context.socket(zmq.PUSH)
    outbound.connect(spec.output_address)

    def send(kind: str, payload: Any) -> None:
        outbound.send(pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL))

    try:
        import torch

        from streamhost.engine.core import CoreLoop, EngineCore
        from streamhost.engine.executors import load_executor

        torch.set_num_threads(threads)
        executor = load_executor(spec.model, spec.config)
        core = EngineCore(executor, spec.config)
        info = core.info()
    except Exception as exc:  # reported to the front end, which fails the load with it
        log.debug("the engine core could not load %s", spec.model, exc_info=True)
        send("error", f"{type(exc).__name__}: {exc}")
        outbound.close(linger=2000)
        sys.exit(1)
    info.pid, info.cpus, info.threads = os.getpid(), list(os.sched_getaffinity(0)), torch.get_num_threads()
    send("ready", info)
    loop = CoreLoop(core, lambda out: send("out", out))
    threading.Thread(target=_receive, args=(inbound, loop, parent), name="streamhost-core-in", daemon=True).start()
    loop.run()
    log.debug("engine core stopped")
    outbound.close(linger=1000)  # what is still queued goes out first
    inbound.close(linger=0)
    context.term()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the interpreter's teardown of torch and the model (seconds, nothing to save)


def _receive(inbound: Any, loop: Any, parent: int) -> None:
    """Hand each input message to the loop; stop the loop when told to or when the server is gone."""
    from streamhost.engine.core_messages import CoreInput

    while True:
        if inbound.poll(int(PARENT_CHECK_S * 1000)):
            message = pickle.loads(inbound.recv())
            loop.submit(message)
            if message.shutdown:
                return
        elif os.getppid() != parent:
            log.warning("the server process is gone: stopping the engine core")
            loop.submit(CoreInput(shutdown=True))
            return


if __name__ == "__main__":  # started by engine/core_client.py: the spec arrives pickled on stdin
    main(pickle.load(sys.stdin.buffer))
