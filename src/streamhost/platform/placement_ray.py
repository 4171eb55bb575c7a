"""Endpoint instances on a Ray cluster (``streamhost serve --ray auto|ADDRESS``).

Each instance is an ``InstanceHost`` actor (``ray_node``) that starts ``streamhost container``
on its node and reports its address; the gateway reaches it over HTTP as it reaches a local
process. What an instance reserves comes from its variant's InstanceType (``instance_types``),
and a variant's instances are reserved together in a placement group: ``STRICT_SPREAD`` (one
instance per node) when enough nodes could hold one, else ``SPREAD`` (best effort), so that losing
a node never takes a whole variant while the cluster allows otherwise.

When a node dies, Ray moves the placement-group bundles it held to other nodes; the supervisor's
watcher (failed pings, or the actor reported dead) restarts the instance, and the new actor is
scheduled into the same bundle, i.e. onto a surviving node. A variant that no node could ever
hold fails at once with a FailureReason naming the missing resources; one that fits but finds
the cluster busy waits up to its ContainerStartupHealthCheckTimeoutInSeconds.

Scaling up (UpdateEndpointWeightsAndCapacities) reserves a further placement group for the new
instances (spread among themselves; Ray has no spreading across groups); a group is removed once
none of its instances is left. A STRICT_SPREAD group whose node dies with no spare node left
keeps that instance pending (the variant serves on the rest) until a node joins.

Ray notices a lost node after its GCS health checks fail (``RAY_health_check_period_ms`` x
``RAY_health_check_failure_threshold`` on the head, 3 s x 5 by default); the gateway stops
routing to the instance at its first refused connection, well before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .artifact_exports import TOKEN_HEADER, ArtifactExports
from .artifacts import ArtifactError, ArtifactStore, ModelData, model_data_of
from .control_plane import container_of
from .images import classify_image
from .instance_types import UnknownInstanceType, describe_resources, resources_for
from .instances import READY, STARTING, STOPPED, STOPPING, UNHEALTHY, LaunchSpec, StartupFailure
from .lmi_packaging import prepare_model_data
from .placement import SpecFactory, container_argv, map_model_path
from .ray_node import InstanceHost
from .settings import PlatformSettings, default_container_command

if TYPE_CHECKING:
    from .supervisor import Deployment, Variant

log = logging.getLogger("streamhost.platform")

_NODE_NAMESPACE = "streamhost"


def alive_nodes() -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]


def fits(node: dict[str, Any], bundle: dict[str, float]) -> bool:
    have = node.get("Resources", {})
    return all(have.get(k, 0.0) >= v for k, v in bundle.items())


def missing_resources(bundle: dict[str, float], nodes: list[dict[str, Any]]) -> str:
    """What no node has, e.g. ``GPU: 1 (the most any node has: 0)``, or that no node has it all together."""
    most = {k: max((n.get("Resources", {}).get(k, 0.0) for n in nodes), default=0.0) for k in bundle}
    missing = [f"{k}: {v:g} (the most any node has: {most[k]:g})" for k, v in sorted(bundle.items()) if most[k] < v]
    return "; ".join(missing) if missing else f"{describe_resources(bundle)} together on one node"


def unplaceable_reason(
    variant: str, instance_type: str | None, bundle: dict[str, float], nodes: list[dict[str, Any]]
) -> str:
    """A FailureReason naming what no node of the cluster has."""
    what = missing_resources(bundle, nodes)
    return (
        f"Cannot place variant {variant} on the Ray cluster: InstanceType {instance_type or 'ml.m5.large'} needs "
        f"{describe_resources(bundle)} per instance and no node ({len(nodes)} alive) has {what}. "
        "Add a node with these resources, choose another InstanceType, or map this type to fewer resources "
        "(--ray-instance-type, --ray-cpu-scale)."
    )


async def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody answers at: ``ray.init`` would retry for minutes."""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", int(port)), timeout)
    except (OSError, ValueError, asyncio.TimeoutError) as exc:
        raise RuntimeError(
            f"--ray {address}: no Ray cluster answers there ({type(exc).__name__}: {exc}); start one with "
            "`ray start --head` and pass the address it prints (host:port), or use --ray auto on one of its nodes"
        ) from None
    writer.close()


@dataclass
class _Group:
    pg: PlacementGroup
    indexes: list[int]


@dataclass
class _VariantSlots:
    """A variant's placement groups and which bundle each instance index uses."""

    bundle: dict[str, float]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # placeholder -> where a node fetches it
    groups: list[_Group] = field(default_factory=list)
    slot: dict[int, tuple[PlacementGroup, int]] = field(default_factory=dict)


class RayInstance:
    """One endpoint instance as a Ray actor; the same surface as a local ``Instance``."""

    def __init__(self, endpoint: str, variant: str, index: int, spec: LaunchSpec, launch: dict[str, Any],
                 slot: tuple[PlacementGroup, int] | None, bundle: dict[str, float]) -> None:  # fmt: skip
        self.endpoint = endpoint
        self.variant = variant
        self.index = index
        self.spec = spec
        self.launch_info = launch
        self.slot = slot
        self.bundle = bundle
        self.state = STARTING
        self.in_flight = 0
        self.served = 0
        self.restarts = 0
        self.started_at = 0.0
        self.on_pid: list = []
        self.node = "pending"
        self.where: dict[str, Any] = {}
        self.actor: Any = None
        self._started: asyncio.Future | None = None
        self._exit: asyncio.Future | None = None
        self._exit_code: int | None = None
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ identity

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.index}"

    @property
    def url(self) -> str | None:
        if self.spec.external:
            return self.spec.url
        return f"http://{self.where['host']}:{self.where['port']}" if self.where else None

    @property
    def pid(self) -> int | None:
        return self.where.get("pid")

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "url": self.url,
            "node": self.node,
            "node_ip": self.where.get("node_ip"),
            "address": self.url,
            "pid": self.pid,
            "resources": self.bundle,
            "in_flight": self.in_flight,
            "served": self.served,
            "restarts": self.restarts,
            "log": f"{self.where['log']} (on node {self.node})" if self.where.get("log") else None,
        }

    # ------------------------------------------------------------------ start

    async def launch(self) -> None:
        """Create the actor in this instance's bundle; it starts the model server once scheduled."""
        if self.actor is not None:  # a restart: the old actor must give its bundle back first
            await self.kill()
            self.actor = None
        self.state = STARTING
        self.started_at = time.monotonic()
        self.where = {}
        self.node = "pending"
        self._exit_code = None
        if self.spec.external:
            return
        options: dict[str, Any] = {"max_restarts": 0, "max_concurrency": 16, "num_cpus": self.bundle.get("CPU", 0.0)}
        if self.bundle.get("GPU"):
            options["num_gpus"] = self.bundle["GPU"]
        custom = {k: v for k, v in self.bundle.items() if k not in ("CPU", "GPU", "memory")}
        if custom:
            options["resources"] = custom
        if self.bundle.get("memory"):
            options["memory"] = self.bundle["memory"]
        if self.slot is not None:
            pg, bundle_index = self.slot
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=bundle_index
            )
        self.actor = ray.remote(InstanceHost).options(**options).remote(self.launch_info)
        self._started = asyncio.wrap_future(self.actor.start.remote().future())
        self._exit = None

    async def wait_healthy(self, timeout: float, client: httpx.AsyncClient) -> None:
        """Wait for the actor to be scheduled and start the server, then for ``/ping`` 200."""
        deadline = time.monotonic() + timeout
        if not self.spec.external:
            try:
                where = await asyncio.wait_for(asyncio.shield(self._started), timeout)  # type: ignore[arg-type]
            except asyncio.TimeoutError:
                raise StartupFailure(self._failure(
                    f"was not scheduled and started on a Ray node within {timeout:g} seconds "
                    "(ContainerStartupHealthCheckTimeoutInSeconds); the cluster may lack free "
                    f"{describe_resources(self.bundle)}"
                )) from None  # fmt: skip
            except ray.exceptions.RayError as exc:
                raise StartupFailure(
                    self._failure(f"lost its Ray actor during startup: {type(exc).__name__}: {exc}")
                ) from None
            if "error" in where:
                raise StartupFailure(where["error"])
            self.where = where
            self.node = where["node_id"]
            self._exit = asyncio.wrap_future(self.actor.wait_exit.remote().future())
        last = "no answer"
        while True:
            if self._exit is not None and self._exit.done():
                code = self._exit_result()
                raise StartupFailure(self._failure(f"exited with code {code} during startup", await self.recent_log()))
            ok, last = await self.ping(client)
            if ok:
                self.state = READY
                return
            if time.monotonic() >= deadline:
                raise StartupFailure(self._failure(
                    f"did not pass the health check within {timeout:g} seconds "
                    f"(ContainerStartupHealthCheckTimeoutInSeconds; last GET /ping: {last})", await self.recent_log(),
                ))  # fmt: skip
            await asyncio.sleep(0.2)

    def _exit_result(self) -> int | None:
        try:
            self._exit_code = self._exit.result()  # type: ignore[union-attr]
        except Exception:
            self._exit_code = None
        return self._exit_code

    async def ping(self, client: httpx.AsyncClient, timeout: float = 5.0) -> tuple[bool, str]:
        if self.url is None:
            return False, "not started"
        try:
            response = await client.get(f"{self.url}/ping", timeout=timeout)
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        return response.status_code == 200, f"HTTP {response.status_code}"

    def _failure(self, what: str, tail: str = "") -> str:
        where = f"node {self.node[:12]}, {self.url}" if self.where else "Ray"
        reason = f"Instance {self.name} of variant {self.variant} ({where}) {what}."
        if tail:
            reason += f" Last lines of its log ({self.where.get('log')} on node {self.node[:12]}):\n{tail}"
        return reason

    async def recent_log(self) -> str:
        """The model server's last log lines, read from its node."""
        if self.actor is None:
            return ""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self.actor.log_tail.remote().future()), 5)
        except Exception:
            return f"(the log is on node {self.node[:12]}, which does not answer)"

    # ------------------------------------------------------------------ health while serving

    def suspect(self) -> None:
        if self.state == READY:
            self.state = UNHEALTHY
        self._wake.set()

    async def wait_exit_or_wake(self, timeout: float) -> bool:
        """Sleep up to ``timeout``; True if the model server exited or its actor (or node) died."""
        wake = asyncio.ensure_future(self._wake.wait())
        waits: list[asyncio.Future] = [wake]
        if self._exit is not None:
            waits.append(self._exit)
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            self._wake.clear()
        if self._exit is not None and self._exit.done():
            self._exit_result()
            return True
        return False

    # ------------------------------------------------------------------ stop

    async def kill(self) -> None:
        """End the actor now (its model server gets the parent-death signal)."""
        if self.actor is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(ray.kill, self.actor, no_restart=True)
        for future in (self._started, self._exit):
            if future is not None and not future.done():
                future.cancel()

    async def stop(self, grace: float = 15.0) -> None:
        """Ask the actor to SIGTERM its model server (which drains), then end the actor."""
        self.state = STOPPING
        if self.actor is not None and self.where:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(self.actor.stop.remote(grace).future()), grace + 5)
        await self.kill()
        self.state = STOPPED
        self._wake.set()

    def exited(self) -> None:
        return None


class RayPlacement:
    """Places instances as Ray actors; model data reaches nodes through S3 or the platform's export route."""

    kind = "ray"

    def __init__(self, settings: PlatformSettings, artifacts: ArtifactStore) -> None:
        self.settings = settings
        self.artifacts = artifacts
        self.exports = ArtifactExports(settings.artifacts_dir / "exports")
        self.platform_url = (settings.ray_platform_url or f"http://{settings.host}:{settings.port}").rstrip("/")
        self.cluster: dict[str, Any] = {}

    async def open(self) -> None:
        address = self.settings.ray_address
        await _check_reachable(address)
        try:
            await asyncio.to_thread(
                ray.init, address=address, namespace=_NODE_NAMESPACE, log_to_driver=False, logging_level=logging.WARNING,
                ignore_reinit_error=True, configure_logging=False,
            )  # fmt: skip
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RuntimeError(
                f"--ray {address}: could not join the Ray cluster ({exc}); start one with `ray start --head` "
                "or pass its address (host:port)"
            ) from None
        if urlsplit(self.platform_url).hostname in ("0.0.0.0", "::"):  # nodes need an address they can reach
            ip = ray.util.get_node_ip_address()
            self.platform_url = self.platform_url.replace(urlsplit(self.platform_url).hostname or "", ip, 1)
        nodes = await asyncio.to_thread(alive_nodes)
        self.cluster = {
            "address": address,
            "nodes": len(nodes),
            "resources": await asyncio.to_thread(ray.cluster_resources),
        }
        log.info("instances are placed on the Ray cluster at %s (%d nodes: %s)", address, len(nodes),
                 describe_resources(self.cluster["resources"]))  # fmt: skip

    async def close(self) -> None:
        if ray.is_initialized():
            await asyncio.to_thread(ray.shutdown)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.settings.ray_address, "nodes": self.cluster.get("nodes")}

    # ------------------------------------------------------------------ launch specs

    def _direct_from_s3(self, data: ModelData) -> bool:
        """Nodes read ``s3://`` data from an external store themselves; the embedded store and catalog
        references live on this machine, so those go through the export route like local files."""
        references = self.artifacts.references
        return (
            urlsplit(data.url).scheme.lower() == "s3" and bool(self.settings.s3_endpoint_url)
            and not (references is not None and references.owns(data.url))
        )  # fmt: skip

    def _s3_source(self, data: ModelData) -> dict[str, Any]:
        """Nodes fetch ``s3://`` model data straight from the external store, with the platform's keys for it."""
        settings = self.settings
        key_id = settings.s3_access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = settings.s3_secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        credentials: dict[str, Any] = {"region": settings.region}
        if key_id and secret:
            credentials.update(access_key_id=key_id, secret_access_key=secret)
        return {"kind": "s3", "url": data.url, "compressed": data.compressed, "prefix": data.prefix,
                "s3_endpoint_url": settings.s3_endpoint_url, "credentials": credentials}  # fmt: skip

    def export_source(self, folder: Path) -> dict[str, Any]:
        """Nodes fetch a folder on this machine through the platform's export route (one tar, cached per node)."""
        export_id = self.exports.publish(folder)
        return {
            "kind": "export", "id": export_id, "url": f"{self.platform_url}/_streamhost/artifacts/{export_id}",
            "token": self.exports.token, "token_header": TOKEN_HEADER, "filename": f"{export_id}.tar",
        }  # fmt: skip

    async def _model_sources(
        self, variant: Variant, data: ModelData, environment: dict[str, str]
    ) -> tuple[dict, str, bool]:
        """Prepare the model data here as a local instance would (same checks, same FailureReasons), then
        say how nodes get it: ``({placeholder: source}, model folder inside {model_dir}, weights given?)``."""
        fetched = await self.artifacts.fetch_async(data, variant.download_timeout)
        prepared = await prepare_model_data(
            self.artifacts, fetched, data.url, map_model_path(environment, str(fetched)), variant.download_timeout
        )
        direct = self._direct_from_s3(data)
        sources = {
            "{model_dir}": self._s3_source(data) if direct else await asyncio.to_thread(self.export_source, fetched)
        }
        if prepared.model_id:  # weights option.model_id named, downloaded here: nodes get them from here too
            sources["{model_id_dir}"] = await asyncio.to_thread(self.export_source, Path(prepared.model_id))
        inside = prepared.model_dir.relative_to(fetched).as_posix()
        return sources, "" if inside == "." else "/" + inside, bool(prepared.model_id)

    def _bundle(self, variant: Variant) -> dict[str, float]:
        try:
            return resources_for(variant.instance_type, self.settings.ray_instance_types, self.settings.ray_cpu_scale)
        except UnknownInstanceType as exc:
            raise StartupFailure(f"Cannot place variant {variant.name}: {exc}") from None

    async def launch_specs(self, deployment: Deployment, variant: Variant, total: int) -> SpecFactory:
        container = container_of(variant.model_spec)
        image = classify_image(container.get("Image"))
        variant.placement_state = _VariantSlots(self._bundle(variant))
        if image.kind == "external":
            return lambda _index: LaunchSpec(url=image.url)
        environment = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
        data = model_data_of(container)
        model_dir = model_id = None
        if data is not None:
            try:
                sources, inside, has_weights = await self._model_sources(variant, data, environment)
            except (ArtifactError, OSError) as exc:
                raise StartupFailure(f"Failed to prepare model data for variant {variant.name}: {exc}") from None
            variant.placement_state.sources = sources
            model_dir, model_id = "{model_dir}" + inside, "{model_id_dir}" if has_weights else None
            environment = map_model_path(environment, "{model_dir}")
        custom = self.settings.container_command != default_container_command()
        command = self.settings.container_command if custom else ["{python}", "-m", "streamhost.cli", "container"]
        argv = container_argv(command, image.dialect, model_dir, model_id)
        return lambda _index: LaunchSpec(argv=argv, env=environment)

    # ------------------------------------------------------------------ reservations

    async def reserve(self, deployment: Deployment, variant: Variant, indexes: list[int]) -> None:
        slots: _VariantSlots = variant.placement_state
        if not indexes or self._external(variant):
            return
        bundle = slots.bundle
        nodes = await asyncio.to_thread(alive_nodes)
        able = [n for n in nodes if fits(n, bundle)]
        if not able:
            raise StartupFailure(unplaceable_reason(variant.name, variant.instance_type, bundle, nodes))
        strategy = "STRICT_SPREAD" if len(able) >= len(indexes) else "SPREAD"
        pg = placement_group([dict(bundle) for _ in indexes], strategy=strategy,
                             name=f"streamhost:{deployment.endpoint}:{deployment.config_name}:{variant.name}:{indexes[0]}")  # fmt: skip
        try:
            await asyncio.wait_for(asyncio.wrap_future(pg.ready().future()), variant.startup_timeout)
        except asyncio.TimeoutError:
            await asyncio.to_thread(remove_placement_group, pg)
            available = await asyncio.to_thread(ray.available_resources)
            raise StartupFailure(
                f"Could not reserve {len(indexes)} x ({describe_resources(bundle)}) for variant {variant.name} "
                f"({strategy}) on the Ray cluster within {variant.startup_timeout:g} seconds: the nodes could hold "
                f"them but are busy (free now: {describe_resources(available)})"
            ) from None
        slots.groups.append(_Group(pg, list(indexes)))
        for bundle_index, index in enumerate(indexes):
            slots.slot[index] = (pg, bundle_index)
        log.info("reserved %d x (%s) for %s/%s with %s", len(indexes), describe_resources(bundle),
                 deployment.endpoint, variant.name, strategy)  # fmt: skip

    @staticmethod
    def _external(variant: Variant) -> bool:
        return classify_image(container_of(variant.model_spec).get("Image")).kind == "external"

    def new_instance(self, deployment: Deployment, variant: Variant, index: int, spec: LaunchSpec) -> RayInstance:
        slots: _VariantSlots = variant.placement_state
        bundle = slots.bundle
        threads = self.settings.threads_per_instance or max(1, int(bundle.get("CPU", 1)))
        launch = {
            "argv": spec.argv, "env": spec.env, "sources": slots.sources,
            "log_name": f"{deployment.endpoint}/{deployment.config_name}/{variant.name}-{index}.log",
            "cache_dir": self.settings.ray_cache_dir, "bind_host": self.settings.ray_instance_host,
            "threads": threads, "download_timeout": variant.download_timeout,
            "owner": str(self.settings.state_dir.resolve()),
        }  # fmt: skip
        return RayInstance(deployment.endpoint, variant.name, index, spec, launch, slots.slot.get(index), bundle)

    async def release(self, variant: Variant, instances: list[Any]) -> None:
        slots: _VariantSlots | None = variant.placement_state
        if slots is None:
            return
        for instance in instances:
            slots.slot.pop(instance.index, None)
        for group in list(slots.groups):
            if not any(i in slots.slot for i in group.indexes):
                slots.groups.remove(group)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(remove_placement_group, group.pg)
