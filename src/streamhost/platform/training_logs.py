"""Training-job logs as CloudWatch Logs answers them: DescribeLogStreams and GetLogEvents.

The SageMaker Python SDK's ``Estimator.fit(logs="All")`` (its default) prints a job's log by
reading log group ``/aws/sagemaker/TrainingJobs``, stream ``<job>/algo-1-<epoch>``, through the
``logs`` client, which ``AWS_ENDPOINT_URL`` points at this platform like every other client. Only
what that reader uses is answered (JSON 1.1, ``X-Amz-Target: Logs_20140328.<Op>``):

- each line of the job's log is one event; its timestamp is the job's creation time in ms plus
  the line's index, so positions (timestamp + skip, as the SDK keeps them) stay stable while the
  log grows;
- ``nextForwardToken`` is ``f/<next line index>``; a call with no new lines returns no events and
  the same token, which is how the SDK's reader knows it has caught up.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .training_jobs import TrainingJobs

TARGET_PREFIX = "Logs_20140328."
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
MAX_EVENTS = 10_000


class LogsError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _stream_name(job: str, created: float) -> str:
    return f"{job}/algo-1-{int(created)}"


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    complete = text[: text.rfind("\n") + 1]  # a line still being written waits for its newline
    return [line.replace("\r", "") for line in complete.split("\n")[:-1]]


class TrainingLogs:
    def __init__(self, jobs: TrainingJobs) -> None:
        self.jobs = jobs

    def handle(self, operation: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            if params.get("logGroupName", LOG_GROUP) != LOG_GROUP:
                raise LogsError("ResourceNotFoundException", f"The specified log group does not exist: {params.get('logGroupName')}")
            if operation == "DescribeLogStreams":
                return 200, self.describe_log_streams(params)
            if operation == "GetLogEvents":
                return 200, self.get_log_events(params)
            raise LogsError("InvalidAction", f"Logs operation {operation} is not supported here; supported: DescribeLogStreams, GetLogEvents")
        except LogsError as exc:
            return 400, {"__type": exc.code, "message": exc.message}

    def _job_of(self, stream: str):
        name = stream.split("/", 1)[0]
        record = self.jobs.store.get(name)
        if record is None or stream != _stream_name(record.name, record.created):
            raise LogsError("ResourceNotFoundException", f"The specified log stream does not exist: {stream}")
        return record

    def describe_log_streams(self, p: dict[str, Any]) -> dict[str, Any]:
        prefix = str(p.get("logStreamNamePrefix") or "")
        streams = []
        for record in sorted(self.jobs.store.list(), key=lambda r: r.name.lower()):
            name = _stream_name(record.name, record.created)
            if not name.startswith(prefix) or record.started is None:
                continue  # no stream until the trainer has started writing, as on AWS
            path = self.jobs.runner.job_dir(record.name) / "training.log"
            created = int(record.created * 1000)
            count = len(_lines(path))
            streams.append({"logStreamName": name, "creationTime": created, "firstEventTimestamp": created,
                            "lastEventTimestamp": created + max(0, count - 1), "lastIngestionTime": created + count,
                            "storedBytes": path.stat().st_size if path.exists() else 0,
                            "arn": f"arn:aws:logs:{self.jobs.control.region}:{self.jobs.control.account}:log-group:"
                                   f"{LOG_GROUP}:log-stream:{name}"})  # fmt: skip
        if p.get("descending"):
            streams.reverse()
        return {"logStreams": streams[: int(p.get("limit") or 50)]}

    def get_log_events(self, p: dict[str, Any]) -> dict[str, Any]:
        record = self._job_of(str(p.get("logStreamName") or ""))
        base = int(record.created * 1000)
        lines = _lines(self.jobs.runner.job_dir(record.name) / "training.log")
        token = p.get("nextToken")
        if token:
            try:
                start = int(str(token).split("/", 1)[1])
            except (IndexError, ValueError):
                raise LogsError("InvalidParameterException", "The specified nextToken is invalid.") from None
        else:
            start = max(0, int(p.get("startTime") or 0) - base)
        end = min(len(lines), start + min(int(p.get("limit") or MAX_EVENTS), MAX_EVENTS))
        if p.get("endTime") is not None:
            end = min(end, max(start, int(p["endTime"]) - base))
        events = [{"timestamp": base + i, "message": lines[i], "ingestionTime": base + i} for i in range(start, end)]
        return {"events": events, "nextForwardToken": f"f/{end}", "nextBackwardToken": f"b/{start}"}
