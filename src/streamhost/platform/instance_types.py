"""What an ``InstanceType`` asks of a Ray cluster: CPUs, GPUs (and any custom resource) per instance.

On AWS the InstanceType names a machine; on a Ray cluster an instance is one actor, so the type
becomes the resources reserved for that actor in the variant's placement group. The table covers
the types used in the posts and the common general-purpose (m5/m6i/m7i), compute (c5/c6i/c7i)
and GPU (g4dn/g5/g6/p3/p4d) families. Users add their own types (``--ray-instance-type``) and
scale the CPU figures down for small nodes (``--ray-cpu-scale``): a laptop-sized node with two
cores could never hold an ``ml.m5.xlarge`` that asks for four.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

Resources = dict[str, float]

_SIZES_CPU = {
    "large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "9xlarge": 36, "12xlarge": 48,
    "16xlarge": 64, "18xlarge": 72, "24xlarge": 96, "32xlarge": 128, "48xlarge": 192,
}  # fmt: skip


def _cpu_family(prefix: str, sizes: tuple[str, ...]) -> dict[str, Resources]:
    return {f"ml.{prefix}.{size}": {"CPU": float(_SIZES_CPU[size])} for size in sizes}


DEFAULT_INSTANCE_TYPES: dict[str, Resources] = {
    "ml.t2.medium": {"CPU": 2.0},
    "ml.t3.medium": {"CPU": 2.0},
    **_cpu_family("m5", ("large", "xlarge", "2xlarge", "4xlarge", "12xlarge", "24xlarge")),
    **_cpu_family("m6i", ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "32xlarge")),
    **_cpu_family("m7i", ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge")),
    **_cpu_family("c5", ("large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "18xlarge")),
    **_cpu_family("c6i", ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "32xlarge")),
    **_cpu_family("c7i", ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge")),
    **_cpu_family("r5", ("large", "xlarge", "2xlarge", "4xlarge", "12xlarge", "24xlarge")),
    # GPU families: (vCPUs, GPUs)
    **{f"ml.g4dn.{s}": {"CPU": float(c), "GPU": float(g)} for s, c, g in (
        ("xlarge", 4, 1), ("2xlarge", 8, 1), ("4xlarge", 16, 1), ("8xlarge", 32, 1), ("12xlarge", 48, 4), ("16xlarge", 64, 1))},
    **{f"ml.g5.{s}": {"CPU": float(c), "GPU": float(g)} for s, c, g in (
        ("xlarge", 4, 1), ("2xlarge", 8, 1), ("4xlarge", 16, 1), ("8xlarge", 32, 1), ("12xlarge", 48, 4),
        ("16xlarge", 64, 1), ("24xlarge", 96, 4), ("48xlarge", 192, 8))},
    **{f"ml.g6.{s}": {"CPU": float(c), "GPU": float(g)} for s, c, g in (
        ("xlarge", 4, 1), ("2xlarge", 8, 1), ("4xlarge", 16, 1), ("8xlarge", 32, 1), ("12xlarge", 48, 4),
        ("16xlarge", 64, 1), ("24xlarge", 96, 4), ("48xlarge", 192, 8))},
    "ml.p3.2xlarge": {"CPU": 8.0, "GPU": 1.0},
    "ml.p3.8xlarge": {"CPU": 32.0, "GPU": 4.0},
    "ml.p3.16xlarge": {"CPU": 64.0, "GPU": 8.0},
    "ml.p4d.24xlarge": {"CPU": 96.0, "GPU": 8.0},
    "ml.p5.48xlarge": {"CPU": 192.0, "GPU": 8.0},
}  # fmt: skip

DEFAULT_INSTANCE_TYPE = "ml.m5.large"


class UnknownInstanceType(ValueError):
    """The InstanceType is not in the table; the message lists how to add it."""


def parse_resources(text: str) -> Resources:
    """``CPU=2,GPU=1,my_accel=1`` or a JSON object -> ``{"CPU": 2.0, ...}``."""
    text = text.strip()
    items: list[tuple[str, object]] = []
    if text.startswith("{"):
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"resources must be a JSON object, got {text!r}")
        items = list(raw.items())
    else:
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, amount_text = part.partition("=")
            if not sep:
                key, sep, amount_text = part.partition(":")
            if not sep or not key.strip():
                raise ValueError(f"resource {part!r} must look like NAME=AMOUNT (e.g. CPU=2,GPU=1)")
            items.append((key.strip(), amount_text))
    out: Resources = {}
    for name, value in items:
        try:
            amount = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"resource {name} must be a number, got {value!r}") from None
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"resource {name} must be a non-negative number, got {value!r}")
        out[str(name)] = amount
    return out


def parse_instance_type_option(text: str) -> tuple[str, Resources]:
    """``ml.custom.small=CPU=1,GPU=0`` (the ``--ray-instance-type`` syntax) -> ``(name, resources)``."""
    name, sep, resources = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--ray-instance-type {text!r} must look like TYPE=CPU=2,GPU=1")
    return name.strip(), parse_resources(resources)


def resources_for(instance_type: str | None, table: Mapping[str, Resources], cpu_scale: float = 1.0) -> Resources:
    """The resources one instance of ``instance_type`` reserves, CPU figures multiplied by ``cpu_scale``."""
    name = instance_type or DEFAULT_INSTANCE_TYPE
    if name not in table:
        raise UnknownInstanceType(
            f"InstanceType {name} is not in the Ray resource table; add it with "
            f"--ray-instance-type {name}=CPU=<n>,GPU=<n> (known: {', '.join(sorted(table)[:8])}, ...)"
        )
    out = {k: v for k, v in table[name].items() if v > 0}
    if "CPU" in out:
        # Ray accepts fractions; keep them readable (0.25, 0.5, 1, 2, ...) and never zero.
        out["CPU"] = max(0.01, round(out["CPU"] * cpu_scale, 2))
    return out


def describe_resources(resources: Mapping[str, float]) -> str:
    """``{"CPU": 4.0, "GPU": 1.0}`` -> ``CPU: 4, GPU: 1``."""
    return ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items()))
