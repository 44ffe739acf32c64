"""``Database``: owns the pools and the loaded queries, and hands out executors.

    db = Database(Settings.from_env(), sql_dir="sql")
    async with db:
        # one statement, two round trips
        project = await db.autocommit(tenant=tenant_id).repo(ProjectRepository).find_by_id(pid)
        # a unit of work: several statements, one transaction
        async with db.transaction(tenant=tenant_id) as uow:
            project = await uow.repo(ProjectRepository).find_by_id(project_id)

The application pool logs in as the app role (subject to RLS). The admin pool, used only by
``db.transaction(system=True, reason=...)``, logs in as the admin role whose access comes
from role-scoped policies - never the app role with RLS switched off, never ``SET ROLE``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Unpack

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .autocommit import Autocommit
from .config import Settings
from .errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    PoolTimeout,
    TransactionError,
    TransientError,
)
from .executor import Runtime
from .log import get_logger
from .pool import Pool
from .queries import QuerySet, load_queries
from .replicas import ReplicaSet
from .tenancy import TenantContext, parse_tenant_id
from .uow import TransactionContext, TransactionOptions, UnitOfWork, background_commits_done

if TYPE_CHECKING:
    from .telemetry import Telemetry

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
        telemetry: Telemetry | None = None,
        replica_dsns: list[str] | None = None,
        max_replica_lag: float = 5.0,
        read_your_writes: float = 0.0,
        check_prepared_statements: Literal["after_raw_sql", "always"] = "after_raw_sql",
    ) -> None:
        """``check_prepared_statements``: when a checkout's opening verifies that the session
        holds no prepared statement made by SQL (see :mod:`pgaccess.session`) - after a
        checkout that ran raw SQL text (default), or on every checkout ("always", for
        databases whose own functions build SQL from data).

        ``metrics``: a :class:`pgaccess.metrics.Metrics` (Prometheus). ``telemetry``: a
        :class:`pgaccess.telemetry.Telemetry` (OpenTelemetry traces and metrics)."""
        settings = settings or Settings.from_env()
        if dsn is not None or admin_dsn is not None:
            settings = settings.replace(
                dsn=dsn or settings.dsn, admin_dsn=admin_dsn or settings.admin_dsn
            )
        if not settings.dsn:
            raise ConfigError("no database: set DATABASE_URL or pass dsn= to Database()")
        self.settings = settings
        if queries is None and sql_dir is not None:
            queries = load_queries(sql_dir)
        self.runtime = Runtime(
            settings,
            Pool(settings, settings.dsn, name="app"),
            admin_pool=(Pool(settings.replace(min_size=0), settings.admin_dsn, name="admin")
                        if settings.admin_dsn else None),
            replicas=(ReplicaSet(settings, replica_dsns, max_lag=max_replica_lag)
                      if replica_dsns else None),
            queries=queries,
            metrics=metrics,
            telemetry=telemetry,
            log_queries=log_queries,
            tenant_set_local=tenant_set_local,
            read_your_writes=read_your_writes,
            check_prepared_statements=check_prepared_statements,
        )
        self._attach_observers()

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> Database:
        runtime = self.runtime
        await runtime.pool.open()
        if runtime.admin_pool is not None:
            await runtime.admin_pool.open()
        if runtime.replicas is not None:
            await runtime.replicas.open()
        return self

    async def close(self, timeout: float = 10.0) -> None:
        runtime = self.runtime
        await background_commits_done()
        await runtime.pool.close(timeout)
        if runtime.admin_pool is not None:
            await runtime.admin_pool.close(timeout)
        if runtime.replicas is not None:
            await runtime.replicas.close(timeout)

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- accessors -----------------------------------------------------------------------

    @property
    def pool(self) -> Pool:
        """The application pool (the app role, subject to RLS)."""
        return self.runtime.pool

    @property
    def queries(self) -> QuerySet:
        return self.runtime.named_queries()

    @property
    def admin_pool(self) -> Pool:
        return self.runtime.pool_for(system=True, readonly=False)

    @property
    def replicas(self) -> ReplicaSet | None:
        return self.runtime.replicas

    @property
    def metrics(self) -> Any:
        return self.runtime.metrics

    @metrics.setter
    def metrics(self, value: Any) -> None:
        self.runtime.metrics = value
        self._attach_observers()

    @property
    def telemetry(self) -> Telemetry | None:
        return self.runtime.telemetry

    def pools(self) -> list[Pool]:
        """The application pool, the admin pool and the replicas' pools that exist."""
        runtime = self.runtime
        return [p for p in (runtime.pool, runtime.admin_pool,
                            *(runtime.replicas.pools if runtime.replicas else ())) if p is not None]

    def _attach_observers(self) -> None:
        """Give every pool the metrics objects that measure checkouts and connects."""
        runtime = self.runtime
        observers: list[Any] = [o for o in (runtime.telemetry, runtime.metrics)
                                if hasattr(o, "observe_pool_wait")]
        for pool in self.pools():
            pool.observers = list(observers)
            for observer in observers:
                observer.watch(pool)

    # -- executors -----------------------------------------------------------------------

    def transaction(self, **options: Unpack[TransactionOptions]) -> TransactionContext:
        """A unit of work: ``async with db.transaction(tenant=t) as uow:``.

        See :class:`~pgaccess.uow.TransactionOptions` for the options. Inside an open unit
        of work of the same task and database this becomes a savepoint.
        """
        return TransactionContext(self.runtime, options)

    def autocommit(
        self,
        *,
        tenant: Any = None,
        system: bool = False,
        reason: str | None = None,
        readonly: bool = False,
        primary: bool = False,
        timeout: float | None = None,
        acquire_timeout: float | None = None,
    ) -> Autocommit:
        """Single statements for ``tenant`` (default ``TenantContext.current()``), each in
        two round trips: ``await db.autocommit(tenant=t).repo(Repo).find_by_id(k)``.

        No tenant means no rows and no writes, as in a unit of work. Use a unit of work
        when several statements must commit or fail together.
        """
        if system and tenant is not None:
            raise TransactionError("a system executor has no tenant; pass one or the other")
        if system:
            log.info("system_autocommit", reason=reason or "(no reason given)")
        resolved = None if system else (
            parse_tenant_id(tenant) if tenant is not None else TenantContext.current())
        return Autocommit(self.runtime, tenant=resolved, system=system, readonly=readonly,
                          primary=primary, timeout=timeout, acquire_timeout=acquire_timeout)

    async def run_in_transaction(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retries: int = 3,
        idempotent: bool = False,
        options: TransactionOptions | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``await fn(uow, *args, **kwargs)`` in a unit of work with ``options``,
        re-running the whole of it on serialization failure or deadlock (never on other
        errors), up to ``retries`` extra times with jittered exponential backoff.
        ``idempotent=True`` also re-runs it when the connection is lost or the pool cannot
        connect - only safe when running the function twice does no harm (its commit may
        have happened before the loss)."""
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
                context = TransactionContext(self.runtime, options or {})
                context.retries = attempt.retry_state.attempt_number - 1
                async with context as uow:
                    result = await fn(uow, *args, **kwargs)
        return result  # type: ignore[return-value]


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
    idempotent: bool = False,
    db_attribute: str = "db",
    **options: Unpack[TransactionOptions],
) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Decorate a service method ``async def m(self, uow, ...)``: it runs in a unit of work
    on ``self.db`` with ``options`` (the tenant from ``TenantContext`` unless given) and is
    retried as a whole on serialization failures and deadlocks. Callers invoke it as
    ``await service.m(...)``."""

    def decorate(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
            db: Database = getattr(self, db_attribute)

            async def body(uow: UnitOfWork) -> T:
                return await fn(self, uow, *args, **kwargs)

            return await db.run_in_transaction(
                body, retries=retries, idempotent=idempotent, options=options
            )

        return wrapper

    return decorate
