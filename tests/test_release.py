"""The cheap release is safe: nothing a unit of work leaves on a session reaches the next user.

Units of work release without asyncpg's RESET round trip only when they ran nothing that can
leave session state. Each case below leaves such state - through the raw connection or
through a statement the classifier flags - and the next user of the *same* connection
(pool of one) must not see it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pgaccess import Database, QueryError
from pgaccess.testing import Project, open_test_database


@pytest.fixture
async def db1(db_dsn: str) -> AsyncIterator[Database]:
    database = open_test_database(db_dsn, Project(Path("migrations"), Path("sql"), None), max_size=1)
    async with database:
        yield database


async def backend(db: Database) -> int:
    async with db.transaction() as uow:
        return int(await uow.fetchval("SELECT pg_backend_pid()"))


async def test_session_setting_via_raw_connection(db1: Database) -> None:
    pid = await backend(db1)
    async with db1.transaction() as uow:
        await uow.connection.execute("SET work_mem = '77MB'")
    async with db1.transaction() as uow:
        assert await uow.fetchval("SELECT pg_backend_pid()") == pid
        assert await uow.fetchval("SHOW work_mem") != "77MB"


async def test_session_setting_via_statement(db1: Database) -> None:
    async with db1.transaction() as uow:
        await uow.execute("SET search_path = pg_catalog")
        await uow.execute("SELECT set_config('app.tenant_id', $1, false)", str(uuid.uuid4()))
    async with db1.transaction() as uow:
        assert "public" in await uow.fetchval("SHOW search_path")
        assert await uow.fetchval("SELECT current_setting('app.tenant_id', true)") in ("", None)
        assert await uow.fetchval("SELECT count(*) FROM projects") == 0


async def test_advisory_lock(db1: Database, db_dsn: str) -> None:
    import asyncpg

    async with db1.transaction() as uow:
        assert await uow.fetchval("SELECT pg_advisory_lock(4242) IS NOT NULL")
    other = await asyncpg.connect(db_dsn)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock(4242)") is True
    finally:
        await other.close()


async def test_listen(db1: Database) -> None:
    async with db1.transaction() as uow:
        await uow.execute("LISTEN some_channel")
    async with db1.transaction() as uow:
        assert await uow.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0


async def test_temp_table(db1: Database) -> None:
    async with db1.transaction() as uow:
        await uow.execute("CREATE TEMP TABLE leftover (x int)")
    async with db1.transaction() as uow:
        assert await uow.fetchval("SELECT to_regclass('pg_temp.leftover')") is None


async def test_held_cursor(db1: Database) -> None:
    async with db1.transaction() as uow:
        await uow.execute("DECLARE c CURSOR WITH HOLD FOR SELECT 1")
    async with db1.transaction() as uow:
        assert await uow.fetchval("SELECT count(*) FROM pg_cursors WHERE name = 'c'") == 0


async def test_open_transaction_via_raw_commit(db1: Database, tenant: uuid.UUID) -> None:
    with pytest.raises(QueryError):
        async with db1.transaction(tenant=tenant) as uow:
            await uow.connection.execute("COMMIT; BEGIN")
            await uow.execute("SELECT 1/0")
    async with db1.transaction() as uow:
        assert await uow.fetchval("SELECT count(*) FROM projects") == 0


async def test_clean_units_of_work_skip_the_reset(db1: Database, tenant: uuid.UUID) -> None:
    before = db1.pool.stats().full_resets
    for _ in range(5):
        async with db1.transaction(tenant=tenant) as uow:
            await uow.fetch("SELECT * FROM projects LIMIT 5")
            await uow.execute("SET LOCAL work_mem = '8MB'")
    assert db1.pool.stats().full_resets == before
    async with db1.transaction() as uow:
        await uow.execute("LISTEN x")
    assert db1.pool.stats().full_resets == before + 1
