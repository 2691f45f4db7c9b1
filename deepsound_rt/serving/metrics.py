"""Prometheus metrics of one server process, in a registry of its own (not the global one, so that
several apps in one process, as in tests, never clash).

Job counts and queue depth are read from the job store at scrape time, so they are the same on
every replica that shares it; step latencies and rejections are this process's own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from .store import JobStore

STATUSES = ("queued", "running", "done", "failed", "cancelled")
# Seconds: a dev-preset step takes milliseconds, a CPU step of a full-size preset minutes.
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _StoreCollector:
    def __init__(self, store: "JobStore"):
        self.store = store

    def collect(self):
        counts = self.store.counts()
        jobs = GaugeMetricFamily("deepsound_rt_jobs", "Jobs in the store by status", labels=["status"])
        for status in STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily("deepsound_rt_queue_depth", "Jobs waiting for a device", value=counts.get("queued", 0))


class Metrics:
    def __init__(self, store: "JobStore"):
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(store))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        self.step_seconds = Histogram("deepsound_rt_step_seconds", "Time of each DeepSound step", ["step"],
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.job_seconds = Histogram("deepsound_rt_job_seconds", "Run time of finished jobs (not queueing)",
                                     ["status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.rejected = Counter("deepsound_rt_rejected", "Submits refused, by reason", ["reason"],
                                registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
