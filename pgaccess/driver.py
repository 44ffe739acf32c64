"""Every use of asyncpg's private internals, in one place.

pgaccess reaches into asyncpg for four things asyncpg has no public API for: the connection
behind a pool proxy, whether the pool has an idle connection (so acquire can skip its timer),
releasing a clean connection without the Task asyncpg's ``Pool.release`` creates per call,
and handing a released connection to the task that waited longest (a fair pool).
asyncpg's version is pinned below the next minor release (pyproject.toml), and
:func:`missing_internals` checks at pool open that each attribute is still there: when one is
not, the pool logs ``asyncpg_fast_path_disabled`` and counts it in its stats, and takes
asyncpg's public (slower) paths - never a silent wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionHolder, PoolConnectionProxy
from asyncpg.protocol import protocol as _protocol

# (owner, attribute) pairs the fast paths use.
_INTERNALS: tuple[tuple[Any, str], ...] = (
    (PoolConnectionProxy, "_con"),
    (PoolConnectionProxy, "_holder"),
    (PoolConnectionHolder, "release"),
    (PoolConnectionHolder, "_release"),
    (PoolConnectionHolder, "_setup_inactive_callback"),
    (PoolConnectionHolder, "_max_queries"),
    (PoolConnectionHolder, "_generation"),
    (PoolConnectionHolder, "_timeout"),
    (PoolConnectionHolder, "_pool"),
    (asyncpg.Pool, "_generation"),
    (asyncpg.Connection, "_top_xact"),
    (asyncpg.Connection, "_listeners"),
    (asyncpg.Connection, "_log_listeners"),
    (PoolConnectionHolder, "is_connected"),
    (PoolConnectionHolder, "connect"),
    (PoolConnectionHolder, "_con"),
    (asyncpg.Connection, "_on_release"),
    (asyncpg.Connection, "_protocol"),
    (_protocol.Protocol, "_is_cancelling"),
    (_protocol.Protocol, "queries_count"),
    (_protocol.Protocol, "_wait_for_cancellation"),
    (asyncpg.Connection, "_stmt_cache"),
    (asyncpg.Connection, "_stmts_to_close"),
)


def _has(owner: Any, name: str) -> bool:
    return hasattr(owner, name) or name in getattr(owner, "__slots__", ())


def missing_internals(pool: asyncpg.Pool) -> list[str]:
    """The private asyncpg attributes the fast paths need and this asyncpg lacks."""
    missing = [f"{owner.__name__}.{name}" for owner, name in _INTERNALS if not _has(owner, name)]
    if not isinstance(getattr(pool, "_queue", None), asyncio.Queue):
        missing.append("Pool._queue")
    return missing


raw_connection: Callable[[Any], Any] = attrgetter("_con")
"""The connection behind a pool proxy (None once the proxy was released); a C-level
getter, as it runs several times per statement."""


def server_statements(raw: Any) -> int:
    """How many named prepared statements the driver believes the session holds: those in
    its statement cache and those it has yet to close."""
    return len(raw._stmt_cache) + len(raw._stmts_to_close)


def pool_has_idle(pool: asyncpg.Pool | None) -> bool:
    """True when a free connection waits in asyncpg's queue (no locking, no await)."""
    queue = getattr(pool, "_queue", None)
    return queue is not None and not queue.empty()


def release_in_task(proxy: Any) -> bool:
    """asyncpg's release of a clean connection, done in the caller's task and without
    awaiting: no ``asyncio.shield`` Task and none of the release coroutine's frames and
    timeout scope. The steps are asyncpg's own (``PoolConnectionHolder.release`` with
    nothing to roll back): forget listeners, free the holder (which hands it to the longest
    waiter), re-arm the inactivity timer. False, with nothing done, when asyncpg must
    release it itself: the connection is closed, in a transaction, being cancelled or has
    asyncpg's transaction object set (something to await, which cancellation could cut
    short), it reached ``max_queries``, or the pool's connections were expired."""
    holder, con = proxy._holder, proxy._con
    if (con is None or con.is_closed() or con.is_in_transaction()
            or con._protocol._is_cancelling()
            or con._top_xact is not None or con._protocol.queries_count >= holder._max_queries
            or holder._generation != holder._pool._generation):
        return False
    con._on_release()
    con._listeners.clear()
    con._log_listeners.clear()
    holder._timeout = None
    holder._release()
    holder._setup_inactive_callback()
    return True


async def cancel_then_close(raw: Any, seconds: float) -> bool:
    """Close a connection whose statement overran the client's timeout - after the cancel
    request asyncpg sent at the timeout has reached the server and ended the statement
    (waiting at most ``seconds``), since closing first would abort that request and leave a
    busy backend running with its locks. True when the statement ended in time."""
    protocol = raw._protocol
    ended = False
    if protocol is not None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(seconds):
                await protocol._wait_for_cancellation()
                ended = True
    raw.terminate()
    return ended


class _HandOff:
    """Mixed into the class of asyncpg's idle-holder queue: a holder put back while tasks
    wait goes straight to the one that waited longest, so idle holders sit in the queue
    only while nobody waits. asyncio.Queue would instead wake that task and leave the
    holder in the queue, where a task that released and at once acquires again takes it
    first - under saturation the waiters starve into PoolTimeout.

    Waits are bounded here too (:func:`wait_deadline`): one timer for the whole queue, set
    for the earliest deadline, instead of a timer per wait (``asyncio.timeout``), which
    under saturation - every acquire waits - cost several microseconds per checkout."""

    _getters: Any
    _deadline: float | None = None  # for the next get() (see wait_deadline)
    _deadlines: dict[Any, float]
    _timer: asyncio.TimerHandle | None = None

    def put_nowait(self, item: Any) -> None:
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(item)
                return
        super().put_nowait(item)  # type: ignore[misc]

    async def get(self) -> Any:
        deadline, self._deadline = self._deadline, None
        if not self.empty():  # type: ignore[attr-defined]  # holders wait only when no task does
            holder = self.get_nowait()  # type: ignore[attr-defined]
        else:
            holder = await self._wait(deadline)
        if deadline is not None and not holder.is_connected():
            await self._reconnect(holder, deadline)
        return holder

    async def _reconnect(self, holder: Any, deadline: float) -> None:
        """Connect a holder whose connection was closed, within the acquire's deadline
        (asyncpg would do it right after, unbounded)."""
        try:
            async with asyncio.timeout_at(deadline):
                holder._con = None
                await holder.connect()
        except BaseException:
            self.put_nowait(holder)  # another task may try; the slot is not lost
            raise

    async def _wait(self, deadline: float | None) -> Any:
        loop = asyncio.get_running_loop()
        getter = loop.create_future()
        self._getters.append(getter)
        if deadline is not None:
            self._deadlines[getter] = deadline
            if self._timer is None or deadline < self._timer.when():
                self._arm(loop, deadline)
        try:
            return await getter
        except BaseException:
            if getter.done() and not getter.cancelled() and getter.exception() is None:
                self.put_nowait(getter.result())  # handed one, then cancelled: pass it on
            else:
                getter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
            raise
        finally:
            if deadline is not None:
                del self._deadlines[getter]

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the waits whose deadline passed; set the timer for the next one."""
        self._timer = None
        now, earliest = loop.time(), None
        for getter, deadline in self._deadlines.items():
            if getter.done():
                continue
            if deadline <= now:
                getter.set_exception(TimeoutError())
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self._arm(loop, earliest)


def wait_deadline(pool: Any, deadline: float | None) -> bool:
    """Bound the wait, and a reconnect after it, of the ``pool.acquire()`` that follows at
    once (asyncpg takes from its queue before its first await): TimeoutError at
    ``deadline`` (loop time). None withdraws a deadline no get() took. False when the pool
    has no hand-off queue: bound the wait another way."""
    queue = pool._queue
    if not isinstance(queue, _HandOff):
        return False
    queue._deadline = deadline
    return True


def install_hand_off(pool: Any) -> None:
    """Replace the open pool's idle-holder queue with a hand-off one of the same class
    (asyncpg's own ordering of idle holders is kept), holding the same holders."""
    queue = pool._queue
    fair = type(f"HandOff{type(queue).__name__}", (_HandOff, type(queue)), {})(
        maxsize=queue.maxsize)
    fair._deadlines = {}
    fair._queue.extend(queue._queue)  # the same holders in the same order; nobody waits yet
    queue._queue.clear()
    pool._queue = fair


__all__ = [
    "cancel_then_close",
    "install_hand_off",
    "missing_internals",
    "pool_has_idle",
    "raw_connection",
    "release_in_task",
    "server_statements",
    "wait_deadline",
]
