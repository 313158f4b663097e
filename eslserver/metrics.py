"""Prometheus metrics of one server: one registry per `Server`, never the global one.

Counters and histograms are updated where things happen; the gauges of jobs and labels by
state are read from the database by the server's housekeeping loop (`set_states`), so that
several server instances sharing one database report the same truth. The job counters are
moved only by `eslserver.jobs.Outbox`, when the transaction that created or ended a job
commits, so that ``esl_jobs_created_total`` minus every ``esl_jobs_finished_total`` is
the number of open jobs.

The registry also carries the standard ``process_*`` and ``python_*`` metrics, and leaves
out the ``*_created`` series (the time each series was born): Prometheus' own exporters do
not send them, dashboards never use them, and in the text format they double the lines.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

__all__ = ["JOB_KINDS", "JOB_OUTCOMES", "JOB_STATES", "LABEL_STATES", "Metrics"]

LABEL_STATES = ("ok", "pending", "failed", "offline", "unpaired")
JOB_STATES = ("queued", "sent", "done", "failed", "superseded")
JOB_KINDS = ("pair", "image", "command")
JOB_OUTCOMES = ("done", "failed", "superseded")
"""The states a job ends in (`JOB_STATES` less the open ones)."""


class _Registry(CollectorRegistry):
    """A registry whose exposition has no ``*_created`` samples.

    `prometheus_client.disable_created_metrics` would do it for every registry of the
    process (it is a module global); this drops them from ours only.
    """

    def collect(self) -> Iterator[Metric]:
        for metric in super().collect():
            if metric.type in ("counter", "histogram", "summary"):
                created = metric.name + "_created"
                metric.samples = [s for s in metric.samples if s.name != created]
            yield metric


class Metrics:
    """The server's metrics, all prefixed ``esl_``."""

    def __init__(self) -> None:
        self.registry: CollectorRegistry = _Registry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(GC_COLLECTOR)
        self.updates_received = Counter("esl_price_updates_received", "Price updates received (items of a batch count one each)",
                                        ["source"], registry=r)
        self.updates_rejected = Counter("esl_price_updates_rejected", "Price updates rejected, by error code",
                                        ["source", "error"], registry=r)
        self.updates_stale = Counter("esl_price_updates_stale", "Price updates ignored: older seq than stored",
                                     ["source"], registry=r)
        self.updates_scheduled = Counter("esl_price_updates_scheduled", "Price updates stored for a later valid_from",
                                         ["source"], registry=r)
        self.updates_duplicate = Counter("esl_price_updates_duplicate", "Price updates ignored: their update_id "
                                         "was accepted before (a POS re-sending)", ["source"], registry=r)
        self.pos_retries = Counter("esl_pos_retries", "POS messages not stored because the database could not "
                                   "commit (disk full, locked, I/O): MQTT retries of a message left unacknowledged, "
                                   "HTTP requests answered 503", ["source"], registry=r)
        self.render_seconds = Histogram("esl_render_seconds", "Time to render one batch of labels",
                                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.labels_rendered = Counter("esl_labels_rendered", "Labels rendered", registry=r)
        self.labels_skipped = Counter("esl_labels_unchanged", "Labels rendered that already showed that image", registry=r)
        self.render_errors = Counter("esl_render_errors", "Labels whose render failed (template or data error)", registry=r)
        self.jobs_created = Counter("esl_jobs_created", "Jobs this server took charge of: written to the outbox, "
                                    "or found open there when it started", ["kind"], registry=r)
        self.jobs_finished = Counter("esl_jobs_finished", "Jobs that ended, by kind and outcome (done, failed, "
                                     "superseded by a newer image)", ["kind", "outcome"], registry=r)
        self.jobs_retried = Counter("esl_jobs_retried", "Job attempts that will be retried, by reason", ["code"], registry=r)
        self.events_refused = Counter("esl_gateway_events_refused", "Gateway events refused because their sender "
                                      "may not speak for them, by reason", ["reason"], registry=r)
        self.discoveries = Counter("esl_discoveries", "New labels discovered (a check-in from a label the server "
                                   "did not know), by gateway", ["gateway"], registry=r)
        self.discoveries_dropped = Counter("esl_discoveries_dropped", "Discoveries dropped because their gateway "
                                           "went over discovery_rate_per_min (after discovery_burst)", ["gateway"],
                                           registry=r)
        self.time_to_shelf = Histogram("esl_time_to_shelf_seconds",
                                       "From a change taking effect (a price arriving, or a scheduled price's "
                                       "valid_from) to the label confirming the new image",
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900), registry=r)
        self.labels_reset = Counter("esl_labels_reset", "Labels that had a key and checked in without one (reset, or "
                                    "a forgery): never re-paired on their own word, they wait for a technician",
                                    registry=r)
        self.acks_unconfirmed = Counter("esl_acks_unconfirmed", "Acks that confirmed nothing: no valid final word "
                                        "of the label in them, by reason", ["reason"], registry=r)
        self.envelopes_refused = Counter("esl_envelopes_refused", "Job envelopes a gateway refused to run, by nack "
                                         "code (unsigned, bad_signature, replayed, expired, misaddressed, "
                                         "wrong_key)", ["code"], registry=r)
        self.jobs = Gauge("esl_jobs", "Jobs by state", ["state"], registry=r)
        self.labels = Gauge("esl_labels", "Labels by state", ["state"], registry=r)
        self.gateways_online = Gauge("esl_gateways_online", "Gateways reporting online", registry=r)
        self.mqtt_connected = Gauge("esl_mqtt_connected", "1 while the server is connected to the broker", registry=r)
        self.health = Gauge("esl_health", "1 while a component is healthy, 0 while degraded (the reason is in "
                            "/healthz): database, database_integrity, broker", ["component"], registry=r)
        self.retention_deleted = Counter("esl_retention_deleted", "Rows deleted by retention (eslserver.retention), "
                                         "by table", ["table"], registry=r)
        self.table_rows = Gauge("esl_table_rows", "Rows in each database table (counted every minute)", ["table"],
                                registry=r)
        self.database_bytes = Gauge("esl_database_bytes", "Size of the database file and its write-ahead log",
                                    registry=r)
        for state in LABEL_STATES:
            self.labels.labels(state).set(0)
        for state in JOB_STATES:
            self.jobs.labels(state).set(0)
        for kind in JOB_KINDS:
            self.jobs_created.labels(kind)
            for outcome in JOB_OUTCOMES:
                self.jobs_finished.labels(kind, outcome)

    def set_states(self, labels: Mapping[str, int], jobs: Mapping[str, int], gateways_online: int) -> None:
        for state in LABEL_STATES:
            self.labels.labels(state).set(labels.get(state, 0))
        for state in JOB_STATES:
            self.jobs.labels(state).set(jobs.get(state, 0))
        self.gateways_online.set(gateways_online)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
