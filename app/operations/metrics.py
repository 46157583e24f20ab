"""Prometheus metrics (GET /metrics, text exposition format).

Two kinds of figure, because they come from two places:

- **This process's requests**: ``spbridge_http_requests_total`` by method, route template and
  status, the ``spbridge_http_request_duration_seconds`` histogram by method and route, and
  ``spbridge_database_unavailable_responses_total`` (503s because the database did not answer)
  by reason. Kept
  in the process's memory (``RequestMetrics``): with N API processes, scrape each one and let
  Prometheus sum them (``sum by (route, status) (rate(...))``).
- **The queue and the case log**, read from the database at scrape time
  (:func:`database_figures`), so they are right whichever process delivered: deliveries by state
  and destination, queue depth, the age of the oldest pending delivery, dead letters, open
  circuits, and case events by type. Every process reports the same numbers: aggregate them with
  ``max``, not ``sum``.

The endpoint takes no key (Prometheus scrapers usually have none), so nothing here may identify
anyone: routes are templates (``/fhir/Task/{task_id}``), never paths, which hold ids; methods are
a fixed list; destinations are named by kind and adapter (``webhook``, ``elemental``), never by
id, service, organisation or URL (admins see those per destination in GET
/api/v1/deliveries/stats); case event types are the fixed vocabulary of the case log.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

import app as package
from app.cases.events import EVENT_TYPES
from app.cases.models import CaseEvent
from app.delivery import admin
from app.security import scope

# The text format every Prometheus reads (names here use only [a-z_], so 0.0.4 is exact).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Methods a client may send are any token: anything else is counted as "other", so a client
# cannot make new series (nor can paths: a request no route matches is "unmatched").
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# From a cached read (~1 ms) to a slow FHIR transaction or a stalled database (10 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OPEN_STATES = ("pending", "in_flight")
# app.db.Unavailable.reason: a fixed list, so the counter's series are too.
UNAVAILABLE_REASONS = ("connection", "pool_timeout", "locked", "resources")


class RequestMetrics:
    """This process's request counters and latency histogram, in a registry of the app's own
    (one per app, so two apps in one process, as in the tests, do not share counts)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spbridge_http_requests",
            "HTTP requests answered by this process, by method, route template and status",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "spbridge_http_request_duration_seconds",
            "Time from receiving a request to the end of its response, by method and route",
            ("method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.unavailable = Counter(
            "spbridge_database_unavailable_responses",
            "Requests answered 503 because the database was unavailable, by reason: connection "
            "(refused, lost, shut down), pool_timeout (no connection free in time), locked "
            "(SQLite's write lock), resources (disk, memory)",
            ("reason",),
            registry=self.registry,
        )
        for reason in UNAVAILABLE_REASONS:
            self.unavailable.labels(reason)  # every series from 0, so rate() sees the first one
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def database_unavailable(self, reason: str) -> None:
        self.unavailable.labels(reason if reason in UNAVAILABLE_REASONS else "other").inc()

    def observe(self, method: str, route: str | None, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        route = route or UNMATCHED
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


# --- figures read from the database at scrape time ---------------------------------------------


@dataclass
class DatabaseFigures:
    """The queue and the case log as the database has them now."""

    # (destination kind, adapter) -> state -> deliveries
    deliveries: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    # (destination kind, adapter) -> destinations whose circuit is open
    open_circuits: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_pending_age_seconds: float = 0.0
    case_events: dict[str, int] = field(default_factory=dict)


async def database_figures(session: AsyncSession) -> DatabaseFigures:
    """Two grouped counts: the admins' queue statistics (app.delivery.admin.queue_stats), summed
    per kind of destination, and the case log by event type."""
    stats = await admin.queue_stats(session, scope.installation("metrics"))
    deliveries: dict[tuple[str, str], dict[str, int]] = {}
    open_circuits: dict[tuple[str, str], int] = defaultdict(int)
    for queue in stats.destinations:
        key = (queue.kind, queue.adapter)
        by_state = deliveries.setdefault(key, dict.fromkeys(admin.STATES, 0))
        for state, count in queue.by_state.items():
            by_state[state] = by_state.get(state, 0) + count
        open_circuits[key] += 1 if queue.circuit == "open" else 0
    rows = await session.execute(select(CaseEvent.type, func.count()).group_by(CaseEvent.type))
    case_events = dict.fromkeys(sorted(EVENT_TYPES), 0)
    for event_type, count in rows:
        case_events[str(event_type)] = int(count)
    return DatabaseFigures(
        deliveries=deliveries,
        open_circuits=dict(open_circuits),
        oldest_pending_age_seconds=max(stats.oldest_pending_age_seconds or 0.0, 0.0),
        case_events=case_events,
    )


class ScrapeCollector(Collector):
    """One scrape's figures: the database's (None when it did not answer) and this process's
    state."""

    def __init__(self, figures: DatabaseFigures | None, dispatcher_running: bool | None) -> None:
        self.figures = figures
        self.dispatcher_running = dispatcher_running

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "spbridge_build_info", "The bridge's version (always 1)", labels=["version"]
        )
        info.add_metric([package.__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "spbridge_database_up",
            "1 if the database answered this scrape's queries, else 0 (and the figures read "
            "from it are missing)",
            value=1 if self.figures is not None else 0,
        )
        if self.dispatcher_running is not None:
            yield GaugeMetricFamily(
                "spbridge_dispatcher_running",
                "1 if this process's dispatcher is running (only in processes that run one)",
                value=1 if self.dispatcher_running else 0,
            )
        if self.figures is not None:
            yield from _database_families(self.figures)


def _database_families(figures: DatabaseFigures) -> Iterator[Metric]:
    labels = ["destination_kind", "adapter"]
    by_state = GaugeMetricFamily(
        "spbridge_deliveries",
        "Deliveries in the outbox by state and kind of destination (from the database)",
        labels=["state", *labels],
    )
    depth = GaugeMetricFamily(
        "spbridge_delivery_queue_depth",
        "Deliveries waiting or being sent (pending and in_flight), by kind of destination",
        labels=labels,
    )
    dead = 0
    for (kind, adapter), states in sorted(figures.deliveries.items()):
        for state, count in sorted(states.items()):
            by_state.add_metric([state, kind, adapter], count)
        depth.add_metric([kind, adapter], sum(states.get(state, 0) for state in OPEN_STATES))
        dead += states.get("dead", 0)
    yield by_state
    yield depth
    yield GaugeMetricFamily(
        "spbridge_delivery_oldest_pending_age_seconds",
        "Age of the oldest delivery not yet delivered (pending or in_flight); 0 when none",
        value=figures.oldest_pending_age_seconds,
    )
    yield GaugeMetricFamily(
        "spbridge_delivery_dead_letters",
        "Deliveries that gave up (state dead) and wait for an admin to replay them",
        value=dead,
    )
    circuits = GaugeMetricFamily(
        "spbridge_destinations_circuit_open",
        "Destinations whose circuit is open (one probe at a time), by kind",
        labels=labels,
    )
    for (kind, adapter), count in sorted(figures.open_circuits.items()):
        circuits.add_metric([kind, adapter], count)
    yield circuits
    events = CounterMetricFamily(
        "spbridge_case_events",
        "Case events recorded, by type (the case log is append-only, so this only grows)",
        labels=["type"],
    )
    for event_type, count in sorted(figures.case_events.items()):
        events.add_metric([event_type], count)
    yield events


def render(
    metrics: RequestMetrics, figures: DatabaseFigures | None, dispatcher_running: bool | None
) -> bytes:
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(ScrapeCollector(figures, dispatcher_running))
    return generate_latest(metrics.registry) + generate_latest(scrape)
