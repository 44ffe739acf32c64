"""Attacks on two shortcuts: the tenant-only opening of vetted autocommit statements and
the fair hand-off pool queue. Real PostgreSQL, no mocks.

Written by an independent review as attacks; each one broke something when it was written
(an aborted COMMIT or a raw ROLLBACK undoing the opening's reset, a connection lost to a
cancelled COMMIT, a reconnect outside the acquire deadline, a raw asyncpg error on close)
and now shows the defence holding.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from test_attacks import owner

from pgaccess import Database, PgAccessError, QueryError, Settings
from pgaccess.config import with_user
from pgaccess.errors import ConnectError, PoolTimeout, TransactionError
from pgaccess.queries import load_queries_from_str

QUERIES = """
-- name: pid()$
SELECT pg_backend_pid();
-- name: search_path()$
SELECT current_setting('search_path');
-- name: temp_objects()$
SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())
     + (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema());
-- name: visible_projects()$
SELECT count(*) FROM projects;
-- name: planted_projects()$
SELECT count(*) FROM projects WHERE name LIKE 'planted-%';
-- name: emails()
SELECT email FROM users ORDER BY email;
-- name: add_project(name)!
INSERT INTO projects (tenant_id, name) VALUES (app.current_tenant_id(), :name);
-- name: draw(seq)$
SELECT nextval(:seq::regclass);
-- name: set_work_mem()$
SELECT set_config('work_mem', '7MB', false);
"""


async def owner_exec(dsn: str, sql: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(sql)
    finally:
        await con.close()


def app_db(db_dsn: str, key: str | None = None, **settings: Any) -> Database:
    base: dict[str, Any] = {"min_size": 1, "max_size": 1, "tenant_signing_key": key}
    base.update(settings)
    return Database(Settings(**base), dsn=with_user(db_dsn, "pgaccess_app"),
                    queries=load_queries_from_str(QUERIES))


@pytest.fixture
async def db1(db_dsn: str) -> AsyncIterator[Database]:
    await owner_exec(db_dsn, "CREATE SEQUENCE public.pga_seq; "
                        "GRANT USAGE ON SEQUENCE public.pga_seq TO pgaccess_app")
    database = app_db(db_dsn)
    async with database:
        yield database


@pytest.fixture
async def signed1(db_dsn: str) -> AsyncIterator[Database]:
    key = secrets.token_hex(32)
    await owner(db_dsn, "SELECT app.enable_signed_tenant_context(decode($1, 'hex'))", key)
    await owner_exec(db_dsn, "CREATE SEQUENCE public.pga_seq; "
                        "GRANT USAGE ON SEQUENCE public.pga_seq TO pgaccess_app")
    database = app_db(db_dsn, key)
    async with database:
        yield database


# A shadow of `projects` and a spy view over `users` in pg_temp, searched first.
PLANT = [
    "SET search_path = pg_temp, public",
    "CREATE TABLE pg_temp.projects (LIKE public.projects INCLUDING DEFAULTS)",
    "INSERT INTO pg_temp.projects (tenant_id, name) "
    "SELECT gen_random_uuid(), 'planted-' || g FROM generate_series(1, 5) g",
    "CREATE TABLE pg_temp.loot (tenant text, email text)",
    "CREATE FUNCTION pg_temp.spy(t text, e text) RETURNS boolean LANGUAGE sql AS "
    "$$ INSERT INTO pg_temp.loot VALUES (t, e); SELECT true $$",
    "CREATE VIEW pg_temp.users AS SELECT * FROM public.users u "
    "WHERE pg_temp.spy(current_setting('app.tenant_id', true), u.email)",
]


async def swallowed_error_unit_of_work(db: Database, tenant: uuid.UUID) -> None:
    """Vetted SQL only; an expected error is caught (a common 'ignore if it fails' pattern)
    and the block ends normally: pgaccess sends COMMIT, which PostgreSQL answers with
    ROLLBACK for an aborted transaction. pgaccess says so (TransactionError), and the
    rollback cannot undo the opening's reset, which was committed before the BEGIN."""
    with pytest.raises(TransactionError, match="rolled back, not committed"):
        async with db.transaction(tenant=tenant) as uow:
            with contextlib.suppress(QueryError):
                await uow.q.draw(seq="no_such_sequence")


# -- 1. tenant-only opening --------------------------------------------------------------


async def test_commit_of_an_aborted_unit_of_work_raises_and_revives_nothing(
    db1: Database, db_dsn: str, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    a, b = tenant, other_tenant
    await db1.autocommit(tenant=a).execute("; ".join(PLANT))
    await swallowed_error_unit_of_work(db1, a)
    victim = db1.autocommit(tenant=b).q
    seen = {"search_path": await victim.search_path(),
            "planted": await victim.planted_projects()}
    await victim.add_project(name="b-marker")
    stored = (await owner(db_dsn, "SELECT count(*) FROM public.projects "
                                  "WHERE name = 'b-marker'"))[0][0]
    assert seen == {"search_path": "public, pg_temp", "planted": 0}
    assert stored == 1  # B's write reached B's table, not A's temporary one


async def test_spy_view_cannot_reach_the_victims_vetted_statement(
    db1: Database, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    a, b = tenant, other_tenant
    async with db1.transaction(tenant=b) as uow:
        b_emails = {r["email"] for r in await uow.q.emails()}
    assert b_emails
    await db1.autocommit(tenant=a).execute("; ".join(PLANT))
    await swallowed_error_unit_of_work(db1, a)
    seen_by_b = {r["email"] for r in await db1.autocommit(tenant=b).q.emails()}
    assert seen_by_b == b_emails
    with pytest.raises(TransactionError, match="ended inside the block"):
        async with db1.transaction(tenant=a) as uow:
            await uow.execute("ROLLBACK")
            try:
                stolen = {r["email"] for r in await uow.fetch("SELECT email FROM pg_temp.loot")}
            except PgAccessError:
                stolen = set()
    assert not stolen & b_emails


async def test_raw_sql_after_aborted_unit_of_work_sees_no_hostile_state(
    db1: Database, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    """The same aborted-commit sequence, but the victim's statement is raw SQL: the flag
    was set by the attacker's raw SQL only for one checkout, yet the raw victim statement
    forces the full reset itself - holds."""
    await db1.autocommit(tenant=tenant).execute("; ".join(PLANT))
    await swallowed_error_unit_of_work(db1, tenant)
    b = db1.autocommit(tenant=other_tenant)
    assert await b.fetchval("SELECT current_setting('search_path')") == "public, pg_temp"
    assert await b.fetchval("SELECT count(*) FROM projects WHERE name LIKE 'planted-%'") == 0


async def test_vetted_autocommit_after_rolled_back_or_raw_checkouts_is_pristine(
    db1: Database, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    """Raw pool connection, uow.connection, a savepoint that rolls back, a failed raw
    autocommit statement, a cancelled raw statement: each followed by B's vetted autocommit
    statements, which must not see A's shadow table or search_path - holds."""
    plant = "; ".join(PLANT)

    async def via_pool() -> None:
        async with db1.pool.connection() as con:
            await con.execute(plant)

    async def via_connection() -> None:
        async with db1.transaction(tenant=tenant) as uow:
            await uow.connection.execute(plant + "; COMMIT")

    async def via_savepoint() -> None:
        async with db1.transaction(tenant=tenant) as uow:
            await uow.execute("COMMIT")  # out of the unit of work's transaction
            await uow.execute(plant)
            try:
                async with uow.savepoint():
                    await uow.q.draw(seq="no_such_sequence")
            except PgAccessError:
                pass

    async def via_failed_autocommit() -> None:
        with contextlib.suppress(PgAccessError):
            await db1.autocommit(tenant=tenant).execute(plant + "; SELECT 1/0")
        await db1.autocommit(tenant=tenant).execute(plant)

    async def via_cancelled() -> None:
        task = asyncio.ensure_future(db1.autocommit(tenant=tenant).execute(
            plant + "; SELECT pg_sleep(5)"))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    for attack in (via_pool, via_connection, via_savepoint, via_failed_autocommit,
                   via_cancelled):
        with contextlib.suppress(PgAccessError):
            await attack()
        q = db1.autocommit(tenant=other_tenant).q
        assert (await q.search_path(), await q.planted_projects(), await q.temp_objects()) == \
            ("public, pg_temp", 0, 0), attack.__name__


async def test_raw_rollback_in_a_unit_of_work_cannot_undo_its_reset(
    signed1: Database, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    a, b = tenant, other_tenant
    victim = signed1.autocommit(tenant=b)
    drawn = await victim.q.draw(seq="public.pga_seq")
    await victim.q.set_work_mem()
    with pytest.raises(TransactionError, match="ended inside the block"):
        async with signed1.transaction(tenant=a) as uow:
            await uow.execute("ROLLBACK")
            work_mem = await uow.fetchval("SELECT current_setting('work_mem')")
            try:
                last = await uow.fetchval("SELECT lastval()")
            except PgAccessError:
                last = None
            try:
                b_rows = await uow.fetchval("SELECT count(*) FROM projects WHERE tenant_id = $1", b)
            except PgAccessError:
                b_rows = 0
    assert (work_mem, last, b_rows) == ("4MB", None, 0), (drawn, work_mem, last, b_rows)


async def test_raw_rollback_cannot_revive_the_victims_temp_table(
    db1: Database, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    async with db1.transaction(tenant=other_tenant) as uow:
        await uow.execute("CREATE TEMP TABLE b_scratch AS SELECT tenant_id, name FROM projects")
    with pytest.raises(TransactionError, match="ended inside the block"):
        async with db1.transaction(tenant=tenant) as uow:
            await uow.execute("ROLLBACK")
            try:
                stolen = await uow.fetchval("SELECT count(*) FROM pg_temp.b_scratch WHERE tenant_id = $1",
                                            other_tenant)
            except PgAccessError:
                stolen = 0
    assert stolen == 0


# -- 2. the fair hand-off pool queue ------------------------------------------------------


@pytest.fixture
async def slow_commit(db_dsn: str) -> str:
    """A table whose COMMIT takes 0.5 s (a deferred constraint trigger sleeps)."""
    await owner_exec(db_dsn, """
        CREATE TABLE public.slow_commit (x int);
        CREATE FUNCTION public.slow_commit_fn() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON public.slow_commit
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.slow_commit_fn();
        GRANT INSERT ON public.slow_commit TO pgaccess_app;
    """)
    return db_dsn


async def test_cancel_during_commit_gives_the_connection_back(slow_commit: str,
                                                         tenant: uuid.UUID) -> None:
    db = app_db(slow_commit, acquire_timeout=1.0)
    async with db:
        async def work() -> None:
            async with db.transaction(tenant=tenant) as uow:
                await uow.execute("INSERT INTO public.slow_commit VALUES (1)")

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await work()
        await asyncio.sleep(0.6)
        got = None
        with contextlib.suppress(PoolTimeout):
            got = await db.autocommit(tenant=tenant, acquire_timeout=0.5).q.pid()
        stats = db.pool.stats()
        await db.close(timeout=0.5)
    assert got is not None, stats


async def test_waiters_end_at_their_own_deadlines(db_dsn: str) -> None:
    """Timeouts of 0.6, 0.2, 0.4 s queued in that order, then the earliest cancelled and a
    0.1 s one added: each ends with PoolTimeout at its own deadline, and the connection is
    then free - holds."""
    db = app_db(db_dsn)
    async with db:
        held = await db.pool.acquire()
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def wait(timeout: float) -> float:
            with pytest.raises(PoolTimeout):
                await db.pool.acquire(timeout)
            return loop.time() - start

        long, short, mid = (asyncio.ensure_future(wait(t)) for t in (0.6, 0.2, 0.4))
        await asyncio.sleep(0.05)
        short.cancel()
        late = asyncio.ensure_future(wait(0.1))  # deadline 0.15: earlier than the timer's
        ends = await asyncio.gather(long, mid, late)
        assert short.cancelled()
        for end, want in zip(ends, (0.6, 0.4, 0.15), strict=True):
            assert want - 0.01 <= end <= want + 0.1, ends
        await db.pool.release(held)
        async with db.pool.connection(timeout=0.2) as con:
            assert await con.fetchval("SELECT 1") == 1


async def test_release_and_deadline_in_the_same_tick(db_dsn: str) -> None:
    """The holder's release and the waiters' deadline (and a cancellation) fall in the same
    loop iteration, many times over: the connection is never lost nor given to two tasks
    - holds."""
    db = app_db(db_dsn, max_size=2)
    async with db:
        loop = asyncio.get_running_loop()
        owners: dict[int, int] = {}
        errors: list[BaseException] = []

        async def take(i: int, timeout: float) -> None:
            try:
                con = await db.pool.acquire(timeout)
            except PoolTimeout:
                return
            except BaseException as exc:  # CancelledError included
                errors.append(exc)
                raise
            key = id(con._con)
            assert key not in owners, "one connection handed to two tasks"
            owners[key] = i
            await asyncio.sleep(0)
            del owners[key]
            await db.pool.release(con)

        for round_ in range(60):
            held = [await db.pool.acquire(), await db.pool.acquire()]
            timeout = 0.01
            tasks = [asyncio.ensure_future(take(i, timeout)) for i in range(4)]
            await asyncio.sleep(0)
            when = loop.time() + timeout
            loop.call_at(when, lambda: None)
            await asyncio.sleep(max(0.0, when - loop.time()))
            if round_ % 3 == 0:
                tasks[round_ % 4].cancel()
            for con in held:
                await db.pool.release(con) if round_ % 2 else await db.pool.discard(con)
            await asyncio.gather(*tasks, return_exceptions=True)
        assert not [e for e in errors if not isinstance(e, asyncio.CancelledError)]
        both = [await db.pool.acquire(0.5), await db.pool.acquire(0.5)]
        assert len({id(c._con) for c in both}) == 2
        for con in both:
            await db.pool.release(con)
        assert db.pool.stats().idle == db.pool.stats().size


async def test_waiter_handed_a_lost_connection_times_out_on_time(db_dsn: str) -> None:
    db = app_db(db_dsn, connect_retry_budget=2.0, connect_timeout=1.0)
    async with db:
        held = await db.pool.acquire()
        pid = await held.fetchval("SELECT pg_backend_pid()")
        loop = asyncio.get_running_loop()
        start = loop.time()
        waiter = asyncio.ensure_future(db.pool.acquire(0.3))
        await asyncio.sleep(0.05)
        await owner_exec(db_dsn, "ALTER ROLE pgaccess_app CONNECTION LIMIT 0")
        try:
            await owner(db_dsn, "SELECT pg_terminate_backend($1)", pid)
            await db.pool.discard(held)
            error: BaseException | None = None
            try:
                con = await waiter
                await db.pool.release(con)
            except (PoolTimeout, ConnectError) as exc:
                error = exc
            took = loop.time() - start
        finally:
            await owner_exec(db_dsn, "ALTER ROLE pgaccess_app CONNECTION LIMIT -1")
    assert isinstance(error, PoolTimeout) and took < 0.6, (type(error).__name__, took)


async def test_pool_close_while_tasks_wait(db_dsn: str, tenant: uuid.UUID) -> None:
    """Every task ends within the close timeout with its work done or a PgAccessError:
    none hangs, none gets a raw asyncpg error, the close returns."""
    db = app_db(db_dsn, acquire_timeout=3.0)
    await db.open()
    results: list[Any] = []

    async def holder() -> None:
        async with db.transaction(tenant=tenant) as uow:
            await uow.q.pid()
            await asyncio.sleep(0.2)

    async def waiter() -> None:
        try:
            results.append(await db.autocommit(tenant=tenant).q.pid())
        except PgAccessError as exc:
            results.append(type(exc).__name__)

    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = [asyncio.ensure_future(holder()), asyncio.ensure_future(waiter()),
             asyncio.ensure_future(waiter())]
    await asyncio.sleep(0.05)
    await db.close(timeout=1.0)
    done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 4)
    assert loop.time() - start < 3.5
    assert all(r is None for r in done), done
    assert len(results) == 2, results
