"""The supervisor: brings endpoints up, keeps their instances alive, updates and deletes them.

Each endpoint's work runs as one background job (create, update, delete), so control-plane calls
answer at once and DescribeEndpoint shows the progress, as on AWS:

- **Create**: fetch model data, start every variant's instances, wait for ``/ping``; all healthy
  -> InService, anything else -> Failed with a FailureReason quoting the instance's log.
- **Update** (blue/green): the new deployment starts beside the old one, which keeps serving;
  once every new instance is healthy the router switches to it atomically, then the old
  instances drain (in-flight requests finish) and stop. A new deployment that fails -> RollingBack
  -> back to InService on the old one, with the failure in FailureReason.
- **Delete**: the endpoint leaves the router at once, in-flight requests drain, instances stop,
  the row goes.
- **Serving**: a watcher per instance restarts a crashed or hung one (backoff) while the others
  keep serving; the endpoint stays InService.
- **Recovery** (platform start): endpoints that were serving come back up (SystemUpdating ->
  InService), interrupted creations resume, interrupted updates fall back to the old config.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from .artifacts import ArtifactStore
from .control_plane import DEFAULT_DOWNLOAD_TIMEOUT, DEFAULT_STARTUP_TIMEOUT
from .instances import (
    INSTANCE_MARKER,
    READY,
    STOPPED,
    STOPPING,
    UNHEALTHY,
    InstanceHandle,
    LaunchSpec,
    StartupFailure,
    kill_orphan,
)
from .metrics import PlatformMetrics
from .placement import Placement, make_placement
from .settings import PlatformSettings
from .store import Store

log = logging.getLogger("streamhost.platform")


# Settings of the platform's own environment that would configure every model server alike (or
# hand it the platform's keys): an instance gets its model's Environment, not these.
_NOT_INHERITED_PREFIXES = ("HF_MODEL", "OPTION_", "MAX_", "SM_", "SAGEMAKER_", "STREAMHOST_MODEL", "SERVING_")
_NOT_INHERITED = {
    "MODEL_ID",
    "PORT",
    "DTYPE",
    "NUM_SHARD",
    "PAYLOAD_LIMIT",
    "LOG_LEVEL",
    "COMPUTE_TYPE",
    "QUANTIZE",
    "WAITING_SERVED_RATIO",
    "STREAMHOST_DIALECT",
    "STREAMHOST_DRAIN_TIMEOUT",
    "STREAMHOST_STATE_DIR",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
}


def _model_server_setting(name: str) -> bool:
    return name in _NOT_INHERITED or name.startswith(_NOT_INHERITED_PREFIXES)


class NoInstance(Exception):
    """No instance of the variant became ready in time."""


class Variant:
    """A production variant's instances and how requests are spread over them."""

    def __init__(self, endpoint: str, config: dict[str, Any], model: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.name: str = config["VariantName"]
        self.weight = float(config.get("InitialVariantWeight", 1.0))
        self.desired = int(config.get("InitialInstanceCount", 1))
        self.strategy = (config.get("RoutingConfig") or {}).get("RoutingStrategy", "LEAST_OUTSTANDING_REQUESTS")
        self.startup_timeout = float(config.get("ContainerStartupHealthCheckTimeoutInSeconds", DEFAULT_STARTUP_TIMEOUT))
        self.download_timeout = float(config.get("ModelDataDownloadTimeoutInSeconds", DEFAULT_DOWNLOAD_TIMEOUT))
        self.model_name: str = config["ModelName"]
        self.instance_type: str | None = config.get("InstanceType")
        self.spec_for: Callable[[int], LaunchSpec] = lambda _index: LaunchSpec()  # set by the placement
        self.placement_state: Any = None  # what the placement keeps per variant (Ray: placement groups)
        self.model_spec: dict[str, Any] = model.get("spec", {})
        self.eula_required = bool(model.get("eula_required", False))
        self.instances: list[InstanceHandle] = []
        self.changed = asyncio.Event()  # set whenever an instance becomes ready

    def ready_instances(self) -> list[InstanceHandle]:
        return [i for i in self.instances if i.state == READY]

    def pick(self, exclude: set[int] = frozenset()) -> InstanceHandle | None:  # type: ignore[assignment]
        """LEAST_OUTSTANDING_REQUESTS (ties broken at random) or RANDOM over ready instances."""
        ready = [i for i in self.instances if i.state == READY and id(i) not in exclude]
        if not ready:
            return None
        if self.strategy == "RANDOM":
            return random.choice(ready)
        fewest = min(i.in_flight for i in ready)
        return random.choice([i for i in ready if i.in_flight == fewest])

    async def acquire(self, exclude: set[int], wait: float) -> InstanceHandle:
        """A ready instance with its in-flight count raised; waits up to ``wait`` seconds for one."""
        deadline = time.monotonic() + wait
        while True:
            instance = self.pick(exclude)
            if instance is not None:
                instance.in_flight += 1
                return instance
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoInstance(f"no instance of variant {self.name} is ready")
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))

    def notify(self) -> None:
        self.changed.set()


class Deployment:
    """The instances running one snapshot (config + models) of an endpoint."""

    def __init__(self, supervisor: Supervisor, endpoint: str, snapshot: dict[str, Any]) -> None:
        self.supervisor = supervisor
        self.endpoint = endpoint
        self.config_name: str = snapshot["config_name"]
        self.variants: list[Variant] = [
            Variant(endpoint, v, snapshot["models"].get(v["ModelName"], {}))
            for v in snapshot["config"]["ProductionVariants"]
        ]
        self._by_name = {v.name.lower(): v for v in self.variants}
        self.status = "Creating"  # the VariantStatus shown while starting
        self.active = False
        self._watchers: dict[int, asyncio.Task] = {}  # id(instance) -> its watcher
        self._locations: dict[int, tuple[str, ...]] = {}  # id(instance) -> its instance_info labels

    # ------------------------------------------------------------------ routing

    def variant(self, name: str) -> Variant | None:
        return self._by_name.get(name.lower())

    def pick_variant(self) -> Variant:
        """A variant chosen by weight among those with weight > 0 (all, if every weight is 0)."""
        weighted = [v for v in self.variants if v.weight > 0]
        if not weighted:
            return random.choice(self.variants)
        if len(weighted) == 1:
            return weighted[0]
        return random.choices(weighted, weights=[v.weight for v in weighted])[0]

    @property
    def in_flight(self) -> int:
        return sum(i.in_flight for v in self.variants for i in v.instances)

    def instances(self) -> list[InstanceHandle]:
        return [i for v in self.variants for i in v.instances]

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        """Prepare model data, reserve room and start every instance; raises StartupFailure with the first reason."""
        placement = self.supervisor.placement
        total = sum(v.desired for v in self.variants)
        for variant in self.variants:
            self.status = "Creating"
            variant.spec_for = await placement.launch_specs(self, variant, total)
            indexes = list(range(variant.desired))
            await placement.reserve(self, variant, indexes)
            for index in indexes:
                variant.instances.append(placement.new_instance(self, variant, index, variant.spec_for(index)))
        await self._bring_up([(v, i) for v in self.variants for i in v.instances])
        self._update_gauges()

    async def _bring_up(self, pairs: list[tuple[Variant, InstanceHandle]]) -> None:
        """Launch instances and wait until each is healthy; the first failure cancels the rest."""
        sup = self.supervisor

        async def bring_up(variant: Variant, instance: InstanceHandle) -> None:
            await instance.launch()
            await instance.wait_healthy(variant.startup_timeout, sup.client)
            variant.notify()
            self._show_location(variant, instance)

        jobs = [asyncio.ensure_future(bring_up(v, i)) for v, i in pairs]
        try:
            for job in asyncio.as_completed(jobs):
                await job
        except BaseException:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            raise

    def activate(self) -> None:
        """Start watching instances (restarts, health) once the deployment serves."""
        self.active = True
        self.status = ""
        for variant in self.variants:
            for instance in variant.instances:
                self._watchers[id(instance)] = asyncio.ensure_future(self._watch(variant, instance))

    # ------------------------------------------------------------------ capacity

    async def scale(self, variant: Variant, count: int) -> None:
        """Run ``count`` instances of ``variant`` while it serves (UpdateEndpointWeightsAndCapacities).

        New instances join the router once healthy; removed ones leave it first, finish what
        they are streaming (up to the drain timeout), then stop. Raises StartupFailure when the
        new instances cannot be placed or do not become healthy (those are stopped again).
        """
        sup = self.supervisor
        current = len(variant.instances)
        if count > current:
            start = max((i.index for i in variant.instances), default=-1) + 1
            indexes = list(range(start, start + count - current))
            await sup.placement.reserve(self, variant, indexes)
            added = [sup.placement.new_instance(self, variant, i, variant.spec_for(i)) for i in indexes]
            try:
                await self._bring_up([(variant, i) for i in added])
            except BaseException:
                await self._stop_instances(variant, added, drain=0.0)
                raise
            variant.instances.extend(added)
            variant.desired = count
            if self.active:
                for instance in added:
                    self._watchers[id(instance)] = asyncio.ensure_future(self._watch(variant, instance))
        elif count < current:
            # The newest go first: the oldest have warmed caches and a longer record of health.
            removed = sorted(variant.instances, key=lambda i: i.index)[count:]
            variant.instances = [i for i in variant.instances if i not in removed]  # the router stops here
            variant.desired = count
            await self._stop_instances(variant, removed, drain=sup.settings.drain_timeout)
        self._update_gauges()

    async def _stop_instances(self, variant: Variant, instances: list[InstanceHandle], drain: float) -> None:
        """Stop watching ``instances``, let their requests finish (up to ``drain`` s), stop them, release their room."""
        watchers = [self._watchers.pop(id(i)) for i in instances if id(i) in self._watchers]
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        deadline = time.monotonic() + drain
        while any(i.in_flight for i in instances) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        grace = self.supervisor.settings.stop_grace
        await asyncio.gather(*(i.stop(grace) for i in instances), return_exceptions=True)
        for instance in instances:
            self._hide_location(variant, instance)
        await self.supervisor.placement.release(variant, instances)

    # ------------------------------------------------------------------ serving

    async def _watch(self, variant: Variant, instance: InstanceHandle) -> None:
        """Restart a crashed or hung instance; mark an external one unhealthy while it fails pings."""
        sup = self.supervisor
        settings = sup.settings
        failures = 0
        backoff = 1.0
        while self.active:
            exited = await instance.wait_exit_or_wake(settings.health_interval)
            if not self.active or instance.state in (STOPPING, STOPPED):
                return
            if not exited:
                ok, _ = await instance.ping(sup.client, timeout=max(2.0, settings.health_interval))
                if ok:
                    failures = 0
                    if instance.state != READY:
                        instance.state = READY
                        variant.notify()
                        self._update_gauges()
                    continue
                failures += 1
                instance.state = UNHEALTHY
                self._update_gauges()
                if instance.spec.external or failures < settings.health_failures:
                    continue
                log.warning("%s/%s failed %d health checks; restarting it", self.endpoint, instance.name, failures)
                await instance.kill()
            else:
                log.warning(
                    "%s/%s exited with code %s; restarting it.\n%s",
                    self.endpoint, instance.name, instance.exit_code, await instance.recent_log(),
                )  # fmt: skip
            instance.exited()
            instance.state = UNHEALTHY
            self._hide_location(variant, instance)
            self._update_gauges()
            failures = 0
            # Restart with backoff until it is healthy again or the deployment stops.
            while self.active:
                instance.restarts += 1
                sup.metrics.restarts.labels(self.endpoint, variant.name).inc()
                try:
                    await instance.launch()
                    await instance.wait_healthy(variant.startup_timeout, sup.client)
                except StartupFailure as exc:
                    log.warning("restart of %s/%s failed: %s", self.endpoint, instance.name, exc)
                    instance.exited()
                    await instance.kill()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 1.0
                variant.notify()
                self._show_location(variant, instance)
                self._update_gauges()
                break

    def _update_gauges(self) -> None:
        for variant in self.variants:
            self.supervisor.metrics.ready_instances.labels(self.endpoint, variant.name).set(
                len(variant.ready_instances())
            )

    def _show_location(self, variant: Variant, instance: InstanceHandle) -> None:
        """Publish where a ready instance runs (``streamhost_instance_info{node, address}``)."""
        self._hide_location(variant, instance)
        labels = (self.endpoint, variant.name, instance.name, str(instance.node), instance.url or "")
        self.supervisor.metrics.instance_info.labels(*labels).set(1)
        self._locations[id(instance)] = labels

    def _hide_location(self, variant: Variant, instance: InstanceHandle) -> None:
        labels = self._locations.pop(id(instance), None)
        if labels is not None:
            with contextlib.suppress(KeyError):
                self.supervisor.metrics.instance_info.remove(*labels)

    # ------------------------------------------------------------------ stop

    async def drain(self, timeout: float) -> None:
        """Wait until no request is in flight on any instance (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self, drain: float = 0.0) -> None:
        """Drain in-flight requests for up to ``drain`` seconds, then stop every instance."""
        self.active = False
        watchers = list(self._watchers.values())
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        self._watchers.clear()
        if drain:
            await self.drain(drain)
        grace = self.supervisor.settings.stop_grace
        await asyncio.gather(*(i.stop(grace) for i in self.instances()), return_exceptions=True)
        for variant in self.variants:
            for instance in variant.instances:
                self._hide_location(variant, instance)
            with contextlib.suppress(Exception):
                await self.supervisor.placement.release(variant, list(variant.instances))
            self.supervisor.metrics.ready_instances.labels(self.endpoint, variant.name).set(0)


def model_server_env(model_env: dict[str, str], threads: int) -> dict[str, str]:
    """A model server's environment, local or on a Ray node: this process's minus model-server
    settings, then the model's Environment, then thread settings unless that Environment sets them
    (PASSIVE OpenMP: spinning threads in several processes on a few cores starve each other; the
    engine core still spins briefly, see engine/core_client.py)."""
    env = {k: v for k, v in os.environ.items() if not _model_server_setting(k)}
    env.update(model_env)
    if "OMP_WAIT_POLICY" not in model_env:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if "OMP_NUM_THREADS" not in model_env:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Supervisor:
    """Owns every deployment; implements the control plane's Lifecycle protocol."""

    def __init__(
        self, store: Store, settings: PlatformSettings, artifacts: ArtifactStore, metrics: PlatformMetrics
    ) -> None:
        self.store = store
        self.settings = settings
        self.artifacts = artifacts
        self.metrics = metrics
        self.live: dict[str, Deployment] = {}  # endpoint (lowercase) -> deployment the router uses
        self.current: dict[str, Deployment] = {}  # endpoint -> deployment being started or serving
        self._jobs: dict[str, asyncio.Task] = {}
        self.client = httpx.AsyncClient(timeout=5.0)
        self.placement: Placement = make_placement(settings, artifacts)
        self._closing = False

    # ------------------------------------------------------------------ helpers

    def instance_env(self, environment: dict[str, str], total_instances: int) -> dict[str, str]:
        """The process environment of an instance: ours, the model's Environment, thread settings."""
        threads = self.settings.threads_per_instance or max(1, self.settings.cpu_count() // max(1, total_instances))
        env = model_server_env({str(k): str(v) for k, v in environment.items()}, threads)
        env[INSTANCE_MARKER] = str(self.settings.state_dir.resolve())
        return env

    def track_pid(self, pid: int, alive: bool) -> None:
        if alive:
            self.store.record_instance(pid, "")
        else:
            self.store.forget_instance(pid)

    def _run(self, name: str, coro) -> None:
        key = name.lower()
        task = asyncio.ensure_future(coro)
        self._jobs[key] = task

        def done(t: asyncio.Task) -> None:
            if self._jobs.get(key) is t:
                del self._jobs[key]
            if not t.cancelled() and t.exception() is not None:
                log.error("endpoint job for %s failed", name, exc_info=t.exception())

        task.add_done_callback(done)

    def _deployment(self, name: str, snapshot: dict[str, Any]) -> Deployment:
        return Deployment(self, name, snapshot)

    # ------------------------------------------------------------------ Lifecycle (control plane)

    def endpoint_created(self, name: str) -> None:
        self._run(name, self._create(name, "Creating"))

    def endpoint_updated(self, name: str) -> None:
        self._run(name, self._update(name))

    def endpoint_deleted(self, name: str) -> None:
        key = name.lower()
        previous = self._jobs.pop(key, None)
        live = self.live.pop(key, None)  # leaves the router now
        self._run(name, self._delete(name, previous, live))

    def endpoint_capacity_changed(self, name: str, desired: dict[str, dict[str, Any]]) -> None:
        """UpdateEndpointWeightsAndCapacities: ``{variant: {"count": n | None, "weight": w | None}}``."""
        self._run(name, self._change_capacity(name, {k.lower(): v for k, v in desired.items()}))

    def runtime_view(self, name: str) -> dict[str, dict[str, Any]]:
        deployment = self.current.get(name.lower()) or self.live.get(name.lower())
        if deployment is None:
            return {}
        return {v.name: {"ready": len(v.ready_instances()), "status": deployment.status} for v in deployment.variants}

    def instances_view(self, name: str) -> dict[str, Any] | None:
        """Operator view of an endpoint's instances (``GET /_streamhost/endpoints/{name}``)."""
        deployment = self.live.get(name.lower()) or self.current.get(name.lower())
        if deployment is None:
            return None
        return {
            "endpoint": deployment.endpoint,
            "config": deployment.config_name,
            "placement": self.placement.describe(),
            "variants": [
                {
                    "name": v.name,
                    "weight": v.weight,
                    "desired": v.desired,
                    "instance_type": v.instance_type,
                    "routing": v.strategy,
                    "instances": [i.describe() for i in v.instances],
                }
                for v in deployment.variants
            ],
        }

    # ------------------------------------------------------------------ jobs

    async def _create(self, name: str, from_status: str) -> None:
        record = self.store.get_endpoint(name)
        if record is None or record.status != from_status:
            return
        deployment = self._deployment(record.name, record.deployment)
        deployment.status = "Creating"
        key = name.lower()
        self.current[key] = deployment
        try:
            await deployment.start()
        except StartupFailure as exc:
            await deployment.stop()
            self.current.pop(key, None)
            self.store.transition(name, [from_status], "Failed", failure_reason=str(exc))
            log.error("endpoint %s failed: %s", name, exc)
            return
        except asyncio.CancelledError:
            await deployment.stop()
            raise
        except Exception as exc:  # a bug or an OS error must not leave the endpoint Creating forever
            await deployment.stop()
            self.current.pop(key, None)
            self.store.transition(name, [from_status], "Failed", failure_reason=f"Internal error while starting: {exc}")
            raise
        if not self.store.transition(
            name,
            [from_status],
            "InService",
            failure_reason=record.failure_reason if from_status == "SystemUpdating" else None,
        ):
            await deployment.stop()
            return
        deployment.activate()
        self.live[key] = deployment
        log.info("endpoint %s is InService (%s)", name, deployment.config_name)

    async def _update(self, name: str) -> None:
        record = self.store.get_endpoint(name)
        if record is None or record.status != "Updating" or record.pending is None:
            return
        key = name.lower()
        old = self.live.get(key)
        new = self._deployment(record.name, record.pending)
        new.status = "Creating"
        if old is not None:
            old.status = "Updating"
        try:
            await new.start()
        except (StartupFailure, Exception) as exc:
            reason = f"Failed to update endpoint to config {record.pending['config_name']}: {exc}"
            self.store.transition(name, ["Updating"], "RollingBack", failure_reason=reason)
            await new.stop()
            back_to = "InService" if old is not None else "Failed"
            if old is not None:
                old.status = ""
            self.store.transition(name, ["RollingBack"], back_to, pending=None)
            log.error("endpoint %s rolled back: %s", name, reason)
            return
        except asyncio.CancelledError:
            await new.stop()
            raise
        if not self.store.transition(
            name, ["Updating"], "InService",
            config_name=record.pending["config_name"], deployment=record.pending, pending=None, failure_reason=None,
        ):  # fmt: skip
            await new.stop()
            return
        new.activate()
        self.live[key] = new  # the router switches here: new requests go to the new instances
        self.current[key] = new
        log.info("endpoint %s now runs %s; draining the old instances", name, new.config_name)
        if old is not None:
            await old.stop(drain=self.settings.drain_timeout)

    async def _change_capacity(self, name: str, desired: dict[str, dict[str, Any]]) -> None:
        """Scale and reweight the live deployment's variants, then record them and go back InService."""
        record = self.store.get_endpoint(name)
        deployment = self.live.get(name.lower())
        if record is None or record.status != "Updating" or deployment is None:
            return
        failures = []
        for variant in deployment.variants:
            want = desired.get(variant.name.lower())
            if not want:
                continue
            if want.get("weight") is not None:
                variant.weight = float(want["weight"])
            count = want.get("count")
            if count is not None and count != len(variant.instances):
                log.info(
                    "endpoint %s: variant %s goes from %d to %d instances",
                    name,
                    variant.name,
                    len(variant.instances),
                    count,
                )
                try:
                    await deployment.scale(variant, int(count))
                except StartupFailure as exc:
                    failures.append(f"Could not scale variant {variant.name} to {count} instances: {exc}")
        snapshot = copy.deepcopy(record.deployment)
        for config in snapshot["config"]["ProductionVariants"]:
            live = deployment.variant(config["VariantName"])
            if live is not None:
                config["InitialInstanceCount"] = live.desired
                config["InitialVariantWeight"] = live.weight
        self.store.transition(
            name, ["Updating"], "InService", deployment=snapshot, failure_reason="; ".join(failures) or None
        )

    async def _delete(self, name: str, previous: asyncio.Task | None, live: Deployment | None) -> None:
        key = name.lower()
        if previous is not None:
            previous.cancel()
            await asyncio.gather(previous, return_exceptions=True)
        current = self.current.pop(key, None)
        stopping = [d for d in {id(d): d for d in (live, current) if d is not None}.values()]
        await asyncio.gather(*(d.stop(drain=self.settings.drain_timeout) for d in stopping), return_exceptions=True)
        self.store.delete_endpoint(name, only_if_status="Deleting")
        log.info("endpoint %s deleted", name)

    # ------------------------------------------------------------------ platform start / stop

    async def recover(self) -> None:
        """Bring back what the store says should run (after a restart, clean or not)."""
        await self.placement.open()
        owner = str(self.settings.state_dir.resolve())
        for pid in self.store.instance_pids():
            if kill_orphan(pid, owner):
                log.warning("stopped model server pid %d left behind by an earlier platform", pid)
            self.store.forget_instance(pid)
        for record in self.store.list_endpoints():
            name = record.name
            if record.status == "Deleting":
                self.store.delete_endpoint(name, only_if_status="Deleting")
            elif record.status == "Creating":
                self._run(name, self._create(name, "Creating"))
            elif record.status in ("InService", "SystemUpdating"):
                self.store.transition(name, None, "SystemUpdating")
                self._run(name, self._create(name, "SystemUpdating"))
            elif record.status in ("Updating", "RollingBack"):
                pending = record.pending["config_name"] if record.pending else "a new config"
                self.store.transition(
                    name, None, "SystemUpdating", pending=None,
                    failure_reason=f"The update to {pending} was interrupted by a platform restart; "
                    f"the endpoint runs {record.config_name} again",
                )  # fmt: skip
                self._run(name, self._create(name, "SystemUpdating"))

    async def shutdown(self) -> None:
        """Stop every instance (draining briefly); the store keeps what should run next time."""
        self._closing = True
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        deployments = {id(d): d for d in [*self.live.values(), *self.current.values()]}.values()
        await asyncio.gather(
            *(d.stop(drain=min(5.0, self.settings.drain_timeout)) for d in deployments), return_exceptions=True
        )
        self.live.clear()
        self.current.clear()
        await self.placement.close()
        await self.client.aclose()

    async def wait_idle(self) -> None:
        """Wait for every running job (tests and --deploy-default use it)."""
        while self._jobs:
            await asyncio.gather(*list(self._jobs.values()), return_exceptions=True)
