"""Prometheus metrics of one app: request counts and latency by route, query stage times, batch sizes, index size.

Each app has its own registry (several apps in one process, as in the tests, do not share counters). Routes are
labelled by their template (`/v1/images/{image_id}`), so the label set stays small whatever clients send.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds; a sketch query on the CPU takes tens to hundreds of ms, an image or a health check ~1 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Sketches per forward of the models (the batching of sketch queries: 1 is a query alone).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
UNMATCHED = "unmatched"


class ServiceMetrics:
    """The counters, histograms and gauges the service exports at /metrics."""

    def __init__(self, engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("s2m_http_requests", "HTTP requests by route, method and status code.",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("s2m_http_request_duration_seconds", "HTTP request latency by route.",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stages = Histogram("s2m_query_stage_seconds", "Time of each query stage (generate, search, rerank...).",
                                ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("s2m_query_batch_size", "Sketch queries per forward of E, H and G.",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("s2m_queries_in_flight", "Queries waiting for or running on the models.",
                               registry=self.registry)
        index_images = Gauge("s2m_index_images", "Vectors in the served FAISS index.", ["index"],
                             registry=self.registry)
        index_images.labels(engine.reader.stamp.name).set_function(lambda: engine.reader.store.ntotal)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        """The stage timings of one query (the engine's `timings_ms`, without the total)."""
        for stage, ms in timings_ms.items():
            if stage != "total":
                self.stages.labels(stage).observe(ms / 1e3)

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
