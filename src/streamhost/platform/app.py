"""The platform's ASGI application: routes, SigV4 check, request metrics, startup and shutdown.

Routes:
- ``GET /ping``: 200 once the platform is up (the platform's own health, not its endpoints').
- ``GET /metrics``: Prometheus text.
- ``POST /`` with ``X-Amz-Target: SageMaker.<Op>``: the control plane (JSON 1.1).
- ``POST /endpoints/{name}/invocations[-response-stream]``: the runtime gateway (rest-json).
- ``GET /_streamhost/endpoints/{name}``: an operator's view of an endpoint's instances
  (state, node, address, pid, in-flight and served counts, restarts, log path).
- ``GET /_streamhost/artifacts/{id}``: model data for instances on Ray nodes (token-guarded).
- S3 (path-style), STS and IAM: picked by the service in the request's SigV4 credential scope
  (``.../<region>/s3/aws4_request``), so one ``AWS_ENDPOINT_URL`` serves every client; an
  unsigned request that matches no route above goes to S3 too (anonymous: refused when auth is on).
- CloudWatch Logs (scope ``logs``): DescribeLogStreams/GetLogEvents over endpoint and training logs.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import unquote

from streamhost.protocols import sagemaker as sm

from .artifact_exports import ROUTE_PREFIX as ARTIFACTS_ROUTE
from .artifacts import ArtifactStore
from .asgi import BodyTooLarge, ClientGone, Receive, Scope, Send, header_map, read_body, respond, respond_json
from .auth import AuthError, SigV4Verifier, load_secrets
from .capacity import register as register_capacity
from .cloudwatch_logs import EndpointLogs, LogsService, TrainingJobLogs
from .control_plane import ControlPlane
from .gateway import INVOKE, INVOKE_STREAM, Gateway
from .jumpstart import CatalogArtifacts, publish_to_store
from .metrics import CLIENT_CLOSED_REQUEST, PlatformMetrics
from .s3.access import EmbeddedAccess, ExternalAccess, ObjectAccess, ObjectAccessError
from .s3.routing import signing_service
from .s3.service import S3Service
from .s3.store import ObjectStore
from .settings import PlatformSettings
from .store import Store
from .sts_iam import StsIamService
from .supervisor import Supervisor
from .training_jobs import LOG_ROUTE as TRAINING_LOG_ROUTE
from .training_jobs import TrainingJobs

log = logging.getLogger("streamhost.platform")

_STREAM_SUFFIX = "/invocations-response-stream"
_UNARY_SUFFIX = "/invocations"
_CONTROL_BODY_LIMIT = 1024 * 1024


EULA_ENV = "STREAMHOST_EULA_REQUIRED"


def catalog_eula_lookup(state_dir) -> Any:
    """A function telling whether a container's model needs its EULA accepted, per the catalog."""

    def lookup(container: dict[str, Any]) -> bool:
        from streamhost.catalog.specs import CatalogError, load_catalog

        env = container.get("Environment") or {}
        if str(env.get(EULA_ENV, "")).strip().lower() == "true":
            return True  # the model's owner marked it gated (the SDK's Model(eula_required=True) does)
        ref = env.get("HF_MODEL_ID") or env.get("OPTION_MODEL_ID") or env.get("MODEL_ID")
        if not ref:
            return False
        try:
            entry = load_catalog(state_dir).find(str(ref))
        except CatalogError:
            return False
        return bool(entry and entry.eula_required)

    return lookup


class PlatformApp:
    """Builds every part from ``settings`` and serves them as one ASGI app."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = PlatformMetrics()
        self.store = Store(settings.db_path)
        # The embedded object store, unless an external S3 endpoint is configured (then nothing is embedded).
        self.objects = None if settings.s3_endpoint_url else ObjectStore(settings.s3_dir, settings.db_path)
        self.object_access: ObjectAccess = (
            EmbeddedAccess(self.objects) if self.objects is not None else ExternalAccess(
                settings.s3_endpoint_url, region=settings.region, access_key_id=settings.s3_access_key_id,
                secret_access_key=settings.s3_secret_access_key, profile=settings.s3_profile)
        )  # fmt: skip
        self.artifacts = ArtifactStore(
            settings.artifacts_dir, s3_endpoint_url=settings.s3_endpoint_url, objects=self.object_access,
            allowed_roots=settings.artifact_roots, references=CatalogArtifacts(settings.state_dir, settings.region),
        )  # fmt: skip
        self.supervisor = Supervisor(self.store, settings, self.artifacts, self.metrics)
        self.control = ControlPlane(
            self.store,
            self.supervisor,
            self.artifacts,
            region=settings.region,
            account=settings.account,
            max_instances=settings.max_instances,
            eula_lookup=catalog_eula_lookup(settings.state_dir),
        )
        self.training = TrainingJobs(self)
        register_capacity(self.control, self.supervisor)
        self.gateway = Gateway(self.supervisor, self.store, self.metrics, settings)
        self.verifier: SigV4Verifier | None = None
        if settings.auth:
            secrets = load_secrets(settings.credentials_file)
            if not secrets:
                raise SystemExit(
                    "streamhost serve: SigV4 auth is on (the platform is bound to a non-loopback address or "
                    "--auth was given) but no credentials were found: set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or pass --credentials-file"
                )
            self.verifier = SigV4Verifier(secrets)
        self.s3 = S3Service(self.objects, region=settings.region, account=settings.account, verifier=self.verifier,
                            external_url=settings.s3_endpoint_url)  # fmt: skip
        self.sts_iam = StsIamService(settings.account, self.verifier)
        # training jobs write <state>/training/<job>/training.log (platform.training_runner)
        self.logs = LogsService([EndpointLogs(settings.logs_dir), TrainingJobLogs(settings.state_dir / "training")],
                                self.verifier)  # fmt: skip
        self.started_callbacks: list[Any] = []
        self.ready = False

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._route(scope, receive, tracking_send)
        except Exception as exc:
            log.exception("unhandled error for %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await respond_json(
                    send, 500, {"__type": "InternalFailure", "message": f"The platform failed: {type(exc).__name__}: {exc}"},
                    {sm.ERROR_TYPE: "InternalFailure"},
                )  # fmt: skip

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        path = scope["path"]
        service = signing_service(header_map(scope), scope.get("query_string", b"").decode("latin-1"))
        if service == "s3":
            self._count(*await self.s3(scope, receive, send))
            return
        if service in ("sts", "iam"):
            self._count(*await self.sts_iam(scope, receive, send, service))
            return
        if service == "logs":
            self._count(*await self.logs(scope, receive, send))
            return
        if method == "GET" and path == "/ping":
            await respond(send, 200 if self.ready else 503, b"", {"content-type": "text/plain"})
            return
        if method == "GET" and path == "/metrics":
            await respond(send, 200, self.metrics.render(), {"content-type": self.metrics.content_type})
            return
        if method == "POST" and path == "/":
            await self._control(scope, receive, send)
            return
        if path.startswith("/endpoints/") and (path.endswith(_STREAM_SUFFIX) or path.endswith(_UNARY_SUFFIX)):
            if method != "POST":
                await respond_json(send, 405, {"message": "use POST"}, {"allow": "POST"})
                return
            await self._invoke(scope, receive, send)
            return
        if method == "GET" and path.startswith(TRAINING_LOG_ROUTE):
            await self._training_log(scope, receive, send, path[len(TRAINING_LOG_ROUTE) :].removesuffix("/log"))
            return
        exports = getattr(self.supervisor.placement, "exports", None)  # model data for Ray nodes
        if method == "GET" and path.startswith(ARTIFACTS_ROUTE) and exports is not None:
            await exports.serve(scope, receive, send)
            return
        if method == "GET" and path.startswith("/_streamhost/endpoints/"):
            await self._instances(scope, receive, send, path.rsplit("/", 1)[-1])
            return
        if path == "/chat" or path.startswith("/chat/"):  # the chat page (streamhost.ui.chat owns it)
            from streamhost.ui.chat import serve_chat

            await serve_chat(scope, receive, send)
            return
        if service is None:  # unsigned: S3's anonymous requests (curl, a browser) land here
            self._count(*await self.s3(scope, receive, send))
            return
        await respond_json(send, 404, {"message": f"No route for {method} {path}"})

    def _count(self, operation: str, status: int) -> None:
        self.metrics.requests.labels(operation, str(status)).inc()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._ensure_default_bucket()
                    await self._publish_jumpstart_metadata()
                    await self.supervisor.recover()
                    self.training.recover()
                    self.ready = True
                    for callback in self.started_callbacks:
                        await callback(self)
                except Exception as exc:
                    log.exception("platform startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                try:
                    await self.training.shutdown()
                    await self.supervisor.shutdown()
                    await self.gateway.close()
                finally:
                    self.store.close()
                    if self.objects is not None:
                        self.objects.close()
                    await send({"type": "lifespan.shutdown.complete"})
                return

    async def _ensure_default_bucket(self) -> None:
        """Create ``sagemaker-<region>-<account>`` so uploads and the SDK's default_bucket() find it."""
        import asyncio

        try:
            await asyncio.to_thread(self.object_access.ensure_bucket, self.settings.default_bucket)
        except ObjectAccessError as exc:  # an unreachable external store must not keep the platform down
            log.warning("could not create the default bucket %s: %s", self.settings.default_bucket, exc)

    async def _publish_jumpstart_metadata(self) -> None:
        """The JumpStart bucket the SDK reads (manifests, specs), generated from the catalog."""
        import asyncio

        from streamhost.catalog.specs import CatalogError, load_catalog

        settings = self.settings
        try:
            catalog = load_catalog(settings.state_dir)
            await asyncio.to_thread(publish_to_store, self.object_access, catalog, region=settings.region,
                                    account=settings.account)  # fmt: skip
        except (CatalogError, ObjectAccessError) as exc:  # JumpStart is one feature: the platform still serves
            log.warning("could not publish the JumpStart metadata: %s", exc)

    # ------------------------------------------------------------------ auth

    def _authenticate(self, scope: Scope, headers: dict[str, str], body: bytes) -> None:
        if self.verifier is None:
            return
        self.verifier.verify_request(scope, headers, body)

    # ------------------------------------------------------------------ control plane

    async def _control(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = header_map(scope)
        target = headers.get("x-amz-target")
        operation = ControlPlane.operation_name(target) or "Unknown"
        json_type = sm.AMZ_JSON_CONTENT_TYPE
        try:
            body = await read_body(receive, _CONTROL_BODY_LIMIT)
        except ClientGone:
            self.metrics.count_request(operation, CLIENT_CLOSED_REQUEST)
            return
        except BodyTooLarge:
            await respond_json(send, 413, {"__type": "ValidationException", "message": "Request body is larger than 1 MiB"},
                               content_type=json_type)  # fmt: skip
            self.metrics.count_request(operation, 413)
            return
        try:
            self._authenticate(scope, headers, body)
        except AuthError as exc:
            await respond_json(send, exc.status, {"__type": exc.code, "message": exc.message}, content_type=json_type)
            self.metrics.count_request(operation, exc.status)
            return
        status, payload = await self.control.handle(target, body)
        if operation not in self.control.operations:
            operation = "Unknown"
        await respond_json(send, status, payload, {"x-amzn-requestid": _request_id()}, content_type=json_type)
        self.metrics.count_request(operation, status)

    # ------------------------------------------------------------------ runtime

    async def _invoke(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        stream = path.endswith(_STREAM_SUFFIX)
        operation = INVOKE_STREAM if stream else INVOKE
        raw_path = (scope.get("raw_path") or path.encode()).decode("latin-1").split("?", 1)[0]
        segment = raw_path[len("/endpoints/") : raw_path.rindex("/")]
        name = unquote(segment)
        headers = header_map(scope)
        try:
            body = await read_body(receive, sm.MAX_BODY_BYTES)
        except ClientGone:
            self.metrics.count_request(operation, CLIENT_CLOSED_REQUEST)
            return
        except BodyTooLarge:
            status, hdrs, payload = sm.runtime_error(
                "ValidationError", "The request body is larger than 6 MiB (6291456 bytes)."
            )
            await respond(send, status, payload, hdrs)
            self.metrics.count_request(operation, status)
            return
        try:
            self._authenticate(scope, headers, body)
        except AuthError as exc:
            payload = json.dumps({"message": exc.message}).encode()
            await respond(send, exc.status, payload, {sm.ERROR_TYPE: exc.code, "content-type": sm.JSON_CONTENT_TYPE})
            self.metrics.count_request(operation, exc.status)
            return
        status = await self.gateway.invoke(receive, send, name, body, headers, stream)
        self.metrics.count_request(operation, status)

    # ------------------------------------------------------------------ operator view

    async def _training_log(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        try:
            self._authenticate(scope, header_map(scope), await read_body(receive, 1024))
        except (ClientGone, BodyTooLarge):
            return
        except AuthError as exc:
            await respond_json(send, exc.status, {"__type": exc.code, "message": exc.message})
            return
        status, body, headers = self.training.read_log(name, scope.get("query_string", b"").decode("latin-1"))
        await respond(send, status, body, headers or {"content-type": "text/plain"})

    async def _instances(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        headers = header_map(scope)
        try:
            body = await read_body(receive, 1024)
            self._authenticate(scope, headers, body)
        except (ClientGone, BodyTooLarge):
            return
        except AuthError as exc:
            await respond_json(send, exc.status, {"__type": exc.code, "message": exc.message})
            return
        view = self.supervisor.instances_view(unquote(name))
        if view is None:
            await respond_json(send, 404, {"message": f"Endpoint {name} has no running instances"})
            return
        await respond_json(send, 200, view)


def _request_id() -> str:
    import uuid

    return str(uuid.uuid4())
