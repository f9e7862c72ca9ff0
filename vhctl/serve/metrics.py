"""The server's Prometheus metrics, in a registry of its own (never the process-wide default one).

Labels are bounded: the endpoint is one of the served paths or ``other``, the status a number.
Nothing a client sends (and never the API key) becomes a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "ENDPOINTS", "Metrics", "SCORING"]

SCORING = ("/get_reward", "/v1/score", "/classify")
ENDPOINTS = (*SCORING, "/v1/models", "/health", "/metrics")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Counters and histograms of requests, records, tokens, the queue and the scoring windows."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "vhctl_serve_requests",
            "HTTP requests answered, by endpoint and status.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "vhctl_serve_request_seconds",
            "Time from request to response, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.records = Counter(
            "vhctl_serve_records",
            "Records scored (answered 200), by endpoint.",
            ["endpoint"],
            registry=registry,
        )
        self.tokens = Counter("vhctl_serve_tokens", "Tokens scored, after truncation.", registry=registry)
        self.shared_prompts = Counter(
            "vhctl_serve_shared_prompts", "Prompt forward passes saved by prefix sharing.", registry=registry
        )
        self.queue = Gauge("vhctl_serve_queue_records", "Records waiting for the model.", registry=registry)
        self.batch = Histogram(
            "vhctl_serve_window_records",
            "Records per scoring window (batched across requests).",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "vhctl_serve_requests_in_flight",
            "Scoring requests received and not yet answered.",
            registry=registry,
        )
        self.ready = Gauge(
            "vhctl_serve_ready", "1 once the model is loaded and requests are taken.", registry=registry
        )

    def request(self, path: str, status: int, seconds: float, records: int) -> None:
        """Count one answered request (``records`` scored, when it succeeded)."""
        endpoint = path if path in ENDPOINTS else "other"
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status == 200 and records:
            self.records.labels(endpoint).inc(records)

    def window(self, records: int, tokens: int, shared: int) -> None:
        """One scoring window of the model worker."""
        self.batch.observe(records)
        self.tokens.inc(tokens)
        if shared:
            self.shared_prompts.inc(shared)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
