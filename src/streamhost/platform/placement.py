"""Where endpoint instances run: the seam between the supervisor and what starts model servers.

The supervisor decides *how many* instances a variant has, when they start, restart, drain and
stop; a ``Placement`` decides *where* and *how*: which launch spec an instance gets (model data
made reachable, environment), what it reserves before starting, and which ``Instance`` object
stands for it. Two implementations:

- ``LocalPlacement`` (this module, the default): a model-server process on this machine, model
  data fetched into the platform's artifact cache.
- ``RayPlacement`` (``placement_ray``, ``streamhost serve --ray``): a Ray actor per instance that
  starts the model server on its node, model data fetched on that node, resources from the
  InstanceType, a variant spread across nodes by a placement group.

Both hand the gateway an ``Instance`` whose ``url`` answers the container contract, so routing,
retries and health checks do not care which one placed it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .artifacts import ArtifactError, model_data_of
from .control_plane import container_of
from .images import classify_image
from .instances import Instance, InstanceHandle, LaunchSpec, StartupFailure
from .lmi_packaging import prepare_model_data

if TYPE_CHECKING:
    from .supervisor import Deployment, Variant

SAGEMAKER_MODEL_PATH = "/opt/ml/model"

SpecFactory = Callable[[int], LaunchSpec]


def map_model_path(environment: dict[str, str], model_dir: str) -> dict[str, str]:
    """SageMaker unpacks model data at /opt/ml/model, and Environments say so (HF_MODEL_ID=/opt/ml/model):
    point such values at where the model data really is."""
    out = {}
    for key, value in environment.items():
        text = str(value)
        if text == SAGEMAKER_MODEL_PATH or text.startswith(SAGEMAKER_MODEL_PATH + "/"):
            text = str(model_dir) + text[len(SAGEMAKER_MODEL_PATH) :]
        out[key] = text
    return out


def container_argv(
    command: list[str], dialect: str | None, model_dir: str | None, model_id: str | None = None
) -> list[str]:
    """The model server's command line; ``{port}``/``{host}`` are filled in where it starts.

    ``model_id`` is a folder of weights the platform downloaded for serving.properties'
    ``option.model_id`` (s3:// or a hub id); it wins over the file's own value.
    """
    argv = [*command, "--port", "{port}", "--host", "{host}"]
    if dialect:
        argv += ["--dialect", dialect]
    if model_dir is not None:
        argv += ["--model-dir", model_dir]
    if model_id:
        argv += ["--model-id", model_id]
    return argv


class Placement(Protocol):
    """What the supervisor asks of an instance placement (local processes or a Ray cluster)."""

    kind: str

    async def open(self) -> None:
        """Connect to whatever runs the instances (called once at platform start)."""

    async def close(self) -> None:
        """Release every reservation and connection (platform shutdown)."""

    async def launch_specs(self, deployment: Deployment, variant: Variant, total: int) -> SpecFactory:
        """How each instance of ``variant`` is run (model data prepared); raises StartupFailure."""

    async def reserve(self, deployment: Deployment, variant: Variant, indexes: list[int]) -> None:
        """Reserve room for new instances ``indexes`` of ``variant``; raises StartupFailure if impossible."""

    def new_instance(self, deployment: Deployment, variant: Variant, index: int, spec: LaunchSpec) -> InstanceHandle:
        """The instance for one slot (not started yet)."""

    async def release(self, variant: Variant, instances: list[InstanceHandle]) -> None:
        """Give back what stopped ``instances`` had reserved."""

    def describe(self) -> dict[str, Any]:
        """What the operator view shows about the placement itself."""


class LocalPlacement:
    """Model servers as processes on this machine (today's behaviour, the default)."""

    kind = "local"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def launch_specs(self, deployment: Deployment, variant: Variant, total: int) -> SpecFactory:
        sup = deployment.supervisor
        container = container_of(variant.model_spec)
        image = classify_image(container.get("Image"))
        if image.kind == "external":
            return lambda _index: LaunchSpec(url=image.url)
        environment = dict(container.get("Environment") or {})
        model_dir, model_id = None, None
        data = model_data_of(container)
        if data is not None:
            try:
                fetched = await sup.artifacts.fetch_async(data, variant.download_timeout)
                environment = map_model_path(environment, str(fetched))
                prepared = await prepare_model_data(
                    sup.artifacts, fetched, data.url, environment, variant.download_timeout
                )
            except ArtifactError as exc:
                raise StartupFailure(f"Failed to prepare model data for variant {variant.name}: {exc}") from None
            model_dir, model_id = str(prepared.model_dir), prepared.model_id
        argv = container_argv(sup.settings.container_command, image.dialect, model_dir, model_id)
        env = sup.instance_env(environment, total)
        return lambda _index: LaunchSpec(argv=argv, env=env)

    async def reserve(self, deployment: Deployment, variant: Variant, indexes: list[int]) -> None:
        return None  # processes share the machine; nothing to reserve

    def new_instance(self, deployment: Deployment, variant: Variant, index: int, spec: LaunchSpec) -> Instance:
        sup = deployment.supervisor
        # Per config: during a blue/green update old and new instances must not share a log.
        log_dir = sup.settings.logs_dir / deployment.endpoint / deployment.config_name
        instance = Instance(deployment.endpoint, variant.name, index, spec, log_dir, sup.settings.instance_host)
        instance.on_pid.append(sup.track_pid)
        return instance

    async def release(self, variant: Variant, instances: list[InstanceHandle]) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


def make_placement(settings: Any, artifacts: Any) -> Placement:
    """The placement the settings ask for; ``--ray`` without Ray installed says how to get it."""
    if not settings.ray_address:
        return LocalPlacement()
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SystemExit(
            "streamhost serve: --ray needs Ray, which is not installed; install it with "
            'pip install "streamhost[ray]" (on the platform\'s machine and on every Ray node)'
        ) from None
    from .placement_ray import RayPlacement

    return RayPlacement(settings, artifacts)
