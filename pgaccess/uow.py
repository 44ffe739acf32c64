"""The unit of work: one explicit transaction that carries the tenant.

``async with db.transaction(tenant=t) as uow:`` acquires a connection, sends ``BEGIN`` and
the transaction-local tenant setting in *one* round trip, commits on normal exit, rolls back
on any exception (re-raised, typed) and returns the connection to the pool clean. Nested
``db.transaction()`` / ``uow.savepoint()`` blocks become savepoints.

Release is cheap: every setting pgaccess makes is transaction-local, so the pool skips
asyncpg's ``RESET ALL`` round trip unless this unit of work may have left session state
behind (raw ``uow.connection`` access, or a statement that ``affects_session`` flags). See
``docs/RELEASE.md`` for what can leak and the tests that prove it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from uuid import UUID

import asyncpg

from .errors import ConnectionLost, PgAccessError, TransactionError, from_asyncpg
from .log import get_logger, log_query
from .pool import raw_connection
from .replicas import last_write_at
from .tenancy import TenantContext, parse_tenant_id

if TYPE_CHECKING:
    from .database import Database
    from .pool import Connection, Pool, PooledConnection
    from .repository import BaseRepository

log = get_logger("uow")

# What the driver raises: server errors, client/protocol errors, and socket errors.
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)

Isolation = Literal["read_committed", "repeatable_read", "serializable"]
_ISOLATION_SQL = {
    "read_committed": "READ COMMITTED",
    "repeatable_read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}

R = TypeVar("R", bound="BaseRepository[Any]")

_active: ContextVar[UnitOfWork | None] = ContextVar("pgaccess_uow", default=None)

# Read-only commits finishing in the background (strong references until they are done).
_background: set[asyncio.Task[None]] = set()

# Statements that can leave state on the session beyond the transaction. A unit of work
# that runs one of these is released with a full reset (one extra round trip).
_SESSION_STATE = re.compile(
    r"""(?:^|;)\s*SET\s+(?!LOCAL\b)|\bRESET\b|\bLISTEN\b|\bpg_advisory_lock|"""
    r"""\bpg_advisory_lock_shared\b|\bpg_try_advisory_lock\b|\bTEMP(ORARY)?\b|"""
    r"""\bPREPARE\b|\bWITH\s+HOLD\b|\bset_config\s*\(|\bDISCARD\b|\bCOMMIT\b|\bBEGIN\b""",
    re.IGNORECASE | re.MULTILINE,
)


@lru_cache(maxsize=4096)
def affects_session(sql: str) -> bool:
    """True when ``sql`` may leave session-level state (cached per statement text)."""
    return _SESSION_STATE.search(sql) is not None


def begin_statement(
    isolation: str,
    readonly: bool,
    deferrable: bool,
    tenant: UUID | None,
    tenant_setting: str,
    timeout: float | None,
    use_set_local: bool = False,
    tenant_value: str | None = None,
) -> str:
    """The one simple-query string that opens a unit of work.

    The tenant id is a validated ``uuid.UUID`` whose ``str()`` is 36 hex digits and dashes
    (plus ``.`` and a hex signature when signing), so it is safe to inline; it is never
    taken from unvalidated input.
    """
    try:
        level = _ISOLATION_SQL[isolation]
    except KeyError:
        raise TransactionError(
            f"unknown isolation {isolation!r}; use one of {sorted(_ISOLATION_SQL)}"
        ) from None
    parts = [f"BEGIN ISOLATION LEVEL {level}"]
    if readonly:
        parts[0] += " READ ONLY"
        if deferrable:
            parts[0] += " DEFERRABLE"
    if tenant is not None:
        assert isinstance(tenant, UUID)
        value = tenant_value or str(tenant)
        assert all(c in "0123456789abcdef-." for c in value)
        if use_set_local:
            parts.append(f"SET LOCAL {tenant_setting} = '{value}'")
        else:
            parts.append(f"SELECT set_config('{tenant_setting}', '{value}', true)")
    if timeout is not None:
        parts.append(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")
    return "; ".join(parts)


class UnitOfWork:
    """One transaction on one connection. Obtain it from ``db.transaction()``."""

    __slots__ = (
        "_broken", "_con", "_log_all", "_on_commit", "_raw", "_savepoints", "_slow_ms",
        "_state", "_task", "db", "isolation", "pool", "readonly", "system", "tenant",
    )

    def __init__(
        self,
        db: Database,
        pool: Pool,
        *,
        tenant: UUID | None,
        system: bool,
        isolation: str,
        readonly: bool,
    ) -> None:
        self.db = db
        self.pool = pool
        self.tenant = tenant
        self.system = system
        self.isolation = isolation
        self.readonly = readonly
        self._con: PooledConnection | None = None
        self._raw: Connection | None = None  # behind the proxy: one call layer less per query
        self._task: asyncio.Task[Any] | None = None
        self._state: Literal["new", "active", "done"] = "new"
        self._on_commit: list[Callable[[], Awaitable[Any] | Any]] = []
        self._savepoints = 0
        self._broken = False  # the connection failed mid-operation: never reuse it
        self._slow_ms = db.settings.slow_query_ms
        self._log_all = db.log_queries

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
        """The raw asyncpg connection. Anything goes, so its release runs a full reset."""
        con = self._check()
        self.pool.mark_dirty(con)
        return con

    @property
    def active(self) -> bool:
        return self._state == "active"

    # -- running statements ----------------------------------------------------------------

    async def _run(self, method: str, sql: str, args: Sequence[Any], name: str | None) -> Any:
        raw = self._raw
        if self._state != "active" or raw is None or asyncio.current_task() is not self._task:
            self._check()  # raises the right error
        start = time.perf_counter()
        try:
            result = await getattr(raw, method)(sql, *args)
        except _DRIVER_ERRORS as exc:
            err = from_asyncpg(exc, name or sql.strip().splitlines()[0][:80])
            if isinstance(err, ConnectionLost):
                self._broken = True
            log_query(name or _first_line(sql), _ms(start), self._slow_ms, error=err)
            raise err from exc
        duration = _ms(start)
        if self._log_all or duration >= self._slow_ms:
            rows = len(result) if isinstance(result, list) else None
            log_query(name or _first_line(sql), duration, self._slow_ms, rows=rows)
        if self.db.metrics is not None:
            self.db.metrics.observe_query(name or "sql", duration / 1000)
        return result

    def _note_sql(self, sql: str) -> None:
        if affects_session(sql) and self._con is not None:
            self.pool.mark_dirty(self._con)

    async def fetch(self, sql: str, *args: Any, name: str | None = None) -> list[asyncpg.Record]:
        self._note_sql(sql)
        return cast(list[asyncpg.Record], await self._run("fetch", sql, args, name))

    async def fetchrow(self, sql: str, *args: Any, name: str | None = None) -> asyncpg.Record | None:
        self._note_sql(sql)
        return cast("asyncpg.Record | None", await self._run("fetchrow", sql, args, name))

    async def fetchval(self, sql: str, *args: Any, name: str | None = None) -> Any:
        self._note_sql(sql)
        return await self._run("fetchval", sql, args, name)

    async def execute(self, sql: str, *args: Any, name: str | None = None) -> str:
        self._note_sql(sql)
        result: str = await self._run("execute", sql, args, name)
        return result

    async def executemany(
        self, sql: str, args: Iterable[Sequence[Any]], name: str | None = None
    ) -> None:
        self._note_sql(sql)
        await self._run("executemany", sql, (args,), name)

    # -- named queries and repositories ---------------------------------------------------

    @property
    def q(self) -> Any:
        """The loaded named queries, bound to this unit of work: ``await uow.q.name(p=1)``."""
        return self.db.queries.bind(self)

    def repo(self, repository: type[R]) -> R:
        """A repository of type ``repository`` bound to this unit of work."""
        return repository(self)

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

    # -- lifecycle (driven by TransactionContext) -----------------------------------------

    async def _begin(self, statement: Callable[[], str], acquire_timeout: float | None) -> None:
        self._con = await self.pool.acquire(acquire_timeout, clean=True)
        self._raw = raw_connection(self._con)
        self._task = asyncio.current_task()
        try:
            # Built after acquiring: connecting may have found a pooler (see _statement).
            await self._raw.execute(statement())
        except BaseException as exc:
            await self._discard()
            if isinstance(exc, _DRIVER_ERRORS):
                raise from_asyncpg(exc, "BEGIN") from exc
            raise
        self._state = "active"

    async def _commit(self) -> None:
        self._check()
        con = self._raw
        assert con is not None
        self._state = "done"
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
            await con.execute("COMMIT")
        except _DRIVER_ERRORS as exc:
            await self._discard()
            raise from_asyncpg(exc, "COMMIT") from exc
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

    async def _rollback(self) -> None:
        con = self._con
        self._state = "done"
        if con is None:
            return
        raw = raw_connection(con)
        if raw is None:  # asyncpg already took it back when the connection closed
            self._con = None
            return
        if self._broken:
            await self._discard()
            return
        try:
            if not raw.is_closed() and raw.is_in_transaction():
                await con.execute("ROLLBACK")
        except BaseException:
            # A broken or cancelled connection: terminate it, the pool opens a new one.
            raw.terminate()
        await self._release()

    async def _release(self) -> None:
        con, self._con, self._raw = self._con, None, None
        if con is not None:
            await self.pool.release(con)

    async def _discard(self) -> None:
        """Terminate the connection (it may be mid-operation) and give its slot back."""
        con, self._con, self._raw = self._con, None, None
        self._state = "done"
        raw = raw_connection(con) if con is not None else None
        if raw is not None:
            raw.terminate()
            await self.pool.release(con)


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
        con = self.uow._check()
        settings = self.uow.db.settings
        value = settings.tenant_value(self.tenant)
        await con.execute(f"SELECT set_config('{settings.tenant_setting}', '{value}', true)")
        self.uow.tenant = self.tenant
        return self.uow

    async def __aexit__(self, *exc: object) -> None:
        self.uow.tenant = None
        con = self.uow._con
        if con is not None and not con.is_closed() and self.uow.active:
            setting = self.uow.db.settings.tenant_setting
            with contextlib.suppress(asyncpg.PostgresError):  # aborted: rolls back anyway
                await con.execute(f"SELECT set_config('{setting}', '', true)")


class Savepoint:
    """A nested block of a unit of work; rolls back alone on error."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self.name = ""

    async def __aenter__(self) -> UnitOfWork:
        con = self.uow._check()
        self.uow._savepoints += 1
        self.name = f"pgaccess_sp_{self.uow._savepoints}"
        await con.execute(f"SAVEPOINT {self.name}")
        return self.uow

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        con = self.uow._check()
        try:
            if exc_type is None:
                await con.execute(f"RELEASE SAVEPOINT {self.name}")
            else:
                await con.execute(f"ROLLBACK TO SAVEPOINT {self.name}")
        except _DRIVER_ERRORS as err:
            raise from_asyncpg(err, "SAVEPOINT") from err


class TransactionContext:
    """What ``db.transaction(...)`` returns; enter it with ``async with``."""

    __slots__ = (
        "_savepoint", "_token", "_uow", "acquire_timeout", "db", "deferrable", "isolation",
        "primary", "readonly", "reason", "system", "tenant", "timeout",
    )

    def __init__(
        self,
        db: Database,
        *,
        tenant: Any = None,
        system: bool = False,
        reason: str | None = None,
        isolation: Isolation = "read_committed",
        readonly: bool = False,
        deferrable: bool = False,
        timeout: float | None = None,
        acquire_timeout: float | None = None,
        primary: bool = False,
    ) -> None:
        if isolation not in _ISOLATION_SQL:
            raise TransactionError(
                f"unknown isolation {isolation!r}; use one of {sorted(_ISOLATION_SQL)}"
            )
        if system and tenant is not None:
            raise TransactionError("a system transaction has no tenant; pass one or the other")
        self.db = db
        self.tenant = None if tenant is None else parse_tenant_id(tenant)
        self.system = system
        self.reason = reason
        self.isolation = isolation
        self.readonly = readonly
        self.deferrable = deferrable
        self.timeout = timeout
        self.acquire_timeout = acquire_timeout
        self.primary = primary
        self._uow: UnitOfWork | None = None
        self._savepoint: Savepoint | None = None
        self._token: Any = None

    async def __aenter__(self) -> UnitOfWork:
        outer = _active.get()
        if outer is not None and outer.active and outer._task is asyncio.current_task():
            if self.tenant is not None and self.tenant != outer.tenant:
                raise TransactionError(
                    "a nested transaction cannot switch tenant; open it in a separate task"
                )
            self._savepoint = outer.savepoint()
            return await self._savepoint.__aenter__()
        tenant = self.tenant
        if tenant is None and not self.system:
            tenant = TenantContext.current()
        if self.system:
            pool = self.db.admin_pool
            log.info("system_transaction", reason=self.reason or "(no reason given)")
        else:
            pool = self.db.pool_for(readonly=self.readonly, primary=self.primary)
        uow = UnitOfWork(
            self.db, pool, tenant=tenant, system=self.system,
            isolation=self.isolation, readonly=self.readonly,
        )
        statement = self._statement(pool, tenant)
        await uow._begin(
            # Rebuilt only if connecting just found a pooler that refuses startup settings.
            lambda: statement if pool.session_settings else self._statement(pool, tenant),
            self.acquire_timeout,
        )
        self._uow = uow
        self._token = _active.set(uow)
        return uow

    def _statement(self, pool: Pool, tenant: UUID | None) -> str:
        # Behind a transaction pooler the timeouts cannot be startup parameters: send them
        # with BEGIN instead (same round trip).
        timeout = self.timeout
        if timeout is None and not pool.session_settings:
            timeout = self.db.settings.statement_timeout
        key = (tenant, self.isolation, self.readonly, self.deferrable, timeout)
        statement = self.db.begin_statements.get(key)
        if statement is None:
            settings = self.db.settings
            statement = begin_statement(
                self.isolation, self.readonly, self.deferrable, tenant,
                settings.tenant_setting, timeout, self.db.tenant_set_local,
                None if tenant is None else settings.tenant_value(tenant),
            )
            if len(self.db.begin_statements) < 10_000:
                self.db.begin_statements[key] = statement
        return statement

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._savepoint is not None:
            await self._savepoint.__aexit__(exc_type, exc, tb)
            return
        uow = self._uow
        assert uow is not None
        _active.reset(self._token)
        if exc_type is None:
            await uow._commit()
            if not self.readonly and self.db.read_your_writes:  # only replicas need it
                last_write_at.set(time.monotonic())
        else:
            await uow._rollback()
            if isinstance(exc, _DRIVER_ERRORS) and not isinstance(exc, PgAccessError):
                raise from_asyncpg(exc) from exc


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _first_line(sql: str) -> str:
    stripped = sql.strip()
    return stripped.splitlines()[0][:80] if stripped else "<empty>"
