"""``Database``: owns the pools and the loaded queries, and hands out units of work.

    db = Database(Settings.from_env(), sql_dir="sql")
    async with db:
        async with db.transaction(tenant=tenant_id) as uow:
            project = await uow.repo(ProjectRepository).find_by_id(project_id)

The application pool logs in as the app role (subject to RLS). The admin pool, used only by
``db.transaction(system=True, reason=...)``, logs in as the admin role whose access comes
from role-scoped policies - never the app role with RLS switched off, never ``SET ROLE``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .config import Settings
from .errors import ConfigError, ConnectError, ConnectionLost, PoolTimeout, TransientError
from .log import get_logger
from .pool import Pool
from .queries import QuerySet, load_queries
from .replicas import ReplicaSet, last_write_at
from .uow import Isolation, TransactionContext, UnitOfWork, background_commits_done

log = get_logger("database")

T = TypeVar("T")


class Database:
    """The entry point of pgaccess. Open with ``async with Database(...) as db:``."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        dsn: str | None = None,
        admin_dsn: str | None = None,
        sql_dir: str | Path | None = None,
        queries: QuerySet | None = None,
        log_queries: bool = False,
        tenant_set_local: bool = False,
        metrics: Any = None,
        replica_dsns: list[str] | None = None,
        max_replica_lag: float = 5.0,
        read_your_writes: float = 0.0,
    ) -> None:
        settings = settings or Settings.from_env()
        if dsn is not None or admin_dsn is not None:
            settings = settings.replace(
                dsn=dsn or settings.dsn, admin_dsn=admin_dsn or settings.admin_dsn
            )
        if not settings.dsn:
            raise ConfigError("no database: set DATABASE_URL or pass dsn= to Database()")
        self.settings = settings
        self.pool = Pool(settings, settings.dsn, name="app")
        self._admin_pool = (
            Pool(settings.replace(min_size=0), settings.admin_dsn, name="admin")
            if settings.admin_dsn
            else None
        )
        if queries is None and sql_dir is not None:
            queries = load_queries(sql_dir)
        self._queries = queries
        self.log_queries = log_queries
        # SET LOCAL instead of set_config() for the tenant (Citus propagates SET LOCAL).
        self.tenant_set_local = tenant_set_local
        self.metrics = metrics
        self.replicas = (
            ReplicaSet(settings, replica_dsns, max_lag=max_replica_lag) if replica_dsns else None
        )
        self.read_your_writes = read_your_writes
        # Column types of tables, read once from the catalogue (repository bulk inserts).
        self.column_types: dict[str, dict[str, str]] = {}
        # BEGIN strings by (tenant, isolation, readonly, deferrable, timeout): built once.
        self.begin_statements: dict[tuple[Any, ...], str] = {}
        # Recent results of the expensive health checks (see pgaccess.health).
        self.health_cache: dict[str, tuple[float, Any]] = {}

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> Database:
        await self.pool.open()
        if self._admin_pool is not None:
            await self._admin_pool.open()
        if self.replicas is not None:
            await self.replicas.open()
        return self

    async def close(self, timeout: float = 10.0) -> None:
        await background_commits_done()
        await self.pool.close(timeout)
        if self._admin_pool is not None:
            await self._admin_pool.close(timeout)
        if self.replicas is not None:
            await self.replicas.close(timeout)

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- accessors -----------------------------------------------------------------------

    @property
    def queries(self) -> QuerySet:
        if self._queries is None:
            raise ConfigError("no named queries loaded: pass sql_dir= or queries= to Database()")
        return self._queries

    @property
    def admin_pool(self) -> Pool:
        if self._admin_pool is None:
            raise ConfigError(
                "system transactions need an admin connection: set PGACCESS_ADMIN_URL "
                "(a role with role-scoped policies, e.g. pgaccess_admin) or pass admin_dsn="
            )
        return self._admin_pool

    def pool_for(self, *, readonly: bool, primary: bool = False) -> Pool:
        """The primary, or for read-only work a healthy replica (unless ``primary`` or this
        task wrote within ``read_your_writes`` seconds)."""
        if not readonly or primary or self.replicas is None:
            return self.pool
        if self.read_your_writes and time.monotonic() - last_write_at.get() < self.read_your_writes:
            return self.pool
        return self.replicas.pick() or self.pool

    # -- units of work -------------------------------------------------------------------

    def transaction(
        self,
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
    ) -> TransactionContext:
        """A unit of work: ``async with db.transaction(tenant=t) as uow:``.

        The tenant comes from ``tenant=`` or else from ``TenantContext``. ``system=True``
        runs on the admin pool without a tenant (say why in ``reason=``; it is logged).
        ``timeout`` (seconds) is this transaction's statement timeout; 0 disables it.
        ``readonly=True`` goes to a replica when replicas are configured (``primary=True``
        keeps it on the primary). Inside an open unit of work of the same task this becomes
        a savepoint.
        """
        return TransactionContext(
            self, tenant=tenant, system=system, reason=reason, isolation=isolation,
            readonly=readonly, deferrable=deferrable, timeout=timeout,
            acquire_timeout=acquire_timeout, primary=primary,
        )

    async def run_in_transaction(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retries: int = 3,
        tenant: Any = None,
        system: bool = False,
        reason: str | None = None,
        isolation: Isolation = "read_committed",
        readonly: bool = False,
        idempotent: bool = False,
        **kwargs: Any,
    ) -> T:
        """Run ``await fn(uow, *args, **kwargs)`` in a unit of work, re-running the whole of
        it on serialization failure or deadlock (never on other errors), up to ``retries``
        extra times with jittered exponential backoff. ``idempotent=True`` also re-runs it
        when the connection is lost or the pool cannot connect - only safe when running the
        function twice does no harm (its commit may have happened before the loss)."""
        retryable: tuple[type[BaseException], ...] = (TransientError,)
        if idempotent:
            retryable += (ConnectionLost, ConnectError, PoolTimeout)
        result: T | None = None
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(retryable),
            stop=stop_after_attempt(retries + 1),
            wait=wait_exponential_jitter(multiplier=0.01, max=0.5, jitter=0.05),
            before_sleep=_log_retry,
            reraise=True,
        ):
            with attempt:
                async with self.transaction(
                    tenant=tenant, system=system, reason=reason,
                    isolation=isolation, readonly=readonly,
                ) as uow:
                    result = await fn(uow, *args, **kwargs)
        return result  # type: ignore[return-value]

    async def health(self, **options: Any) -> Any:
        """The health report; see :func:`pgaccess.health.check`."""
        from .health import check

        return await check(self, **options)


def _log_retry(state: Any) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "transaction_retry",
        attempt=state.attempt_number,
        error=type(exc).__name__,
        sqlstate=getattr(exc, "sqlstate", None),
    )


def transactional(
    *,
    retries: int = 3,
    isolation: Isolation = "read_committed",
    readonly: bool = False,
    db_attribute: str = "db",
) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Decorate a service method ``async def m(self, uow, ...)``: it runs in a unit of work
    on ``self.db`` (the tenant from ``TenantContext``) and is retried as a whole on
    serialization failures and deadlocks. Callers invoke it as ``await service.m(...)``."""

    def decorate(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
            db: Database = getattr(self, db_attribute)

            async def body(uow: UnitOfWork) -> T:
                return await fn(self, uow, *args, **kwargs)

            return await db.run_in_transaction(
                body, retries=retries, isolation=isolation, readonly=readonly
            )

        return wrapper

    return decorate

