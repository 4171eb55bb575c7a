"""The platform's Prometheus metrics (``GET /metrics``).

A registry of its own rather than the global one, so two platforms in one test process (or a
model server imported alongside) never collide on metric names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# nginx's status for "the client closed the connection before the answer ended": never a 5xx.
CLIENT_CLOSED_REQUEST = 499
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class PlatformMetrics:
    """Counters and histograms the gateway, control plane and supervisor update."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "streamhost_platform_requests",
            "API requests by operation and HTTP status.",
            ["operation", "status"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "streamhost_endpoint_time_to_first_token_seconds",
            "Time from a streaming invocation's arrival to its first payload part, per endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "streamhost_endpoint_invocation_seconds",
            "Whole-invocation latency per endpoint and operation.",
            ["endpoint", "operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.disconnects = Counter(
            "streamhost_client_disconnects",
            "Requests whose client went away before the answer ended (recorded as status 499, never 5xx).",
            ["operation"],
            registry=self.registry,
        )
        self.in_flight_requests = Gauge(
            "streamhost_endpoint_in_flight_requests",
            "Invocations (streaming or not) being answered per endpoint; 0 when the endpoint is idle.",
            ["endpoint"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "streamhost_endpoint_in_flight_streams",
            "Streaming invocations in progress per endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        self.invocations = Counter(
            "streamhost_endpoint_invocations",
            "Invocations per endpoint, variant and outcome.",
            ["endpoint", "variant", "outcome"],
            registry=self.registry,
        )
        self.restarts = Counter(
            "streamhost_instance_restarts",
            "Model-server instances restarted after a crash or failed health checks.",
            ["endpoint", "variant"],
            registry=self.registry,
        )
        self.ready_instances = Gauge(
            "streamhost_endpoint_ready_instances",
            "Instances currently passing health checks per endpoint and variant.",
            ["endpoint", "variant"],
            registry=self.registry,
        )
        self.instance_info = Gauge(
            "streamhost_instance_info",
            "1 for each ready instance, labelled with where it runs: the node (local, or a Ray node id) and its address.",
            ["endpoint", "variant", "instance", "node", "address"],
            registry=self.registry,
        )

    def count_request(self, operation: str, status: int) -> None:
        """One answered API request; 499 (the client left before the end) also counts a disconnect."""
        self.requests.labels(operation, str(status)).inc()
        if status == CLIENT_CLOSED_REQUEST:
            self.disconnects.labels(operation).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
