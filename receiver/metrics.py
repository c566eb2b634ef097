"""Every Prometheus metric of the service, in one place.

Metrics live on a `Metrics` object with its own `CollectorRegistry`, created once
per process by `app.serve` and handed to whoever records (ingest, the worker, the
Airflow and git clients). A module-level registry would make a second app in the
same process (tests, benchmarks) fail with "duplicated timeseries" and would mix
counts across apps. Labels are bounded: no revision, run id or delivery id.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from receiver import __version__

CONTENT_TYPE = CONTENT_TYPE_LATEST


class IngestResult(StrEnum):
    """Every value of `fluxback_events_received_total{result}`."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    UNAUTHORIZED = "unauthorized"
    MALFORMED = "malformed"
    STALE = "stale"
    """The timestamp is outside webhook.max_clock_skew_seconds (replay protection)."""
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    TIMEOUT = "timeout"
    """The body did not arrive within webhook.read_timeout_seconds (503: the sender retries)."""
    JOURNAL_UNAVAILABLE = "journal_unavailable"
    JOURNAL_TIMEOUT = "journal_timeout"
    """The append did not commit within journal_timeout_seconds (503: the sender retries)."""
    CREDENTIALS_UNAVAILABLE = "credentials_unavailable"
    """No configured key file could be read, so nothing could be verified."""


DEPLOY_OUTCOMES = ("success", "failure")
"""Every value of `fluxback_deploys_total{outcome}`: the revision went live, or it failed."""

_SHORT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MINUTES = (*_SHORT, 60.0, 300.0, 900.0, 3600.0)
_LONG = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)


class Metrics:
    """The service's metrics on a registry of their own.

    They are declared by concern in the `_declare_*` methods, as plain attributes, so callers
    record with `metrics.<name>` whatever part of the service they belong to.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._declare_ingest(self.registry)
        self._declare_replica(self.registry)
        self._declare_worker(self.registry)
        self._declare_deploys(self.registry)
        self._declare_kubernetes(self.registry)

    def _declare_ingest(self, r: CollectorRegistry) -> None:
        """The HTTP side: what became of each event request, and the connections it came on."""
        self.events_received = Counter(
            "fluxback_events_received_total",
            "Flux event requests by what became of them.",
            ["result"],
            registry=r,
        )
        # Every series exists from the start, so rate() sees the first one; ingest counts on these.
        self.events_by_result = {result: self.events_received.labels(result.value) for result in IngestResult}
        self.http_request_duration = Histogram(
            "fluxback_http_request_duration_seconds",
            "HTTP request handling time by route template and status class (2xx, 4xx, ...).",
            ["route", "status_class"],
            buckets=_SHORT,
            registry=r,
        )
        self.http_malformed = Counter(
            "fluxback_http_malformed_requests_total",
            "Requests the HTTP parser refused with 400 before any route saw them "
            "(bad request line or header, line too long).",
            registry=r,
        )
        self.open_connections = Gauge(
            "fluxback_open_connections",
            "Client connections open now.",
            registry=r,
        )
        self.connections_evicted = Counter(
            "fluxback_connections_evicted_total",
            "Idle or half-sent connections closed to stay under webhook.max_connections.",
            registry=r,
        )

    def _declare_replica(self, r: CollectorRegistry) -> None:
        """The state of this replica: readiness, health, leadership, version and journal depth."""
        self.ready = Gauge(
            "fluxback_ready",
            "1 when the process can accept and journal an event (what /readyz says), else 0; "
            "evaluated at scrape time.",
            registry=r,
        )
        self.health_check = Gauge(
            "fluxback_health_check",
            "1 when a check of /healthz/details passes, else 0; `check` is the configuration key "
            "or component (worker-side credentials included); evaluated at scrape time.",
            ["check"],
            registry=r,
        )
        self.leader = Gauge(
            "fluxback_leader",
            "1 while this replica runs the singleton work (retention, full re-lists), else 0.",
            registry=r,
        )
        self.build_info = Gauge(
            "fluxback_build_info",
            "Always 1, labelled with the running version; count() of it is the number of replicas.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(__version__).set(1)
        self.journal_depth = Gauge(
            "fluxback_journal_depth",
            "Deliveries in the journal by state, read at scrape time.",
            ["state"],
            registry=r,
        )

    def _declare_worker(self, r: CollectorRegistry) -> None:
        """The worker: how late it takes deliveries, what it does on Airflow, and the calls it makes."""
        self.worker_lag = Histogram(
            "fluxback_worker_lag_seconds",
            "Time from receipt of an event to the worker first taking it.",
            buckets=_MINUTES,
            registry=r,
        )
        self.dead_letters = Counter(
            "fluxback_dead_letters_total",
            "Deliveries given up after their retry budget.",
            registry=r,
        )
        self.actions = Counter(
            "fluxback_actions_total",
            "Actions on Airflow by kind (mark_task, trigger_dag, asset_event) and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.event_to_action = Histogram(
            "fluxback_event_to_action_seconds",
            "Time from receipt of an event to the Airflow action it caused.",
            buckets=_MINUTES,
            registry=r,
        )
        self.airflow_request = Histogram(
            "fluxback_airflow_request_seconds",
            "Airflow REST API calls by configured instance, HTTP method and status (or 'error').",
            ["instance", "method", "status"],
            buckets=_SHORT,
            registry=r,
        )
        self.git_fetches = Counter(
            "fluxback_git_fetches_total",
            "Fetches into the local mirrors by configured repository and result.",
            ["repository", "result"],
            registry=r,
        )

    def _declare_deploys(self, r: CollectorRegistry) -> None:
        """Per Flux object DORA metrics: deploys, change failures and lead time."""
        # Per Flux object: only objects whose revisions are correlated (mapped to a repository)
        # get series, so the label values are bounded by configuration and the cluster, as
        # in Flux's own gotk_reconcile_duration_seconds{kind,namespace,name}.
        self.commit_to_live = Histogram(
            "fluxback_commit_to_live_seconds",
            "Time from a correlated commit's commit date to the Flux success event that made it live,"
            " by Flux object (DORA lead time for changes).",
            ["kind", "namespace", "name"],
            buckets=_LONG,
            registry=r,
        )
        self.deploys = Counter(
            "fluxback_deploys_total",
            "Correlated revisions of a Flux object by outcome: success (it went live) or failure"
            " (DORA deploy frequency and change-failure rate).",
            ["kind", "namespace", "name", "outcome"],
            registry=r,
        )

    def _declare_kubernetes(self, r: CollectorRegistry) -> None:
        """The Kubernetes side: status changes read, watch restarts and Events posted."""
        self.status_changes = Counter(
            "fluxback_status_changes_total",
            "Flux object status changes read from Kubernetes and journaled, by kind and result"
            " (accepted, duplicate).",
            ["kind", "result"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "fluxback_watch_restarts_total",
            "Kubernetes list/watch restarts by Flux kind (errors, expired resource versions).",
            ["kind"],
            registry=r,
        )
        self.kube_events = Counter(
            "fluxback_kube_events_total",
            "Kubernetes Events posted on Flux objects by reason and outcome"
            " (recorded, failed, rate_limited).",
            ["reason", "outcome"],
            registry=r,
        )

    def track_object(self, kind: str, namespace: str, name: str) -> None:
        """Start the object's deploy counters at zero, so that increase() sees its first deploy too."""
        for outcome in DEPLOY_OUTCOMES:
            self.deploys.labels(kind, namespace, name, outcome)

    def record_deploy(
        self, kind: str, namespace: str, name: str, outcome: str, lead_times: Iterable[float]
    ) -> None:
        """A correlated revision of the object went live or failed.

        Args:
            outcome: one of DEPLOY_OUTCOMES.
            lead_times: seconds from each of the revision's new commits to the event that made it live.
        """
        self.track_object(kind, namespace, name)
        self.deploys.labels(kind, namespace, name, outcome).inc()
        for seconds in lead_times:
            self.commit_to_live.labels(kind, namespace, name).observe(max(0.0, seconds))

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
