"""Session hygiene: nothing a unit of work leaves on a pooled session reaches the next user.

Every use of a connection starts with a reset in its first round trip (pgaccess.session).
Each test below leaves state on a session - through statements in any spelling, through the
raw connection, inside functions and DO blocks - and the next unit of work on the *same*
backend (pool of one) must find the session exactly as a fresh one: the same settings, no
temporary objects, only the driver's own prepared statements with their original text, no
cursors, no listeners, no advisory locks.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgaccess import Database, PgAccessError, QueryError
from pgaccess.executor import Executor
from pgaccess.testing import Project, open_test_database


@pytest.fixture
async def db1(db_dsn: str) -> AsyncIterator[Database]:
    database = open_test_database(db_dsn, Project(Path("migrations"), Path("sql"), None), max_size=1)
    async with database:
        yield database


async def fingerprint(ex: Executor) -> dict[str, Any]:
    """What a session carries, as seen from inside the next unit of work."""
    return {
        "pid": await ex.fetchval("SELECT pg_backend_pid()"),
        "settings": [tuple(r) for r in await ex.fetch(
            "SELECT name, setting FROM pg_settings WHERE source NOT IN ('default', 'override') "
            "AND name NOT IN ('transaction_isolation', 'transaction_read_only', "
            "'transaction_deferrable') ORDER BY name")],
        "user": await ex.fetchval("SELECT current_user || '/' || session_user"),
        "temp_objects": await ex.fetchval(
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) + "
            "(SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema()) + "
            "(SELECT count(*) FROM pg_type WHERE typnamespace = pg_my_temp_schema())"),
        "sql_prepared": await ex.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE from_sql"),
        "cursors": await ex.fetchval("SELECT count(*) FROM pg_cursors WHERE name <> ''"),
        "advisory_locks": await ex.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"),
        "tenant": await ex.fetchval("SELECT current_setting('app.tenant_id', true)"),
        "visible_projects": await ex.fetchval("SELECT count(*) FROM projects"),
    }


def assert_pristine(db: Database, clean: dict[str, Any], now: dict[str, Any]) -> None:
    """``now`` is what ``clean`` was, on the same backend - or on a new one when pgaccess
    terminated a tampered session (a prepared statement made by SQL)."""
    clean, now = dict(clean), dict(now)
    same_backend = clean.pop("pid") == now.pop("pid")
    assert same_backend or db.pool.stats().connections_discarded > 0
    assert now == clean


async def baseline(db: Database) -> dict[str, Any]:
    async with db.transaction() as uow:
        seen = await fingerprint(uow)
    # PostgreSQL applies UNLISTEN at commit: a LISTEN left behind is cancelled by the next
    # unit of work's opening and gone once that commits. (A notification arriving meanwhile
    # reaches the pgaccess client, which has no listener and drops it.)
    async with db.transaction() as uow:
        seen["listening"] = await uow.fetchval("SELECT count(*) FROM pg_listening_channels()")
    return seen


# Session-altering statements, each in several spellings: plain, quoted identifiers,
# comments in odd places, U& escapes, inside SQL and PL/pgSQL functions and DO blocks.
HOSTILE = [
    "SET search_path = pg_catalog",
    "/**/SET work_mem = '77MB'",
    "SELECT \"set_config\"('search_path', 'pg_catalog', false)",
    "SELECT set_config/**/('statement_timeout', '1', false)",
    "SELECT pg_catalog.\"set_config\"('app.tenant_id', '{other}', false)",
    "SELECT set_config(U&'app.tenant\\005fid', '{other}', false)",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "SET row_security = off",
    "SET lock_timeout = '1ms'",
    "LISTEN spy",
    "DECLARE held CURSOR WITH HOLD FOR SELECT 1",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_advisory_lock_shared(2)",
    "CREATE TEMP SEQUENCE s; SELECT nextval('s')",
    "CREATE TABLE pg_temp.projects (LIKE public.projects)",
    "CREATE TEMPORARY VIEW users AS SELECT * FROM public.users",
    "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE TYPE pg_temp.t AS (a int)",
    "PREPARE spy AS SELECT 1",
    "DO $$ BEGIN PERFORM set_config('work_mem', '66MB', false); END $$",
    "DO $$ BEGIN EXECUTE 'SET search' || '_path = pg_catalog'; END $$",
    "DO $$ BEGIN EXECUTE 'LISTEN x' || 'y'; END $$",
    "CREATE FUNCTION pg_temp.g() RETURNS void LANGUAGE plpgsql AS "
    "$$ BEGIN PERFORM pg_advisory_lock(3); EXECUTE 'SET work_mem = ''55MB'''; END $$; SELECT pg_temp.g()",
    "CREATE FUNCTION pg_temp.h() RETURNS text LANGUAGE sql AS "
    "$$ SELECT set_config('app.tenant_id', '{other}', false) $$; SELECT pg_temp.h()",
]


@pytest.mark.parametrize("statement", HOSTILE)
async def test_hostile_statement_leaves_nothing(db1: Database, tenant: uuid.UUID,
                                                other_tenant: uuid.UUID, statement: str) -> None:
    clean = await baseline(db1)
    sql = statement.replace("{other}", str(other_tenant))
    async with db1.transaction(tenant=tenant) as uow:
        await uow.execute(sql)
    assert_pristine(db1, clean, await baseline(db1))


@pytest.mark.parametrize("statement", HOSTILE)
async def test_hostile_statement_in_a_failed_unit_of_work_leaves_nothing(
    db1: Database, tenant: uuid.UUID, other_tenant: uuid.UUID, statement: str
) -> None:
    """Rolled back: the opening's reset is undone with it, the next opening resets again."""
    clean = await baseline(db1)
    with pytest.raises(QueryError):
        async with db1.transaction(tenant=tenant) as uow:
            await uow.execute(statement.replace("{other}", str(other_tenant)))
            await uow.execute("SELECT 1/0")
    assert_pristine(db1, clean, await baseline(db1))


@pytest.mark.parametrize("statement", HOSTILE)
async def test_hostile_autocommit_statement_leaves_nothing(
    db1: Database, tenant: uuid.UUID, other_tenant: uuid.UUID, statement: str
) -> None:
    clean = await baseline(db1)
    await db1.autocommit(tenant=tenant).execute(statement.replace("{other}", str(other_tenant)))
    assert_pristine(db1, clean, await baseline(db1))
    async with db1.transaction(tenant=tenant) as uow:
        assert (await fingerprint(uow))["visible_projects"] == 20


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(HOSTILE), min_size=1, max_size=5),
       st.sampled_from(["transaction", "autocommit", "raw"]))
async def test_any_mix_of_hostile_statements_leaves_nothing(
    db1: Database, tenant: uuid.UUID, other_tenant: uuid.UUID, statements: list[str], how: str
) -> None:
    clean = await baseline(db1)
    for statement in statements:
        sql = statement.replace("{other}", str(other_tenant))
        try:
            if how == "autocommit":
                await db1.autocommit(tenant=tenant).execute(sql)
            elif how == "raw":
                async with db1.transaction(tenant=tenant) as uow:
                    await uow.connection.execute(sql)
            else:
                async with db1.transaction(tenant=tenant) as uow:
                    await uow.execute(sql)
        except (PgAccessError, asyncpg.PostgresError):
            pass  # e.g. a name already taken in this session: the point is what is left
    assert_pristine(db1, clean, await baseline(db1))


async def test_prepared_statement_hijack_is_caught_before_the_victim_runs(
    db1: Database, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    """A deallocates one of the driver's statements and prepares its own SQL under that
    name; B's next use of the statement must not run it."""
    from pgaccess.reference import ProjectRepository

    async with db1.transaction(tenant=other_tenant) as uow:
        victim = (await uow.repo(ProjectRepository).find_page(limit=1)).rows[0]
        assert await uow.repo(ProjectRepository).find_by_id(victim.id) is not None
    async with db1.transaction(tenant=tenant) as uow:
        names = await uow.fetch("SELECT name, statement FROM pg_prepared_statements")
        target = next(r["name"] for r in names if "WHERE \"id\" = $1" in r["statement"])
        await uow.execute(f'DEALLOCATE "{target}"')
        await uow.execute(f"PREPARE \"{target}\" (uuid) AS UPDATE projects SET name = 'pwned' "
                          "WHERE id <> $1 RETURNING tenant_id, id, owner_id, name, status, "
                          "created_at, updated_at")
    async with db1.transaction(tenant=other_tenant) as uow:
        found = await uow.repo(ProjectRepository).find_by_id(victim.id)
        assert found is not None and found.name == victim.name
        assert await uow.fetchval("SELECT count(*) FROM projects WHERE name = 'pwned'") == 0
    assert db1.pool.stats().connections_discarded >= 1


async def test_deallocated_driver_statement_fails_typed_and_heals(
    db1: Database, tenant: uuid.UUID
) -> None:
    async with db1.transaction(tenant=tenant) as uow:
        await uow.fetchval("SELECT count(*) FROM projects WHERE name = $1", "x")
        await uow.execute("DEALLOCATE ALL")
    for _ in range(2):
        try:
            async with db1.transaction(tenant=tenant) as uow:
                assert await uow.fetchval("SELECT count(*) FROM projects WHERE name = $1", "x") == 0
            break
        except QueryError as exc:
            assert exc.sqlstate == "26000"  # typed, once; the connection is then replaced


async def test_open_transaction_via_raw_commit(db1: Database, tenant: uuid.UUID) -> None:
    with pytest.raises(QueryError):
        async with db1.transaction(tenant=tenant) as uow:
            await uow.connection.execute("COMMIT; BEGIN")
            await uow.execute("SELECT 1/0")
    async with db1.transaction() as uow:
        assert await uow.fetchval("SELECT count(*) FROM projects") == 0


async def test_advisory_lock_is_released_for_other_sessions(db1: Database, db_dsn: str) -> None:
    async with db1.transaction() as uow:
        assert await uow.fetchval("SELECT pg_advisory_lock(4242) IS NOT NULL")
    await baseline(db1)  # the next unit of work on that backend releases it
    other = await asyncpg.connect(db_dsn)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock(4242)") is True
    finally:
        await other.close()


async def test_role_defaults_set_by_the_app_role_do_not_apply(db1: Database, db_dsn: str) -> None:
    """ALTER ROLE ... SET by the app role itself: startup parameters outrank it."""
    async with db1.transaction() as uow:
        await uow.execute("ALTER ROLE pgaccess_app SET search_path = pg_catalog")
        await uow.execute("ALTER ROLE pgaccess_app SET default_transaction_read_only = on")
        await uow.execute("ALTER ROLE pgaccess_app SET row_security = off")
    try:
        fresh = open_test_database(db_dsn, Project(Path("migrations"), Path("sql"), None), max_size=1)
        async with fresh, fresh.transaction() as uow:
            assert await uow.fetchval("SHOW search_path") == "public, pg_temp"
            assert await uow.fetchval("SHOW row_security") == "on"
            assert await uow.execute("CREATE TEMP TABLE w (x int)") == "CREATE TABLE"  # writable
    finally:
        owner = await asyncpg.connect(db_dsn)
        await owner.execute("ALTER ROLE pgaccess_app RESET ALL")
        await owner.close()


async def test_vetted_sql_never_creates_sql_prepared_statements(db1: Database, tenant: uuid.UUID) -> None:
    """Why the prepared-statement check may be skipped after a checkout that ran only
    vetted SQL: every repository method and named query of the reference schema leaves no
    SQL-level prepared statement (only a raw SQL string could make one)."""
    from pgaccess.reference import ProjectRepository, UserRepository

    async with db1.transaction(tenant=tenant) as uow:
        projects, users = uow.repo(ProjectRepository), uow.repo(UserRepository)
        page = await projects.find_page(limit=5)
        await projects.find_page(limit=5, after=page.next_cursor)
        p = page.rows[0]
        await projects.find_by_id(p.id)
        await projects.find_by_ids([p.id])
        await projects.exists(p.id)
        await projects.count()
        await projects.find_where(status=p.status)
        new = await projects.insert(name="vetted")
        await projects.update(new.id, name="vetted2")
        await projects.delete(new.id)
        await projects.insert_many([{"name": f"v{i}"} for i in range(3)])
        await projects.insert_many([{"name": f"w{i}"} for i in range(3)], method="copy")
        await projects.list_by_status(p.status)
        await projects.search_by_name("v")
        await projects.counts_by_status()
        await users.count()
        await uow.q.count_users()
    raw = db1.pool
    async with raw.connection() as con:
        assert await con.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE from_sql") == 0


async def test_always_mode_catches_a_hijack_made_by_a_database_function(db_dsn: str,
                                                                        tenant: uuid.UUID,
                                                                        other_tenant: uuid.UUID) -> None:
    """Stored code that builds SQL from data (PL/pgSQL EXECUTE) runs under a vetted named
    query; with check_prepared_statements="always" a hijack it makes is still caught."""
    from pgaccess import Settings
    from pgaccess.config import with_user
    from pgaccess.queries import load_queries_from_str
    from pgaccess.reference import ProjectRepository

    owner = await asyncpg.connect(db_dsn)
    await owner.execute("""
        CREATE FUNCTION public.injectable(target text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            EXECUTE format('DEALLOCATE %I', target);
            EXECUTE format('PREPARE %I (uuid) AS SELECT tenant_id, id, owner_id, name, status, '
                           'metadata, created_at, updated_at FROM projects WHERE id <> $1 LIMIT 1',
                           target);
        END $$;
        GRANT EXECUTE ON FUNCTION public.injectable(text) TO pgaccess_app;
    """)
    await owner.close()
    queries = load_queries_from_str("-- name: injectable(target)$\nSELECT public.injectable(:target)::text;\n")
    db = Database(Settings(min_size=1, max_size=1), dsn=with_user(db_dsn, "pgaccess_app"),
                  queries=queries, check_prepared_statements="always")
    async with db:
        async with db.transaction(tenant=other_tenant) as uow:
            victim = (await uow.repo(ProjectRepository).find_page(limit=1)).rows[0]
            await uow.repo(ProjectRepository).find_by_id(victim.id)
            name = await uow.fetchval("SELECT name FROM pg_prepared_statements "
                                      "WHERE statement LIKE '%WHERE \"id\" = $1'")
        async with db.transaction(tenant=tenant) as uow:
            await uow.q.injectable(target=name)
        async with db.transaction(tenant=other_tenant) as uow:
            assert await uow.repo(ProjectRepository).find_by_id(victim.id) == victim
        assert db.pool.stats().connections_discarded == 1


# -- the tenant-only opening of vetted autocommit statements -----------------------------
#
# An autocommit statement whose SQL was not built at run time (repository, named query)
# opens with the tenant alone when only such SQL ran on the session since its last full
# reset (pgaccess.session.tenant_only_opening_sql). The tests below attack that shortcut.

FINGERPRINT_QUERIES = """
-- name: fp_settings()$
SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings
WHERE source NOT IN ('default', 'override')
  AND name NOT IN ('transaction_isolation', 'transaction_read_only', 'transaction_deferrable');
-- name: fp_user()$
SELECT current_user || '/' || session_user;
-- name: fp_temp_objects()$
SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())
     + (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema())
     + (SELECT count(*) FROM pg_type WHERE typnamespace = pg_my_temp_schema());
-- name: fp_sql_prepared()$
SELECT count(*) FROM pg_prepared_statements WHERE from_sql;
-- name: fp_cursors()$
SELECT count(*) FROM pg_cursors WHERE name <> '';
-- name: fp_advisory_locks()$
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();
-- name: fp_listening()$
SELECT count(*) FROM pg_listening_channels();
-- name: fp_tenant()$
SELECT current_setting('app.tenant_id', true);
-- name: fp_visible_projects()$
SELECT count(*) FROM projects;
-- name: fp_pid()$
SELECT pg_backend_pid();
-- name: set_work_mem()$
SELECT set_config('work_mem', '7MB', false);
-- name: work_mem()$
SELECT current_setting('work_mem');
-- name: draw(seq)$
SELECT nextval(:seq::regclass);
"""


@pytest.fixture
async def db_vetted(db_dsn: str) -> AsyncIterator[Database]:
    from pgaccess import Settings
    from pgaccess.config import with_user
    from pgaccess.queries import load_queries_from_str

    owner = await asyncpg.connect(db_dsn)
    await owner.execute("CREATE SEQUENCE public.pga_test_seq; "
                        "GRANT USAGE ON SEQUENCE public.pga_test_seq TO pgaccess_app")
    await owner.close()
    database = Database(Settings(min_size=1, max_size=1), dsn=with_user(db_dsn, "pgaccess_app"),
                        queries=load_queries_from_str(FINGERPRINT_QUERIES))
    async with database:
        yield database


async def vetted_fingerprint(db: Database, tenant: uuid.UUID) -> dict[str, Any]:
    """The session as vetted autocommit statements of ``tenant`` see it, one checkout each:
    after the first, every one of them opens with the tenant alone."""
    q = db.autocommit(tenant=tenant).q
    names = ["settings", "user", "temp_objects", "sql_prepared", "cursors", "advisory_locks",
             "listening", "tenant", "visible_projects", "pid"]
    return {name: await getattr(q, f"fp_{name}")() for name in names}


@pytest.mark.parametrize("statement", HOSTILE)
@pytest.mark.parametrize("how", ["transaction", "autocommit", "rolled back"])
async def test_vetted_autocommit_after_hostile_sql_starts_pristine(
    db_vetted: Database, tenant: uuid.UUID, other_tenant: uuid.UUID, statement: str, how: str
) -> None:
    clean = await vetted_fingerprint(db_vetted, other_tenant)
    sql = statement.replace("{other}", str(other_tenant))
    if how == "autocommit":
        await db_vetted.autocommit(tenant=tenant).execute(sql)
    elif how == "transaction":
        async with db_vetted.transaction(tenant=tenant) as uow:
            await uow.execute(sql)
    else:  # the opening's reset is rolled back with the rest; the raw SQL of the previous
        # checkout left its state, and this unit of work ran no raw SQL of its own
        await db_vetted.autocommit(tenant=tenant).execute(sql)
        with pytest.raises(QueryError):
            async with db_vetted.transaction(tenant=tenant) as uow:
                await uow.q.fp_pid()
                await uow.q.draw(seq="no_such_sequence")
    now = await vetted_fingerprint(db_vetted, other_tenant)
    same_backend = clean.pop("pid") == now.pop("pid")
    assert same_backend or db_vetted.pool.stats().connections_discarded > 0
    assert now == clean


async def test_what_vetted_statements_leave_never_reaches_sql_built_at_run_time(
    db_vetted: Database, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    victim = db_vetted.autocommit(tenant=other_tenant)
    drawn = await victim.q.draw(seq="public.pga_test_seq")
    await victim.q.set_work_mem()
    # The shortcut at work: a named query's own session setting is still there for the
    # next vetted statement (fixed text cannot read what it does not name)...
    assert await db_vetted.autocommit(tenant=tenant).q.work_mem() == "7MB"
    # ...but SQL built at run time - an attacker's, say - always starts from a full reset:
    attacker = db_vetted.autocommit(tenant=tenant)
    assert await attacker.fetchval("SELECT current_setting('work_mem')") != "7MB"
    await victim.q.draw(seq="public.pga_test_seq")
    with pytest.raises(QueryError, match="lastval is not yet defined"):
        await attacker.fetchval("SELECT lastval()")
    await victim.q.draw(seq="public.pga_test_seq")
    with pytest.raises(QueryError, match="not yet defined"):
        async with db_vetted.transaction(tenant=tenant) as uow:
            await uow.fetchval("SELECT currval('public.pga_test_seq')")
    assert drawn >= 1
