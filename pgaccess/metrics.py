"""Prometheus metrics (the ``metrics`` extra), named the Prometheus way: ``pgaccess_`` prefix,
base units (seconds), ``_total`` on counters. The same figures as the OpenTelemetry
instruments of :mod:`pgaccess.telemetry`:

==========================================  ==================================================
Prometheus                                  OpenTelemetry
==========================================  ==================================================
``pgaccess_query_duration_seconds{query}``  ``db.client.operation.duration``
``pgaccess_pool_connections{pool,state}``   ``db.client.connection.count`` (idle / used)
``pgaccess_pool_max_connections{pool}``     ``db.client.connection.max``
``pgaccess_pool_pending_requests{pool}``    ``db.client.connection.pending_requests``
``pgaccess_pool_timeouts_total{pool}``      ``db.client.connection.timeouts``
``pgaccess_pool_wait_seconds{pool}``        ``db.client.connection.wait_time``
``pgaccess_pool_use_seconds{pool}``         ``db.client.connection.use_time``
``pgaccess_pool_connect_seconds{pool}``     ``db.client.connection.create_time``
==========================================  ==================================================

plus ``pgaccess_pool_acquires_total`` and ``pgaccess_pool_connections_{opened,lost,failed,
retired,discarded}_total``, ``pgaccess_replica_lag_seconds``,
``pgaccess_replica_fallbacks_total`` and ``pgaccess_health_status``.

    metrics = Metrics()                     # its own CollectorRegistry by default
    db = Database(settings, metrics=metrics)
    app.mount("/metrics", metrics_app(db))  # pgaccess.asgi
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .database import Database
    from .health import HealthReport
    from .pool import Pool

_HEALTH = {"ok": 0, "degraded": 1, "down": 2}
_QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_POOL_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)
# PoolStats counter -> metric name (without the namespace and _total) and help text.
_POOL_COUNTERS = {
    "timeouts": ("pool_timeouts", "Checkouts that gave up waiting for a connection"),
    "acquires": ("pool_acquires", "Connections checked out"),
    "connections_opened": ("pool_connections_opened", "Connections opened"),
    "connections_lost": ("pool_connections_lost", "Connections lost (closed by the server "
                                                  "or the network)"),
    "connections_failed": ("pool_connections_failed", "Connection attempts that failed"),
    "connections_retired": ("pool_connections_retired", "Connections closed at max_lifetime"),
    "connections_discarded": ("pool_connections_discarded", "Connections terminated by pgaccess "
                                                            "(cancelled, lost or tampered)"),
}


class Metrics:
    """Holds the collectors; the Database and its pools report to it as work happens, and
    pool figures are read from the pools at scrape time."""

    def __init__(self, registry: Any = None, namespace: str = "pgaccess") -> None:
        try:
            from prometheus_client import CollectorRegistry, Gauge, Histogram
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ImportError("metrics need prometheus-client: pip install 'pgaccess[metrics]'") from exc
        self.namespace = namespace
        self.registry = registry or CollectorRegistry()
        self._pools: list[Pool] = []
        self._db: Database | None = None
        self.query_seconds = Histogram(
            "query_duration_seconds", "Duration of statements by query name", ["query"],
            namespace=namespace, registry=self.registry, buckets=_QUERY_BUCKETS)
        self.wait_seconds = Histogram(
            "pool_wait_seconds", "Time to obtain a connection from the pool", ["pool"],
            namespace=namespace, registry=self.registry, buckets=_POOL_BUCKETS)
        self.use_seconds = Histogram(
            "pool_use_seconds", "Time between checking a connection out and returning it",
            ["pool"], namespace=namespace, registry=self.registry, buckets=_POOL_BUCKETS)
        self.connect_seconds = Histogram(
            "pool_connect_seconds", "Time to open a new connection (retries included)", ["pool"],
            namespace=namespace, registry=self.registry, buckets=_POOL_BUCKETS)
        self.health = Gauge("health_status", "0 ok, 1 degraded, 2 down",
                            namespace=namespace, registry=self.registry)
        self.registry.register(_PoolCollector(self))

    # -- reported as work happens --------------------------------------------------------

    def watch(self, pool: Pool) -> None:
        """Expose ``pool``'s figures (the Database calls this for each of its pools)."""
        if pool not in self._pools:
            self._pools.append(pool)

    def observe_query(self, name: str, seconds: float) -> None:
        self.query_seconds.labels(name).observe(seconds)

    def observe_pool_wait(self, pool: str, seconds: float) -> None:
        self.wait_seconds.labels(pool).observe(seconds)

    def observe_pool_use(self, pool: str, seconds: float) -> None:
        self.use_seconds.labels(pool).observe(seconds)

    def observe_pool_connect(self, pool: str, seconds: float) -> None:
        self.connect_seconds.labels(pool).observe(seconds)

    def observe_health(self, report: HealthReport) -> None:
        self.health.set(_HEALTH[report.status])

    def observe_pools(self, db: Database) -> None:
        """Expose ``db``'s pools and replicas (render_latest calls this before a scrape)."""
        self._db = db
        for pool in db.pools():
            self.watch(pool)


class _PoolCollector:
    """Pool and replica figures read at scrape time (counters stay counters: ``_total``)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # collected on demand; nothing to check for duplicates at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ns = self.metrics.namespace
        connections = GaugeMetricFamily(f"{ns}_pool_connections", "Pool connections by state",
                                        labels=["pool", "state"])
        maximum = GaugeMetricFamily(f"{ns}_pool_max_connections",
                                    "The most connections the pool opens", labels=["pool"])
        pending = GaugeMetricFamily(f"{ns}_pool_pending_requests",
                                    "Checkouts waiting for a connection", labels=["pool"])
        counters = {field: CounterMetricFamily(f"{ns}_{name}", text, labels=["pool"])
                    for field, (name, text) in _POOL_COUNTERS.items()}
        for pool in self.metrics._pools:
            s = pool.stats()
            connections.add_metric([pool.name, "idle"], s.idle)
            connections.add_metric([pool.name, "used"], s.in_use)
            maximum.add_metric([pool.name], s.max_size)
            pending.add_metric([pool.name], s.waiting)
            for field, family in counters.items():
                family.add_metric([pool.name], getattr(s, field))
        yield from (connections, maximum, pending, *counters.values())
        db = self.metrics._db
        if db is not None and db.replicas is not None:
            lag = GaugeMetricFamily(f"{ns}_replica_lag_seconds",
                                    "Replay lag per replica (-1: unhealthy)", labels=["replica"])
            for replica in db.replicas.states:
                healthy = replica.healthy and replica.lag_s is not None
                lag.add_metric([replica.name], replica.lag_s if healthy else -1)  # type: ignore[arg-type]
            yield lag
            yield CounterMetricFamily(f"{ns}_replica_fallbacks",
                                      "Reads sent to the primary because no replica was healthy",
                                      value=db.replicas.fallbacks)


def render_latest(db: Database) -> tuple[bytes, str]:
    """The text exposition for ``db``'s metrics (pool figures read now)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    metrics: Metrics | None = db.metrics
    if metrics is None:
        return b"# no metrics: pass metrics=Metrics() to Database\n", CONTENT_TYPE_LATEST
    metrics.observe_pools(db)
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST
