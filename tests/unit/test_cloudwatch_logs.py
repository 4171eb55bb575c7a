"""CloudWatch Logs over the platform's log files: stable timestamps, resumable reads, AWS's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("sagemaker", minversion="2.250")

from streamhost.platform.cloudwatch_logs import (
    TRAINING_GROUP,
    EndpointLogs,
    LogsError,
    LogsService,
    TrainingJobLogs,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(tmp_path: Path) -> tuple[LogsService, Path, Clock]:
    clock = Clock()
    logs = LogsService([EndpointLogs(tmp_path / "logs"), TrainingJobLogs(tmp_path / "training")], None, clock=clock)
    return logs, tmp_path, clock


class _Client:
    """The two calls of a boto3 ``logs`` client, answered by the service in-process."""

    def __init__(self, service: LogsService) -> None:
        self.service = service

    def get_log_events(self, **params):
        return self.service.get_log_events(params)


def _sdk_read(
    service: LogsService, group: str, stream: str, position: tuple[int, int]
) -> tuple[list[str], tuple[int, int]]:
    """The SDK's own tailing: sagemaker.logs.log_stream from (timestamp, skip), positions as _flush_log_streams keeps them."""
    from sagemaker.logs import log_stream

    timestamp, skip = position
    messages = []
    for event in log_stream(_Client(service), group, stream, timestamp, skip):
        messages.append(event["message"])
        timestamp, skip = (timestamp, skip + 1) if event["timestamp"] == timestamp else (event["timestamp"], 1)
    return messages, (timestamp, skip)


def test_training_log_is_tailed_line_by_line_without_repeats(service):
    logs, root, clock = service
    log = root / "training" / "job-1" / "training.log"
    log.parent.mkdir(parents=True)
    log.write_text("step 1 loss 2.0\nstep 2 loss 1.5\nstep 3 lo")  # the last line is still being written

    streams = logs.describe_log_streams({"logGroupName": TRAINING_GROUP, "logStreamNamePrefix": "job-1/"})["logStreams"]
    assert [s["logStreamName"] for s in streams] == ["job-1/algo-1"]
    seen, position = _sdk_read(logs, TRAINING_GROUP, "job-1/algo-1", (0, 0))
    assert seen == ["step 1 loss 2.0", "step 2 loss 1.5"]

    clock.now += 5
    with open(log, "a") as handle:
        handle.write("ss 1.2\ndone\n")
    more, position = _sdk_read(logs, TRAINING_GROUP, "job-1/algo-1", position)
    assert more == ["step 3 loss 1.2", "done"]
    again, _ = _sdk_read(logs, TRAINING_GROUP, "job-1/algo-1", position)
    assert again == []

    # timestamps never change once given, and strictly increase
    events = logs.get_log_events(
        {"logGroupName": TRAINING_GROUP, "logStreamName": "job-1/algo-1", "startFromHead": True}
    )["events"]
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(set(stamps)) and len(stamps) == 4
    assert logs.get_log_events({"logGroupName": TRAINING_GROUP, "logStreamName": "job-1/algo-1",
                                "startFromHead": True})["events"] == events  # fmt: skip


def test_pages_and_backward_reads(service):
    logs, root, _ = service
    log = root / "training" / "job-2" / "training.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(25)))
    group, stream = TRAINING_GROUP, "job-2/algo-1"
    first = logs.get_log_events({"logGroupName": group, "logStreamName": stream, "startFromHead": True, "limit": 10})
    assert [e["message"] for e in first["events"]] == [f"line {i}" for i in range(10)]
    second = logs.get_log_events(
        {"logGroupName": group, "logStreamName": stream, "nextToken": first["nextForwardToken"]}
    )
    assert second["events"][0]["message"] == "line 10"
    newest = logs.get_log_events({"logGroupName": group, "logStreamName": stream, "limit": 5})  # default: the tail
    assert [e["message"] for e in newest["events"]] == [f"line {i}" for i in range(20, 25)]
    older = logs.get_log_events({"logGroupName": group, "logStreamName": stream, "limit": 5,
                                 "nextToken": newest["nextBackwardToken"]})  # fmt: skip
    assert [e["message"] for e in older["events"]] == [f"line {i}" for i in range(15, 20)]


def test_endpoint_groups_and_errors(service):
    logs, root, _ = service
    instance_log = root / "logs" / "ep" / "ep-config" / "AllTraffic-0.log"
    instance_log.parent.mkdir(parents=True)
    instance_log.write_text("model loaded\n")
    streams = logs.describe_log_streams({"logGroupName": "/aws/sagemaker/Endpoints/ep"})["logStreams"]
    assert [s["logStreamName"] for s in streams] == ["AllTraffic/ep-config-AllTraffic-0"]

    with pytest.raises(LogsError) as missing:
        logs.describe_log_streams({"logGroupName": "/aws/sagemaker/Endpoints/nope"})
    assert missing.value.code == "ResourceNotFoundException"
    with pytest.raises(LogsError, match="log group"):
        logs.describe_log_streams({"logGroupName": "/aws/sagemaker/Endpoints/../../etc"})
    with pytest.raises(LogsError) as stream:
        logs.get_log_events({"logGroupName": "/aws/sagemaker/Endpoints/ep", "logStreamName": "AllTraffic/other"})
    assert stream.value.code == "ResourceNotFoundException"
    for bad in ({"nextToken": "garbage"}, {"limit": 0}, {"limit": "5"}, {"startTime": -1}):
        with pytest.raises(LogsError) as invalid:
            logs.get_log_events({"logGroupName": "/aws/sagemaker/Endpoints/ep",
                                 "logStreamName": "AllTraffic/ep-config-AllTraffic-0", **bad})  # fmt: skip
        assert invalid.value.code == "InvalidParameterException"
