"""CloudWatch Logs answers over the platform's own log files: DescribeLogStreams and GetLogEvents.

The SageMaker SDK reads job logs from CloudWatch: ``Estimator.fit()`` (``logs="All"`` by default)
tails ``/aws/sagemaker/TrainingJobs`` streams ``<job>/algo-1-...`` and fails on any error other
than ResourceNotFoundException; ``sagemaker.logs`` and boto3's ``logs`` client read endpoint logs
from ``/aws/sagemaker/Endpoints/<endpoint>``. Here a log group is a set of files the platform
already writes (each model-server instance's log, each training job's log), one stream per file.

Log lines carry no timestamps of their own, so each line gets one when this service first reads
it (milliseconds, strictly increasing per stream): the SDK resumes by (timestamp, count at that
timestamp), so a line's timestamp must never change between calls. Tokens are ``f/<line>`` and
``b/<line>`` positions, as opaque to clients as CloudWatch's. JSON 1.1 protocol
(``X-Amz-Target: Logs_20140328.<Operation>``), errors as ``{"__type", "message"}``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .asgi import BodyTooLarge, ClientGone, Receive, Scope, Send, header_map, read_body, respond
from .auth import AuthError, SigV4Verifier

TARGET_PREFIX = "Logs_20140328."
ENDPOINT_GROUP_PREFIX = "/aws/sagemaker/Endpoints/"
TRAINING_GROUP = "/aws/sagemaker/TrainingJobs"
_MAX_EVENTS = 10_000
_MAX_STREAMS = 50
_READ_CHUNK = 4 * 1024 * 1024


class LogsError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class LogSource(Protocol):
    """Names the files behind a log group: stream name -> file (None: this source has no such group)."""

    def streams(self, group: str) -> dict[str, Path] | None: ...


@dataclass
class EndpointLogs:
    """``/aws/sagemaker/Endpoints/<endpoint>``: one stream ``<variant>/<instance file>`` per instance log.

    The supervisor writes ``<logs_dir>/<endpoint>/<config>/<variant>-<index>.log``; a blue/green
    update's configs each keep their own files, so the stream name carries the config too.
    """

    logs_dir: Path

    def streams(self, group: str) -> dict[str, Path] | None:
        if not group.startswith(ENDPOINT_GROUP_PREFIX):
            return None
        endpoint = group[len(ENDPOINT_GROUP_PREFIX) :]
        folder = self.logs_dir / endpoint
        if not endpoint or "/" in endpoint or endpoint.startswith(".") or not folder.is_dir():
            return None
        found = {}
        for path in sorted(folder.glob("*/*.log")):
            variant = path.stem.rsplit("-", 1)[0]
            found[f"{variant}/{path.parent.name}-{path.stem}"] = path
        return found


@dataclass
class TrainingJobLogs:
    """``/aws/sagemaker/TrainingJobs``: stream ``<job>/algo-1`` for every job that has a log file."""

    jobs_dir: Path
    log_file: str = "training.log"

    def streams(self, group: str) -> dict[str, Path] | None:
        if group != TRAINING_GROUP:
            return None
        found = {}
        if self.jobs_dir.is_dir():
            for path in sorted(self.jobs_dir.glob(f"*/{self.log_file}")):
                found[f"{path.parent.name}/algo-1"] = path
        return found


@dataclass
class _Timeline:
    """The lines of one file read so far, with the timestamps they were given."""

    offset: int = 0
    pending: bytes = b""
    messages: list[str] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)
    created: int = 0

    def refresh(self, path: Path, now_ms: int) -> None:
        try:
            with open(path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(_READ_CHUNK)
        except OSError:
            return
        if not self.created:
            self.created = now_ms
        self.offset += len(data)
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()  # an unfinished last line waits for its newline
        for raw in lines:
            last = self.stamps[-1] if self.stamps else 0
            self.stamps.append(max(now_ms, last + 1))
            self.messages.append(raw.decode("utf-8", errors="replace").rstrip("\r"))


class LogsService:
    """Answers the CloudWatch Logs calls the SDK and boto3 make for job and endpoint logs."""

    def __init__(self, sources: Iterable[LogSource], verifier: SigV4Verifier | None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.sources = list(sources)
        self.verifier = verifier
        self.clock = clock
        self._timelines: dict[Path, _Timeline] = {}
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> tuple[str, int]:
        """Answer one request; returns the operation's name and the HTTP status."""
        request_id = str(uuid.uuid4())
        headers = header_map(scope)
        operation = "Unknown"
        try:
            try:
                body = await read_body(receive, 1024 * 1024)
            except BodyTooLarge:
                raise LogsError("InvalidParameterException", "The request body is larger than 1 MiB") from None
            self._authenticate(scope, headers, body)
            target = headers.get("x-amz-target", "")
            operation = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""
            handler = {"DescribeLogStreams": self.describe_log_streams, "GetLogEvents": self.get_log_events}.get(
                operation
            )
            if handler is None:
                raise LogsError("UnknownOperationException", f"Operation {operation or target or '(none)'} is not "
                                "supported by this platform; supported: DescribeLogStreams, GetLogEvents")  # fmt: skip
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                raise LogsError("SerializationException", "The request body is not valid JSON") from None
            if not isinstance(params, dict):
                raise LogsError("SerializationException", "The request body must be a JSON object")
            result = handler(params)
            await respond(send, 200, json.dumps(result).encode(),
                          {"content-type": "application/x-amz-json-1.1", "x-amzn-requestid": request_id})  # fmt: skip
            return f"Logs.{operation}", 200
        except ClientGone:
            return f"Logs.{operation}", 499
        except LogsError as exc:
            payload = json.dumps({"__type": exc.code, "message": exc.message}).encode()
            await respond(send, exc.status, payload,
                          {"content-type": "application/x-amz-json-1.1", "x-amzn-requestid": request_id})  # fmt: skip
            return f"Logs.{operation}", exc.status

    def _authenticate(self, scope: Scope, headers: dict[str, str], body: bytes) -> None:
        if self.verifier is None:
            return
        try:
            self.verifier.verify_request(scope, headers, body)
        except AuthError as exc:
            raise LogsError(exc.code, exc.message, 403) from None

    # ------------------------------------------------------------------ operations

    def _group(self, params: dict[str, Any]) -> tuple[str, dict[str, Path]]:
        group = params.get("logGroupName") or params.get("logGroupIdentifier")
        if not isinstance(group, str) or not group:
            raise LogsError("InvalidParameterException", "logGroupName is required")
        for source in self.sources:
            streams = source.streams(group)
            if streams is not None:
                return group, streams
        raise LogsError("ResourceNotFoundException", "The specified log group does not exist.")

    def _timeline(self, path: Path) -> _Timeline:
        with self._lock:
            timeline = self._timelines.setdefault(path, _Timeline())
            timeline.refresh(path, int(self.clock() * 1000))
            return timeline

    @staticmethod
    def _number(params: dict[str, Any], name: str, low: int, high: int, default: int | None) -> int | None:
        value = params.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise LogsError("InvalidParameterException", f"{name} must be an integer between {low} and {high}")
        return value

    def describe_log_streams(self, params: dict[str, Any]) -> dict[str, Any]:
        group, streams = self._group(params)
        prefix = params.get("logStreamNamePrefix") or ""
        order = params.get("orderBy", "LogStreamName")
        if order not in ("LogStreamName", "LastEventTime"):
            raise LogsError("InvalidParameterException", "orderBy must be LogStreamName or LastEventTime")
        if prefix and order == "LastEventTime":
            raise LogsError("InvalidParameterException", "Cannot order by LastEventTime with a logStreamNamePrefix.")
        limit = self._number(params, "limit", 1, _MAX_STREAMS, _MAX_STREAMS)
        start = self._token(params.get("nextToken"), "s")
        items = []
        for name in sorted(n for n in streams if n.startswith(prefix)):
            timeline = self._timeline(streams[name])
            item: dict[str, Any] = {"logStreamName": name, "creationTime": timeline.created,
                                    "arn": f"arn:aws:logs:::log-group:{group}:log-stream:{name}", "storedBytes": 0}  # fmt: skip
            if timeline.stamps:
                item.update(firstEventTimestamp=timeline.stamps[0], lastEventTimestamp=timeline.stamps[-1],
                            lastIngestionTime=timeline.stamps[-1])  # fmt: skip
            items.append(item)
        if order == "LastEventTime":
            items.sort(key=lambda i: i.get("lastEventTimestamp", 0))
        if params.get("descending"):
            items.reverse()
        page = items[start : start + (limit or _MAX_STREAMS)]
        out: dict[str, Any] = {"logStreams": page}
        if start + len(page) < len(items):
            out["nextToken"] = f"s/{start + len(page)}"
        return out

    def get_log_events(self, params: dict[str, Any]) -> dict[str, Any]:
        _group, streams = self._group(params)
        name = params.get("logStreamName") or params.get("logStreamNameOrId")
        if not isinstance(name, str) or name not in streams:
            raise LogsError("ResourceNotFoundException", "The specified log stream does not exist.")
        timeline = self._timeline(streams[name])
        limit = self._number(params, "limit", 1, _MAX_EVENTS, _MAX_EVENTS) or _MAX_EVENTS
        start_time = self._number(params, "startTime", 0, 2**62, None)
        end_time = self._number(params, "endTime", 0, 2**62, None)
        stamps, total = timeline.stamps, len(timeline.stamps)
        selected = [i for i in range(total) if (start_time is None or stamps[i] >= start_time)
                    and (end_time is None or stamps[i] < end_time)]  # fmt: skip
        token = params.get("nextToken")
        if token:
            direction = token.split("/", 1)[0] if isinstance(token, str) else ""
            if direction not in ("f", "b"):
                raise LogsError("InvalidParameterException", "The specified nextToken is invalid.")
            position = self._token(token, direction)
            if direction == "f":
                window = [i for i in selected if i >= position][:limit]
            else:
                window = [i for i in selected if i < position][-limit:]
        else:
            position = total
            window = selected[:limit] if params.get("startFromHead") else selected[-limit:]
        first = window[0] if window else position
        after = window[-1] + 1 if window else position
        return {
            "events": [
                {"timestamp": stamps[i], "message": timeline.messages[i], "ingestionTime": stamps[i]} for i in window
            ],
            "nextForwardToken": f"f/{after}",
            "nextBackwardToken": f"b/{first}",
        }

    @staticmethod
    def _token(token: Any, kind: str) -> int:
        if token is None:
            return 0
        if isinstance(token, str) and token.startswith(f"{kind}/") and token[len(kind) + 1 :].isdigit():
            return int(token[len(kind) + 1 :])
        raise LogsError("InvalidParameterException", "The specified nextToken is invalid.")
