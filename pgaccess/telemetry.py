"""OpenTelemetry traces and metrics (the ``otel`` extra): the only module that imports it.

    from pgaccess import Database
    from pgaccess.telemetry import Telemetry

    db = Database(settings, telemetry=Telemetry())             # the global providers
    db = Database(settings, telemetry=Telemetry(tracer_provider=tp, meter_provider=mp))

Without ``telemetry=`` nothing here runs and ``opentelemetry`` is never imported: the
executors check one attribute (``runtime.telemetry is None``) per statement.

Spans (database semantic conventions; parameter values are never recorded):

* ``db.transaction`` (INTERNAL) per unit of work, with ``pgaccess.transaction.isolation``,
  ``.read_only``, ``.system``, ``.retries`` (earlier attempts of ``run_in_transaction``) and
  ``.outcome`` (``commit``, ``rollback``, ``error``); ``db.savepoint`` per savepoint;
* one CLIENT span per statement, named by ``db.query.summary`` (the named query or the
  repository method) with ``db.system.name``, ``db.namespace``, ``server.address``/``.port``,
  ``db.operation.name``, ``db.collection.name`` (single-table statements),
  ``db.query.text`` (vetted SQL as written; raw SQL with its literals replaced by ``$n``) and,
  on failure, ``db.response.status_code`` (the SQLSTATE) and ``error.type``. An autocommit
  statement's span also covers its opening round trip;
* ``pgaccess.pool.acquire`` when a checkout found no idle connection (its wait, or its
  ``PoolTimeout``).

The tenant id becomes ``pgaccess.tenant.id`` only with ``record_tenant=True`` (it can be
personal data). ``sql_comment=True`` appends ``/*traceparent='...'*/`` (sqlcommenter) to the
opening round trip of each checkout only: that SQL is sent as a simple query and never
cached, while a comment on the statements themselves would make every statement text unique
and defeat asyncpg's per-text prepared-statement cache.

Metrics: ``db.client.operation.duration`` and the connection-pool instruments
(``db.client.connection.count`` by state, ``.max``, ``.pending_requests``, ``.timeouts``,
``.wait_time``, ``.use_time``, ``.create_time``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from functools import lru_cache
from time import time_ns
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ConfigError

if TYPE_CHECKING:
    from uuid import UUID

    from .pool import Pool, PooledConnection

SCOPE = "pgaccess"

_OPERATIONS = {"SelectStmt": "SELECT", "InsertStmt": "INSERT", "UpdateStmt": "UPDATE",
               "DeleteStmt": "DELETE", "MergeStmt": "MERGE"}

# The semantic conventions' advice for db.client.operation.duration.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
POOL_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


class SqlShape(NamedTuple):
    """What a statement's text tells without its values (from pglast, cached per text)."""

    operation: str | None
    collection: str | None
    text: str | None


@lru_cache(maxsize=2048)
def describe_sql(sql: str, vetted: bool) -> SqlShape:
    """Operation, single target table and recordable text of ``sql``.

    Vetted SQL (named queries, repositories) is recorded as written: values are bound
    parameters. Raw SQL may carry values as literals, so its text is recorded normalised
    (every constant replaced by ``$n``) or not at all when it does not parse.
    """
    import pglast
    from pglast.parser import normalize, scan

    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return SqlShape(None, None, sql if vetted else None)
    operation: str | None = None
    collection: str | None = None
    if len(statements) == 1:
        node: Any = statements[0].stmt
        operation = _OPERATIONS.get(type(node).__name__)
        target = getattr(node, "relation", None)
        if operation == "SELECT" and node.fromClause and len(node.fromClause) == 1:
            target = node.fromClause[0]
        if target is not None and type(target).__name__ == "RangeVar":
            collection = (f"{target.schemaname}.{target.relname}" if target.schemaname
                          else target.relname)
        if operation is None:
            first = scan(sql)[0]
            operation = sql[first.start:first.end + 1].upper()
    return SqlShape(operation, collection, sql if vetted else normalize(sql))


def server_attributes(dsn: str) -> dict[str, Any]:
    """``db.namespace``, ``server.address`` and ``server.port`` of a DSN (URL form)."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    attributes: dict[str, Any] = {"db.system.name": "postgresql"}
    database = unquote(parts.path.lstrip("/")) or (query.get("dbname") or [""])[0]
    if database:
        attributes["db.namespace"] = database
    host = parts.hostname or (query.get("host") or [""])[0]
    if host:
        attributes["server.address"] = host
    try:
        port = parts.port or int((query.get("port") or ["5432"])[0])
    except ValueError:
        port = None
    if port is not None:
        attributes["server.port"] = port
    return attributes


def error_attributes(error: BaseException) -> dict[str, Any]:
    """``error.type`` (the exception's class) and ``db.response.status_code`` (SQLSTATE).
    Never the message: it can quote values (a unique violation names the key)."""
    cls = type(error)
    attributes: dict[str, Any] = {"error.type": f"{cls.__module__}.{cls.__qualname__}"}
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate:
        attributes["db.response.status_code"] = sqlstate
    return attributes


def trace_fields(span: Any = None) -> dict[str, str]:
    """``trace_id``/``span_id`` of ``span``, else of the current span if OpenTelemetry is
    loaded (never imports it); empty when no span is recording."""
    if span is None:
        trace = sys.modules.get("opentelemetry.trace")
        if trace is None:
            return {}
        span = trace.get_current_span()
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


class Telemetry:
    """Traces and metrics for a ``Database``: ``Database(..., telemetry=Telemetry())``.

    ``tracer_provider`` / ``meter_provider``: OpenTelemetry SDK providers (default: the
    global ones, which are no-ops until the application installs an SDK).
    ``tracing`` / ``metrics``: switch either half off. ``record_tenant``: add
    ``pgaccess.tenant.id`` to spans. ``sql_comment``: sqlcommenter traceparent on each
    checkout's opening round trip (see the module docstring for why only there).
    """

    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None,
                 tracing: bool = True, metrics: bool = True, record_tenant: bool = False,
                 sql_comment: bool = False) -> None:
        try:
            from opentelemetry import metrics as otel_metrics
            from opentelemetry import trace
        except ImportError as exc:
            raise ConfigError(
                "telemetry needs OpenTelemetry: pip install 'pgaccess[otel]' "
                "(and an SDK such as opentelemetry-sdk to export anything)"
            ) from exc
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("pgaccess")
        except PackageNotFoundError:  # a source checkout
            ours = None
        self._trace = trace
        self._client = trace.SpanKind.CLIENT
        self._error = trace.Status(trace.StatusCode.ERROR)
        self.tracer = (trace.get_tracer(SCOPE, ours, tracer_provider) if tracing else None)
        self.record_tenant = record_tenant
        self.sql_comment = sql_comment
        self._pools: list[Pool] = []
        self._server: dict[int, dict[str, Any]] = {}
        self._statements: dict[tuple[str, str, str | None, bool], _Statement] = {}
        self.duration: Any = None
        if metrics:
            meter = otel_metrics.get_meter(SCOPE, ours or "", meter_provider)
            self._instruments(meter, otel_metrics)

    def _instruments(self, meter: Any, api: Any) -> None:
        self.duration = meter.create_histogram(
            "db.client.operation.duration", unit="s",
            description="Duration of database client operations.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time", unit="s",
            description="The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=POOL_BUCKETS)
        self.use_time = meter.create_histogram(
            "db.client.connection.use_time", unit="s",
            description="The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=POOL_BUCKETS)
        self.create_time = meter.create_histogram(
            "db.client.connection.create_time", unit="s",
            description="The time it took to create a new connection.",
            explicit_bucket_boundaries_advisory=POOL_BUCKETS)
        observation = api.Observation

        def count(_: Any) -> Iterator[Any]:
            for pool in self._pools:
                s = pool.stats()
                yield observation(s.idle, {**_pool_attrs(pool), "db.client.connection.state": "idle"})
                yield observation(s.in_use, {**_pool_attrs(pool), "db.client.connection.state": "used"})

        def gauge(field: str) -> Any:
            def callback(_: Any) -> Iterable[Any]:
                return [observation(getattr(pool.stats(), field), _pool_attrs(pool))
                        for pool in self._pools]
            return callback

        meter.create_observable_up_down_counter(
            "db.client.connection.count", [count], unit="{connection}",
            description="The number of connections that are currently in state described by "
                        "the `state` attribute.")
        meter.create_observable_up_down_counter(
            "db.client.connection.max", [gauge("max_size")], unit="{connection}",
            description="The maximum number of open connections allowed.")
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests", [gauge("waiting")], unit="{request}",
            description="The number of current pending requests for an open connection.")
        meter.create_observable_counter(
            "db.client.connection.timeouts", [gauge("timeouts")], unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to "
                        "obtain a connection from the pool.")

    # -- wiring ----------------------------------------------------------------------------

    def watch(self, pool: Pool) -> None:
        """Measure ``pool`` (the Database calls this for each of its pools)."""
        if pool not in self._pools:
            self._pools.append(pool)
            self._server[id(pool)] = server_attributes(pool.dsn)

    # Pool observer hooks (see Pool.observers): seconds per checkout, use and connect.
    def observe_pool_wait(self, pool: str, seconds: float) -> None:
        if self.duration is not None:
            self.wait_time.record(seconds, {"db.client.connection.pool.name": pool})

    def observe_pool_use(self, pool: str, seconds: float) -> None:
        if self.duration is not None:
            self.use_time.record(seconds, {"db.client.connection.pool.name": pool})

    def observe_pool_connect(self, pool: str, seconds: float) -> None:
        if self.duration is not None:
            self.create_time.record(seconds, {"db.client.connection.pool.name": pool})

    # -- spans -----------------------------------------------------------------------------

    def _parent(self, span: Any) -> Any:
        return None if span is None else self._trace.set_span_in_context(span)

    def transaction_span(self, *, isolation: str, readonly: bool, system: bool,
                         retries: int, tenant: UUID | None) -> Any:
        """The ``db.transaction`` span of a unit of work (None when tracing is off)."""
        if self.tracer is None:
            return None
        # The statements carry the server attributes; the grouping span stays small (cheap).
        attributes: dict[str, Any] = {
            "db.system.name": "postgresql", "pgaccess.transaction.isolation": isolation,
            "pgaccess.transaction.read_only": readonly, "pgaccess.transaction.system": system,
            "pgaccess.transaction.retries": retries}
        if self.record_tenant and tenant is not None:
            attributes["pgaccess.tenant.id"] = str(tenant)
        return self.tracer.start_span("db.transaction", attributes=attributes)

    def end_transaction(self, span: Any, outcome: str, error: BaseException | None) -> None:
        span.set_attribute("pgaccess.transaction.outcome", outcome)
        if error is not None:
            span.set_attributes(error_attributes(error))
            span.set_status(self._error)
        span.end()

    def savepoint_span(self, parent: Any) -> Any:
        if parent is None:
            return None
        return self.tracer.start_span("db.savepoint", context=self._parent(parent))  # type: ignore[union-attr]

    def end_savepoint(self, span: Any, released: bool, error: BaseException | None) -> None:
        span.set_attribute("pgaccess.savepoint.outcome", "release" if released else "rollback")
        if error is not None:
            span.set_attributes(error_attributes(error))
            span.set_status(self._error)
        span.end()

    def statement(self, pool: Pool, sql: str, name: str | None, vetted: bool, parent: Any,
                  tenant: UUID | None = None) -> _Statement | _Traced:
        """What a statement records: its shape, and its span when tracing is on. ``parent``
        is the unit of work's span (or savepoint's); None: the current context."""
        key = (pool.name, sql, name, vetted)
        info = self._statements.get(key)
        if info is None:
            if len(self._statements) >= 4096:  # raw SQL built at run time: stay bounded
                self._statements.clear()
            info = self._statements[key] = _Statement(self._server_of(pool), sql, name, vetted)
        if self.tracer is None:
            return info
        attributes = info.span_attributes
        if self.record_tenant and tenant is not None:
            attributes = {**attributes, "pgaccess.tenant.id": str(tenant)}
        span = self.tracer.start_span(info.span_name, self._parent(parent), self._client,
                                      attributes)
        return _Traced(info, span)

    def end_statement(self, stmt: _Statement | _Traced, seconds: float | None,
                      error: BaseException | None = None) -> None:
        """End the statement's span; record its duration (None: it never ran - its
        checkout failed)."""
        info, span = (stmt.info, stmt.span) if isinstance(stmt, _Traced) else (stmt, None)
        attrs = info.metric_attributes
        if error is not None:
            failure = error_attributes(error)
            attrs = {**attrs, **failure}
            if span is not None:
                span.set_attributes(failure)
                span.set_status(self._error)
        if self.duration is not None and seconds is not None:
            self.duration.record(seconds, attrs)
        if span is not None:
            span.end()

    async def acquire(self, pool: Pool, timeout: float | None, parent: Any) -> PooledConnection:
        """``pool.acquire`` with a ``pgaccess.pool.acquire`` span when it has to wait."""
        if self.tracer is None or pool.has_idle():
            return await pool.checkout(timeout)
        start = time_ns()
        error: BaseException | None = None
        try:
            return await pool.checkout(timeout)
        except BaseException as exc:
            error = exc
            raise
        finally:
            span = self.tracer.start_span(
                "pgaccess.pool.acquire", self._parent(parent), start_time=start,
                attributes={"db.client.connection.pool.name": pool.name})
            if error is not None:
                span.set_attributes(error_attributes(error))
                span.set_status(self._error)
            span.end()

    def comment(self, span: Any) -> str:
        """The sqlcommenter comment carrying ``span``'s trace context ('' without one)."""
        if span is None or not self.sql_comment:
            return ""
        span = span.span if isinstance(span, _Traced) else span
        ctx = span.get_span_context()
        flags = int(ctx.trace_flags)
        return f" /*traceparent='00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags:02x}'*/"

    def _server_of(self, pool: Pool) -> dict[str, Any]:
        attributes = self._server.get(id(pool))
        if attributes is None:
            attributes = self._server[id(pool)] = server_attributes(pool.dsn)
        return attributes


def _pool_attrs(pool: Pool) -> dict[str, str]:
    return {"db.client.connection.pool.name": pool.name}


class _Statement:
    """A statement's span name and attributes, computed once per (pool, SQL, name)."""

    __slots__ = ("metric_attributes", "span_attributes", "span_name")
    span: Any = None  # tracing off: no span (a _Traced has one)

    def __init__(self, server: dict[str, Any], sql: str, name: str | None, vetted: bool) -> None:
        shape = describe_sql(sql, vetted)
        summary = name or " ".join(p for p in (shape.operation, shape.collection) if p) or None
        self.span_name = summary or "postgresql"
        metric = dict(server)
        if shape.operation:
            metric["db.operation.name"] = shape.operation
        if summary:
            metric["db.query.summary"] = summary
        self.metric_attributes = metric
        span = dict(metric)
        if shape.collection:
            span["db.collection.name"] = shape.collection
        if shape.text is not None:
            span["db.query.text"] = shape.text
        self.span_attributes = span


class _Traced(NamedTuple):
    info: _Statement
    span: Any


__all__ = ["SqlShape", "Telemetry", "describe_sql", "error_attributes", "server_attributes",
           "trace_fields"]
