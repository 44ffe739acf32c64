"""The unit of work: one explicit transaction that carries the tenant.

``async with db.transaction(tenant=t) as uow:`` acquires a connection and, in *one* round
trip, begins the transaction, resets the session (see :mod:`pgaccess.session`) and sets the
transaction-local tenant; it commits on normal exit, rolls back on any exception (re-raised,
typed) and returns the connection to the pool.

Nesting: inside an open unit of work of the same task and the same database,
``db.transaction()`` and ``uow.savepoint()`` become savepoints. A nested request for another
tenant, the system context, another isolation level or read-only mode raises
:class:`~pgaccess.errors.TransactionError` naming the difference (a savepoint cannot change
them, and silently running in the outer transaction would be wrong). A transaction of
*another* ``Database`` is independent: its own connection and its own commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict
from uuid import UUID

import asyncpg

from .errors import ConnectionLost, PgAccessError, TransactionError, from_asyncpg
from .executor import DRIVER_ERRORS, Executor, Method, Runtime, open_session
from .log import get_logger
from .pool import raw_connection
from .session import ISOLATION_SQL, begin_sql, citus_opening_sql, local_tenant_sql, opening_sql
from .tenancy import TenantContext, parse_tenant_id

if TYPE_CHECKING:
    from .pool import Connection, Pool, PooledConnection

log = get_logger("uow")

Isolation = Literal["read_committed", "repeatable_read", "serializable"]

# Read-only commits finishing in the background (strong references until they are done).
_background: set[asyncio.Task[None]] = set()


class TransactionOptions(TypedDict, total=False):
    """Options of a unit of work, shared by ``db.transaction(**options)``,
    ``db.run_in_transaction(fn, options=...)`` and ``@transactional(**options)``.

    tenant: the tenant (a UUID or its string); default ``TenantContext.current()``.
    system: run on the admin pool without a tenant (say why in ``reason``; it is logged).
    isolation: "read_committed" (default), "repeatable_read" or "serializable".
    readonly: a read-only transaction; goes to a replica when replicas are configured,
        unless ``primary`` is true. ``deferrable`` applies to serializable read-only ones.
    timeout: this transaction's statement timeout in seconds (0 disables it).
    acquire_timeout: how long to wait for a pooled connection.
    """

    tenant: Any
    system: bool
    reason: str | None
    isolation: Isolation
    readonly: bool
    deferrable: bool
    timeout: float | None
    acquire_timeout: float | None
    primary: bool


class UnitOfWork(Executor):
    """One transaction on one connection. Obtain it from ``db.transaction()``."""

    __slots__ = ("_con", "_limit", "_on_commit", "_raw", "_savepoints", "_span", "_state",
                 "_task", "isolation", "pool", "readonly")

    def __init__(self, runtime: Runtime, pool: Pool, *, tenant: UUID | None, system: bool,
                 isolation: str, readonly: bool) -> None:
        super().__init__(runtime, tenant=tenant, system=system)
        self.pool = pool
        self.isolation = isolation
        self.readonly = readonly
        self._con: PooledConnection | None = None
        self._raw: Connection | None = None  # behind the proxy: one call layer less per query
        self._task: asyncio.Task[Any] | None = None
        self._state: Literal["new", "active", "done"] = "new"
        self._on_commit: list[Callable[[], Awaitable[Any] | Any]] = []
        self._savepoints = 0
        self._limit: float | None = None  # its own statement timeout (timeout=), if given
        self._span: Any = None  # telemetry: the transaction's span, or the open savepoint's

    # -- guards --------------------------------------------------------------------------

    def _check(self) -> PooledConnection:
        if self._state != "active" or self._con is None:
            raise TransactionError(
                "this unit of work is not active (used after its `async with` block ended, "
                "or before it began); open a new db.transaction()"
            )
        if asyncio.current_task() is not self._task:
            raise TransactionError(
                "a unit of work belongs to the task that opened it; open a separate "
                "db.transaction() in the other task"
            )
        return self._con

    @property
    def connection(self) -> PooledConnection:
        """The raw asyncpg connection. It is closed when the unit of work ends: SQL state it
        leaves would be reset for the next user, but driver-level state (type codecs, query
        loggers, listeners, protocol-level prepared statements) would not."""
        con = self._check()
        raw = raw_connection(con)
        raw._pga_raw_sql = raw._pga_handed_out = True
        return con

    @property
    def active(self) -> bool:
        return self._state == "active"

    @property
    def in_transaction(self) -> bool:
        return True

    @property
    def session_trusted(self) -> bool:
        con = self._con
        return con is not None and not raw_connection(con)._pga_raw_sql

    # -- running statements ----------------------------------------------------------------

    async def run(self, method: Method, sql: str, args: Sequence[Any], name: str | None,
                  *, vetted: bool = False) -> Any:
        raw = self._raw
        if self._state != "active" or raw is None or asyncio.current_task() is not self._task:
            self._check()  # raises the right error
        telemetry = self.runtime.telemetry
        if telemetry is None:
            return await self._timed(raw, method, sql, args, name, vetted)
        traced = telemetry.statement(self.pool, sql, name, vetted, self._span, self.tenant)
        return await self._timed(raw, method, sql, args, name, vetted, traced)

    async def copy_records_to_table(self, table: str, *, records: Any, columns: Sequence[str],
                                    schema_name: str | None = None, name: str | None = None) -> str:
        """``COPY ... FROM STDIN`` of ``records`` (asyncpg's binary copy), typed errors."""
        con = self._check()
        try:
            result: str = await con.copy_records_to_table(
                table, records=records, columns=list(columns), schema_name=schema_name)
        except DRIVER_ERRORS as exc:
            raise from_asyncpg(exc, name or f"COPY {table}") from exc
        return result

    # -- savepoints and hooks ---------------------------------------------------------------

    def savepoint(self) -> Savepoint:
        """``async with uow.savepoint():`` - a block that rolls back alone on error."""
        return Savepoint(self)

    def scoped_tenant(self, tenant: Any) -> TenantScope:
        """System units of work only: act as ``tenant`` for a block (RLS checks the rows).

        Used by seeders and cross-tenant jobs that write tenant-owned rows in one
        transaction: the admin role's policy narrows to the tenant while it is set.
        """
        if not self.system:
            raise TransactionError(
                "scoped_tenant() is for system units of work; a tenant unit of work has "
                "exactly one tenant for its whole life"
            )
        return TenantScope(self, parse_tenant_id(tenant))

    def on_commit(self, callback: Callable[[], Awaitable[Any] | Any]) -> None:
        """Run ``callback`` once, after a successful commit (never on rollback or retry)."""
        self._check()
        self._on_commit.append(callback)

    async def _set_tenant(self, tenant: UUID | None) -> None:
        con = self._check()
        runtime = self.runtime
        await con.execute(local_tenant_sql(
            runtime.settings.tenant_setting, runtime.tenant_value(tenant, con),
            set_local=runtime.tenant_set_local or self.pool.distributed))

    # -- lifecycle (driven by TransactionContext) -----------------------------------------

    async def _begin(self, begin: str, timeout: float | None, acquire_timeout: float | None) -> None:
        runtime, pool = self.runtime, self.pool

        def opening(con: PooledConnection) -> str | tuple[str, ...]:
            # Built after acquiring: connecting may just have found a transaction pooler.
            local = pool.pinned_local
            if timeout is not None:
                # Rounded up: only timeout=0 may mean no timeout at all.
                limit = f"SET LOCAL statement_timeout = {math.ceil(timeout * 1000)}"
                local = f"{local}; {limit}" if local else limit
            build = (citus_opening_sql if begin and (runtime.tenant_set_local or pool.distributed)
                     else opening_sql)
            return build(begin=begin, tenant_setting=runtime.settings.tenant_setting,
                         tenant=runtime.tenant_value(self.tenant, con),
                         local_settings=local, guard=runtime.guard_for(con))

        self._limit = timeout
        self._con = await open_session(runtime, pool, acquire_timeout, opening, self._span)
        self._raw = raw_connection(self._con)
        self._task = asyncio.current_task()
        self._state = "active"

    async def _commit(self) -> None:
        # Driven by TransactionContext.__aexit__: the task that opened it (async with).
        con = self._raw
        if self._state != "active" or con is None:
            self._check()  # raises the right error
        assert con is not None
        self._state = "done"
        if con.is_closed():  # a statement overran its client-side bound, or the server left
            await self._release()
            raise ConnectionLost(
                "the unit of work's connection was closed before its COMMIT (a statement ran "
                "past its timeout, or the connection to the server broke): pgaccess did not "
                "commit it and on_commit callbacks did not run; retry the unit of work")
        if not con.is_in_transaction():  # asyncpg knows from the last ReadyForQuery
            await self._release()
            raise TransactionError(
                "the unit of work's transaction was ended inside the block (a COMMIT, ROLLBACK "
                "or PREPARE TRANSACTION sent as SQL): pgaccess cannot tell what was committed, "
                "and on_commit callbacks did not run. Let the `async with` block end the "
                "transaction; use uow.savepoint() for partial rollbacks"
            )
        if (self.readonly and self.isolation != "serializable" and not self._on_commit
                and self.pool.has_idle()):
            # A read-only, non-serializable transaction has nothing to persist and its
            # COMMIT cannot fail in a way the caller could act on: finish it in the
            # background and give the caller its result one round trip sooner. The
            # connection returns to the pool only after the COMMIT completed. Only while
            # the pool has idle connections: when saturated, the extra task costs more
            # throughput than the early return gains.
            task = asyncio.get_running_loop().create_task(self._finish_readonly())
            _background.add(task)
            task.add_done_callback(_background.discard)
            return
        try:
            status = await con.execute("COMMIT")
        except DRIVER_ERRORS as exc:
            await self._discard()
            raise from_asyncpg(exc, "COMMIT") from exc
        except BaseException:  # cancelled mid-COMMIT: the outcome is unknown
            await self._discard()
            raise
        if status != "COMMIT":  # PostgreSQL answers COMMIT of a failed transaction with ROLLBACK
            await self._release()
            if self.readonly:  # nothing was lost (as when the COMMIT runs in the background)
                return
            raise TransactionError(
                "the unit of work was rolled back, not committed: a statement in it failed and "
                "its error was handled inside the block, which leaves the transaction aborted. "
                "Wrap statements whose errors you handle in `async with uow.savepoint():`"
            )
        await self._release()
        for callback in self._on_commit:
            result = callback()
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                await result

    async def _finish_readonly(self) -> None:
        con = self._raw
        try:
            assert con is not None
            await con.execute("COMMIT")
        except BaseException as exc:  # the connection is unusable; the pool replaces it
            log.warning("readonly_commit_failed", error=type(exc).__name__)
            await self._discard()
            return
        await self._release()

    async def _rollback(self, broken: bool) -> None:
        con = self._con
        self._state = "done"
        if con is None:
            return
        raw = raw_connection(con)
        if raw is None:  # asyncpg already took it back when the connection closed
            self._con = None
            return
        if broken:
            await self._discard()
            return
        try:
            if not raw.is_closed() and raw.is_in_transaction():
                await con.execute("ROLLBACK")
        except BaseException as exc:
            # A broken or cancelled connection: terminate it, the pool opens a new one.
            raw.terminate()
            await self._release()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        await self._release()

    async def _release(self) -> None:
        con, self._con, self._raw = self._con, None, None
        if con is not None:
            await self.pool.release(con)

    async def _discard(self) -> None:
        con, self._con, self._raw = self._con, None, None
        self._state = "done"
        if con is not None:
            await self.pool.discard(con)


async def background_commits_done() -> None:
    """Wait for read-only commits still finishing in the background."""
    while _background:
        await asyncio.gather(*list(_background), return_exceptions=True)


class TenantScope:
    """What ``uow.scoped_tenant(t)`` returns: sets and clears the transaction's tenant."""

    def __init__(self, uow: UnitOfWork, tenant: UUID) -> None:
        self.uow = uow
        self.tenant = tenant

    async def __aenter__(self) -> UnitOfWork:
        await self.uow._set_tenant(self.tenant)
        self.uow.tenant = self.tenant
        return self.uow

    async def __aexit__(self, *exc: object) -> None:
        self.uow.tenant = None
        if self.uow.active:
            with contextlib.suppress(PgAccessError, asyncpg.PostgresError):  # aborted: rolls back anyway
                await self.uow._set_tenant(None)


class Savepoint:
    """A nested block of a unit of work; rolls back alone on error."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self.name = ""
        self._outer_span: Any = None

    async def __aenter__(self) -> UnitOfWork:
        uow = self.uow
        con = uow._check()
        uow._savepoints += 1
        self.name = f"pgaccess_sp_{uow._savepoints}"
        telemetry = uow.runtime.telemetry
        if telemetry is not None and uow._span is not None:
            self._outer_span, uow._span = uow._span, telemetry.savepoint_span(uow._span)
        try:
            await con.execute(f"SAVEPOINT {self.name}")
        except DRIVER_ERRORS as err:
            error = from_asyncpg(err, "SAVEPOINT")
            self._end_span(False, error)
            raise error from err
        return uow

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        con = self.uow._check()
        try:
            if exc_type is None:
                await con.execute(f"RELEASE SAVEPOINT {self.name}")
            else:
                await con.execute(f"ROLLBACK TO SAVEPOINT {self.name}")
        except DRIVER_ERRORS as err:
            error = from_asyncpg(err, "SAVEPOINT")
            self._end_span(False, error)
            raise error from err
        self._end_span(exc_type is None, exc)

    def _end_span(self, released: bool, error: BaseException | None) -> None:
        if self._outer_span is None:
            return
        uow = self.uow
        span, uow._span, self._outer_span = uow._span, self._outer_span, None
        uow.runtime.telemetry.end_savepoint(span, released, error)  # type: ignore[union-attr]


_KNOWN_OPTIONS = frozenset(TransactionOptions.__annotations__)


def check_options(options: TransactionOptions) -> None:
    """Refuse unknown or contradictory options before anything is acquired."""
    if not _KNOWN_OPTIONS.issuperset(options):
        unknown = options.keys() - _KNOWN_OPTIONS
        raise TransactionError(
            f"unknown transaction option(s) {sorted(unknown)}; "
            f"known: {sorted(TransactionOptions.__annotations__)}"
        )
    isolation = options.get("isolation", "read_committed")
    if isolation not in ISOLATION_SQL:
        raise TransactionError(
            f"unknown isolation {isolation!r}; use one of {sorted(ISOLATION_SQL)}"
        )
    if options.get("system") and options.get("tenant") is not None:
        raise TransactionError("a system transaction has no tenant; pass one or the other")
    timeout = options.get("timeout")
    if timeout is not None and not timeout >= 0:
        raise TransactionError(
            f"timeout must be a number of seconds >= 0, got {timeout!r} (0: no statement "
            "timeout at all; leave it out for the pool's statement_timeout)"
        )


class TransactionContext:
    """What ``db.transaction(...)`` returns; enter it with ``async with``.

    ``independent=True`` never nests into an open unit of work (its own connection).
    """

    __slots__ = ("_savepoint", "_token", "_uow", "independent", "options", "retries",
                 "runtime", "tenant")

    def __init__(self, runtime: Runtime, options: TransactionOptions, *,
                 independent: bool = False) -> None:
        check_options(options)
        self.runtime = runtime
        self.options = options
        self.independent = independent
        tenant = options.get("tenant")
        self.tenant = None if tenant is None else parse_tenant_id(tenant)
        self._uow: UnitOfWork | None = None
        self._savepoint: Savepoint | None = None
        self._token: Any = None
        self.retries = 0  # earlier attempts (run_in_transaction), for telemetry

    def _resolved_tenant(self) -> UUID | None:
        if self.options.get("system"):
            return None
        return self.tenant if self.tenant is not None else TenantContext.current()

    def _nesting_conflict(self, outer: UnitOfWork) -> str | None:
        opts = self.options
        system = bool(opts.get("system", False))
        if system != outer.system:
            return (f"system={system} inside a unit of work with system={outer.system}")
        tenant = self._resolved_tenant()
        if not system and tenant is not None and tenant != outer.tenant:
            return f"tenant {tenant} inside a unit of work of tenant {outer.tenant}"
        if "isolation" in opts and opts["isolation"] != outer.isolation:
            return f"isolation {opts['isolation']!r} inside a {outer.isolation!r} unit of work"
        if "readonly" in opts and bool(opts["readonly"]) != outer.readonly:
            return f"readonly={opts['readonly']} inside a unit of work with readonly={outer.readonly}"
        return None

    async def __aenter__(self) -> UnitOfWork:
        runtime, opts = self.runtime, self.options
        outer: UnitOfWork | None = runtime.active.get()
        if (not self.independent and outer is not None and outer.active
                and outer._task is asyncio.current_task()):
            conflict = self._nesting_conflict(outer)
            if conflict:
                raise TransactionError(
                    f"a nested transaction cannot change what its unit of work is: {conflict}. "
                    "A savepoint shares the outer transaction; open the other one in a "
                    "separate task (asyncio.create_task) or after the outer one ends"
                )
            self._savepoint = outer.savepoint()
            return await self._savepoint.__aenter__()
        system = bool(opts.get("system", False))
        readonly = bool(opts.get("readonly", False))
        isolation = opts.get("isolation", "read_committed")
        if system:
            log.info("system_transaction", reason=opts.get("reason") or "(no reason given)")
        pool = runtime.pool_for(system=system, readonly=readonly,
                                primary=bool(opts.get("primary", False)))
        uow = UnitOfWork(runtime, pool, tenant=self._resolved_tenant(), system=system,
                         isolation=isolation, readonly=readonly)
        telemetry = runtime.telemetry
        if telemetry is not None:
            uow._span = telemetry.transaction_span(
                isolation=isolation, readonly=readonly, system=system,
                retries=self.retries, tenant=uow.tenant)
        try:
            await uow._begin(begin_sql(isolation, readonly, bool(opts.get("deferrable", False))),
                             opts.get("timeout"), opts.get("acquire_timeout"))
        except BaseException as exc:
            if uow._span is not None:
                telemetry.end_transaction(uow._span, "error", exc)  # type: ignore[union-attr]
            raise
        self._uow = uow
        self._token = runtime.active.set(uow)
        return uow

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._savepoint is not None:
            await self._savepoint.__aexit__(exc_type, exc, tb)
            return
        uow = self._uow
        assert uow is not None
        self.runtime.active.reset(self._token)
        span = uow._span
        if span is None:
            await self._finish(uow, exc_type, exc)
            return
        outcome, error = ("commit", None) if exc_type is None else ("rollback", exc)
        try:
            await self._finish(uow, exc_type, exc)
        except BaseException as failure:  # the COMMIT failed, or the typed error
            outcome, error = "rollback", failure
            raise
        finally:
            uow._span = None
            self.runtime.telemetry.end_transaction(span, outcome, error)  # type: ignore[union-attr]

    async def _finish(self, uow: UnitOfWork, exc_type: Any, exc: Any) -> None:
        if exc_type is None:
            await uow._commit()
            if not uow.readonly:
                self.runtime.note_write()
        else:
            # Cancelled or lost mid-statement: the connection's state is unknown.
            broken = isinstance(exc, (ConnectionLost, asyncio.CancelledError))
            await uow._rollback(broken)
            if isinstance(exc, DRIVER_ERRORS) and not isinstance(exc, PgAccessError):
                raise from_asyncpg(exc) from exc


__all__ = [
    "Isolation",
    "Savepoint",
    "TenantScope",
    "TransactionContext",
    "TransactionOptions",
    "UnitOfWork",
    "background_commits_done",
    "check_options",
]
