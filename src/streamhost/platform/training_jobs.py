"""SageMaker training-job operations: CreateTrainingJob, DescribeTrainingJob, ListTrainingJobs, StopTrainingJob.

Registered on the control plane with ``ControlPlane.register``; botocore's service model has
already checked each request's shape. What is checked here, before any job exists (so a bad
request creates nothing, as on AWS):

- the base model: an input channel ``model`` (s3://, file:// or a path) or ``HF_MODEL_ID`` in
  Environment (catalog id, hub id or folder); a gated catalog model needs ``accept_eula=true``
  (Environment, as JumpStart's estimator sends it, or HyperParameters);
- channels: ``train`` required, ``validation`` optional, nothing else but ``model``;
- every hyperparameter against its type and range, with the base model's catalog defaults
  (ValidationException naming the key and the allowed range).

The training image URI is recorded and answered back but, as for endpoints, our trainer runs.
Also serves ``GET /_streamhost/training-jobs/{name}/log?offset=N`` (what ``streamhost jobs logs -f``
polls): the job's log from byte ``offset``, the next offset and status in headers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from streamhost.catalog.specs import CatalogError, load_catalog
from streamhost.protocols.sagemaker import name_error, valid_name
from streamhost.training import hyperparameters as hps
from streamhost.training.outputs import model_artifact_uri

from .artifacts import ArtifactError
from .control_plane import ApiError
from .training_runner import ACTIVE, LOG_FILE, TrainingGauges, TrainingRunner
from .training_store import TrainingJobRecord, TrainingJobStore

if TYPE_CHECKING:
    from .app import PlatformApp

CHANNELS = ("train", "validation", "model")
CHANNEL_ALIASES = {"training": "train"}  # the JumpStart LLM notebooks call fit({"training": ...})
DEFAULT_MAX_RUNTIME = 86400
LOG_ROUTE = "/_streamhost/training-jobs/"
_DESCRIBE_ECHO = ("AlgorithmSpecification", "RoleArn", "InputDataConfig", "OutputDataConfig", "ResourceConfig",
                  "VpcConfig", "Environment", "CheckpointConfig", "ExperimentConfig", "RetryStrategy")  # fmt: skip


def _true(value: Any) -> bool:
    return str(value).strip().lower() == "true"


class TrainingJobs:
    """The four operations, the runner behind them, and the log route."""

    def __init__(self, app: PlatformApp) -> None:
        self.app = app
        self.control = app.control
        settings = app.settings
        self.store = TrainingJobStore(settings.db_path)
        self.placement: Any = app.supervisor.placement  # Ray: trainers run as actors with the job's resources
        self.runner = TrainingRunner(self.store, settings, TrainingGauges(app.metrics.registry),
                                     placement=self.placement, artifacts=app.artifacts)  # fmt: skip
        for name in ("CreateTrainingJob", "DescribeTrainingJob", "ListTrainingJobs", "StopTrainingJob"):
            self.control.register(name, getattr(self, _snake(name)))

    # ------------------------------------------------------------------ helpers

    def _arn(self, name: str) -> str:
        return self.control.arn("training-job", name)

    def _get(self, name: str) -> TrainingJobRecord:
        record = self.store.get(name)
        if record is None:
            # AWS answers a missing job with ValidationException (the waiter fails on it).
            raise ApiError("ValidationException", f"Requested resource not found: training job {self._arn(name)}")
        return record

    def _check_uri(self, uri: str, what: str) -> None:
        scheme = urlsplit(uri).scheme.lower()
        if scheme not in ("s3", "file", ""):
            raise ApiError(
                "ValidationException", f"{what} {uri!r}: unsupported scheme {scheme!r}; use s3://, file:// or a path"
            )
        if scheme == "s3":
            if not urlsplit(uri).netloc:
                raise ApiError("ValidationException", f"{what} {uri!r}: an S3 URI needs a bucket (s3://bucket/prefix)")
            return
        try:
            path = self.control.artifacts._local_path(uri)
        except ArtifactError as exc:
            raise ApiError("ValidationException", f"{what}: {exc}") from None
        if what != "S3OutputPath" and not path.exists():
            raise ApiError("ValidationException", f"{what} {uri!r}: no such file or folder")

    def _channels(self, p: dict[str, Any]) -> dict[str, str]:
        channels: dict[str, str] = {}
        for channel in p.get("InputDataConfig") or []:
            name = CHANNEL_ALIASES.get(channel["ChannelName"], channel["ChannelName"])
            if name in channels:
                raise ApiError("ValidationException", f"Channel {name!r} is given more than once")
            if name not in CHANNELS:
                raise ApiError("ValidationException",
                               f"Unknown channel {name!r}: this trainer reads 'train' (or 'training'; required), 'validation' and 'model'")  # fmt: skip
            source = (channel.get("DataSource") or {}).get("S3DataSource") or {}
            uri = source.get("S3Uri")
            if not uri:
                raise ApiError("ValidationException", f"Channel {name!r} needs DataSource.S3DataSource.S3Uri")
            self._check_uri(uri, f"Channel {name!r}")
            channels[name] = uri
        if "train" not in channels:
            raise ApiError("ValidationException", "InputDataConfig needs a channel named 'train'")
        return channels

    def _base_model(self, p: dict[str, Any], channels: dict[str, str]) -> tuple[str, Any]:
        """``(reference, catalog entry or None)``: the model channel wins over HF_MODEL_ID."""
        env = p.get("Environment") or {}
        if "model" in channels:
            return channels["model"], None
        ref = env.get("HF_MODEL_ID")
        if not ref:
            raise ApiError("ValidationException",
                           "Name the base model: an input channel named 'model' (s3:// or file://) or HF_MODEL_ID in Environment")  # fmt: skip
        try:
            entry = load_catalog(self.app.settings.state_dir).find(str(ref))
        except CatalogError:
            entry = None
        if entry is None:
            path = Path(os.path.expanduser(str(ref)))
            if str(ref).startswith((".", "/", "~")) and not path.exists():
                raise ApiError("ValidationException", f"HF_MODEL_ID {ref!r}: no such model folder")
            return str(ref), None
        return (entry.id if entry.source == "bundled" else entry.hub_id), entry

    def _s3_settings(self) -> dict[str, Any]:
        """Where the trainer reads and writes s3:// (keys travel in its environment, not in job.json).

        An external store when the platform has one, else the embedded store over HTTP at the
        platform's own address (the trainer is another process: it must not write the store's files).
        """
        settings = self.app.settings
        if settings.s3_endpoint_url:
            return {"endpoint_url": settings.s3_endpoint_url, "region": settings.region, "profile": settings.s3_profile}
        if self.runner.on_ray:  # a trainer on another node reaches the store where nodes reach the platform
            return {"endpoint_url": self.placement.platform_url, "region": settings.region, "profile": None}
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
        return {"endpoint_url": f"http://{host}:{settings.port}", "region": settings.region, "profile": None}

    # ------------------------------------------------------------------ operations

    def create_training_job(self, p: dict[str, Any]) -> dict[str, Any]:
        name = p["TrainingJobName"]
        if not valid_name(name):
            raise ApiError("ValidationException", name_error("Training job", name))
        if self.store.get(name) is not None:
            raise ApiError("ResourceInUse", f"Training job names must be unique within an AWS account and region, and a "
                           f"training job with this name already exists ({self._arn(name)})")  # fmt: skip
        channels = self._channels(p)
        output_path = p["OutputDataConfig"]["S3OutputPath"]
        self._check_uri(output_path, "S3OutputPath")
        if self.runner.on_ray and urlsplit(output_path).scheme.lower() != "s3":
            raise ApiError("ValidationException",
                           f"S3OutputPath {output_path!r} is a folder on the platform's machine, but the platform runs "
                           "training jobs on a Ray cluster, where the trainer writes from another node: give an s3:// "
                           "output path (the platform's own store or an external one)")  # fmt: skip
        reference, entry = self._base_model(p, channels)
        given = dict(p.get("HyperParameters") or {})
        try:
            values = hps.parse(given, entry.training_defaults if entry is not None else None)
        except hps.HyperparameterError as exc:
            raise ApiError("ValidationException", str(exc)) from None
        env = p.get("Environment") or {}
        if entry is not None and entry.eula_required and not (_true(env.get("accept_eula")) or values["accept_eula"]):
            raise ApiError("ValidationException",
                           f"Base model {entry.id!r} is under the {entry.licence} licence, which must be accepted to "
                           f"fine-tune it ({entry.eula_url}): set accept_eula=true in Environment or HyperParameters")  # fmt: skip
        max_runtime = int((p.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds", DEFAULT_MAX_RUNTIME))
        if max_runtime < 1:
            raise ApiError("ValidationException", "StoppingCondition.MaxRuntimeInSeconds must be at least 1")
        arn = self._arn(name)
        artifact = model_artifact_uri(output_path, name)
        request = {k: v for k, v in p.items() if k != "TrainingJobName"}
        stamp = time.time()
        transitions = [
            {"Status": "Starting", "StartTime": stamp, "StatusMessage": "Preparing the instances for training"}
        ]
        if not self.store.insert(name, arn, request, values, artifact, transitions):
            raise ApiError("ResourceInUse", f"A training job with this name already exists ({arn})")
        settings = self.app.settings
        spec = {
            "name": name,
            "model": reference,
            "base_reference": reference if not urlsplit(reference).scheme else None,
            "channels": channels,
            "hyperparameters": values,
            "output_path": output_path,
            "max_runtime": max_runtime,
            "artifacts_dir": str(settings.artifacts_dir),
            "artifact_roots": [str(r) for r in settings.artifact_roots]
            if settings.artifact_roots is not None
            else None,
            "s3": self._s3_settings(),
        }
        self.runner.start(name, spec)
        return {"TrainingJobArn": arn}

    def describe_training_job(self, p: dict[str, Any]) -> dict[str, Any]:
        record = self._get(p["TrainingJobName"])
        request = record.request
        out: dict[str, Any] = {
            "TrainingJobName": record.name,
            "TrainingJobArn": record.arn,
            "ModelArtifacts": {"S3ModelArtifacts": record.artifact},
            "TrainingJobStatus": record.status,
            "SecondaryStatus": record.secondary_status,
            "HyperParameters": hps.to_strings(record.hyperparameters),
            "StoppingCondition": request.get("StoppingCondition") or {"MaxRuntimeInSeconds": DEFAULT_MAX_RUNTIME},
            "CreationTime": record.created,
            "LastModifiedTime": record.modified,
            "SecondaryStatusTransitions": record.transitions,
            "FinalMetricDataList": record.metrics,
            "EnableNetworkIsolation": bool(request.get("EnableNetworkIsolation", False)),
            "EnableInterContainerTrafficEncryption": bool(request.get("EnableInterContainerTrafficEncryption", False)),
            "EnableManagedSpotTraining": bool(request.get("EnableManagedSpotTraining", False)),
        }
        for key in _DESCRIBE_ECHO:
            if key in request:
                out[key] = request[key]
        if record.failure_reason:
            out["FailureReason"] = record.failure_reason
        if record.started:
            out["TrainingStartTime"] = record.started
        if record.ended:
            out["TrainingEndTime"] = record.ended
            if record.started:
                seconds = max(0, int(record.ended - record.started))
                out["TrainingTimeInSeconds"] = seconds
                out["BillableTimeInSeconds"] = seconds
        return out

    def list_training_jobs(self, p: dict[str, Any]) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        for r in self.store.list():
            item = {"TrainingJobName": r.name, "TrainingJobArn": r.arn, "CreationTime": r.created,
                    "LastModifiedTime": r.modified, "TrainingJobStatus": r.status, "SecondaryStatus": r.secondary_status}  # fmt: skip
            if r.ended:
                item["TrainingEndTime"] = r.ended
            items.append(item)
        if p.get("StatusEquals"):
            items = [i for i in items if i["TrainingJobStatus"] == p["StatusEquals"]]
        if "LastModifiedTimeBefore" in p:
            bound = float(p["LastModifiedTimeBefore"])  # the validator gives epoch seconds
            items = [i for i in items if i["LastModifiedTime"] < bound]
        if "LastModifiedTimeAfter" in p:
            bound = float(p["LastModifiedTimeAfter"])
            items = [i for i in items if i["LastModifiedTime"] > bound]
        page, token = self.control._paginate(
            p, items, "TrainingJobName",
            {"Name": "TrainingJobName", "CreationTime": "CreationTime", "Status": "TrainingJobStatus"},
        )  # fmt: skip
        return self.control._with_token({"TrainingJobSummaries": page}, token)

    def stop_training_job(self, p: dict[str, Any]) -> dict[str, Any]:
        record = self._get(p["TrainingJobName"])
        if record.status == "Stopping":
            return {}
        if record.status not in ACTIVE or not self.runner.request_stop(
            record.name, "Stopping", "Stopping the training job: ending after the current step"
        ):
            current = self.store.get(record.name) or record
            if current.status == "Stopping":
                return {}
            raise ApiError("ValidationException",
                           f"The training job {record.arn} is {current.status}: only an InProgress job can be stopped")  # fmt: skip
        return {}

    # ------------------------------------------------------------------ log route

    def read_log(self, name: str, query: str) -> tuple[int, bytes, dict[str, str]]:
        """``(status, body, headers)`` for the log route."""
        record = self.store.get(unquote(name))
        if record is None:
            return 404, f"No training job named {unquote(name)}\n".encode(), {}
        try:
            offset = max(0, int(parse_qs(query).get("offset", ["0"])[0]))
        except ValueError:
            return 400, b"offset must be a whole number of bytes\n", {}
        path = self.runner.job_dir(record.name) / LOG_FILE
        data = b""
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read(1024 * 1024)
        except OSError:
            pass
        headers = {"x-streamhost-next-offset": str(offset + len(data)), "x-streamhost-status": record.status,
                   "x-streamhost-secondary-status": record.secondary_status, "content-type": "text/plain; charset=utf-8"}  # fmt: skip
        return 200, data, headers

    # ------------------------------------------------------------------ platform start / stop

    def recover(self) -> None:
        self.runner.recover()

    async def shutdown(self) -> None:
        await self.runner.shutdown()
        self.store.close()


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")
