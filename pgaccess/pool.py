"""A tuned asyncpg pool: bounded acquire, retried connect, lifetimes, leak detection, stats.

asyncpg's pool is fast but leaves several production concerns to the caller; this wrapper
adds them without putting anything on the hot path that costs a round trip:

* connect retries with exponential backoff and jitter, only on errors that can heal;
  authentication failures and unknown databases fail at once;
* every connection starts with the pinned settings of :mod:`pgaccess.session`, and every
  checkout starts from a reset session - folded into the unit of work's first round trip,
  or one round trip of its own for raw ``pool.connection()`` use; so release needs no
  reset round trip at all (asyncpg's default one is skipped);
* acquire is always bounded (``PoolTimeout`` carries the stats);
* connections are retired after ``max_lifetime`` (with jitter), from the release hook;
* a connection held longer than ``leak_threshold`` is logged with the place that took it;
* release runs in the caller's task (no Task per release) while keeping waiters first in
  line - asyncpg internals, see :mod:`pgaccess.driver`;
* ``stats()`` in the spirit of psycopg_pool's ``get_stats()``;
* ``close()`` waits for in-flight work up to a deadline, then terminates and says who held
  connections.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, TypeAlias, cast

import asyncpg
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from . import driver
from .config import Settings, redact
from .errors import ConnectError, PoolClosed, PoolTimeout
from .log import get_logger
from .session import is_tampered, opening_sql, pinned_settings, set_local_all

log = get_logger("pool")


class Connection(asyncpg.Connection):
    """asyncpg connection with the bookkeeping the pool needs (retire-at, leak tracking)."""

    __slots__ = ("_pga_acquired_at", "_pga_handed_out", "_pga_raw_sql", "_pga_retire_at",
                 "_pga_session_id", "_pga_stack")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pga_retire_at = float("inf")
        self._pga_acquired_at = 0.0
        self._pga_stack: list[str] | None = None
        # SQL text from outside pgaccess ran here since the last opening (see session).
        self._pga_raw_sql = False
        # Handed to caller code as a driver object (pool.acquire, uow.connection): closed at
        # release, since driver-level state (type codecs, query loggers, listeners, named
        # protocol-level statements) is out of reach of any SQL reset.
        self._pga_handed_out = False
        # What app.session_id() returns here, for the signed tenant context (see _init).
        self._pga_session_id: int | None = None


PooledConnection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[Any]"
"""What ``acquire`` returns: asyncpg's proxy, with every ``asyncpg.Connection`` method."""


raw_connection = cast(Callable[[Any], Connection], driver.raw_connection)
"""The pgaccess Connection behind a pool proxy (None once released)."""


@dataclass
class PoolStats:
    """A snapshot of the pool. Counters are totals since the pool opened."""

    name: str
    size: int
    idle: int
    in_use: int
    waiting: int
    min_size: int
    max_size: int
    acquires: int
    acquire_wait_ms: float
    timeouts: int
    connections_opened: int
    connections_lost: int
    connections_failed: int
    connections_retired: int
    connections_discarded: int
    fast_path: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json_encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def _json_decode(data: bytes) -> Any:
    return json.loads(data.decode())  # str input skips json's encoding detection


def _jsonb_encode(value: Any) -> bytes:
    return b"\x01" + json.dumps(value).encode()  # jsonb's binary format: version 1, then text


def _jsonb_decode(data: bytes) -> Any:
    return json.loads(data[1:].decode())


async def init_json_codecs(con: asyncpg.Connection) -> None:
    """json/jsonb as Python objects, in binary format (so COPY works with them too)."""
    await con.set_type_codec(
        "jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog", format="binary"
    )
    await con.set_type_codec(
        "json", encoder=_json_encode, decoder=_json_decode, schema="pg_catalog", format="binary"
    )


# Failures of a reset that say nothing about the next connection.
_REPLACEABLE = (asyncpg.ConnectionDoesNotExistError, asyncpg.QueryCanceledError,
                asyncpg.InterfaceError, OSError)

# Startup parameters PgBouncer tracks itself; the others it refuses.
_POOLER_PARAMETERS = {"application_name", "TimeZone", "client_encoding", "DateStyle"}


def _pooler_safe(server_settings: Any) -> dict[str, str]:
    return {k: v for k, v in dict(server_settings or {}).items() if k in _POOLER_PARAMETERS}


_TRANSIENT_SQLSTATES = ("57P03", "53300", "53000", "08001", "08004", "08006")


def is_transient_connect_error(exc: BaseException) -> bool:
    """Errors that can heal by waiting: refused/reset connections, starting up, too many."""
    if isinstance(exc, (asyncpg.InvalidPasswordError, asyncpg.InvalidCatalogNameError)):
        return False
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return False
    if isinstance(
        exc,
        (asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError),
    ):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return getattr(exc, "sqlstate", "") in _TRANSIENT_SQLSTATES
    return isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.ConnectionDoesNotExistError))


def connect_error_message(exc: BaseException, dsn: str) -> str:
    where = redact(dsn)
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"authentication failed for {where}: {exc}; check the user and password"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return f"the server refused the role for {where}: {exc}; create the role or grant LOGIN"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{exc} ({where}); create it (createdb) or fix the database name in the DSN"
    return f"could not connect to {where}: {type(exc).__name__}: {exc}"


class Pool:
    """An asyncpg pool with pgaccess's limits. Open with ``await Pool(settings).open()``."""

    def __init__(self, settings: Settings, dsn: str | None = None, *, name: str = "app") -> None:
        dsn = dsn or settings.dsn
        if not dsn:
            raise ConnectError("no DSN: set DATABASE_URL or pass dsn=")
        self.settings = settings
        self.dsn = dsn
        self.name = name
        self._pool: asyncpg.Pool | None = None
        self._closing = False
        self._waiting = 0
        self._acquires = 0
        self._wait_s = 0.0
        self._timeouts = 0
        self._opened = 0
        self._lost = 0
        self._failed = 0
        self._retired = 0
        self._discarded = 0
        self._held: dict[int, Connection] = {}
        self._fast = False
        # False once the server (a transaction pooler such as PgBouncer) refused our
        # startup parameters: the pinned settings then travel with each BEGIN, and
        # autocommit statements take the transaction form (see pgaccess.executor).
        self.session_settings = True
        # True on a Citus coordinator: the tenant then travels as SET LOCAL with
        # citus.propagate_set_commands = 'local', the only form the workers receive.
        self.distributed = False
        self._probed = False
        self._pinned = pinned_settings(settings)
        # Metrics hooks (pgaccess.telemetry, pgaccess.metrics): objects with
        # observe_pool_wait/_use/_connect(pool_name, seconds). Empty: nothing is measured.
        self.observers: list[Any] = []

    # -- opening -----------------------------------------------------------------------

    async def open(self) -> Pool:
        s = self.settings
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=s.min_size,
                max_size=s.max_size,
                max_inactive_connection_lifetime=300.0,
                connect=self._connect,
                init=self._init,
                reset=self._reset,
                connection_class=Connection,
                statement_cache_size=s.statement_cache_size,
                server_settings=self._pinned,
                timeout=s.connect_timeout,
            )
        except ConnectError:
            raise
        except Exception as exc:  # pragma: no cover - create_pool surfaces our own errors
            raise ConnectError(connect_error_message(exc, self.dsn)) from exc
        if s.min_size:
            probe = await self._pool.acquire()
            try:
                await self._probe(probe)
            finally:
                await self._pool.release(probe)
        missing = driver.missing_internals(self._pool)
        self._fast = not missing
        if self._fast:
            driver.install_hand_off(self._pool)
        if missing:
            log.warning("asyncpg_fast_path_disabled", pool=self.name, missing=missing,
                        asyncpg=asyncpg.__version__,
                        hint="this asyncpg is newer than pgaccess knows; releases take asyncpg's "
                             "slower public path")
        log.info("pool_opened", pool=self.name, dsn=redact(self.dsn), max_size=s.max_size)
        return self

    async def _init(self, con: asyncpg.Connection) -> None:
        assert isinstance(con, Connection)
        await init_json_codecs(con)
        if self.settings.tenant_signing_key is not None and self.session_settings:
            try:
                con._pga_session_id = await con.fetchval("SELECT app.session_id()")
            except asyncpg.UndefinedFunctionError as exc:
                raise ConnectError(
                    "a signing key is configured but the database has no app.session_id(): "
                    "apply pgaccess's core schema (pgaccess migrate up)"
                ) from exc

    async def _connect(self, *args: Any, **kwargs: Any) -> Connection:
        budget = self.settings.connect_retry_budget
        attempt = 0
        started = time.perf_counter()
        try:
            async for attempt_state in AsyncRetrying(
                stop=stop_after_delay(budget),
                wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.2),
                retry=retry_if_exception(is_transient_connect_error),
                reraise=False,
            ):
                with attempt_state:
                    attempt += 1
                    if attempt > 1:
                        log.info("connect_retry", pool=self.name, attempt=attempt)
                    try:
                        con: Connection = await self._connect_once(args, kwargs)
                    except Exception as exc:
                        self._failed += 1
                        if not is_transient_connect_error(exc):
                            raise ConnectError(connect_error_message(exc, self.dsn)) from exc
                        raise
        except RetryError as err:
            last = err.last_attempt.exception()
            raise ConnectError(
                f"{connect_error_message(last or err, self.dsn)} (gave up after {attempt} "
                f"attempts in {budget:g}s, PGACCESS_CONNECT_RETRY_BUDGET); is the server up?"
            ) from last
        self._opened += 1
        for observer in self.observers:
            observer.observe_pool_connect(self.name, time.perf_counter() - started)
        lifetime = self.settings.max_lifetime
        if lifetime:
            con._pga_retire_at = time.monotonic() + lifetime * (1 - 0.2 * random.random())
        con.add_termination_listener(self._on_terminated)
        log.debug("connected", pool=self.name, attempts=attempt)
        return con

    async def _connect_once(self, args: Any, kwargs: dict[str, Any]) -> Connection:
        if not self.session_settings:
            kwargs = {**kwargs, "server_settings": _pooler_safe(kwargs.get("server_settings"))}
        else:
            kwargs = {**kwargs, "server_settings": self._pinned}
        try:
            con: Connection = await asyncpg.connect(*args, **kwargs)
        except asyncpg.PostgresError as exc:
            if "unsupported startup parameter" not in str(exc):
                raise
        else:
            return await self._without_role_defaults(con, args, kwargs)
        # PgBouncer (and other poolers) refuse startup parameters they do not track.
        if self.session_settings:
            log.warning("startup_parameters_refused", pool=self.name,
                        hint="behind a transaction pooler: timeouts are set per transaction instead")
        self.session_settings = False
        kwargs = {**kwargs, "server_settings": _pooler_safe(kwargs.get("server_settings"))}
        con = await asyncpg.connect(*args, **kwargs)
        return con

    async def _without_role_defaults(self, con: Connection, args: Any,
                                     kwargs: dict[str, Any]) -> Connection:
        """User-settable settings that the role's own defaults changed (``ALTER ROLE ...
        [IN DATABASE ...] SET``, which the app role may run for itself) are pinned to their
        built-in values as well, and the connection is made again with them: no default the
        app role can set reaches a session. (Tune the app's sessions with
        ``Settings.server_settings`` instead; database-wide defaults are left alone.)"""
        rows = await con.fetch(
            "SELECT name, boot_val FROM pg_catalog.pg_settings WHERE source IN "
            "('user', 'database user') AND context = 'user' AND boot_val IS NOT NULL")
        extra = {r["name"]: r["boot_val"] for r in rows if r["name"] not in self._pinned}
        if not extra:
            return con
        log.warning("role_defaults_overridden", pool=self.name, settings=sorted(extra),
                    hint="ALTER ROLE/DATABASE ... SET defaults apply to the app role; pgaccess "
                         "pins these to their built-in values (health reports them)")
        self._pinned.update(extra)
        await con.close()
        con = await asyncpg.connect(*args, **{**kwargs, "server_settings": self._pinned})
        return con

    def _on_terminated(self, con: Any) -> None:
        if not self._closing and getattr(con, "_pga_retire_at", 0.0) != -1.0:
            self._lost += 1

    @property
    def session_state_holds(self) -> bool:
        """Whether a session-level setting made in one round trip is still there in the
        next: known only once a connection was made, and false behind a transaction pooler
        or on Citus (whose workers receive only SET LOCAL)."""
        return self._probed and self.session_settings and not self.distributed

    @property
    def pinned_local(self) -> str:
        """``SET LOCAL`` of the pinned settings a transaction pooler refused at connect time
        ('' when they are startup parameters): sent with every BEGIN."""
        if self.session_settings:
            return ""
        return set_local_all({k: v for k, v in self._pinned.items() if k not in _POOLER_PARAMETERS})

    async def _reset(self, con: asyncpg.Connection) -> None:
        # asyncpg has already rolled back an open transaction; the session itself is reset
        # by the next user's first round trip (pgaccess.session), so nothing else is sent.
        assert isinstance(con, Connection)
        if time.monotonic() >= con._pga_retire_at:
            self._retired += 1
            con._pga_retire_at = -1.0
            await con.close(timeout=2)

    # -- acquire / release -------------------------------------------------------------

    async def acquire(self, timeout: float | None = None, *, reset: bool = True) -> PooledConnection:
        """Take a connection for raw use, waiting at most ``timeout`` (default: the acquire
        timeout).

        The connection comes from a reset session with no tenant (one round trip); a
        session found tampered with, lost or timing out in that reset is terminated and
        another one taken. ``reset=False`` skips that round trip. The connection is closed
        at release: a driver object in caller code can carry state no SQL reset reaches
        (type codecs, query loggers, listeners, protocol-level prepared statements).
        """
        if reset and self.session_settings:
            return await self._acquire_reset(timeout)
        # Behind a transaction pooler a session reset would reach some server connection,
        # not necessarily the next one: units of work reset in-transaction.
        proxy = await self._take(timeout)
        raw = raw_connection(proxy)
        raw._pga_raw_sql = raw._pga_handed_out = True
        return proxy

    def checkout(self, timeout: float | None = None) -> Coroutine[Any, Any, PooledConnection]:
        """Take a connection whose session the caller resets in its own first round trip
        (units of work and autocommit statements, :mod:`pgaccess.session`)."""
        return self._take(timeout)  # not awaited here: one frame less per resumption

    async def _acquire_reset(self, timeout: float | None,
                             handed_out: bool = True) -> PooledConnection:
        for _ in range(self.settings.max_size + 1):
            proxy = await self._take(timeout)
            raw = raw_connection(proxy)
            try:
                await proxy.execute(opening_sql(
                    begin=None, tenant_setting=self.settings.tenant_setting, tenant="",
                    guard=driver.server_statements(raw) if raw._pga_raw_sql else None))
            except BaseException as exc:
                await self.discard(proxy)
                if is_tampered(exc) or isinstance(exc, _REPLACEABLE):
                    log.warning("opening_failed", pool=self.name, error=type(exc).__name__,
                                action="connection terminated; the next one is tried")
                    continue
                raise
            # Raw use: anything may run, and the driver object is in caller code. pgaccess's
            # own fixed SQL (vetted_connection) leaves the session as the opening made it.
            raw._pga_raw_sql = raw._pga_handed_out = handed_out
            return proxy
        raise ConnectError(
            f"pool {self.name!r}: no connection could be reset (each was tampered with or lost); "
            "they were terminated - retry"
        )

    async def _take(self, timeout: float | None) -> PooledConnection:
        pool = self._pool
        if pool is None or self._closing:
            raise PoolClosed(f"pool {self.name!r} is closed; call await pool.open() first")
        if self._fast and driver.pool_has_idle(pool):
            # A free holder is waiting: taking it never waits, so no wait accounting. This is
            # the hot path. A reconnect (the holder's connection was closed) is bounded by
            # the acquire timeout like a wait.
            loop = asyncio.get_running_loop()
            driver.wait_deadline(pool, loop.time() + (self.settings.acquire_timeout
                                                      if timeout is None else timeout))
            try:
                proxy = await pool.acquire()
            except TimeoutError:
                raise self._timed_out(timeout) from None
            if self.observers:
                for observer in self.observers:
                    observer.observe_pool_wait(self.name, 0.0)
        else:
            proxy = await self._acquire_waiting(pool, timeout)
        self._acquires += 1
        if not self._probed:
            try:
                await self._probe(proxy)
            except BaseException:
                await self.discard(proxy)
                raise
        if self.settings.check_on_acquire:
            proxy = await self._checked(pool, proxy, timeout)
        if self.observers:
            raw_connection(proxy)._pga_acquired_at = time.monotonic()
        if self.settings.leak_threshold:
            con = raw_connection(proxy)
            con._pga_acquired_at = time.monotonic()
            con._pga_stack = traceback.format_stack(limit=12)[:-1]
            self._held[id(proxy)] = con
            asyncio.get_running_loop().call_later(
                self.settings.leak_threshold, self._check_leak, proxy, con._pga_acquired_at
            )
        return proxy

    async def _probe(self, proxy: PooledConnection) -> None:
        """One look at the server, on the first connection: whether it is a transaction
        pooler (connecting told) and whether it is a Citus coordinator decide how units of
        work and autocommit statements talk to it."""
        self.distributed = bool(await proxy.fetchval(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus')"))
        self._probed = True

    async def _acquire_waiting(self, pool: asyncpg.Pool, timeout: float | None) -> PooledConnection:
        timeout = self.settings.acquire_timeout if timeout is None else timeout
        start = time.perf_counter()
        self._waiting += 1
        try:
            # Not acquire(timeout=): asyncpg's wait_for spawns a task. The wait, and a
            # reconnect after it, are bounded by the hand-off queue's one timer, or else by
            # asyncio.timeout.
            loop = asyncio.get_running_loop()
            if driver.wait_deadline(pool, loop.time() + timeout):
                proxy: PooledConnection = await pool.acquire()
            else:
                async with asyncio.timeout(timeout):
                    proxy = await pool.acquire()
        except TimeoutError:
            raise self._timed_out(timeout, waiting=True) from None
        except asyncpg.InterfaceError as exc:
            if self._closing:
                raise PoolClosed(f"pool {self.name!r} was closed while this task waited") from exc
            raise
        finally:
            driver.wait_deadline(pool, None)  # not taken if asyncpg raised before its get()
            self._waiting -= 1
            waited = time.perf_counter() - start
            self._wait_s += waited
        for observer in self.observers:
            observer.observe_pool_wait(self.name, waited)
        return proxy

    def _timed_out(self, timeout: float | None, *, waiting: bool = False) -> PoolTimeout:
        timeout = self.settings.acquire_timeout if timeout is None else timeout
        self._timeouts += 1
        stats = self.stats()
        return PoolTimeout(
            f"no connection from pool {self.name!r} within {timeout:g}s "
            f"(size={stats.size}, in_use={stats.in_use}, waiting={stats.waiting - waiting}, "
            f"max={stats.max_size}); raise PGACCESS_POOL_MAX_SIZE, shorten transactions, "
            "or look for leaked connections (PGACCESS_LEAK_THRESHOLD)",
            stats.as_dict(),
        )

    async def _checked(
        self, pool: asyncpg.Pool, proxy: PooledConnection, timeout: float | None
    ) -> PooledConnection:
        try:
            await proxy.execute("SELECT 1")
            return proxy
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            self._lost += 1
            raw_connection(proxy).terminate()
            await pool.release(proxy)
            return await self._acquire_waiting(pool, timeout)

    def _check_leak(self, proxy: Any, acquired_at: float) -> None:
        con = self._held.get(id(proxy))
        if con is None or con._pga_acquired_at != acquired_at:
            return
        log.warning(
            "connection_leak_suspected",
            pool=self.name,
            held_s=round(time.monotonic() - acquired_at, 3),
            acquired_at="".join(con._pga_stack or []),
        )

    async def release(self, con: Any) -> None:
        if self._held:
            self._held.pop(id(con), None)
        pool = self._pool
        if pool is None:
            return
        raw = raw_connection(con)
        if raw is not None and raw._pga_handed_out and not raw.is_closed():
            self._discarded += 1
            raw.terminate()
        if self.observers and raw is not None and raw._pga_acquired_at:
            used = time.monotonic() - raw._pga_acquired_at
            for observer in self.observers:
                observer.observe_pool_use(self.name, used)
        if (self._fast and raw is not None and raw._pga_retire_at > time.monotonic()
                and driver.release_in_task(con)):  # to the longest waiter, if any (fair)
            return
        await pool.release(con)

    async def discard(self, con: Any) -> None:
        """Terminate a connection that may be mid-operation or tampered with, and give its
        slot back (the pool opens a new connection when it needs one)."""
        self._discarded += 1
        raw = raw_connection(con)
        if raw is not None:
            raw.terminate()
            await self.release(con)

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[PooledConnection]:
        """``async with pool.connection() as con:`` - raw access to a reset session with no
        tenant; whatever it leaves behind is reset by the next user."""
        con = await self.acquire(timeout)
        try:
            yield con
        finally:
            await self.release(con)

    @asynccontextmanager
    async def vetted_connection(self, timeout: float | None = None) -> AsyncIterator[PooledConnection]:
        """A reset session with no tenant for pgaccess's own statements of fixed text (health
        checks, replica lag): unlike :meth:`connection` it goes back to the pool open, and
        the next user's opening stays the light one."""
        con = await (self._acquire_reset(timeout, handed_out=False) if self.session_settings
                     else self._take(timeout))
        try:
            yield con
        finally:
            await self.release(con)

    def has_idle(self) -> bool:
        """True when a free connection is waiting in the pool (cheap; no locking)."""
        return driver.pool_has_idle(self._pool)

    def held_connections(self) -> list[str]:
        """Where each connection still checked out was acquired (needs leak_threshold > 0)."""
        return ["".join(c._pga_stack or ["<unknown>"]) for c in self._held.values()]

    # -- stats and closing -------------------------------------------------------------

    def stats(self) -> PoolStats:
        pool = self._pool
        size = pool.get_size() if pool is not None else 0
        idle = pool.get_idle_size() if pool is not None else 0
        return PoolStats(
            name=self.name,
            size=size,
            idle=idle,
            in_use=size - idle,
            waiting=self._waiting,
            min_size=self.settings.min_size,
            max_size=self.settings.max_size,
            acquires=self._acquires,
            acquire_wait_ms=round(self._wait_s * 1000, 3),
            timeouts=self._timeouts,
            connections_opened=self._opened,
            connections_lost=self._lost,
            connections_failed=self._failed,
            connections_retired=self._retired,
            connections_discarded=self._discarded,
            fast_path=self._fast,
        )

    @property
    def is_open(self) -> bool:
        return self._pool is not None and not self._closing

    async def close(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` for in-flight work, then terminate what is left."""
        pool = self._pool
        if pool is None or self._closing:
            return
        self._closing = True
        try:
            await asyncio.wait_for(pool.close(), timeout)
        except (TimeoutError, asyncio.CancelledError):
            log.warning(
                "pool_close_timeout",
                pool=self.name,
                timeout_s=timeout,
                held_by=self.held_connections() or "(set leak_threshold to see where)",
            )
            pool.terminate()
        finally:
            self._pool = None
        log.info("pool_closed", pool=self.name)

    async def __aenter__(self) -> Pool:
        if self._pool is None:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
