"""A SageMaker-Python-SDK-style client for a streamhost platform, on plain boto3 clients.

The platform speaks the SageMaker API, so everything here is ordinary boto3 calls with
``endpoint_url`` set to the platform: ``Model.deploy`` is CreateModel + CreateEndpointConfig +
CreateEndpoint (+ waiting for InService), ``Predictor`` wraps InvokeEndpoint and
InvokeEndpointWithResponseStream. Errors from the platform stay botocore ``ClientError``s (their
``Code`` is the SageMaker error code); what this module adds raises ``StreamhostError``.

    >>> from streamhost.client import CatalogModel
    >>> predictor = CatalogModel("smollm2").deploy()
    >>> for text in predictor.chat("Tell me a joke", stream=True):
    ...     print(text, end="", flush=True)
    >>> predictor.delete_endpoint(); predictor.delete_model()
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamhost.catalog.specs import (
    ACCEPT_EULA_ATTRIBUTE,
    Catalog,
    check_eula,
    load_catalog,
)
from streamhost.catalog.specs import CatalogModel as CatalogEntry

from .iterators import TokenIterator, iter_events

if TYPE_CHECKING:
    from .chat import ChatPlan

__all__ = [
    "ACCEPT_EULA",
    "CatalogModel",
    "DEFAULT_IMAGE",
    "DEFAULT_REGION",
    "DEFAULT_URL",
    "DeploymentError",
    "EULA_ENV",
    "EulaNotAcceptedError",
    "Model",
    "Predictor",
    "Session",
    "StreamhostError",
    "build_payload",
    "default_state_dir",
    "generated_text",
    "is_not_found",
    "list_models",
    "name_from_base",
    "open_catalog",
    "platform_url",
    "wait_for_endpoint",
]

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_REGION = "us-east-1"
# The platform runs its own model server in TGI's dialect for any image naming TGI.
DEFAULT_IMAGE = "streamhost/tgi"
# The per-model "EULA required" flag the platform enforces at invoke time.
EULA_ENV = "STREAMHOST_EULA_REQUIRED"
ACCEPT_EULA = f"{ACCEPT_EULA_ATTRIBUTE}=true"
DEFAULT_VARIANT = "AllTraffic"
DEFAULT_DEPLOY_TIMEOUT = 900.0
_DUMMY_KEY = "streamhost"
_NAME_MAX = 63
_TIMESTAMP_LEN = 23  # 2024-01-31-12-00-00-123


class StreamhostError(Exception):
    """A client-side failure with a message that says what to do."""


class DeploymentError(StreamhostError):
    """The endpoint did not reach InService (it failed, vanished or took too long)."""

    def __init__(self, endpoint_name: str, message: str, status: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.endpoint_name = endpoint_name
        self.status = status
        self.reason = reason


class EulaNotAcceptedError(StreamhostError):
    """The model needs its end-user licence agreement accepted (``accept_eula=True``)."""


# --------------------------------------------------------------------------- session


def platform_url(url: str | None = None) -> str:
    """The platform's URL: ``url``, else ``$STREAMHOST_URL``, else http://127.0.0.1:8080."""
    return (url or os.environ.get("STREAMHOST_URL") or DEFAULT_URL).rstrip("/")


def default_state_dir() -> Path:
    """Where the platform keeps its state by default: ``$STREAMHOST_STATE_DIR`` or ~/.streamhost."""
    return Path(os.environ.get("STREAMHOST_STATE_DIR") or "~/.streamhost").expanduser()


def _has_aws_credentials() -> bool:
    """Whether the user configured AWS credentials (checked without touching the network)."""
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
        return True
    path = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    return Path(path).expanduser().is_file()


class Session:
    """boto3 ``sagemaker`` and ``sagemaker-runtime`` clients pointed at a streamhost platform.

    Credentials come from the usual AWS environment variables or credentials file when present
    (needed when the platform verifies signatures); otherwise placeholder keys are used, which a
    loopback platform accepts. The clients are created on first use.
    """

    def __init__(
        self,
        endpoint_url: str | None = None,
        region: str = DEFAULT_REGION,
        *,
        read_timeout: float = 900.0,
        boto_session: Any = None,
    ) -> None:
        self.endpoint_url = platform_url(endpoint_url)
        self.region = region
        self.read_timeout = read_timeout
        self._boto_session = boto_session
        self._sagemaker: Any = None
        self._runtime: Any = None

    def __repr__(self) -> str:
        return f"Session(endpoint_url={self.endpoint_url!r}, region={self.region!r})"

    def _client(self, service: str, read_timeout: float) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=5,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": 3},
            user_agent_extra="streamhost-sdk",
        )
        kwargs: dict[str, Any] = {"endpoint_url": self.endpoint_url, "region_name": self.region, "config": config}
        if self._boto_session is not None:
            return self._boto_session.client(service, **kwargs)
        if not _has_aws_credentials():
            kwargs.update(aws_access_key_id=_DUMMY_KEY, aws_secret_access_key=_DUMMY_KEY)
        return boto3.session.Session().client(service, **kwargs)

    @property
    def sagemaker(self) -> Any:
        """The control-plane client (CreateModel, DescribeEndpoint, ...)."""
        if self._sagemaker is None:
            self._sagemaker = self._client("sagemaker", 60.0)
        return self._sagemaker

    @property
    def runtime(self) -> Any:
        """The runtime client (InvokeEndpoint, InvokeEndpointWithResponseStream)."""
        if self._runtime is None:
            self._runtime = self._client("sagemaker-runtime", self.read_timeout)
        return self._runtime


# --------------------------------------------------------------------------- names and payloads


def name_from_base(base: str, now: datetime | None = None) -> str:
    """A unique resource name: ``base`` made valid (letters, digits, hyphens) plus a timestamp."""
    cleaned = re.sub(r"[^a-zA-Z0-9]+", "-", base).strip("-").lower() or "model"
    cleaned = cleaned[: _NAME_MAX - _TIMESTAMP_LEN - 1].rstrip("-")
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y-%m-%d-%H-%M-%S-") + f"{now.microsecond // 1000:03d}"
    return f"{cleaned}-{stamp}"


def build_payload(payload: Mapping[str, Any] | str, stream: bool = False) -> dict[str, Any]:
    """The JSON request body: a string is a prompt (``{"inputs": ...}``); a dict is sent as given.

    With ``stream`` the body asks for a token stream (``"stream": true``), which the model server
    honours for generate bodies (``inputs``) and chat/completions bodies (``messages``/``prompt``).
    """
    if isinstance(payload, str):
        body: dict[str, Any] = {"inputs": payload}
    elif isinstance(payload, Mapping):
        body = dict(payload)
    else:
        raise TypeError(f"payload must be a prompt string or a JSON object (dict), got {type(payload).__name__}")
    if stream:
        body["stream"] = True
    return body


def generated_text(response: Any) -> str | None:
    """The answer text in a non-streaming response (TGI, LMI or OpenAI shape), else None."""
    if isinstance(response, list) and response:
        response = response[0]
    if not isinstance(response, Mapping):
        return None
    if isinstance(response.get("generated_text"), str):
        return response["generated_text"]
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        message = choices[0].get("message")
        if isinstance(message, Mapping) and isinstance(message.get("content"), str):
            return message["content"]
        if isinstance(choices[0].get("text"), str):
            return choices[0]["text"]
    return None


def custom_attributes(accept_eula: bool, extra: str | None = None) -> str | None:
    """The CustomAttributes header value: ``accept_eula=true`` and/or the caller's own pairs."""
    parts = [ACCEPT_EULA] if accept_eula else []
    if extra:
        parts.append(extra)
    return ";".join(parts) or None


# --------------------------------------------------------------------------- waiting


def wait_for_endpoint(
    session: Session,
    endpoint_name: str,
    timeout: float = DEFAULT_DEPLOY_TIMEOUT,
    delay: float = 1.0,
    on_status: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll DescribeEndpoint until InService, like boto3's ``endpoint_in_service`` waiter.

    Succeeds on InService; raises DeploymentError on Failed (quoting FailureReason), when the
    endpoint disappears, or after ``timeout`` seconds. ``on_status(status, description)`` is
    called after every poll (the CLI draws its progress with it).
    """
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout
    pause = min(0.25, delay)
    while True:
        try:
            description = session.sagemaker.describe_endpoint(EndpointName=endpoint_name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ValidationException":  # the waiter's rule
                raise DeploymentError(
                    endpoint_name, f"endpoint {endpoint_name!r} disappeared while waiting for it: {_message(exc)}"
                ) from None
            raise
        status = str(description.get("EndpointStatus", ""))
        if on_status is not None:
            on_status(status, description)
        if status == "InService":
            return description
        if status in ("Failed", "OutOfService", "UpdateRollbackFailed"):
            reason = description.get("FailureReason") or "no reason given"
            raise DeploymentError(
                endpoint_name,
                f"endpoint {endpoint_name!r} is {status}: {reason}",
                status=status,
                reason=description.get("FailureReason"),
            )
        if time.monotonic() >= deadline:
            raise DeploymentError(
                endpoint_name,
                f"endpoint {endpoint_name!r} is still {status} after {timeout:.0f} s; "
                "it may still come up (check it with `streamhost endpoints describe`)",
                status=status,
            )
        time.sleep(pause)
        pause = min(pause * 2, delay)


def _message(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Message") or exc)


# --------------------------------------------------------------------------- predictor


class Predictor:
    """Invoke a deployed endpoint: ``predict`` for one answer, ``stream`` for text as it is generated.

    ``accept_eula`` sends ``accept_eula=true`` in CustomAttributes with every request, which models
    whose licence needs accepting (Llama 2) require.
    """

    def __init__(self, endpoint_name: str, session: Session | None = None, accept_eula: bool = False) -> None:
        self.endpoint_name = endpoint_name
        self.session = session or Session()
        self.accept_eula = accept_eula
        self._config_name: str | None = None
        self._model_names: list[str] | None = None
        self._chat_plans: dict[str, ChatPlan] = {}

    def __repr__(self) -> str:
        return f"Predictor(endpoint_name={self.endpoint_name!r})"

    def _invoke_args(self, body: dict[str, Any], attributes: str | None, target_variant: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {
            "EndpointName": self.endpoint_name,
            "Body": json.dumps(body, ensure_ascii=False).encode("utf-8"),
            "ContentType": "application/json",
        }
        header = custom_attributes(self.accept_eula, attributes)
        if header:
            args["CustomAttributes"] = header
        if target_variant:
            args["TargetVariant"] = target_variant
        return args

    def predict(
        self,
        payload: Mapping[str, Any] | str,
        *,
        custom_attributes: str | None = None,
        target_variant: str | None = None,
    ) -> Any:
        """One complete answer (InvokeEndpoint).

        A prompt string returns the generated text (``str``); a dict body returns the server's
        parsed JSON (TGI answers ``[{"generated_text": ...}]``).
        """
        args = self._invoke_args(build_payload(payload), custom_attributes, target_variant)
        args["Accept"] = "application/json"
        response = self.session.runtime.invoke_endpoint(**args)
        raw = response["Body"].read()
        try:
            parsed = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return raw.decode("utf-8", errors="replace")
        if isinstance(payload, str):
            text = generated_text(parsed)
            if text is not None:
                return text
        return parsed

    def _open_stream(self, payload: Mapping[str, Any] | str, attributes: str | None, target_variant: str | None) -> Any:
        args = self._invoke_args(build_payload(payload, stream=True), attributes, target_variant)
        return self.session.runtime.invoke_endpoint_with_response_stream(**args)["Body"]

    def stream(
        self,
        payload: Mapping[str, Any] | str,
        *,
        custom_attributes: str | None = None,
        target_variant: str | None = None,
    ) -> Iterator[str]:
        """The answer's text pieces as they are generated (InvokeEndpointWithResponseStream).

        The request is sent before this returns, so an unknown endpoint or a rejected request
        raises here; an error in mid-stream raises ``StreamError`` (or botocore's
        ``EventStreamError``) while iterating. Closing the iterator early closes the connection,
        which stops the generation.
        """
        return _closing(self._open_stream(payload, custom_attributes, target_variant), TokenIterator)

    def stream_events(
        self,
        payload: Mapping[str, Any] | str,
        *,
        custom_attributes: str | None = None,
        target_variant: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Each streamed event as parsed JSON (TGI token events, OpenAI chunks, LMI lines)."""
        return _closing(self._open_stream(payload, custom_attributes, target_variant), iter_events)

    # ------------------------------------------------------------------ chat

    def chat_plan(self, template: str = "auto", state_dir: Path | str | None = None) -> ChatPlan:
        """How this endpoint's model wants a conversation: its catalog template, else the server's chat template.

        Looked up once per template (DescribeEndpoint, DescribeEndpointConfig, DescribeModel and the catalog).
        """
        from .chat import endpoint_environment, plan_for

        if template not in self._chat_plans:
            environment = endpoint_environment(self.session.sagemaker, self.endpoint_name)
            catalog = open_catalog(state_dir) if environment.get("HF_MODEL_ID") else None
            self._chat_plans[template] = plan_for(environment, catalog, template)
        return self._chat_plans[template]

    def chat_body(
        self,
        question: str | list[Mapping[str, str]],
        *,
        system: str | None = None,
        stream: bool = False,
        template: str = "auto",
        **parameters: Any,
    ) -> dict[str, Any]:
        """The request ``chat`` sends: the question (or messages) in the model's chat format.

        ``parameters`` are TGI's names (max_new_tokens, temperature, top_p, top_k, seed, stop) and
        override the catalog's recommended ones.
        """
        from .chat import ChatPlan, as_messages

        plan = self.chat_plan(template)
        if plan.eula_required and not self.accept_eula:
            raise EulaNotAcceptedError(
                f"the model behind {self.endpoint_name!r} requires accepting its licence: Predictor(..., accept_eula=True)"
            )
        if parameters:
            plan = ChatPlan(plan.template, {**plan.parameters, **parameters}, plan.eula_required)
        return plan.body(as_messages(question, system), stream=stream)

    def chat(
        self,
        question: str | list[Mapping[str, str]],
        *,
        system: str | None = None,
        stream: bool = False,
        template: str = "auto",
        custom_attributes: str | None = None,
        target_variant: str | None = None,
        **parameters: Any,
    ) -> Any:
        """Ask a question (or continue a conversation) with the model's chat template applied.

        ``predict``/``stream`` send raw ``inputs`` as TGI defines them (the model continues the
        text); ``chat`` formats the question as the model was trained to answer it, with the
        catalog's template or the tokenizer's own (as ``streamhost chat`` does). Returns the
        answer (``str``), or with ``stream=True`` an iterator of its text pieces.

            >>> predictor.chat("What is the capital of France?")
            'The capital of France is Paris.'
        """
        body = self.chat_body(question, system=system, stream=stream, template=template, **parameters)
        if stream:
            return self.stream(body, custom_attributes=custom_attributes, target_variant=target_variant)
        answer = self.predict(body, custom_attributes=custom_attributes, target_variant=target_variant)
        text = generated_text(answer)
        if text is None:
            raise StreamhostError(f"the endpoint answered without generated text: {json.dumps(answer)[:300]}")
        return text

    def describe(self) -> dict[str, Any]:
        """DescribeEndpoint's answer (status, variants, instance counts)."""
        return self.session.sagemaker.describe_endpoint(EndpointName=self.endpoint_name)

    def _lookup(self) -> tuple[str, list[str]]:
        """The endpoint's config name and model names, remembered once found.

        A config that is already deleted (allowed while the endpoint lives) yields no models.
        """
        if self._config_name is None:
            self._config_name = self.describe()["EndpointConfigName"]
        if self._model_names is None:
            try:
                config = self.session.sagemaker.describe_endpoint_config(EndpointConfigName=self._config_name)
            except Exception as exc:
                if not is_not_found(exc):
                    raise
                return self._config_name, []
            self._model_names = [v["ModelName"] for v in config.get("ProductionVariants", []) if v.get("ModelName")]
        return self._config_name, self._model_names

    def delete_endpoint(self, delete_endpoint_config: bool = True) -> None:
        """Delete the endpoint and (by default) its config, config first as the SageMaker SDK does.

        The models are looked up before anything is deleted, so ``delete_model()`` still works
        afterwards. A config that is already gone is not an error.
        """
        config_name, _models = self._lookup()
        if delete_endpoint_config:
            try:
                self.session.sagemaker.delete_endpoint_config(EndpointConfigName=config_name)
            except Exception as exc:
                if not is_not_found(exc):
                    raise
        self.session.sagemaker.delete_endpoint(EndpointName=self.endpoint_name)

    def delete_model(self) -> None:
        """Delete the model(s) the endpoint serves."""
        _config, models = self._lookup()
        for name in models:
            self.session.sagemaker.delete_model(ModelName=name)


def is_not_found(exc: Exception) -> bool:
    """AWS answers a missing model, config or endpoint with ValidationException ("Could not find ...")."""
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return False
    code = response.get("Error", {}).get("Code")
    message = _message(exc).lower()
    return code == "ResourceNotFound" or (
        code == "ValidationException" and any(s in message for s in ("could not find", "not found", "does not exist"))
    )


def _closing(body: Any, wrap: Callable[[Any], Any]) -> Iterator[Any]:
    """Iterate ``wrap(body)``; closing the iterator early closes the HTTP body."""

    def generate() -> Iterator[Any]:
        try:
            yield from wrap(body)
        finally:
            close = getattr(body, "close", None)
            if callable(close):
                close()

    return generate()


# --------------------------------------------------------------------------- model


class Model:
    """A model for the platform to serve: a hub id, a local folder, or ``smollm2`` (the embedded default).

    ``env`` becomes the container's Environment (TGI names: MAX_INPUT_TOKENS, MAX_TOTAL_TOKENS,
    ...). ``eula_required`` marks the model so that deploying needs ``accept_eula=True`` and the
    platform refuses invocations without ``accept_eula=true``.
    """

    def __init__(
        self,
        model_id_or_path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        image: str | None = None,
        name: str | None = None,
        session: Session | None = None,
        eula_required: bool = False,
    ) -> None:
        reference = os.fspath(model_id_or_path)
        if not reference.strip():
            raise ValueError("model_id_or_path is empty: give a hub id, a local folder or 'smollm2'")
        path = Path(reference).expanduser()
        self.model_id = str(path.resolve()) if path.exists() else reference
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.image = image or DEFAULT_IMAGE
        self.name = name
        self.session = session or Session()
        self.eula_required = eula_required
        self._created = False

    def __repr__(self) -> str:
        return f"Model({self.model_id!r}, name={self.name!r})"

    def container(self) -> dict[str, Any]:
        """The PrimaryContainer sent with CreateModel."""
        environment = {"HF_MODEL_ID": self.model_id, **self.env}
        if self.eula_required:
            environment[EULA_ENV] = "true"
        return {"Image": self.image, "Environment": environment}

    def _base_name(self) -> str:
        return Path(self.model_id.rstrip("/")).name or self.model_id

    def create(self) -> str:
        """CreateModel (once); returns the model's name."""
        if self.name is None:
            self.name = name_from_base(self._base_name())
        if not self._created:
            self.session.sagemaker.create_model(ModelName=self.name, PrimaryContainer=self.container())
            self._created = True
        return self.name

    def deploy(
        self,
        instance_count: int = 1,
        endpoint_name: str | None = None,
        accept_eula: bool = False,
        wait: bool = True,
        timeout: float = DEFAULT_DEPLOY_TIMEOUT,
        *,
        instance_type: str | None = None,
        startup_timeout: int | None = None,
        on_status: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> Predictor:
        """Create the model, an endpoint config and an endpoint; wait for InService unless ``wait=False``.

        The endpoint config takes the endpoint's name, as with the SageMaker SDK. If creating the
        config or the endpoint fails, what this call created is deleted again.
        """
        if self.eula_required and not accept_eula:
            raise EulaNotAcceptedError(
                f"model {self.model_id!r} requires accepting its end-user licence agreement: "
                "deploy with accept_eula=True (CLI: --accept-eula)"
            )
        if instance_count < 1:
            raise ValueError(f"instance_count must be at least 1, got {instance_count}")
        created_model = not self._created
        model_name = self.create()
        endpoint_name = endpoint_name or model_name
        sm = self.session.sagemaker
        variant: dict[str, Any] = {
            "VariantName": DEFAULT_VARIANT,
            "ModelName": model_name,
            "InitialInstanceCount": instance_count,
            "InitialVariantWeight": 1.0,
        }
        if instance_type:
            variant["InstanceType"] = instance_type
        if startup_timeout:
            variant["ContainerStartupHealthCheckTimeoutInSeconds"] = int(startup_timeout)
        try:
            sm.create_endpoint_config(EndpointConfigName=endpoint_name, ProductionVariants=[variant])
        except Exception:
            if created_model:
                self._undo(lambda: sm.delete_model(ModelName=model_name))
                self._created = False
            raise
        try:
            sm.create_endpoint(EndpointName=endpoint_name, EndpointConfigName=endpoint_name)
        except Exception:
            self._undo(lambda: sm.delete_endpoint_config(EndpointConfigName=endpoint_name))
            if created_model:
                self._undo(lambda: sm.delete_model(ModelName=model_name))
                self._created = False
            raise
        predictor = Predictor(endpoint_name, session=self.session, accept_eula=accept_eula)
        predictor._config_name, predictor._model_names = endpoint_name, [model_name]
        if wait:
            wait_for_endpoint(self.session, endpoint_name, timeout=timeout, on_status=on_status)
        return predictor

    @staticmethod
    def _undo(action: Callable[[], Any]) -> None:
        """Best-effort cleanup; the original error is the one worth reporting."""
        try:
            action()
        except Exception:
            pass

    def delete_model(self) -> None:
        """DeleteModel for this model."""
        if self.name is not None:
            self.session.sagemaker.delete_model(ModelName=self.name)
            self._created = False


# --------------------------------------------------------------------------- catalog


def open_catalog(state_dir: Path | str | None = None) -> Catalog:
    """The packaged catalog extended by ``<state_dir>/catalog.json`` (default: the platform's state dir)."""
    folder = Path(state_dir).expanduser() if state_dir is not None else default_state_dir()
    return load_catalog(folder if folder.is_dir() else None)


def list_models(filter: str | None = None, state_dir: Path | str | None = None) -> list[CatalogEntry]:
    """Catalog entries matching ``filter`` (e.g. ``"task == llm and eula_required == false"``).

    The catalog is the packaged one extended by ``<state_dir>/catalog.json`` (default: the
    platform's state directory).
    """
    return open_catalog(state_dir).list(filter)


class CatalogModel:
    """A catalog model ready to deploy with its hub id, default limits, prompt template and licence.

    ``CatalogModel("meta-textgeneration-llama-2-7b-f").deploy(accept_eula=True)`` refuses to
    deploy without ``accept_eula=True`` and returns a Predictor that sends it on every request.
    ``env`` overrides the entry's default environment.
    """

    def __init__(
        self,
        model_id: str,
        session: Session | None = None,
        env: Mapping[str, str] | None = None,
        image: str | None = None,
        name: str | None = None,
        state_dir: Path | str | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.spec: CatalogEntry = (catalog or open_catalog(state_dir)).get(model_id)
        self.session = session or Session()
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.image = image
        self.name = name

    def __repr__(self) -> str:
        return f"CatalogModel({self.spec.id!r})"

    @property
    def model_id(self) -> str:
        return self.spec.id

    @property
    def eula_required(self) -> bool:
        return self.spec.eula_required

    @property
    def prompt_template(self) -> str:
        return self.spec.prompt_template

    @property
    def recommended_parameters(self) -> dict[str, Any]:
        return dict(self.spec.recommended_parameters)

    def model(self) -> Model:
        """The plain Model this entry deploys (bundled models by alias, others by hub id)."""
        source = self.spec.id if self.spec.source == "bundled" else self.spec.hub_id
        return Model(
            source,
            env={**self.spec.default_env, **self.env},
            image=self.image,
            name=self.name or name_from_base(self.spec.id),
            session=self.session,
            eula_required=self.spec.eula_required,
        )

    def deploy(
        self,
        accept_eula: bool = False,
        instance_count: int = 1,
        endpoint_name: str | None = None,
        wait: bool = True,
        timeout: float = DEFAULT_DEPLOY_TIMEOUT,
        **kwargs: Any,
    ) -> Predictor:
        """Deploy the entry; raises ``EulaRequiredError`` (naming the licence) unless ``accept_eula``."""
        check_eula(self.spec, accept_eula)
        return self.model().deploy(
            instance_count=instance_count,
            endpoint_name=endpoint_name,
            accept_eula=accept_eula,
            wait=wait,
            timeout=timeout,
            **kwargs,
        )
