"""Autocommit: a tenant's single statements in two round trips, with no explicit transaction.

    project = await db.autocommit(tenant=t).repo(ProjectRepository).find_by_id(pid)
    rows = await db.autocommit(tenant=t).q.projects_by_status(status="active", lim=10)

Each statement checks out a connection and sends, in round trip 1, the session reset and
the tenant (:mod:`pgaccess.session`), and in round trip 2 the statement itself, whose
implicit transaction commits with it. A transaction costs one more round trip (``COMMIT``).
The guarantees are the unit of work's: no tenant means no rows and no writes, errors are
typed, statements are logged and measured, read-only work may go to a replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from .errors import ConnectionLost, PgAccessError
from .executor import Executor, Method, Runtime, open_session
from .pool import PooledConnection, raw_connection
from .session import opening_sql, tenant_only_opening_sql
from .uow import TransactionContext, TransactionOptions


class Autocommit(Executor):
    """Each statement on its own connection checkout and in its own implicit transaction.

    Round trip 1 resets the session and sets the tenant for the session; round trip 2 is
    the statement. The session-level tenant is safe because every later use of the
    connection starts with the same reset. Where a session-level setting cannot be relied
    on between two round trips - behind a transaction pooler (PgBouncer), or on Citus
    (which passes only ``SET LOCAL`` on to its workers) - each statement takes the
    transaction form instead: ``BEGIN`` + reset + tenant, the statement, ``COMMIT``.
    """

    __slots__ = ("acquire_timeout", "primary", "readonly", "timeout")

    def __init__(self, runtime: Runtime, *, tenant: UUID | None, system: bool,
                 readonly: bool = False, primary: bool = False, timeout: float | None = None,
                 acquire_timeout: float | None = None) -> None:
        super().__init__(runtime, tenant=tenant, system=system)
        self.readonly = readonly
        self.primary = primary
        self.timeout = timeout
        self.acquire_timeout = acquire_timeout

    @property
    def in_transaction(self) -> bool:
        return False

    @property
    def session_trusted(self) -> bool:
        return True  # each statement has a checkout of its own, opened by the reset

    def _opening(self, con: PooledConnection) -> str:
        runtime = self.runtime
        return opening_sql(begin=None, tenant_setting=runtime.settings.tenant_setting,
                           tenant=runtime.tenant_value(self.tenant, con),
                           guard=runtime.guard_for(con))

    def _vetted_opening(self, con: PooledConnection) -> str:
        """For SQL not built at run time: the tenant alone when only such SQL ran on the
        session since its last full reset (see :func:`tenant_only_opening_sql`)."""
        runtime = self.runtime
        if raw_connection(con)._pga_raw_sql or runtime.check_always:
            return self._opening(con)
        return tenant_only_opening_sql(runtime.settings.tenant_setting,
                                       runtime.tenant_value(self.tenant, con))

    async def run(self, method: Method, sql: str, args: Sequence[Any], name: str | None,
                  *, vetted: bool = False) -> Any:
        runtime = self.runtime
        pool = runtime.pool_for(system=self.system, readonly=self.readonly, primary=self.primary)
        if not pool.session_state_holds or runtime.tenant_set_local or self.timeout is not None:
            options: TransactionOptions = {"readonly": self.readonly, "primary": self.primary,
                                           "timeout": self.timeout,
                                           "acquire_timeout": self.acquire_timeout}
            if self.system:
                options["system"] = True
            else:
                options["tenant"] = self.tenant
            async with TransactionContext(runtime, options, independent=True) as uow:
                return await uow.run(method, sql, args, name, vetted=vetted)
        telemetry = runtime.telemetry
        traced = (None if telemetry is None
                  else telemetry.statement(pool, sql, name, vetted, None, self.tenant))
        try:
            con = await open_session(runtime, pool, self.acquire_timeout,
                                     self._vetted_opening if vetted else self._opening,
                                     None if traced is None else traced.span)
        except BaseException as exc:
            if traced is not None:
                telemetry.end_statement(traced, None, exc)  # type: ignore[union-attr]
            raise
        raw = raw_connection(con)
        try:
            result = await self._timed(raw, method, sql, args, name, vetted, traced)
        except BaseException as exc:
            if isinstance(exc, ConnectionLost) or not isinstance(exc, PgAccessError):
                await pool.discard(con)  # cancelled or lost mid-statement
            else:
                await pool.release(con)
            raise
        await pool.release(con)
        if not self.readonly:
            runtime.note_write()
        return result


__all__ = ["Autocommit"]
