"""The runtime gateway: InvokeEndpoint and InvokeEndpointWithResponseStream (docs/protocols.md §1).

A request picks a variant (TargetVariant, else by weight), then an instance (fewest requests in
flight, or at random), and is forwarded to the instance's ``POST /invocations`` with the
headers a SageMaker container receives (Content-Type, Accept, CustomAttributes, ...).

- The container's non-2xx answer becomes 424 ModelError carrying its status and body.
- An instance that cannot be reached, or dies before the first byte reaches the client, is
  marked suspect and the request is retried on another ready instance.
- Streaming: each chunk the container sends becomes one ``PayloadPart`` event, written (and so
  flushed, chunked) as soon as it arrives. A failure after the stream started becomes a
  ``ModelStreamError`` exception event, because a stream that is simply cut off ends silently
  in boto3. A client that disconnects closes the upstream connection, which aborts generation.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from streamhost.catalog.specs import eula_accepted
from streamhost.disconnect import race_disconnect, wait_disconnect
from streamhost.protocols import sagemaker as sm
from streamhost.protocols.eventstream import model_stream_error, payload_part

from .asgi import Receive, Send, respond, start_stream
from .instances import InstanceHandle
from .metrics import CLIENT_CLOSED_REQUEST, PlatformMetrics
from .settings import PlatformSettings
from .store import Store
from .supervisor import Deployment, NoInstance, Supervisor, Variant
from .upstream import UpstreamClient, UpstreamError, UpstreamResponse

INVOKE = "InvokeEndpoint"
INVOKE_STREAM = "InvokeEndpointWithResponseStream"
MAX_ATTEMPTS = 3

# Request headers a SageMaker container receives from the runtime, by their incoming names.
_FORWARDED = (
    "content-type",
    sm.CUSTOM_ATTRIBUTES.lower(),
    sm.INFERENCE_ID.lower(),
    sm.TARGET_MODEL.lower(),
    sm.SESSION_ID.lower(),
    sm.ENABLE_EXPLANATIONS.lower(),
)
_CUSTOM_LOWER = sm.CUSTOM_ATTRIBUTES.lower()
_STREAM_ACCEPT_LOWER = sm.STREAM_ACCEPT.lower()


class InvokeError(Exception):
    """An error answered before any response bytes: ``(status, headers, body)`` from protocols.sagemaker."""

    def __init__(self, response: tuple[int, dict[str, str], bytes], outcome: str = "error") -> None:
        super().__init__(response[2].decode("utf-8", "replace"))
        self.response = response
        self.outcome = outcome


class Gateway:
    def __init__(
        self, supervisor: Supervisor, store: Store, metrics: PlatformMetrics, settings: PlatformSettings
    ) -> None:
        self.supervisor = supervisor
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.client = UpstreamClient()

    async def close(self) -> None:
        await self.client.aclose()

    # ------------------------------------------------------------------ routing

    def _deployment(self, name: str) -> Deployment:
        deployment = self.supervisor.live.get(name.lower())
        if deployment is not None:
            return deployment
        record = self.store.get_endpoint(name)
        if record is None:
            raise InvokeError(sm.endpoint_not_found(name, self.settings.account), "not_found")
        raise InvokeError(
            sm.runtime_error(
                "ValidationError",
                f"Endpoint {name} of account {self.settings.account} is not in service "
                f"(status {record.status}); invoke it once DescribeEndpoint says InService.",
            ),
            "not_in_service",
        )

    @staticmethod
    def _variant(deployment: Deployment, headers: dict[str, str]) -> Variant:
        target = headers.get(sm.TARGET_VARIANT.lower())
        if target:
            variant = deployment.variant(target)
            if variant is None:
                names = ", ".join(v.name for v in deployment.variants)
                raise InvokeError(
                    sm.runtime_error(
                        "ValidationError",
                        f"TargetVariant {target} does not exist on endpoint {deployment.endpoint} (variants: {names}).",
                    )
                )
            return variant
        return deployment.pick_variant()

    def _check(self, name: str, body: bytes, headers: dict[str, str]) -> None:
        if not sm.valid_endpoint_name(name):
            raise InvokeError(sm.runtime_error("ValidationError", sm.name_error("Endpoint", name)))
        if not body:
            raise InvokeError(sm.runtime_error("ValidationError", "The request body (Body) is required and was empty."))
        custom = headers.get(sm.CUSTOM_ATTRIBUTES.lower(), "")
        if len(custom) > sm.MAX_CUSTOM_ATTRIBUTES:
            raise InvokeError(
                sm.runtime_error(
                    "ValidationError", f"CustomAttributes is longer than {sm.MAX_CUSTOM_ATTRIBUTES} characters."
                )
            )

    @staticmethod
    def _check_eula(variant: Variant, headers: dict[str, str]) -> None:
        if variant.eula_required and not eula_accepted(headers.get(sm.CUSTOM_ATTRIBUTES.lower())):
            raise InvokeError(
                sm.runtime_error(
                    "ValidationError",
                    f"Model {variant.model_name} requires accepting its end-user licence agreement (EULA): "
                    "read it, then send CustomAttributes 'accept_eula=true' with the request.",
                ),
                "eula",
            )

    @staticmethod
    def _upstream_headers(headers: dict[str, str], stream: bool) -> list[tuple[str, str]]:
        out = [(name, headers[name]) for name in _FORWARDED if name in headers]
        accept = headers.get(_STREAM_ACCEPT_LOWER if stream else "accept")
        if accept:
            out.append(("accept", accept))
        return out

    def _log_stream_arn(self, endpoint: str) -> str:
        return (
            f"arn:aws:logs:{self.settings.region}:{self.settings.account}:log-group:/aws/sagemaker/Endpoints/{endpoint}"
        )

    def _model_error(self, deployment: Deployment, variant: Variant, status: int, body: bytes) -> InvokeError:
        return InvokeError(
            sm.model_error(
                status, body, log_stream_arn=self._log_stream_arn(deployment.endpoint), variant=variant.name
            ),
            "model_error",
        )

    # ------------------------------------------------------------------ entry points

    async def invoke(
        self, receive: Receive, send: Send, name: str, body: bytes, headers: dict[str, str], stream: bool
    ) -> int:
        """Answer one invocation; returns the HTTP status sent (for the request metrics)."""
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        operation = INVOKE_STREAM if stream else INVOKE
        label = "-"  # only endpoints that exist get their own metric series
        in_flight = None
        try:
            self._check(name, body, headers)
            deployment = self._deployment(name)
            label = deployment.endpoint
            in_flight = self.metrics.in_flight_requests.labels(label)
            in_flight.inc()
            variant = self._variant(deployment, headers)
            self._check_eula(variant, headers)
            if stream:
                return await self._stream(receive, send, deployment, variant, body, headers, request_id, started)
            return await self._unary(receive, send, deployment, variant, body, headers, request_id, started)
        except InvokeError as exc:
            status, hdrs, payload = exc.response
            await respond(send, status, payload, {**hdrs, sm.REQUEST_ID: request_id})
            self.metrics.invocations.labels(label, "-", exc.outcome).inc()
            return status
        finally:
            if in_flight is not None:
                in_flight.dec()
            self.metrics.latency.labels(label, operation).observe(time.perf_counter() - started)

    async def _acquire(self, variant: Variant, tried: set[int]) -> InstanceHandle:
        try:
            return await variant.acquire(tried, self.settings.ready_wait)
        except NoInstance:
            raise InvokeError(
                sm.runtime_error(
                    "ServiceUnavailable",
                    f"No instance of variant {variant.name} of endpoint {variant.endpoint} is ready to serve; "
                    "it is restarting. Retry shortly.",
                ),
                "no_instance",
            ) from None

    def _post(self, instance: InstanceHandle, body: bytes, headers: dict[str, str], stream: bool):
        return self.client.post(f"{instance.url}/invocations", self._upstream_headers(headers, stream), body)

    def _response_headers(self, variant: Variant, upstream: UpstreamResponse, request_id: str) -> dict[str, str]:
        out = {sm.INVOKED_VARIANT: variant.name, sm.REQUEST_ID: request_id}
        custom = upstream.headers.get(_CUSTOM_LOWER)
        if custom:
            out[sm.CUSTOM_ATTRIBUTES] = custom
        return out

    def _unreachable(self, variant: Variant) -> tuple[int, dict[str, str], bytes]:
        return sm.runtime_error(
            "ServiceUnavailable",
            f"The instances of variant {variant.name} of endpoint {variant.endpoint} could not be reached; "
            "they are being restarted. Retry shortly.",
        )

    # ------------------------------------------------------------------ InvokeEndpoint

    async def _call(
        self, instance: InstanceHandle, body: bytes, headers: dict[str, str]
    ) -> tuple[UpstreamResponse, bytes]:
        upstream = await self._post(instance, body, headers, False)
        try:
            return upstream, await upstream.read()
        finally:
            await upstream.aclose()

    async def _unary(
        self, receive: Receive, send: Send, deployment: Deployment, variant: Variant, body: bytes,
        headers: dict[str, str], request_id: str, started: float,
    ) -> int:  # fmt: skip
        tried: set[int] = set()
        for attempt in range(MAX_ATTEMPTS):
            instance = await self._acquire(variant, tried)
            try:
                gone, result = await race_disconnect(receive, self._call(instance, body, headers))
            except UpstreamError:
                # Nothing reached the client yet: the instance died or is gone; another one answers.
                instance.suspect()
                tried.add(id(instance))
                if attempt + 1 == MAX_ATTEMPTS:
                    raise InvokeError(self._unreachable(variant), "unreachable") from None
                continue
            finally:
                instance.in_flight -= 1
            if gone:
                self.metrics.invocations.labels(deployment.endpoint, variant.name, "client_disconnected").inc()
                return CLIENT_CLOSED_REQUEST
            upstream, content = result
            instance.served += 1
            if not 200 <= upstream.status_code < 300:
                raise self._model_error(deployment, variant, upstream.status_code, content)
            out = self._response_headers(variant, upstream, request_id)
            content_type = upstream.headers.get("content-type")
            if content_type:
                out["content-type"] = content_type
            await respond(send, 200, content, out)
            self.metrics.invocations.labels(deployment.endpoint, variant.name, "ok").inc()
            return 200
        raise InvokeError(self._unreachable(variant), "unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ InvokeEndpointWithResponseStream

    async def _open_stream(
        self, deployment: Deployment, variant: Variant, body: bytes, headers: dict[str, str]
    ) -> tuple[InstanceHandle, UpstreamResponse, Any, bytes | None]:
        """Connect to an instance and read its first chunk, retrying elsewhere if it fails before that.

        Returns ``(instance, response, chunk iterator, first chunk or None at end of stream)``;
        the instance's in-flight count stays raised until the caller releases it.
        """
        tried: set[int] = set()
        for attempt in range(MAX_ATTEMPTS):
            instance = await self._acquire(variant, tried)
            upstream: UpstreamResponse | None = None
            held = True
            try:
                upstream = await self._post(instance, body, headers, True)
                if not 200 <= upstream.status_code < 300:
                    content = await upstream.read()
                    instance.served += 1
                    raise self._model_error(deployment, variant, upstream.status_code, content)
                chunks = upstream.iter_chunks()
                try:
                    first: bytes | None = await chunks.__anext__()
                except StopAsyncIteration:
                    first = None
                held = False  # the caller releases the instance when the stream ends
                return instance, upstream, chunks, first
            except UpstreamError:
                instance.suspect()
                tried.add(id(instance))
                if attempt + 1 == MAX_ATTEMPTS:
                    raise InvokeError(self._unreachable(variant), "unreachable") from None
            finally:
                if held:
                    instance.in_flight -= 1
                    if upstream is not None:
                        await upstream.aclose()
        raise InvokeError(self._unreachable(variant), "unreachable")  # pragma: no cover

    async def _stream(
        self, receive: Receive, send: Send, deployment: Deployment, variant: Variant, body: bytes,
        headers: dict[str, str], request_id: str, started: float,
    ) -> int:  # fmt: skip
        endpoint = deployment.endpoint
        gone, opened = await race_disconnect(receive, self._open_stream(deployment, variant, body, headers))
        if gone:
            self.metrics.invocations.labels(endpoint, variant.name, "client_disconnected").inc()
            return CLIENT_CLOSED_REQUEST
        instance, upstream, chunks, first = opened
        out = self._response_headers(variant, upstream, request_id)
        out["content-type"] = sm.EVENT_STREAM_CONTENT_TYPE
        out[sm.STREAM_CONTENT_TYPE] = upstream.headers.get("content-type", "application/octet-stream")
        out["cache-control"] = "no-cache"
        out["x-accel-buffering"] = "no"
        gauge = self.metrics.in_flight.labels(endpoint)
        gauge.inc()
        outcome = "ok"
        try:
            await start_stream(send, 200, out)
            if first is not None:
                await send({"type": "http.response.body", "body": payload_part(first), "more_body": True})
                self.metrics.ttft.labels(endpoint).observe(time.perf_counter() - started)
                outcome = await self._pump(receive, send, instance, variant, chunks)
            if outcome != "client_disconnected":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gauge.dec()
            instance.in_flight -= 1
            instance.served += 1
            await upstream.aclose()  # unfinished: the connection closes, the container stops generating
            await chunks.aclose()
            self.metrics.invocations.labels(endpoint, variant.name, outcome).inc()
        return CLIENT_CLOSED_REQUEST if outcome == "client_disconnected" else 200

    async def _pump(self, receive: Receive, send: Send, instance: InstanceHandle, variant: Variant, chunks: Any) -> str:
        """Relay chunks as PayloadPart events until the end, a failure, or the client leaving."""

        async def relay() -> str:
            try:
                async for chunk in chunks:
                    await send({"type": "http.response.body", "body": payload_part(chunk), "more_body": True})
            except UpstreamError as exc:
                instance.suspect()
                message = (
                    f"The model server of variant {variant.name} stopped in the middle of the response "
                    f"({exc}); the answer is incomplete."
                )
                await send({"type": "http.response.body", "body": model_stream_error(message), "more_body": True})
                return "stream_broken"
            return "ok"

        relay_task = asyncio.ensure_future(relay())
        watcher = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait({relay_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            relay_task.cancel()
            raise
        finally:
            watcher.cancel()
        if relay_task.done():
            return relay_task.result()
        relay_task.cancel()
        await asyncio.gather(relay_task, return_exceptions=True)
        return "client_disconnected"
