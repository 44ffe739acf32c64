"""Prometheus metrics (the ``metrics`` extra): query durations by name, pool gauges, health.

    metrics = Metrics()                     # its own CollectorRegistry by default
    db = Database(settings, metrics=metrics)
    app.mount("/metrics", metrics_app(db))  # pgaccess.asgi
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .database import Database
    from .health import HealthReport

_HEALTH = {"ok": 0, "degraded": 1, "down": 2}


class Metrics:
    """Holds the collectors; the Database calls ``observe_*`` as work happens."""

    def __init__(self, registry: Any = None, namespace: str = "pgaccess") -> None:
        try:
            from prometheus_client import CollectorRegistry, Gauge, Histogram
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ImportError("metrics need prometheus-client: pip install 'pgaccess[metrics]'") from exc
        self.registry = registry or CollectorRegistry()
        self.query_seconds = Histogram(
            "query_duration_seconds", "Duration of queries by name", ["query"],
            namespace=namespace, registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.pool = Gauge("pool_connections", "Pool connections by state", ["pool", "state"],
                          namespace=namespace, registry=self.registry)
        self.pool_events = Gauge("pool_events", "Pool counters since open", ["pool", "event"],
                                 namespace=namespace, registry=self.registry)
        self.health = Gauge("health_status", "0 ok, 1 degraded, 2 down",
                            namespace=namespace, registry=self.registry)
        self.replica_lag = Gauge("replica_lag_seconds", "Replay lag per replica (-1: unhealthy)",
                                 ["replica"], namespace=namespace, registry=self.registry)
        self.replica_fallbacks = Gauge("replica_fallbacks", "Reads sent to the primary because no "
                                       "replica was healthy", namespace=namespace, registry=self.registry)

    def observe_query(self, name: str, seconds: float) -> None:
        self.query_seconds.labels(name).observe(seconds)

    def observe_health(self, report: HealthReport) -> None:
        self.health.set(_HEALTH[report.status])

    def observe_pools(self, db: Database) -> None:
        if db.replicas is not None:
            self.replica_fallbacks.set(db.replicas.fallbacks)
            for replica in db.replicas.states:
                lag = replica.lag_s if replica.healthy and replica.lag_s is not None else -1
                self.replica_lag.labels(replica.name).set(lag)
        for pool in (db.pool, db.runtime.admin_pool, *(db.replicas.pools if db.replicas else [])):
            if pool is None:
                continue
            s = pool.stats()
            for state in ("size", "idle", "in_use", "waiting", "max_size"):
                self.pool.labels(pool.name, state).set(getattr(s, state))
            for event in ("acquires", "timeouts", "connections_opened", "connections_lost",
                          "connections_failed", "connections_retired", "connections_discarded"):
                self.pool_events.labels(pool.name, event).set(getattr(s, event))


def render_latest(db: Database) -> tuple[bytes, str]:
    """The text exposition for ``db``'s metrics (pool gauges refreshed now)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    metrics: Metrics | None = db.metrics
    if metrics is None:
        return b"# no metrics: pass metrics=Metrics() to Database\n", CONTENT_TYPE_LATEST
    metrics.observe_pools(db)
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST
