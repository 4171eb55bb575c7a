"""Which CPUs the engine core runs on and which the front end keeps.

``--engine-cores`` / ``STREAMHOST_ENGINE_CORES`` take a count (``1``: the last core of the ones
this process may use) or a CPU list (``0-1``, ``0,2-3``; one CPU as a list: ``3-3``). Without one the default comes from the
CPU count: see :data:`FRONTEND_RESERVED_CPUS` for the measurement behind it. The front end is
pinned to the cores the engine does not take; when the engine takes them all, the front end
shares them (it is mostly idle between steps).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

# Cores kept for the front end (HTTP, tokenizing, detokenizing) by default, by how many the server
# may use; the engine core gets the rest. vLLM's CPU backend reserves one. On this 2-core machine
# the core on both cores (front end sharing, OpenMP PASSIVE) made 1.50x main's 1-stream and 1.08x
# its 16-stream tok/s; one core each for core and front end made 0.87x that at 16 streams
# (docs/architecture.md, "Engine core placement").
FRONTEND_RESERVED_CPUS = {1: 0, 2: 0}
LARGE_MACHINE_RESERVED = 1  # 3 or more cores: one for the front end, as vLLM's CPU backend does


@dataclass(frozen=True)
class CorePlacement:
    engine_cpus: tuple[int, ...]
    frontend_cpus: tuple[int, ...] | None  # None: not pinned (shares the engine's cores)

    @property
    def threads(self) -> int:
        return len(self.engine_cpus)

    def describe(self) -> str:
        front = "shared" if self.frontend_cpus is None else format_cpus(self.frontend_cpus)
        return f"engine core on CPUs {format_cpus(self.engine_cpus)}, front end {front}"


def parse_cpus(text: str) -> tuple[int, ...]:
    """``"0-1,3"`` -> ``(0, 1, 3)``; ValueError on anything else."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty item in CPU list {text!r}")
        low, sep, high = part.partition("-")
        first, last = int(low), int(high) if sep else int(low)
        if first < 0 or last < first:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def format_cpus(cpus: Sequence[int]) -> str:
    """``(0, 1, 3)`` -> ``"0-1,3"`` (the kernel's Cpus_allowed_list form)."""
    parts: list[str] = []
    ordered = sorted(cpus)
    start = prev = ordered[0] if ordered else 0
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts)


def check_spec(spec: str) -> None:
    """Fail early (at settings time) on a malformed ``--engine-cores`` value."""
    text = spec.strip()
    if text.isdigit():
        if int(text) < 1:
            raise ValueError(f"--engine-cores {spec!r} is not valid: expected a count >= 1 or a CPU list like 0-1")
        return
    try:
        parse_cpus(text)
    except ValueError:
        raise ValueError(
            f"--engine-cores {spec!r} is not valid: expected a count >= 1 or a CPU list like 0-1"
        ) from None


def plan_placement(spec: str | None, available: Sequence[int] | None = None) -> CorePlacement:
    """The engine's and the front end's CPUs for ``spec`` on the CPUs this process may use."""
    usable = tuple(sorted(available if available is not None else os.sched_getaffinity(0)))
    if spec is None or not spec.strip():
        reserved = FRONTEND_RESERVED_CPUS.get(len(usable), LARGE_MACHINE_RESERVED)
        count = max(1, len(usable) - reserved)
        engine = usable[len(usable) - count :]
    elif spec.strip().isdigit():
        count = min(max(1, int(spec)), len(usable))
        engine = usable[len(usable) - count :]
    else:
        engine = parse_cpus(spec)
    rest = tuple(cpu for cpu in usable if cpu not in engine)
    return CorePlacement(engine_cpus=engine, frontend_cpus=rest or None)


def pin_this_process(cpus: Sequence[int]) -> None:
    """Pin every thread of this process (sched_setaffinity(0) covers the calling thread only)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that just ended
            pass
