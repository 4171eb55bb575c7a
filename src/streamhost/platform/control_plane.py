"""The SageMaker control plane (JSON 1.1): models, endpoint configs and endpoints.

``ControlPlane.handle(target, body)`` answers one ``POST /`` call. Before any handler runs, the
request is read and checked against botocore's own SageMaker service model (``service_model.py``:
SerializationException for wrong JSON types, AWS's ValidationException wording for constraints),
so a handler receives typed input that fits the model. The handler then applies AWS's rules
(duplicates, references that must exist), writes the store and hands endpoint work to the supervisor, which runs it in the background: CreateEndpoint answers
at once with the endpoint ``Creating``, exactly as AWS does, and clients poll DescribeEndpoint.

An endpoint keeps a snapshot of the config and models it runs (``deployment``), because AWS lets
a config or model be deleted while an endpoint still uses it (the SageMaker Python SDK deletes the
config before the endpoint, docs/protocols.md §6) and a restarted platform must still know what to run.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from streamhost.protocols.sagemaker import arn, name_error, valid_name

from .artifacts import ArtifactError, ArtifactStore, model_data_of
from .images import ImageError, classify_image
from .service_model import RequestError, ServiceValidator, parse_json_object
from .store import ConfigRecord, EndpointRecord, ModelRecord, Store

log = logging.getLogger("streamhost.platform")

TARGET_PREFIX = "SageMaker."
ROUTING_STRATEGIES = ("LEAST_OUTSTANDING_REQUESTS", "RANDOM")
DEFAULT_STARTUP_TIMEOUT = 600
DEFAULT_DOWNLOAD_TIMEOUT = 600
LIVE_STATUSES = ("InService", "Updating", "SystemUpdating", "RollingBack")


class ApiError(RequestError):
    """A control-plane error: answered as ``{"__type": code, "message": message}`` with ``status``."""


class Lifecycle(Protocol):
    """What the control plane asks of the supervisor; each call returns at once."""

    def endpoint_created(self, name: str) -> None: ...
    def endpoint_updated(self, name: str) -> None: ...
    def endpoint_deleted(self, name: str) -> None: ...
    def runtime_view(self, name: str) -> dict[str, dict[str, Any]]: ...


class ControlPlane:
    """Dispatches ``SageMaker.<Op>`` calls; ``register`` lets other subsystems add operations."""

    def __init__(
        self,
        store: Store,
        lifecycle: Lifecycle,
        artifacts: ArtifactStore,
        *,
        region: str = "us-east-1",
        account: str = "123456789012",
        max_instances: int = 16,
        eula_lookup: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.artifacts = artifacts
        self.region = region
        self.account = account
        self.max_instances = max_instances
        self.eula_lookup = eula_lookup
        self.validator = ServiceValidator.for_service("sagemaker")
        self.operations: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]]] = {
            "CreateModel": self.create_model,
            "DescribeModel": self.describe_model,
            "ListModels": self.list_models,
            "DeleteModel": self.delete_model,
            "CreateEndpointConfig": self.create_endpoint_config,
            "DescribeEndpointConfig": self.describe_endpoint_config,
            "ListEndpointConfigs": self.list_endpoint_configs,
            "DeleteEndpointConfig": self.delete_endpoint_config,
            "CreateEndpoint": self.create_endpoint,
            "DescribeEndpoint": self.describe_endpoint,
            "ListEndpoints": self.list_endpoints,
            "UpdateEndpoint": self.update_endpoint,
            "DeleteEndpoint": self.delete_endpoint,
        }

    def register(self, operation: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Add an operation (e.g. the training subsystem's CreateTrainingJob).

        An operation of the SageMaker service model is checked against it before ``handler`` runs,
        like every built-in one; an operation the model lacks gets the parsed JSON object as is.
        """
        self.operations[operation] = handler

    def arn(self, kind: str, name: str) -> str:
        return arn(self.region, self.account, kind, name)

    # ------------------------------------------------------------------ entry point

    @staticmethod
    def operation_name(target: str | None) -> str:
        """``SageMaker.CreateModel`` -> ``CreateModel`` ('' when the header is missing or foreign)."""
        if not target or not target.startswith(TARGET_PREFIX):
            return ""
        return target[len(TARGET_PREFIX) :]

    async def handle(self, target: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        """``(status, JSON body)`` for one call; never raises for bad input."""
        op = self.operation_name(target)
        try:
            handler = self.operations.get(op)
            if handler is None:
                shown = target or "(no X-Amz-Target header)"
                raise ApiError(
                    "UnknownOperationException",
                    f"Operation {shown} is not supported by this platform; supported: "
                    + ", ".join(sorted(self.operations)),
                )
            params = self._input(op, body)
            result = handler(params)
            if isinstance(result, Awaitable):
                result = await result
            return 200, result
        except RequestError as exc:
            return exc.status, {"__type": exc.code, "message": exc.message}
        except Exception as exc:
            log.exception("%s failed", op)
            return 500, {"__type": "InternalFailure", "message": f"{op} failed inside the platform: {exc}"}

    def _input(self, op: str, body: bytes) -> dict[str, Any]:
        """The handler's input: read and checked against the service model (``service_model.py``)."""
        if self.validator.operation(op) is None:
            return parse_json_object(body)
        return self.validator.load(op, body)

    # ------------------------------------------------------------------ shared checks

    @staticmethod
    def _check_name(kind: str, name: str) -> None:
        if not valid_name(name):
            raise ApiError("ValidationException", name_error(kind, name))

    def _missing(self, kind: str, arn_kind: str, name: str) -> ApiError:
        return ApiError("ValidationException", f'Could not find {kind} "{self.arn(arn_kind, name)}".')

    def _exists(self, kind: str, arn_kind: str, name: str) -> ApiError:
        return ApiError("ValidationException", f'Cannot create already existing {kind} "{self.arn(arn_kind, name)}".')

    # ------------------------------------------------------------------ models

    def create_model(self, p: dict[str, Any]) -> dict[str, Any]:
        name = p["ModelName"]
        self._check_name("Model", name)
        containers = p.get("Containers") or []
        primary = p.get("PrimaryContainer")
        if primary is None and not containers:
            raise ApiError("ValidationException", "Either PrimaryContainer or Containers must be given")
        if primary is not None and containers:
            raise ApiError("ValidationException", "Give either PrimaryContainer or Containers, not both")
        if len(containers) > 1:
            raise ApiError(
                "ValidationException",
                "Inference pipelines (more than one container) are not supported; give one container",
            )
        container = primary if primary is not None else containers[0]
        if container.get("Mode", "SingleModel") != "SingleModel":
            raise ApiError("ValidationException", "Only Mode=SingleModel is supported")
        try:
            classify_image(container.get("Image"))
        except ImageError as exc:
            raise ApiError("ValidationException", str(exc)) from None
        data = model_data_of(container)
        if data is not None:
            try:
                self.artifacts.check(data)
            except ArtifactError as exc:
                raise ApiError("ValidationException", str(exc)) from None
        spec = {k: v for k, v in p.items() if k != "ModelName"}
        eula = bool(self.eula_lookup(container)) if self.eula_lookup else False
        model_arn = self.arn("model", name)
        if not self.store.insert_model(name, model_arn, spec, eula_required=eula):
            raise self._exists("model", "model", name)
        return {"ModelArn": model_arn}

    def _get_model(self, name: str) -> ModelRecord:
        record = self.store.get_model(name)
        if record is None:
            raise self._missing("model", "model", name)
        return record

    def describe_model(self, p: dict[str, Any]) -> dict[str, Any]:
        record = self._get_model(p["ModelName"])
        spec = record.spec
        out: dict[str, Any] = {"ModelName": record.name, "ModelArn": record.arn, "CreationTime": record.created}
        for key in ("PrimaryContainer", "Containers", "ExecutionRoleArn", "VpcConfig", "InferenceExecutionConfig"):
            if key in spec:
                out[key] = spec[key]
        out["EnableNetworkIsolation"] = bool(spec.get("EnableNetworkIsolation", False))
        return out

    def list_models(self, p: dict[str, Any]) -> dict[str, Any]:
        items = [{"ModelName": m.name, "ModelArn": m.arn, "CreationTime": m.created} for m in self.store.list_models()]
        page, token = self._paginate(p, items, "ModelName", {"Name": "ModelName", "CreationTime": "CreationTime"})
        return self._with_token({"Models": page}, token)

    def delete_model(self, p: dict[str, Any]) -> dict[str, Any]:
        if not self.store.delete_model(p["ModelName"]):
            raise self._missing("model", "model", p["ModelName"])
        return {}

    # ------------------------------------------------------------------ endpoint configs

    def create_endpoint_config(self, p: dict[str, Any]) -> dict[str, Any]:
        name = p["EndpointConfigName"]
        self._check_name("Endpoint config", name)
        variants = p["ProductionVariants"]  # 1-10 variants, names, counts and timeouts: checked by the model
        seen: set[str] = set()
        total = 0
        for variant in variants:
            vname = variant["VariantName"]
            self._check_name("Variant", vname)
            if vname.lower() in seen:
                raise ApiError("ValidationException", f"Variant name {vname!r} is used more than once")
            seen.add(vname.lower())
            model_name = variant.get("ModelName")
            if not model_name:
                raise ApiError("ValidationException", f"Variant {vname!r} needs a ModelName")
            self._get_model(model_name)
            if variant.get("ServerlessConfig") is None and "InitialInstanceCount" not in variant:
                raise ApiError("ValidationException", f"Variant {vname!r} needs an InitialInstanceCount")
            total += int(variant.get("InitialInstanceCount", 1))
            strategy = (variant.get("RoutingConfig") or {}).get("RoutingStrategy", "LEAST_OUTSTANDING_REQUESTS")
            if strategy not in ROUTING_STRATEGIES:  # the model also names PREFIX_AWARE and KV_AWARE
                raise ApiError(
                    "ValidationException",
                    f"RoutingStrategy {strategy!r} of variant {vname!r} is not one of {', '.join(ROUTING_STRATEGIES)}",
                )
        if total > self.max_instances:
            raise ApiError(
                "ResourceLimitExceeded",
                f"The config asks for {total} instances; this platform runs at most {self.max_instances} per endpoint",
            )
        config_arn = self.arn("endpoint-config", name)
        spec = {k: v for k, v in p.items() if k != "EndpointConfigName"}
        if not self.store.insert_config(name, config_arn, spec):
            raise self._exists("endpoint configuration", "endpoint-config", name)
        return {"EndpointConfigArn": config_arn}

    def _get_config(self, name: str) -> ConfigRecord:
        record = self.store.get_config(name)
        if record is None:
            raise self._missing("endpoint configuration", "endpoint-config", name)
        return record

    def describe_endpoint_config(self, p: dict[str, Any]) -> dict[str, Any]:
        record = self._get_config(p["EndpointConfigName"])
        out = {"EndpointConfigName": record.name, "EndpointConfigArn": record.arn, "CreationTime": record.created}
        out.update({k: v for k, v in record.spec.items() if k != "Tags"})
        return out

    def list_endpoint_configs(self, p: dict[str, Any]) -> dict[str, Any]:
        items = [
            {"EndpointConfigName": c.name, "EndpointConfigArn": c.arn, "CreationTime": c.created}
            for c in self.store.list_configs()
        ]
        page, token = self._paginate(
            p, items, "EndpointConfigName", {"Name": "EndpointConfigName", "CreationTime": "CreationTime"}
        )
        return self._with_token({"EndpointConfigs": page}, token)

    def delete_endpoint_config(self, p: dict[str, Any]) -> dict[str, Any]:
        # Allowed while an endpoint uses it: the endpoint runs from its own snapshot.
        if not self.store.delete_config(p["EndpointConfigName"]):
            raise self._missing("endpoint configuration", "endpoint-config", p["EndpointConfigName"])
        return {}

    # ------------------------------------------------------------------ endpoints

    def snapshot(self, config_name: str) -> dict[str, Any]:
        """What an endpoint runs: the config and every model it names, copied at Create/UpdateEndpoint."""
        config = self._get_config(config_name)
        models: dict[str, Any] = {}
        for variant in config.spec["ProductionVariants"]:
            model = self._get_model(variant["ModelName"])
            models[variant["ModelName"]] = {"spec": model.spec, "eula_required": model.eula_required, "arn": model.arn}
        return {"config_name": config.name, "config": config.spec, "models": models}

    def create_endpoint(self, p: dict[str, Any]) -> dict[str, Any]:
        name = p["EndpointName"]
        self._check_name("Endpoint", name)
        if self.store.get_endpoint(name) is not None:
            raise self._exists("endpoint", "endpoint", name)
        deployment = self.snapshot(p["EndpointConfigName"])
        endpoint_arn = self.arn("endpoint", name)
        if not self.store.insert_endpoint(
            name, endpoint_arn, deployment["config_name"], deployment, tags=p.get("Tags") or []
        ):
            raise self._exists("endpoint", "endpoint", name)
        self.lifecycle.endpoint_created(name)
        return {"EndpointArn": endpoint_arn}

    def _get_endpoint(self, name: str) -> EndpointRecord:
        record = self.store.get_endpoint(name)
        if record is None:
            raise self._missing("endpoint", "endpoint", name)
        return record

    def _variant_summaries(self, record: EndpointRecord, deployment: dict[str, Any], live: bool) -> list[dict]:
        runtime = self.lifecycle.runtime_view(record.name) if live else {}
        out = []
        for variant in deployment["config"]["ProductionVariants"]:
            vname = variant["VariantName"]
            container = _container(deployment["models"].get(variant["ModelName"], {}).get("spec", {}))
            image = container.get("Image") or "streamhost"
            try:
                resolved = classify_image(container.get("Image")).resolved
            except ImageError:
                resolved = image
            info = runtime.get(vname, {})
            weight = float(variant.get("InitialVariantWeight", 1.0))
            summary: dict[str, Any] = {
                "VariantName": vname,
                "DeployedImages": [
                    {"SpecifiedImage": image, "ResolvedImage": resolved, "ResolutionTime": record.modified}
                ],
                "CurrentWeight": weight,
                "DesiredWeight": weight,
                "CurrentInstanceCount": int(info.get("ready", 0)),
                "DesiredInstanceCount": int(variant.get("InitialInstanceCount", 1)),
            }
            if "InstanceType" in variant:
                summary["InstanceType"] = variant["InstanceType"]
            if "RoutingConfig" in variant:
                summary["RoutingConfig"] = variant["RoutingConfig"]
            if info.get("status"):
                summary["VariantStatus"] = [
                    {"Status": info["status"], "StatusMessage": info.get("message", ""), "StartTime": record.modified}
                ]
            out.append(summary)
        return out

    def describe_endpoint(self, p: dict[str, Any]) -> dict[str, Any]:
        record = self._get_endpoint(p["EndpointName"])
        out: dict[str, Any] = {
            "EndpointName": record.name,
            "EndpointArn": record.arn,
            "EndpointConfigName": record.config_name,
            "EndpointStatus": record.status,
            "CreationTime": record.created,
            "LastModifiedTime": record.modified,
            "ProductionVariants": self._variant_summaries(record, record.deployment, live=True),
        }
        if record.failure_reason:
            out["FailureReason"] = record.failure_reason
        if record.pending is not None and record.status in ("Updating", "RollingBack"):
            out["PendingDeploymentSummary"] = {
                "EndpointConfigName": record.pending["config_name"],
                "ProductionVariants": self._variant_summaries(record, record.pending, live=False),
                "StartTime": record.modified,
            }
        return out

    def list_endpoints(self, p: dict[str, Any]) -> dict[str, Any]:
        items = [
            {
                "EndpointName": e.name,
                "EndpointArn": e.arn,
                "CreationTime": e.created,
                "LastModifiedTime": e.modified,
                "EndpointStatus": e.status,
            }
            for e in self.store.list_endpoints()
        ]
        if p.get("StatusEquals"):
            items = [i for i in items if i["EndpointStatus"] == p["StatusEquals"]]
        for field, key, before in (
            ("LastModifiedTimeBefore", "LastModifiedTime", True),
            ("LastModifiedTimeAfter", "LastModifiedTime", False),
        ):
            if field in p:
                bound = float(p[field])
                items = [i for i in items if (_epoch_of(i[key]) < bound if before else _epoch_of(i[key]) > bound)]
        page, token = self._paginate(
            p,
            items,
            "EndpointName",
            {"Name": "EndpointName", "CreationTime": "CreationTime", "Status": "EndpointStatus"},
        )
        return self._with_token({"Endpoints": page}, token)

    def update_endpoint(self, p: dict[str, Any]) -> dict[str, Any]:
        record = self._get_endpoint(p["EndpointName"])
        if record.status not in ("InService", "Failed"):
            raise ApiError(
                "ValidationException",
                f'Cannot update in-progress endpoint "{record.arn}" (status {record.status}); '
                "wait until it is InService",
            )
        pending = self.snapshot(p["EndpointConfigName"])
        if not self.store.transition(record.name, [record.status], "Updating", pending=pending, failure_reason=None):
            raise ApiError("ValidationException", f'Cannot update in-progress endpoint "{record.arn}".')
        self.lifecycle.endpoint_updated(record.name)
        return {"EndpointArn": record.arn}

    def delete_endpoint(self, p: dict[str, Any]) -> dict[str, Any]:
        record = self._get_endpoint(p["EndpointName"])
        if record.status != "Deleting":
            self.store.transition(record.name, None, "Deleting")
        self.lifecycle.endpoint_deleted(record.name)
        return {}

    # ------------------------------------------------------------------ listing

    def _paginate(
        self, p: dict[str, Any], items: list[dict[str, Any]], name_key: str, sort_keys: dict[str, str]
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Filter, sort and cut one page; the token remembers the last item's sort position."""
        if p.get("NameContains"):
            needle = str(p["NameContains"]).lower()
            items = [i for i in items if needle in i[name_key].lower()]
        if "CreationTimeBefore" in p:
            bound = float(p["CreationTimeBefore"])
            items = [i for i in items if i["CreationTime"] < bound]
        if "CreationTimeAfter" in p:
            bound = float(p["CreationTimeAfter"])
            items = [i for i in items if i["CreationTime"] > bound]
        sort_by = p.get("SortBy", "CreationTime")
        if sort_by not in sort_keys:
            raise ApiError("ValidationException", f"SortBy must be one of {', '.join(sort_keys)}, got {sort_by!r}")
        order = p.get("SortOrder", "Descending")
        if order not in ("Ascending", "Descending"):
            raise ApiError("ValidationException", f"SortOrder must be Ascending or Descending, got {order!r}")
        key = sort_keys[sort_by]

        def position(item: dict[str, Any]) -> list[Any]:
            value = item[key]
            return [value.lower() if isinstance(value, str) else value, item[name_key].lower()]

        items.sort(key=position, reverse=order == "Descending")
        limit = p.get("MaxResults", 10)
        if not 1 <= limit <= 100:
            raise ApiError("ValidationException", f"MaxResults must be 1-100, got {limit}")
        if p.get("NextToken"):
            after = self._decode_token(p["NextToken"], sort_by, order)
            if order == "Descending":
                items = [i for i in items if position(i) < after]
            else:
                items = [i for i in items if position(i) > after]
        page = items[:limit]
        token = None
        if len(items) > limit:
            token = base64.urlsafe_b64encode(
                json.dumps({"s": sort_by, "o": order, "p": position(page[-1])}).encode()
            ).decode()
        return page, token

    @staticmethod
    def _decode_token(token: str, sort_by: str, order: str) -> list[Any]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            if data["s"] != sort_by or data["o"] != order:
                raise ValueError
            return list(data["p"])
        except Exception:
            raise ApiError(
                "ValidationException", "NextToken is not valid for this request (use it with the same SortBy/SortOrder)"
            ) from None

    @staticmethod
    def _with_token(out: dict[str, Any], token: str | None) -> dict[str, Any]:
        if token:
            out["NextToken"] = token
        return out


def _container(model_spec: dict[str, Any]) -> dict[str, Any]:
    """The one container of a model spec (PrimaryContainer, or Containers[0])."""
    if model_spec.get("PrimaryContainer"):
        return model_spec["PrimaryContainer"]
    containers = model_spec.get("Containers") or []
    return containers[0] if containers else {}


container_of = _container


def _epoch_of(value: Any) -> float:
    """A stored time (epoch seconds) as a float, for the list filters' comparisons."""
    return float(value)
