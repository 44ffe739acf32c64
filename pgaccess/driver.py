"""Every use of asyncpg's private internals, in one place.

pgaccess reaches into asyncpg for three things asyncpg has no public API for: the connection
behind a pool proxy, whether the pool has an idle connection (so acquire can skip its timer),
and releasing a clean connection without the Task asyncpg's ``Pool.release`` creates per call.
asyncpg's version is pinned below the next minor release (pyproject.toml), and
:func:`missing_internals` checks at pool open that each attribute is still there: when one is
not, the pool logs ``asyncpg_fast_path_disabled`` and counts it in its stats, and takes
asyncpg's public (slower) paths - never a silent wrong answer.
"""

from __future__ import annotations

import asyncio
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
    (asyncpg.Connection, "_on_release"),
    (asyncpg.Connection, "_protocol"),
    (_protocol.Protocol, "_is_cancelling"),
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


def can_release_in_task(raw: Any) -> bool:
    """Nothing to roll back, reset, close or cancel: the release needs no await that could
    be cut short, so it may run in the caller's task instead of a shielded one."""
    return (not raw.is_closed() and not raw.is_in_transaction()
            and not raw._protocol._is_cancelling())


async def release_in_task(proxy: Any) -> None:
    """asyncpg's release without its ``asyncio.shield`` Task (see can_release_in_task)."""
    proxy._con._on_release()
    await proxy._holder.release(None)


__all__ = [
    "can_release_in_task",
    "missing_internals",
    "pool_has_idle",
    "raw_connection",
    "release_in_task",
    "server_statements",
]
