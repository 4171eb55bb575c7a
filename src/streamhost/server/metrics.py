"""Prometheus metrics of one model server, in their own registry (several apps may share a process).

Request-side numbers (status codes, TTFT, inter-token latency, end-to-end time, client disconnects)
are observed by the server as it answers; engine-side numbers (queue depth, running batch, token
counters, aborts the engine carried out) are read from ``engine.stats`` at scrape time, so they
cost nothing per token. Names are ``streamhost_*``; TGI's dashboard gauges ``tgi_queue_size`` and
``tgi_batch_current_size`` are exported too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# nginx's status for "the client closed the connection before the answer ended": never a 5xx.
CLIENT_CLOSED_REQUEST = 499

# Latency buckets in seconds: per-token times are milliseconds, whole requests seconds to minutes.
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_FIRST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TOKEN_COUNT_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

# Routes get their own label value; anything else is "other" (no label explosion from random paths).
KNOWN_ROUTES = frozenset(
    {
        "/",
        "/generate",
        "/generate_stream",
        "/tokenize",
        "/info",
        "/health",
        "/ping",
        "/metrics",
        "/invocations",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
    }
)


def _live_load(engine: Any) -> tuple[int, int, int]:
    """``(waiting, running, last step's batch)`` as the scheduler holds them at scrape time.

    The engine's step counters are written when a step is scheduled, so after the last request
    finished they would keep its batch size; the scheduler's own queues are what is true now, and
    an idle engine reports 0 everywhere.
    """
    stats = getattr(engine, "stats", None)
    scheduler = getattr(engine, "scheduler", None)
    if scheduler is None:  # the core in its own process: its counters as of its last message (sent after each change)
        waiting, running = getattr(stats, "waiting", 0), getattr(stats, "running", 0)
    else:
        waiting = len(scheduler.waiting)
        running = len(scheduler.running) + len(scheduler.prefilling)
    return waiting, running, getattr(stats, "last_batch_size", 0) if running else 0


class _EngineCollector(Collector):
    """Reads the engine's live counters when Prometheus scrapes."""

    def __init__(self, engine_of: Callable[[], Any], ready_of: Callable[[], bool]) -> None:
        self._engine_of = engine_of
        self._ready_of = ready_of

    def collect(self) -> Iterator[Any]:
        engine = self._engine_of()
        stats = getattr(engine, "stats", None)
        yield GaugeMetricFamily(
            "streamhost_ready",
            "1 when the model is loaded and requests are admitted",
            value=1 if self._ready_of() else 0,
        )
        executor = getattr(getattr(engine, "executor", None), "name", None)
        if executor is not None:
            info = GaugeMetricFamily(
                "streamhost_executor_info", "the executor running the model (torch or llamacpp)", labels=["executor"]
            )
            info.add_metric([str(executor)], 1)
            yield info
        waiting, running, last_batch = _live_load(engine)
        yield GaugeMetricFamily("streamhost_queue_size", "requests waiting for a batch slot", value=waiting)
        yield GaugeMetricFamily("tgi_queue_size", "requests waiting for a batch slot (TGI's name)", value=waiting)
        yield GaugeMetricFamily("streamhost_batch_size", "sequences in the running batch", value=running)
        yield GaugeMetricFamily("tgi_batch_current_size", "sequences in the running batch (TGI's name)", value=running)
        yield GaugeMetricFamily(
            "streamhost_last_step_batch_size",
            "sequences sampled in the last engine step (0 when idle)",
            value=last_batch,
        )
        yield GaugeMetricFamily(
            "streamhost_engine_in_flight",
            "requests inside the engine",
            value=getattr(engine, "in_flight", 0) if engine is not None else 0,
        )
        yield GaugeMetricFamily(
            "streamhost_kv_rows",
            "KV-cache rows the engine core holds (0 once every finished or aborted request is freed)",
            value=getattr(stats, "live_rows", 0),
        )
        yield CounterMetricFamily(
            "streamhost_prompt_tokens",
            "prompt tokens prefilled (computed; cached ones not counted)",
            value=getattr(stats, "prompt_tokens", 0),
        )
        yield CounterMetricFamily(
            "streamhost_prompt_tokens_cached",
            "prompt tokens served from the prefix cache (KV an earlier request left in its row)",
            value=getattr(stats, "prompt_tokens_cached", 0),
        )
        yield CounterMetricFamily(
            "streamhost_prefix_cache_hits",
            "requests that reused at least one prompt token from the prefix cache",
            value=getattr(stats, "prefix_cache_hits", 0),
        )
        yield CounterMetricFamily(
            "streamhost_generated_tokens", "tokens generated", value=getattr(stats, "generated_tokens", 0)
        )
        yield CounterMetricFamily(
            "streamhost_engine_steps", "engine steps (forward passes)", value=getattr(stats, "steps", 0)
        )
        yield CounterMetricFamily(
            "streamhost_engine_aborted",
            "requests the engine stopped because their client went away or they were cancelled",
            value=getattr(stats, "aborted", 0),
        )
        yield CounterMetricFamily(
            "streamhost_engine_failed", "requests that failed inside the engine", value=getattr(stats, "failed", 0)
        )
        finished = CounterMetricFamily("streamhost_engine_finished", "requests finished, by reason", labels=["reason"])
        for reason, count in sorted(dict(getattr(stats, "finished", {}) or {}).items()):
            finished.add_metric([str(reason)], count)
        yield finished


class ServerMetrics:
    """The model server's metrics; ``render()`` is the body of GET /metrics."""

    def __init__(self, engine_of: Callable[[], Any], ready_of: Callable[[], bool]) -> None:
        # The *_created timestamp series double the output and no dashboard reads them (process-wide switch).
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "streamhost_requests", "HTTP requests answered, by route and status code", ["route", "status"], registry=r
        )
        self.disconnects = Counter(
            "streamhost_client_disconnects",
            "requests whose client went away before the answer ended (generation aborted)",
            registry=r,
        )
        self.stream_errors = Counter(
            "streamhost_stream_errors", "streams ended by an error event after they started", registry=r
        )
        self.in_flight = Gauge("streamhost_requests_in_flight", "generation requests being answered", registry=r)
        self.ttft = Histogram(
            "streamhost_time_to_first_token_seconds",
            "time from request arrival to its first token",
            buckets=_FIRST_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "streamhost_inter_token_latency_seconds",
            "time between consecutive tokens of a stream",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "streamhost_request_duration_seconds",
            "time from request arrival to its last byte",
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "streamhost_request_input_tokens", "prompt tokens per request", buckets=_TOKEN_COUNT_BUCKETS, registry=r
        )
        self.output_tokens = Histogram(
            "streamhost_request_generated_tokens",
            "generated tokens per request",
            buckets=_TOKEN_COUNT_BUCKETS,
            registry=r,
        )
        r.register(_EngineCollector(engine_of, ready_of))

    def count_request(self, path: str, status: int) -> None:
        self.requests.labels(path if path in KNOWN_ROUTES else "other", str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
