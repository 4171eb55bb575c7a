"""``UpdateEndpointWeightsAndCapacities``: change a live endpoint's instance counts and variant weights.

As on AWS the call answers at once with the endpoint ``Updating``; the supervisor starts or
drains instances while the endpoint keeps serving, then records the new counts and weights
(DescribeEndpoint's DesiredInstanceCount and CurrentWeight) and returns it to ``InService``.
Works the same for local processes and a Ray cluster: the placement decides where new
instances go. Registered through ``ControlPlane.register`` so the control plane only dispatches.
"""

from __future__ import annotations

from typing import Any, Protocol

from .control_plane import ApiError, ControlPlane

OPERATION = "UpdateEndpointWeightsAndCapacities"


class CapacityLifecycle(Protocol):
    def endpoint_capacity_changed(self, name: str, desired: dict[str, dict[str, Any]]) -> None: ...


def _desired(
    record_name: str, variants: list[dict[str, Any]], entries: list[dict[str, Any]], max_instances: int
) -> dict[str, dict[str, Any]]:
    """Check each DesiredWeightAndCapacity against the endpoint's variants; ``{variant: {count, weight}}``."""
    known = {v["VariantName"].lower(): v for v in variants}
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        name = entry["VariantName"]
        if name.lower() not in known:
            raise ApiError(
                "ValidationException",
                f'The variant "{name}" is not present in endpoint "{record_name}" '
                f"(variants: {', '.join(v['VariantName'] for v in variants)}).",
            )
        if known[name.lower()]["VariantName"] in out:
            raise ApiError(
                "ValidationException", f'Variant "{name}" appears more than once in DesiredWeightsAndCapacities.'
            )
        if entry.get("ServerlessUpdateConfig") is not None:
            raise ApiError(
                "ValidationException", "ServerlessUpdateConfig is not supported: this platform runs instances"
            )
        count, weight = entry.get("DesiredInstanceCount"), entry.get("DesiredWeight")
        if count is None and weight is None:
            raise ApiError(
                "ValidationException", f'Give DesiredInstanceCount or DesiredWeight (or both) for variant "{name}".'
            )
        if count is not None and count < 1:
            raise ApiError(
                "ValidationException",
                f'DesiredInstanceCount of variant "{name}" must be at least 1 (scaling to zero needs '
                "inference components, which this platform does not run); got {count}.",
            )
        if weight is not None and weight < 0:
            raise ApiError("ValidationException", f'DesiredWeight of variant "{name}" must be 0 or more; got {weight}.')
        out[known[name.lower()]["VariantName"]] = {"count": count, "weight": weight}
    total = sum(out.get(v["VariantName"], {}).get("count") or int(v.get("InitialInstanceCount", 1)) for v in variants)
    if total > max_instances:
        raise ApiError(
            "ResourceLimitExceeded",
            f"The endpoint would run {total} instances; this platform runs at most {max_instances} per endpoint",
        )
    return out


def register(control: ControlPlane, lifecycle: CapacityLifecycle) -> None:
    """Add UpdateEndpointWeightsAndCapacities to ``control``, handing the work to ``lifecycle``."""

    def update_weights_and_capacities(p: dict[str, Any]) -> dict[str, Any]:
        name = p["EndpointName"]
        record = control.store.get_endpoint(name)
        if record is None:
            raise ApiError("ValidationException", f'Could not find endpoint "{control.arn("endpoint", name)}".')
        if record.status != "InService":
            raise ApiError(
                "ValidationException",
                f'Cannot update in-progress endpoint "{record.arn}" (status {record.status}); '
                "wait until it is InService",
            )
        variants = record.deployment["config"]["ProductionVariants"]
        desired = _desired(record.name, variants, p["DesiredWeightsAndCapacities"], control.max_instances)
        if not control.store.transition(record.name, ["InService"], "Updating", failure_reason=None):
            raise ApiError("ValidationException", f'Cannot update in-progress endpoint "{record.arn}".')
        lifecycle.endpoint_capacity_changed(record.name, desired)
        return {"EndpointArn": record.arn}

    control.register(OPERATION, update_weights_and_capacities)
