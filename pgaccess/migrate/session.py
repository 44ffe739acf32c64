"""Connections for the runner and the advisory lock that serialises concurrent runners.

The lock is a session advisory lock held by a dedicated, otherwise idle connection; work
happens on other connections (one per concurrent tenant-schema worker).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from ..errors import MigrationError
from ..pool import connect_error_message
from .state import ensure_bookkeeping

LOCK_KEY = 0x7067616363657373  # "pgaccess"


async def connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise MigrationError(connect_error_message(exc, dsn)) from exc


@asynccontextmanager
async def migration_lock(dsn: str, wait: float) -> AsyncIterator[asyncpg.Connection]:
    """Hold the migration lock; yield a work connection with the bookkeeping tables present."""
    lock_con = await connect(dsn)
    try:
        await _take(lock_con, wait)
        work = await connect(dsn)
        try:
            await ensure_bookkeeping(work)
            yield work
        finally:
            await work.close()
    finally:
        try:
            if not lock_con.is_closed():
                await lock_con.execute("SELECT pg_advisory_unlock_all()")
        finally:
            await lock_con.close()


async def _take(lock_con: asyncpg.Connection, wait: float) -> None:
    # A transaction pooler hands each transaction to any server connection, so a session
    # advisory lock would not hold. PgBouncer gives clients a made-up backend pid: if it
    # differs from the server's own, refuse.
    if lock_con.get_server_pid() != await lock_con.fetchval("SELECT pg_backend_pid()"):
        raise MigrationError(
            "this connection goes through a connection pooler (e.g. PgBouncer in transaction "
            "mode): the migration lock cannot work there. Run migrations over a direct "
            "connection to PostgreSQL"
        )
    deadline = time.monotonic() + wait
    while True:
        try:
            got = await lock_con.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
        except asyncpg.PostgresError as exc:
            raise MigrationError(
                f"could not take the migration lock: {exc}. Migrations need a direct "
                "connection (not through a transaction pooler such as PgBouncer)"
            ) from exc
        if got:
            return
        if time.monotonic() > deadline:
            raise MigrationError(
                f"another migration runner held the lock for over {wait:g}s; wait for it to "
                "finish or find the stuck session in pg_stat_activity"
            )
        await asyncio.sleep(0.2)
