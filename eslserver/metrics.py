"""Prometheus metrics of one server: one registry per `Server`, never the global one.

Counters and histograms are updated where things happen; the gauges of jobs and labels by
state are read from the database by the server's housekeeping loop (`set_states`), so that
several server instances sharing one database report the same truth.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

__all__ = ["JOB_STATES", "LABEL_STATES", "Metrics"]

LABEL_STATES = ("ok", "pending", "failed", "offline", "unpaired")
JOB_STATES = ("queued", "sent", "done", "failed", "superseded")


class Metrics:
    """The server's metrics, all prefixed ``esl_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.updates_received = Counter("esl_price_updates_received", "Price updates received (items of a batch count one each)",
                                        ["source"], registry=r)
        self.updates_rejected = Counter("esl_price_updates_rejected", "Price updates rejected, by error code",
                                        ["source", "error"], registry=r)
        self.updates_stale = Counter("esl_price_updates_stale", "Price updates ignored: older seq than stored",
                                     ["source"], registry=r)
        self.updates_scheduled = Counter("esl_price_updates_scheduled", "Price updates stored for a later valid_from",
                                         ["source"], registry=r)
        self.render_seconds = Histogram("esl_render_seconds", "Time to render one batch of labels",
                                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.labels_rendered = Counter("esl_labels_rendered", "Labels rendered", registry=r)
        self.labels_skipped = Counter("esl_labels_unchanged", "Labels rendered that already showed that image", registry=r)
        self.render_errors = Counter("esl_render_errors", "Labels whose render failed (template or data error)", registry=r)
        self.jobs_created = Counter("esl_jobs_created", "Jobs written to the outbox", ["kind"], registry=r)
        self.jobs_finished = Counter("esl_jobs_finished", "Jobs finished, by outcome", ["outcome"], registry=r)
        self.jobs_retried = Counter("esl_jobs_retried", "Job attempts that will be retried, by reason", ["code"], registry=r)
        self.time_to_shelf = Histogram("esl_time_to_shelf_seconds",
                                       "From a price change reaching the server to the label confirming the new image",
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900), registry=r)
        self.jobs = Gauge("esl_jobs", "Jobs by state", ["state"], registry=r)
        self.labels = Gauge("esl_labels", "Labels by state", ["state"], registry=r)
        self.gateways_online = Gauge("esl_gateways_online", "Gateways reporting online", registry=r)
        self.mqtt_connected = Gauge("esl_mqtt_connected", "1 while the server is connected to the broker", registry=r)
        for state in LABEL_STATES:
            self.labels.labels(state).set(0)
        for state in JOB_STATES:
            self.jobs.labels(state).set(0)

    def set_states(self, labels: Mapping[str, int], jobs: Mapping[str, int], gateways_online: int) -> None:
        for state in LABEL_STATES:
            self.labels.labels(state).set(labels.get(state, 0))
        for state in JOB_STATES:
            self.jobs.labels(state).set(jobs.get(state, 0))
        self.gateways_online.set(gateways_online)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
