"""Fine-tuning from Python: ``Estimator(...).fit({"train": uri}).deploy()``, and hyperparameter defaults.

Shaped after the SageMaker SDK's JumpStartEstimator, on plain boto3 calls to the platform:
``fit`` is CreateTrainingJob (+ following the job log and waiting, like the SDK's ``logs=True``),
``deploy`` is CreateModel with the job's ``model.tar.gz`` as ModelDataUrl + an endpoint.

    >>> from streamhost.client import Estimator, hyperparameters
    >>> hp = hyperparameters.retrieve_default("smollm2")
    >>> hp.update(instruction_tuned="true", max_steps="50")
    >>> hyperparameters.validate("smollm2", hp)
    >>> estimator = Estimator("smollm2", hyperparameters=hp, output_path="file:///tmp/out")
    >>> estimator.fit({"train": "file:///data/train"})
    >>> predictor = estimator.deploy()
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from .sdk import (
    DEFAULT_DEPLOY_TIMEOUT,
    DEFAULT_IMAGE,
    EULA_ENV,
    Model,
    Predictor,
    Session,
    StreamhostError,
    name_from_base,
    open_catalog,
)

__all__ = [
    "Estimator",
    "TrainingJobError",
    "TrainingModel",
    "follow_log",
    "model_for_training_job",
    "read_log",
    "wait_for_training_job",
]

DEFAULT_ROLE = "arn:aws:iam::123456789012:role/streamhost"
TRAINING_IMAGE = "streamhost/trainer"
TERMINAL = ("Completed", "Failed", "Stopped")


class TrainingJobError(StreamhostError):
    """The job ended Failed (or Stopped when ``fit`` expected it to complete); ``reason`` is its FailureReason."""

    def __init__(self, job_name: str, message: str, status: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.job_name = job_name
        self.status = status
        self.reason = reason


def _uri(location: str | Path) -> str:
    """A channel or output location as the API takes it: s3:// and file:// kept, a path made file://."""
    text = str(location)
    if urlsplit(text).scheme.lower() in ("s3", "file"):
        return text
    return Path(text).expanduser().resolve().as_uri()


def _credentials(session: Session) -> Any:
    from botocore.credentials import Credentials

    credentials = session.sagemaker._request_signer._credentials  # the keys boto3 signs control calls with
    return credentials or Credentials("streamhost", "streamhost")


def read_log(session: Session, job_name: str, offset: int = 0) -> tuple[str, int, str]:
    """``(text from offset, next offset, TrainingJobStatus)`` from the platform's job-log route (SigV4-signed)."""
    import httpx
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    url = f"{session.endpoint_url}/_streamhost/training-jobs/{job_name}/log?offset={offset}"
    request = AWSRequest(method="GET", url=url, data=b"")
    SigV4Auth(_credentials(session), "sagemaker", session.region).add_auth(request)
    response = httpx.get(url, headers=dict(request.headers.items()), timeout=30)
    if response.status_code != 200:
        raise StreamhostError(
            f"cannot read the log of training job {job_name!r}: HTTP {response.status_code} {response.text.strip()}"
        )
    next_offset = int(response.headers.get("x-streamhost-next-offset", offset))
    return response.content.decode("utf-8", "replace"), next_offset, response.headers.get("x-streamhost-status", "")


def follow_log(session: Session, job_name: str, out: TextIO | None = None, follow: bool = True,
               poll: float = 1.0) -> str:  # fmt: skip
    """Print the job's log (and keep printing as it grows until the job ends, with ``follow``); returns the final status."""
    out = out or sys.stdout
    offset = 0
    while True:
        text, offset, status = read_log(session, job_name, offset)
        if text:
            out.write(text)
            out.flush()
        if not follow or (status in TERMINAL and not text):
            return status
        if not text:
            time.sleep(poll)


def wait_for_training_job(session: Session, job_name: str, timeout: float = 86400.0, delay: float = 1.0,
                          on_status: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Poll DescribeTrainingJob until Completed/Stopped/Failed (as the ``training_job_completed_or_stopped`` waiter)."""
    deadline = time.monotonic() + timeout
    while True:
        description = session.sagemaker.describe_training_job(TrainingJobName=job_name)
        if on_status is not None:
            on_status(description)
        if description["TrainingJobStatus"] in TERMINAL:
            return description
        if time.monotonic() > deadline:
            raise TrainingJobError(
                job_name, f"training job {job_name!r} is still {description['TrainingJobStatus']} after {timeout:.0f} s"
            )
        time.sleep(delay)


class TrainingModel(Model):
    """A model served from a training job's ``model.tar.gz`` (CreateModel with ModelDataUrl)."""

    def __init__(self, model_data: str, env: Mapping[str, str] | None = None, name: str | None = None,
                 session: Session | None = None, eula_required: bool = False, base_name: str = "tuned") -> None:  # fmt: skip
        super().__init__(model_data, env=env, name=name, session=session, eula_required=eula_required)
        self.model_data = model_data
        self._label = base_name

    def container(self) -> dict[str, Any]:
        environment = dict(self.env)
        if self.eula_required:
            environment[EULA_ENV] = "true"
        return {"Image": self.image or DEFAULT_IMAGE, "ModelDataUrl": self.model_data, "Environment": environment}

    def _base_name(self) -> str:
        return self._label


def model_for_training_job(session: Session, job_name: str, name: str | None = None,
                           env: Mapping[str, str] | None = None) -> TrainingModel:  # fmt: skip
    """The deployable model of a Completed (or Stopped) job, with its base's serving limits and licence gate."""
    description = session.sagemaker.describe_training_job(TrainingJobName=job_name)
    status = description["TrainingJobStatus"]
    if status not in ("Completed", "Stopped"):
        detail = f": {description['FailureReason']}" if description.get("FailureReason") else ""
        raise TrainingJobError(job_name, f"training job {job_name!r} is {status}; only a Completed or Stopped job has a model "
                               f"to deploy{detail}", status=status, reason=description.get("FailureReason"))  # fmt: skip
    base = (description.get("Environment") or {}).get("HF_MODEL_ID")
    entry = open_catalog().find(base) if base else None
    environment = {**(entry.default_env if entry else {}), **(env or {})}
    return TrainingModel(description["ModelArtifacts"]["S3ModelArtifacts"], env=environment, name=name, session=session,
                         eula_required=bool(entry and entry.eula_required), base_name=job_name)  # fmt: skip


class Estimator:
    """Fine-tune ``model_id`` (catalog id, hub id or folder) on your data, then deploy the result.

    ``hyperparameters`` are sent as strings; the platform fills the catalog defaults and refuses
    unknown or out-of-range values before a job exists. ``accept_eula`` is needed for gated models.
    """

    def __init__(self, model_id: str, hyperparameters: Mapping[str, Any] | None = None, output_path: str | Path | None = None,
                 session: Session | None = None, max_run: int = 86400, environment: Mapping[str, str] | None = None,
                 base_job_name: str | None = None, role: str = DEFAULT_ROLE, instance_type: str = "ml.g5.2xlarge") -> None:  # fmt: skip
        self.model_id = str(model_id)
        self.hyperparameters = {
            k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (hyperparameters or {}).items()
        }
        self.output_path = _uri(output_path) if output_path is not None else None
        self.session = session or Session()
        self.max_run = int(max_run)
        self.environment = {str(k): str(v) for k, v in (environment or {}).items()}
        self.base_job_name = base_job_name or Path(self.model_id.rstrip("/")).name
        self.role = role
        self.instance_type = instance_type
        self.latest_training_job_name: str | None = None

    def _output_path(self) -> str:
        if self.output_path:
            return self.output_path
        from .sdk import default_state_dir

        return (default_state_dir() / "training-output").as_uri()

    def fit(self, inputs: Mapping[str, str | Path] | str | Path, wait: bool = True, logs: bool = True,
            job_name: str | None = None, accept_eula: bool = False) -> dict[str, Any] | None:  # fmt: skip
        """CreateTrainingJob with ``inputs`` as channels (a single location is the ``train`` channel).

        With ``wait`` it returns DescribeTrainingJob's answer once Completed, printing the job log as
        it grows when ``logs``; a Failed (or Stopped) job raises TrainingJobError with its reason.
        """
        channels = {"train": inputs} if isinstance(inputs, (str, Path)) else dict(inputs)
        name = job_name or name_from_base(self.base_job_name)
        environment = {"HF_MODEL_ID": self.model_id, **self.environment}
        if accept_eula:
            environment["accept_eula"] = "true"
        self.session.sagemaker.create_training_job(
            TrainingJobName=name,
            RoleArn=self.role,
            AlgorithmSpecification={"TrainingImage": TRAINING_IMAGE, "TrainingInputMode": "File"},
            HyperParameters=self.hyperparameters,
            InputDataConfig=[{"ChannelName": channel, "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": _uri(location), "S3DataDistributionType": "FullyReplicated"}}}
                for channel, location in channels.items()],
            OutputDataConfig={"S3OutputPath": self._output_path()},
            ResourceConfig={"InstanceType": self.instance_type, "InstanceCount": 1, "VolumeSizeInGB": 30},
            StoppingCondition={"MaxRuntimeInSeconds": self.max_run},
            Environment=environment,
        )  # fmt: skip
        self.latest_training_job_name = name
        if not wait:
            return None
        if logs:
            follow_log(self.session, name)
        description = wait_for_training_job(self.session, name)
        if description["TrainingJobStatus"] != "Completed":
            reason = description.get("FailureReason") or description.get("SecondaryStatus")
            raise TrainingJobError(name, f"training job {name!r} is {description['TrainingJobStatus']}: {reason}",
                                   status=description["TrainingJobStatus"], reason=description.get("FailureReason"))  # fmt: skip
        return description

    def _job(self) -> str:
        if not self.latest_training_job_name:
            raise StreamhostError("no training job yet: call fit() first")
        return self.latest_training_job_name

    def describe(self) -> dict[str, Any]:
        return self.session.sagemaker.describe_training_job(TrainingJobName=self._job())

    @property
    def model_data(self) -> str:
        """The job's ``model.tar.gz`` URI."""
        return self.describe()["ModelArtifacts"]["S3ModelArtifacts"]

    def stop(self) -> None:
        self.session.sagemaker.stop_training_job(TrainingJobName=self._job())

    def deploy(self, instance_count: int = 1, endpoint_name: str | None = None, accept_eula: bool = False,
               wait: bool = True, timeout: float = DEFAULT_DEPLOY_TIMEOUT, **kwargs: Any) -> Predictor:  # fmt: skip
        """Serve the tuned model: CreateModel (ModelDataUrl = the job's model.tar.gz), config, endpoint."""
        model = model_for_training_job(self.session, self._job())
        return model.deploy(instance_count=instance_count, endpoint_name=endpoint_name, accept_eula=accept_eula,
                            wait=wait, timeout=timeout, **kwargs)  # fmt: skip
