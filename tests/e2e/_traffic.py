"""Steady, bounded streaming traffic through boto3, and a watcher of the endpoint's status.

``StreamTraffic`` keeps a few threads streaming small TGI requests and sorts every failure: one
before the first payload part (the platform should have retried it elsewhere: must never
happen) or one after the stream began (a lost instance cuts its own streams short; allowed while
a node dies, not while scaling or updating). ``StatusWatch`` polls DescribeEndpoint and records
every status it sees, so a test can say the endpoint never left InService.
"""

from __future__ import annotations

import json
import threading
import time

import botocore.exceptions


class StreamTraffic:
    def __init__(self, runtime, endpoint: str, threads: int = 2, tokens: int = 8, limit: int = 2000) -> None:
        self.runtime, self.endpoint, self.tokens, self.limit = runtime, endpoint, tokens, limit
        self.completed = 0
        self.before_stream: list[str] = []  # failures before any PayloadPart reached the client
        self.mid_stream: list[str] = []  # failures after the stream had begun
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _body(self) -> bytes:
        return json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": self.tokens}, "stream": True}).encode()

    def _one(self) -> None:
        parts = 0
        try:
            response = self.runtime.invoke_endpoint_with_response_stream(
                EndpointName=self.endpoint, ContentType="application/json", Body=self._body()
            )
            data = b""
            for event in response["Body"]:
                if "PayloadPart" in event:
                    parts += 1
                    data += event["PayloadPart"]["Bytes"]
            lines = [line for line in data.split(b"\n") if line.startswith(b"data:")]
            if not lines or json.loads(lines[-1][5:]).get("generated_text") is None:
                raise RuntimeError(f"stream ended without its final event: {data[-200:]!r}")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, RuntimeError) as exc:
            with self._lock:
                (self.mid_stream if parts else self.before_stream).append(f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            self.completed += 1

    def _run(self) -> None:
        while not self._stop.is_set() and self.completed + len(self.before_stream) + len(self.mid_stream) < self.limit:
            self._one()

    def wait_completed(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.completed < count and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> StreamTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


class StatusWatch:
    """Polls DescribeEndpoint every ``period`` seconds; ``statuses`` is every distinct status seen, in order."""

    def __init__(self, sagemaker, endpoint: str, period: float = 0.25) -> None:
        self.sagemaker, self.endpoint, self.period = sagemaker, endpoint, period
        self.statuses: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status = self.sagemaker.describe_endpoint(EndpointName=self.endpoint)["EndpointStatus"]
            if not self.statuses or self.statuses[-1] != status:
                self.statuses.append(status)
            time.sleep(self.period)

    def __enter__(self) -> StatusWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
