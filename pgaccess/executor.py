"""The execution boundary: what repositories and named queries run their statements on.

Two executors exist (this module holds what they share), and both start every use of a
connection from a clean session that carries their tenant (see :mod:`pgaccess.session`):

* :class:`~pgaccess.uow.UnitOfWork` - ``async with db.transaction(tenant=t) as uow:``,
  many statements in one transaction;
* :class:`~pgaccess.autocommit.Autocommit` - ``db.autocommit(tenant=t)``, each statement on its own: two round
  trips (the reset with the tenant, then the statement, whose implicit transaction commits
  with it) instead of a transaction's three.

Both get a :class:`Runtime` - the settings, pools and hooks they need - never the whole
``Database``, so data flows one way: service -> repository / named query -> executor ->
pool -> PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from uuid import UUID

import asyncpg

from . import driver
from .config import Settings
from .errors import (
    ConfigError,
    ConnectionLost,
    PgAccessError,
    QueryTimeout,
    TransactionError,
    from_asyncpg,
)
from .log import get_logger, log_query
from .pool import Pool, PooledConnection, raw_connection
from .replicas import ReplicaSet, last_write_at
from .session import is_tampered, tenant_value
from .telemetry import trace_fields

if TYPE_CHECKING:
    from .queries import BoundQueries, QuerySet
    from .repository import BaseRepository
    from .telemetry import Telemetry

log = get_logger("executor")

# Beyond the statement timeout, before the client gives up on SQL built at run time; then
# how long it waits for its cancel request to end the statement before closing anyway.
_RAW_SQL_GRACE = 1.0
_CANCEL_WAIT = 0.5

# What the driver raises: server errors, client/protocol errors, and socket errors.
DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)

Method = Literal["fetch", "fetchrow", "fetchval", "execute", "executemany"]

R = TypeVar("R", bound="BaseRepository[Any]")


class Runtime:
    """What executors need from a ``Database``: settings, pools, named queries, hooks."""

    __slots__ = ("__weakref__", "active", "admin_pool", "check_always", "log_all", "metrics",
                 "pool", "queries", "read_your_writes", "replicas", "settings", "slow_ms",
                 "telemetry", "tenant_set_local")

    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        *,
        admin_pool: Pool | None = None,
        replicas: ReplicaSet | None = None,
        queries: QuerySet | None = None,
        metrics: Any = None,
        telemetry: Telemetry | None = None,
        log_queries: bool = False,
        tenant_set_local: bool = False,
        read_your_writes: float = 0.0,
        check_prepared_statements: Literal["after_raw_sql", "always"] = "after_raw_sql",
    ) -> None:
        if check_prepared_statements not in ("after_raw_sql", "always"):
            raise ConfigError(
                f"check_prepared_statements must be 'after_raw_sql' or 'always', "
                f"got {check_prepared_statements!r}"
            )
        self.check_always = check_prepared_statements == "always"
        self.settings = settings
        self.pool = pool
        self.admin_pool = admin_pool
        self.replicas = replicas
        self.queries = queries
        self.metrics = metrics
        self.telemetry = telemetry  # None: no tracing, no OpenTelemetry import
        self.log_all = log_queries
        self.slow_ms = settings.slow_query_ms
        # SET LOCAL instead of set_config() for the tenant (Citus propagates SET LOCAL).
        self.tenant_set_local = tenant_set_local
        self.read_your_writes = read_your_writes
        # The open unit of work of the current task on *this* database (nesting).
        self.active: ContextVar[Any] = ContextVar(f"pgaccess_uow_{id(self)}", default=None)

    def pool_for(self, *, system: bool, readonly: bool, primary: bool = False) -> Pool:
        """The admin pool for system work; for read-only work a healthy replica (unless
        ``primary`` or this task wrote within ``read_your_writes`` seconds); else the
        primary."""
        if system:
            if self.admin_pool is None:
                raise ConfigError(
                    "system transactions need an admin connection: set PGACCESS_ADMIN_URL "
                    "(a role with role-scoped policies, e.g. pgaccess_admin) or pass admin_dsn="
                )
            return self.admin_pool
        if not readonly or primary or self.replicas is None:
            return self.pool
        if self.read_your_writes and time.monotonic() - last_write_at.get() < self.read_your_writes:
            return self.pool
        return self.replicas.pick() or self.pool

    def named_queries(self) -> QuerySet:
        if self.queries is None:
            raise ConfigError("no named queries loaded: pass sql_dir= or queries= to Database()")
        return self.queries

    def guard_for(self, con: PooledConnection) -> int | None:
        """The number of prepared statements this checkout's opening expects the session to
        hold, or None when it need not check (no raw SQL ran since the last check)."""
        raw = raw_connection(con)
        return driver.server_statements(raw) if self.check_always or raw._pga_raw_sql else None

    def tenant_value(self, tenant: UUID | None, con: PooledConnection) -> str:
        if tenant is not None and self.settings.tenant_signing_key is not None:
            session_id = raw_connection(con)._pga_session_id
            if session_id is None:
                raise ConfigError(
                    "a signed tenant context is bound to one server session, and this "
                    "connection has none of its own (a transaction pooler such as PgBouncer "
                    "hands each transaction to any server connection): connect directly, "
                    "or switch signing off (PGACCESS_TENANT_SIGNING_KEY)"
                )
            return tenant_value(self.settings, tenant, session_id)
        return "" if tenant is None else str(tenant)

    def note_write(self) -> None:
        if self.read_your_writes:  # only replicas need it
            last_write_at.set(time.monotonic())


async def open_session(runtime: Runtime, pool: Pool, acquire_timeout: float | None,
                       build: Any, span: Any = None) -> PooledConnection:
    """Acquire a connection and run its opening round trip ``build(con)``.

    ``span``: the telemetry span the checkout belongs to (a wait for a connection is
    recorded under it, and its trace context can travel in the opening's SQL comment).

    A connection whose session was tampered with (a hijacked prepared statement), was lost,
    or whose opening timed out (a timeout a previous user left, say) is terminated and
    another one tried: none of this caller's statements has run yet. Any other failure of
    the opening discards the connection and raises.
    """
    telemetry = runtime.telemetry
    for _ in range(pool.settings.max_size + 1):
        if telemetry is None:
            con = await pool.checkout(acquire_timeout)
        else:
            con = await telemetry.acquire(pool, acquire_timeout, span)
        raw = raw_connection(con)
        try:
            sql = build(con)
            if isinstance(sql, tuple):  # a reset round trip first (Citus, see citus_opening_sql)
                for part in sql[:-1]:
                    await raw.execute(part)
                sql = sql[-1]
            if telemetry is not None:
                sql += telemetry.comment(span)
            await raw.execute(sql)
            raw._pga_raw_sql = False
            return con
        except BaseException as exc:
            await pool.discard(con)
            if is_tampered(exc):
                log.warning("session_tampered", pool=pool.name,
                            action="connection terminated; the next one is tried")
                continue
            if isinstance(exc, DRIVER_ERRORS):
                err = from_asyncpg(exc, "opening round trip")
                if isinstance(err, (ConnectionLost, QueryTimeout)):
                    log.warning("opening_failed", pool=pool.name, error=type(err).__name__,
                                action="connection terminated; the next one is tried")
                    continue
                raise err from exc
            raise
    raise TransactionError(
        f"every connection of pool {pool.name!r} had a tampered session; they were terminated, "
        "retry the operation"
    )


class Executor:
    """Statements for one tenant (or no tenant, or the system context).

    ``fetch``, ``fetchrow``, ``fetchval``, ``execute`` and ``executemany`` take the SQL, its
    bound parameters and an optional ``name`` that logs, metrics and errors use. Their SQL
    text counts as *raw* (it may have been built at run time), so the connection's next
    opening checks its prepared statements; repositories and named queries call
    :meth:`run` with ``vetted=True`` for SQL that pgaccess generates or loaded from files.
    """

    __slots__ = ("runtime", "system", "tenant")

    _limit: float | None = None  # an own statement timeout (a unit of work's timeout=)

    def __init__(self, runtime: Runtime, *, tenant: UUID | None, system: bool) -> None:
        self.runtime = runtime
        self.tenant = tenant
        self.system = system

    @property
    def in_transaction(self) -> bool:
        """True for a unit of work: its statements share one transaction."""
        raise NotImplementedError

    @property
    def session_trusted(self) -> bool:
        """True while no raw SQL has run on this executor's session since its opening: what
        vetted statements return here may be cached for everyone (see pgaccess.session)."""
        raise NotImplementedError

    async def run(self, method: Method, sql: str, args: Sequence[Any], name: str | None,
                  *, vetted: bool = False) -> Any:
        """Run one statement with asyncpg's ``method``; errors come back typed.

        ``vetted=True`` promises that ``sql`` was not built at run time (pgaccess's own
        generated SQL, the project's named-query files): the connection's next opening may
        then skip the prepared-statement check. Values are always bound parameters.
        """
        raise NotImplementedError

    async def _timed(self, con: Any, method: Method, sql: str, args: Sequence[Any],
                     name: str | None, vetted: bool, traced: Any = None) -> Any:
        """The statement itself, logged and measured (shared by both executors).

        ``traced``: its telemetry record (see :meth:`Telemetry.statement`), ended here."""
        runtime = self.runtime
        bound = None
        if not vetted:
            con._pga_raw_sql = True  # before it runs: it may fail half-way or be cancelled
            bound = self._raw_sql_bound()
        start = time.perf_counter()
        try:
            if bound is None:
                result = await getattr(con, method)(sql, *args)
            else:
                result = await getattr(con, method)(sql, *args, timeout=bound)
        except DRIVER_ERRORS as exc:
            if bound is not None and type(exc) is TimeoutError:  # the client-side bound
                ended = await driver.cancel_then_close(con, _CANCEL_WAIT)
                err: PgAccessError = QueryTimeout(
                    f"{name or _first_line(sql)}: the server had not ended the statement "
                    f"{bound:.1f}s after it began, past statement_timeout (switched off, or "
                    "a backend waiting for the client, as in COPY ... FROM STDIN). " + (
                        "It was cancelled and the connection closed: its transaction and "
                        "locks are gone" if ended else
                        "It ignored the cancel request (a function trapping query_canceled); "
                        "the connection was closed, and its backend ends when it next reads "
                        "from the client"), query=name)
            else:
                err = from_asyncpg(exc, name or _first_line(sql))
            seconds = time.perf_counter() - start
            if traced is not None:
                runtime.telemetry.end_statement(traced, seconds, err)  # type: ignore[union-attr]
            _log(name or _first_line(sql), seconds * 1000, runtime.slow_ms, traced, error=err)
            raise err from exc
        except BaseException as exc:  # cancelled: the span still ends
            if traced is not None:
                runtime.telemetry.end_statement(  # type: ignore[union-attr]
                    traced, time.perf_counter() - start, exc)
            raise
        seconds = time.perf_counter() - start
        if traced is not None:
            runtime.telemetry.end_statement(traced, seconds)  # type: ignore[union-attr]
        duration = seconds * 1000
        if runtime.log_all or duration >= runtime.slow_ms:
            rows = len(result) if isinstance(result, list) else None
            _log(name or _first_line(sql), duration, runtime.slow_ms, traced, rows=rows)
        if runtime.metrics is not None:
            runtime.metrics.observe_query(name or "sql", seconds)
        return result

    def _raw_sql_bound(self) -> float | None:
        """How long SQL built at run time may run before pgaccess closes its connection: the
        statement timeout in force (a unit of work's own ``timeout=``, else the pool's) plus
        a second, so the server's own timeout - a typed error on a connection that stays
        usable - fires first whenever the server can act on it."""
        limit = self.runtime.settings.statement_timeout if self._limit is None else self._limit
        return limit + _RAW_SQL_GRACE if limit else None

    async def fetch(self, sql: str, *args: Any, name: str | None = None) -> list[asyncpg.Record]:
        return cast(list[asyncpg.Record], await self.run("fetch", sql, args, name))

    async def fetchrow(self, sql: str, *args: Any, name: str | None = None) -> asyncpg.Record | None:
        return cast("asyncpg.Record | None", await self.run("fetchrow", sql, args, name))

    async def fetchval(self, sql: str, *args: Any, name: str | None = None) -> Any:
        return await self.run("fetchval", sql, args, name)

    async def execute(self, sql: str, *args: Any, name: str | None = None) -> str:
        result: str = await self.run("execute", sql, args, name)
        return result

    async def executemany(
        self, sql: str, args: Iterable[Sequence[Any]], name: str | None = None
    ) -> None:
        await self.run("executemany", sql, (args,), name)

    @property
    def q(self) -> BoundQueries:
        """The loaded named queries, bound to this executor: ``await uow.q.name(p=1)``."""
        return self.runtime.named_queries().bind(self)

    def repo(self, repository: type[R]) -> R:
        """A repository of type ``repository`` bound to this executor."""
        return repository(self)


def _log(name: str, duration_ms: float, slow_ms: float, traced: Any,
         rows: int | None = None, error: BaseException | None = None) -> None:
    """The query event; a slow or failed one carries the trace id when a span is active."""
    slow = error is not None or (slow_ms and duration_ms >= slow_ms)
    trace = trace_fields(getattr(traced, "span", None)) if slow else {}
    log_query(name, duration_ms, slow_ms, rows=rows, error=error, **trace)


def _first_line(sql: str) -> str:
    stripped = sql.strip()
    return stripped.splitlines()[0][:80] if stripped else "<empty>"


__all__ = ["DRIVER_ERRORS", "Executor", "Runtime", "open_session"]
