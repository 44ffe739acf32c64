"""OpenTelemetry spans and metrics (pgaccess.telemetry) against a real PostgreSQL.

The SDK's in-memory span exporter and metric reader stand in for a collector; the database
is a fresh clone as in every data test. Parameter values must never reach either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pgaccess import Database, PoolTimeout, QueryError, Settings, UniqueViolation
from pgaccess.config import with_user
from pgaccess.devdb.clone import ADMIN_ROLE, APP_ROLE, Project
from pgaccess.reference import ProjectRepository
from pgaccess.telemetry import Telemetry, describe_sql, server_attributes

SECRET = "s3cret-value-4711"  # a parameter value: must appear in no span, metric or log


@dataclass
class Otel:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points."""
        data = self.reader.get_metrics_data()
        assert data is not None
        found: dict[str, list[Any]] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


@pytest.fixture
def otel() -> Otel:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return Otel(exporter, reader, tracer_provider, MeterProvider(metric_readers=[reader]))


def traced_database(db_dsn: str, project: Project, otel: Otel, **options: Any) -> Database:
    settings = Settings(min_size=0, max_size=options.pop("max_size", 4), acquire_timeout=5.0,
                        slow_query_ms=options.pop("slow_query_ms", 200.0))
    telemetry = Telemetry(tracer_provider=otel.tracer_provider,
                          meter_provider=otel.meter_provider, **options)
    return Database(settings, dsn=with_user(db_dsn, APP_ROLE),
                    admin_dsn=with_user(db_dsn, ADMIN_ROLE), sql_dir=project.sql,
                    telemetry=telemetry)


@pytest_asyncio.fixture(loop_scope="function")
async def tdb(db_dsn: str, pgaccess_project: Project, otel: Otel) -> AsyncIterator[Database]:
    database = traced_database(db_dsn, pgaccess_project, otel)
    async with database:
        yield database


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    assert span.parent is not None and parent.context is not None
    return span.parent.span_id == parent.context.span_id


def everything_recorded(otel: Otel) -> str:
    spans = [json.loads(s.to_json()) for s in otel.spans()]
    data = otel.reader.get_metrics_data()
    return json.dumps(spans) + (data.to_json() if data is not None else "")


async def test_unit_of_work_with_two_statements(tdb: Database, otel: Otel, tenant: uuid.UUID,
                                                db_dsn: str) -> None:
    app = otel.tracer_provider.get_tracer("app")
    with app.start_as_current_span("GET /projects"):
        async with tdb.transaction(tenant=tenant) as uow:
            await uow.repo(ProjectRepository).insert(name=SECRET)
            rows = await uow.q.projects_by_status(status="active", lim=10)
    assert rows
    (request,) = otel.named("GET /projects")
    (txn,) = otel.named("db.transaction")
    assert child_of(txn, request)
    assert txn.kind is SpanKind.INTERNAL and txn.status.status_code is StatusCode.UNSET
    assert txn.attributes is not None
    assert dict(txn.attributes) == {
        "db.system.name": "postgresql",
        "pgaccess.transaction.isolation": "read_committed",
        "pgaccess.transaction.read_only": False,
        "pgaccess.transaction.system": False,
        "pgaccess.transaction.retries": 0,
        "pgaccess.transaction.outcome": "commit",
    }
    insert, select = sorted((s for s in otel.spans() if s.kind is SpanKind.CLIENT),
                            key=lambda s: s.start_time or 0)
    assert child_of(insert, txn) and child_of(select, txn)
    assert insert.name == "ProjectRepository.insert"
    assert select.name == "projects_by_status"
    for span in (insert, select):
        attrs = dict(span.attributes or {})
        assert attrs["db.system.name"] == "postgresql"
        assert attrs["db.namespace"] == db_dsn.rsplit("/", 1)[1].split("?")[0]
        assert attrs["server.address"] and isinstance(attrs["server.port"], int)
        assert str(attrs["db.collection.name"]).split(".")[-1] == "projects"  # as the SQL names it
        assert "$1" in str(attrs["db.query.text"])
        assert "pgaccess.tenant.id" not in attrs  # not without record_tenant=True
        assert span.status.status_code is StatusCode.UNSET
    assert insert.attributes["db.operation.name"] == "INSERT"  # type: ignore[index]
    assert insert.attributes["db.query.summary"] == "ProjectRepository.insert"  # type: ignore[index]
    assert select.attributes["db.operation.name"] == "SELECT"  # type: ignore[index]
    assert SECRET not in everything_recorded(otel)


async def test_savepoint_and_failed_statement(tdb: Database, otel: Otel, tenant: uuid.UUID) -> None:
    async with tdb.transaction(tenant=tenant) as uow:
        repo = uow.repo(ProjectRepository)
        project = await repo.insert(name=SECRET)
        with pytest.raises(UniqueViolation):
            async with uow.savepoint():
                await repo.insert(id=project.id, name=SECRET)
    (txn,) = otel.named("db.transaction")
    (savepoint,) = otel.named("db.savepoint")
    assert child_of(savepoint, txn)
    failed = next(s for s in otel.spans() if s.kind is SpanKind.CLIENT and child_of(s, savepoint))
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description is None  # the message quotes the key: never recorded
    assert failed.attributes is not None
    assert failed.attributes["db.response.status_code"] == "23505"
    assert failed.attributes["error.type"] == "pgaccess.errors.UniqueViolation"
    assert savepoint.attributes is not None
    assert savepoint.attributes["pgaccess.savepoint.outcome"] == "rollback"
    assert txn.attributes is not None and txn.attributes["pgaccess.transaction.outcome"] == "commit"
    assert SECRET not in everything_recorded(otel)


async def test_failed_statement_rolls_back_the_transaction(tdb: Database, otel: Otel,
                                                          tenant: uuid.UUID) -> None:
    with pytest.raises(QueryError):
        async with tdb.transaction(tenant=tenant) as uow:
            await uow.fetchval("SELECT length($1::text) / 0", SECRET)
    (txn,) = otel.named("db.transaction")
    (statement,) = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert statement.status.status_code is StatusCode.ERROR
    assert statement.attributes is not None
    assert statement.attributes["db.response.status_code"] == "22012"
    assert statement.attributes["db.operation.name"] == "SELECT"
    assert statement.attributes["db.query.text"] == "SELECT length($1::text) / $2"  # raw: normalised
    assert txn.status.status_code is StatusCode.ERROR
    assert txn.attributes is not None
    assert txn.attributes["pgaccess.transaction.outcome"] == "rollback"
    assert txn.attributes["db.response.status_code"] == "22012"
    assert SECRET not in everything_recorded(otel)


async def test_raw_sql_literals_are_not_recorded(tdb: Database, otel: Otel, tenant: uuid.UUID) -> None:
    async with tdb.transaction(tenant=tenant) as uow:
        await uow.fetch(f"SELECT id FROM projects WHERE name = '{SECRET}'")
    (statement,) = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert statement.attributes is not None
    assert statement.attributes["db.query.text"] == "SELECT id FROM projects WHERE name = $1"
    assert statement.name == "SELECT projects"  # the summary of an unnamed statement
    assert SECRET not in everything_recorded(otel)


async def test_retried_serialization_failure(tdb: Database, otel: Otel, tenant: uuid.UUID) -> None:
    attempts = 0
    barrier = asyncio.Barrier(2)

    async def body(uow: Any, label: str) -> None:
        nonlocal attempts
        attempts += 1
        total = await uow.fetchval("SELECT count(*) FROM projects WHERE status = 'active'")
        if attempts <= 2:
            await barrier.wait()  # both read before either writes: a write skew
        await uow.repo(ProjectRepository).insert(name=f"{label}-{total}")

    options: Any = {"tenant": tenant, "isolation": "serializable"}
    await asyncio.gather(tdb.run_in_transaction(body, "a", retries=5, options=options),
                         tdb.run_in_transaction(body, "b", retries=5, options=options))
    transactions = otel.named("db.transaction")
    assert len(transactions) == attempts >= 3
    attrs = [dict(t.attributes or {}) for t in transactions]
    failed = [a for a in attrs if a.get("db.response.status_code") == "40001"]
    assert failed and all(a["pgaccess.transaction.outcome"] == "rollback" for a in failed)
    assert all(a["error.type"] == "pgaccess.errors.SerializationFailure" for a in failed)
    retried = [a for a in attrs if a["pgaccess.transaction.retries"] >= 1]
    assert retried and retried[-1]["pgaccess.transaction.outcome"] == "commit"
    assert all(a["pgaccess.transaction.isolation"] == "serializable" for a in attrs)


async def test_pool_timeout(db_dsn: str, pgaccess_project: Project, otel: Otel,
                            tenant: uuid.UUID) -> None:
    async with traced_database(db_dsn, pgaccess_project, otel, max_size=1) as database:
        async def starve() -> None:
            async with database.transaction(tenant=tenant, acquire_timeout=0.05):
                pass

        async with database.transaction(tenant=tenant):
            with pytest.raises(PoolTimeout):
                await asyncio.create_task(starve())  # another task: not a savepoint
        stats = database.pool.stats()
        points = otel.metrics()
    (waited,) = [s for s in otel.named("pgaccess.pool.acquire")
                 if s.status.status_code is StatusCode.ERROR]
    starved = next(t for t in otel.named("db.transaction") if child_of(waited, t))
    assert waited.status.status_code is StatusCode.ERROR
    assert waited.attributes is not None
    assert waited.attributes["error.type"] == "pgaccess.errors.PoolTimeout"
    assert waited.attributes["db.client.connection.pool.name"] == "app"
    assert starved.attributes is not None
    assert starved.attributes["pgaccess.transaction.outcome"] == "error"
    assert starved.status.status_code is StatusCode.ERROR
    (timeouts,) = [p for p in points["db.client.connection.timeouts"]
                   if p.attributes["db.client.connection.pool.name"] == "app"]
    assert timeouts.value == stats.timeouts == 1


async def test_autocommit_statement_is_its_own_span(tdb: Database, otel: Otel,
                                                    tenant: uuid.UUID) -> None:
    async with tdb.transaction(tenant=tenant) as uow:
        project = await uow.repo(ProjectRepository).insert(name="ac")
    otel.exporter.clear()
    app = otel.tracer_provider.get_tracer("app")
    with app.start_as_current_span("GET /project"):
        found = await tdb.autocommit(tenant=tenant).repo(ProjectRepository).find_by_id(project.id)
    assert found is not None
    (request,) = otel.named("GET /project")
    assert not otel.named("db.transaction")
    (statement,) = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert child_of(statement, request)
    assert statement.name == "ProjectRepository.find_by_id"
    assert statement.attributes is not None
    assert statement.attributes["db.operation.name"] == "SELECT"


async def test_tenant_only_when_opted_in(db_dsn: str, pgaccess_project: Project, otel: Otel,
                                         tenant: uuid.UUID) -> None:
    async with traced_database(db_dsn, pgaccess_project, otel, record_tenant=True) as database:
        async with database.transaction(tenant=tenant) as uow:
            await uow.fetchval("SELECT 1")
        await database.autocommit(tenant=tenant).fetchval("SELECT 1")
    spans = [s for s in otel.spans() if s.name != "pgaccess.pool.acquire"]
    assert len(spans) == 3  # the transaction, its statement, the autocommit statement
    for span in spans:
        assert span.attributes is not None
        assert span.attributes["pgaccess.tenant.id"] == str(tenant)


async def test_sql_comment_carries_the_transaction_traceparent(
        db_dsn: str, pgaccess_project: Project, otel: Otel, tenant: uuid.UUID) -> None:
    async with traced_database(db_dsn, pgaccess_project, otel, sql_comment=True) as database:
        telemetry = database.telemetry
        assert telemetry is not None
        async with database.transaction(tenant=tenant) as uow:
            comment = telemetry.comment(uow._span)
            assert await uow.fetchval("SELECT 1") == 1
    (txn,) = otel.named("db.transaction")
    assert txn.context is not None
    assert comment == (f" /*traceparent='00-{txn.context.trace_id:032x}-"
                       f"{txn.context.span_id:016x}-{int(txn.context.trace_flags):02x}'*/")


async def test_metrics_add_up_with_pool_stats(tdb: Database, otel: Otel, tenant: uuid.UUID) -> None:
    statements = 0
    for _ in range(3):
        async with tdb.transaction(tenant=tenant) as uow:
            await uow.fetchval("SELECT count(*) FROM projects")
            await uow.q.projects_by_status(status="active", lim=5)
            statements += 2
    await tdb.autocommit(tenant=tenant).fetchval("SELECT 1")
    statements += 1
    stats = tdb.pool.stats()
    points = otel.metrics()

    durations = points["db.client.operation.duration"]
    assert sum(p.count for p in durations) == statements
    by_summary = {p.attributes.get("db.query.summary"): p for p in durations}
    assert by_summary["projects_by_status"].count == 3
    assert by_summary["projects_by_status"].attributes["db.operation.name"] == "SELECT"

    app = [p for p in points["db.client.connection.wait_time"]
           if p.attributes["db.client.connection.pool.name"] == "app"]
    assert sum(p.count for p in app) == stats.acquires
    assert sum(p.sum for p in app) * 1000 == pytest.approx(stats.acquire_wait_ms, abs=0.01)
    (use,) = [p for p in points["db.client.connection.use_time"]
              if p.attributes["db.client.connection.pool.name"] == "app"]
    assert use.count == stats.acquires  # every checkout was returned
    (create,) = [p for p in points["db.client.connection.create_time"]
                 if p.attributes["db.client.connection.pool.name"] == "app"]
    assert create.count == stats.connections_opened

    def pool_points(name: str) -> dict[str, int]:
        return {p.attributes.get("db.client.connection.state", "-"): p.value for p in points[name]
                if p.attributes["db.client.connection.pool.name"] == "app"}

    assert pool_points("db.client.connection.count") == {"idle": stats.idle, "used": stats.in_use}
    assert pool_points("db.client.connection.max") == {"-": stats.max_size}
    assert pool_points("db.client.connection.pending_requests") == {"-": stats.waiting}
    assert pool_points("db.client.connection.timeouts") == {"-": stats.timeouts}


async def test_slow_query_event_carries_the_trace_id(db_dsn: str, pgaccess_project: Project,
                                                     otel: Otel, tenant: uuid.UUID,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pgaccess.query")
    async with traced_database(db_dsn, pgaccess_project, otel, slow_query_ms=1.0) as database:
        async with database.transaction(tenant=tenant) as uow:
            await uow.execute("SELECT pg_sleep(0.01)", name="nap")
    (statement,) = otel.named("nap")
    (record,) = [r for r in caplog.records if getattr(r, "event", "") == "slow_query"]
    assert statement.context is not None
    assert record.pgaccess["trace_id"] == f"{statement.context.trace_id:032x}"  # type: ignore[attr-defined]
    assert record.pgaccess["query"] == "nap"  # type: ignore[attr-defined]


async def test_no_spans_without_telemetry(db: Database, otel: Otel, tenant: uuid.UUID) -> None:
    app = otel.tracer_provider.get_tracer("app")
    with app.start_as_current_span("request"):
        async with db.transaction(tenant=tenant) as uow:
            await uow.fetchval("SELECT 1")
        await db.autocommit(tenant=tenant).fetchval("SELECT 1")
    assert [s.name for s in otel.spans()] == ["request"]
    assert db.telemetry is None and db.pool.observers == []


def test_describe_sql() -> None:
    assert describe_sql("UPDATE public.users SET name = $1 WHERE id = $2", True) == (
        "UPDATE", "public.users", "UPDATE public.users SET name = $1 WHERE id = $2")
    assert describe_sql("SELECT * FROM a JOIN b USING (id)", False).collection is None
    assert describe_sql("VACUUM projects", False).operation == "VACUUM"
    assert describe_sql("this is not SQL 'x'", False) == (None, None, None)


def test_server_attributes() -> None:
    assert server_attributes("postgresql://app@db.internal:6432/orders?sslmode=require") == {
        "db.system.name": "postgresql", "db.namespace": "orders",
        "server.address": "db.internal", "server.port": 6432}
    assert server_attributes("postgresql:///orders?host=/run/postgresql")["server.address"] == (
        "/run/postgresql")


DISABLED = """
import asyncio, sys
from pgaccess import Database, Settings
from pgaccess.config import with_user

async def main() -> None:
    async with Database(Settings(min_size=0), dsn=with_user(sys.argv[1], "pgaccess_app")) as db:
        async with db.transaction(tenant=None) as uow:
            await uow.fetchval("SELECT 1")
        await db.autocommit().fetchval("SELECT 1")

asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
print("loaded:", loaded)
"""

ABSENT = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from pgaccess import ConfigError
from pgaccess.telemetry import Telemetry
try:
    Telemetry()
except ConfigError as exc:
    print(type(exc).__name__, exc)
"""


def test_opentelemetry_is_not_imported_when_disabled(db_dsn: str) -> None:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(DISABLED), db_dsn],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "loaded: []"


def test_missing_extra_is_a_config_error() -> None:
    out = subprocess.run([sys.executable, "-c", ABSENT], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("ConfigError ") and "pip install 'pgaccess[otel]'" in out


async def test_prometheus_names_and_figures(db_dsn: str, pgaccess_project: Project,
                                            tenant: uuid.UUID) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from pgaccess.metrics import Metrics, render_latest

    settings = Settings(min_size=0, max_size=2, acquire_timeout=5.0)
    async with Database(settings, dsn=with_user(db_dsn, APP_ROLE), sql_dir=pgaccess_project.sql,
                        metrics=Metrics()) as database:
        for _ in range(3):
            async with database.transaction(tenant=tenant) as uow:
                await uow.q.projects_by_status(status="active", lim=5)
        stats = database.pool.stats()
        text = render_latest(database)[0].decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("pgaccess_query_duration_seconds_count", query="projects_by_status") == 3
    assert value("pgaccess_pool_wait_seconds_count", pool="app") == stats.acquires
    assert value("pgaccess_pool_use_seconds_count", pool="app") == stats.acquires
    assert value("pgaccess_pool_connect_seconds_count", pool="app") == stats.connections_opened
    assert value("pgaccess_pool_acquires_total", pool="app") == stats.acquires
    assert value("pgaccess_pool_timeouts_total", pool="app") == stats.timeouts == 0
    assert value("pgaccess_pool_connections", pool="app", state="idle") == stats.idle
    assert value("pgaccess_pool_connections", pool="app", state="used") == stats.in_use
    assert value("pgaccess_pool_max_connections", pool="app") == 2
    assert value("pgaccess_pool_pending_requests", pool="app") == 0
    assert "# TYPE pgaccess_pool_timeouts_total counter" in text
