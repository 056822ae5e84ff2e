"""Prometheus metrics on a per-app registry (several apps in one process do not clash)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from memory_store.coalescing import CoalescingEmbedder
from memory_store.store import MemoryStore

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StoreCollector(Collector):
    """Memory, subject and tenant counts and the size of the loaded FAISS indexes (``MemoryStore.totals``), at
    scrape time.

    Totals only: per-tenant labels would expose tenant ids to anyone who can read /metrics."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        totals = self._store.totals()
        yield GaugeMetricFamily("sealmem_memories", "Memories stored (all tenants).", value=totals.memories)
        yield GaugeMetricFamily("sealmem_subjects", "Subjects with stored data (all tenants).", value=totals.subjects)
        yield GaugeMetricFamily("sealmem_tenants", "Tenants.", value=totals.tenants)
        yield GaugeMetricFamily(
            "sealmem_index_vectors",
            "Vectors in the loaded FAISS indexes.",
            value=totals.loaded_index_vectors,
        )
        yield GaugeMetricFamily(
            "sealmem_index_bytes",
            "Approximate size of the loaded FAISS indexes.",
            value=totals.loaded_index_bytes,
        )
        detections = CounterMetricFamily(
            "sealmem_sensitive_detections",
            "Sensitive values detected in writes by this process, by type (whatever the policy did with them).",
            labels=["type"],
        )
        for entity_type, count in sorted(self._store.screener.counts().items()):
            detections.add_metric([entity_type], count)
        yield detections
        commits = self._store.add_commits  # adds per transaction: how much concurrent adds are grouped
        yield CounterMetricFamily(
            "sealmem_add_transactions",
            "Transactions this process committed adds in (one add alone, or several grouped).",
            value=commits.transactions,
        )
        yield CounterMetricFamily(
            "sealmem_add_calls",
            "Add calls (single or batch) those transactions committed or tried.",
            value=commits.writes,
        )
        embedder = self._store.embedder
        if isinstance(embedder, CoalescingEmbedder):  # calls per pass: how much concurrent embeddings are merged
            yield CounterMetricFamily(
                "sealmem_embedding_passes",
                "Forward passes this process ran for small (coalesced) embedding calls.",
                value=embedder.passes,
            )
            yield CounterMetricFamily(
                "sealmem_embedding_calls",
                "Small embedding calls (a search's query, a few added texts) those passes served.",
                value=embedder.calls,
            )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sealmem_http_requests",
            "HTTP requests by route template, method and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sealmem_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.search_latency = Histogram(
            "sealmem_search_duration_seconds",
            "Latency of hybrid memory searches in the store.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "sealmem_auth_failures", "Rejected credentials by reason.", ["reason"], registry=self.registry
        )
        self.rate_limited = Counter(
            "sealmem_rate_limited",
            "Requests refused by a rate limit (subject, API key or failed authentications per address).",
            registry=self.registry,
        )
        self.rebalanced = Counter(
            "sealmem_connections_rebalanced",
            "Connections this worker closed after an answer so that the client reconnects to a less loaded worker.",
            registry=self.registry,
        )
        self.admission_wait = Histogram(
            "sealmem_admission_wait_seconds",
            "From arrival to the turn of searches and adds to run their store call (service/admission.py).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._store_collector: StoreCollector | None = None

    def observe_request(self, *, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.latency.labels(method=method, route=route).observe(seconds)

    def attach_store(self, store: MemoryStore) -> None:
        self.detach_store()
        self._store_collector = StoreCollector(store)
        self.registry.register(self._store_collector)

    def detach_store(self) -> None:
        if self._store_collector is not None:
            self.registry.unregister(self._store_collector)
            self._store_collector = None

    def render(self) -> bytes:
        return generate_latest(self.registry)
