"""The unit of work under the app role with RLS: commit, rollback, savepoints, tenancy, retries."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from pgaccess import (
    Database,
    QueryError,
    RowSecurityViolation,
    SerializationFailure,
    TenantError,
    TenantRequired,
    TransactionError,
    UniqueViolation,
    tenant_scope,
)
from pgaccess.reference import ProjectRepository
from pgaccess.session import RESET_SESSION, begin_sql, citus_opening_sql, opening_sql
from pgaccess.tenancy import TenantContext


async def project_names(db: Database, tenant: uuid.UUID) -> set[str]:
    async with db.transaction(tenant=tenant) as uow:
        return {r["name"] for r in await uow.fetch("SELECT name FROM projects")}


async def test_commit_makes_writes_visible(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        await uow.repo(ProjectRepository).insert(name="committed")
    assert "committed" in await project_names(db, tenant)


async def test_exception_rolls_back_and_propagates(db: Database, tenant: uuid.UUID) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with db.transaction(tenant=tenant) as uow:
            await uow.repo(ProjectRepository).insert(name="rolled-back")
            raise Boom
    assert "rolled-back" not in await project_names(db, tenant)
    assert db.pool.stats().in_use == 0


async def test_savepoint_rolls_back_alone(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        repo = uow.repo(ProjectRepository)
        await repo.insert(name="outer")
        with pytest.raises(UniqueViolation):
            async with uow.savepoint():
                await repo.insert(name="inner")
                p = await repo.insert(name="dup")
                await repo.insert(id=p.id, name="dup-again")
        async with db.transaction():  # nested db.transaction() is a savepoint too
            await repo.insert(name="nested-ok")
        # the tenant survives the rolled-back savepoint
        assert await uow.fetchval("SELECT app.current_tenant_id()") == tenant
    names = await project_names(db, tenant)
    assert {"outer", "nested-ok"} <= names
    assert not {"inner", "dup"} & names


async def test_tenant_is_transaction_local_on_a_reused_connection(db_dsn: str, tenant: uuid.UUID) -> None:
    from pathlib import Path

    from pgaccess.testing import Project, open_test_database

    database = open_test_database(db_dsn, Project(Path("migrations"), Path("sql"), None), max_size=1)
    async with database:
        async with database.transaction(tenant=tenant) as uow:
            pid1 = await uow.fetchval("SELECT pg_backend_pid()")
            assert await uow.fetchval("SELECT count(*) FROM projects") > 0
        async with database.transaction() as uow:
            assert await uow.fetchval("SELECT pg_backend_pid()") == pid1  # same connection
            assert await uow.fetchval("SELECT current_setting('app.tenant_id', true)") in ("", None)
            assert await uow.fetchval("SELECT count(*) FROM projects") == 0
        assert database.pool.stats().connections_discarded == 0


async def test_no_tenant_means_no_rows_and_no_writes(db: Database) -> None:
    async with db.transaction() as uow:
        assert await uow.fetchval("SELECT count(*) FROM projects") == 0
        assert await uow.fetchval("SELECT count(*) FROM users") == 0
    with pytest.raises(RowSecurityViolation):
        async with db.transaction() as uow:
            await uow.execute("INSERT INTO projects (tenant_id, name) "
                              "SELECT id, 'sneaky' FROM tenants LIMIT 1")
    with pytest.raises(TenantRequired):
        async with db.transaction() as uow:
            uow.repo(ProjectRepository)


async def test_writes_to_another_tenant_are_refused(db: Database, tenant: uuid.UUID,
                                                   other_tenant: uuid.UUID) -> None:
    with pytest.raises(RowSecurityViolation):
        async with db.transaction(tenant=tenant) as uow:
            await uow.repo(ProjectRepository).insert(tenant_id=other_tenant, name="foreign")
    async with db.transaction(tenant=tenant) as uow:
        n = await uow.execute("UPDATE projects SET name = 'hijacked' WHERE tenant_id = $1", other_tenant)
        assert n == "UPDATE 0"
        assert await uow.execute("DELETE FROM projects WHERE tenant_id = $1", other_tenant) == "DELETE 0"
    assert "hijacked" not in await project_names(db, other_tenant)


@pytest.mark.parametrize("bad", ["", "not-a-uuid", "'; DROP TABLE projects; --",
                                 "x" * 10_000, "00000000-0000-4000-8000-00000000000\x00", 42, None.__class__])
async def test_invalid_tenant_is_rejected_before_any_sql(db: Database, bad: object) -> None:
    before = db.pool.stats().acquires
    with pytest.raises(TenantError):
        async with db.transaction(tenant=bad):
            pass
    with pytest.raises(TenantError):
        with tenant_scope(bad):
            pass
    assert db.pool.stats().acquires == before


async def test_tenant_context_is_used_and_isolated_per_task(db: Database, tenant: uuid.UUID,
                                                           other_tenant: uuid.UUID) -> None:
    async def names_in_scope(t: uuid.UUID) -> set[uuid.UUID]:
        with tenant_scope(t):
            await asyncio.sleep(0)
            assert TenantContext.require() == t
            async with db.transaction() as uow:
                return {r["tenant_id"] for r in await uow.fetch("SELECT tenant_id FROM projects")}

    a, b = await asyncio.gather(names_in_scope(tenant), names_in_scope(other_tenant))
    assert a == {tenant} and b == {other_tenant}
    assert TenantContext.current() is None
    with pytest.raises(TenantRequired):
        TenantContext.require()


@pytest.mark.parametrize("pool_size", [1, 10])
async def test_many_concurrent_tasks_never_see_each_others_rows(db_dsn: str, tenant: uuid.UUID,
                                                                other_tenant: uuid.UUID,
                                                                pool_size: int) -> None:
    from pathlib import Path

    from pgaccess.testing import Project, open_test_database

    database = open_test_database(db_dsn, Project(Path("migrations"), Path("sql"), None),
                                  max_size=pool_size, acquire_timeout=30)
    tenants = [tenant, other_tenant]

    async def worker(i: int) -> None:
        t = tenants[i % 2]
        async with database.transaction(tenant=t) as uow:
            if i % 3 == 0:
                await uow.repo(ProjectRepository).insert(name=f"w{i}")
            rows = await uow.fetch("SELECT tenant_id FROM projects")
            assert rows and all(r["tenant_id"] == t for r in rows)

    async with database:
        await asyncio.gather(*(worker(i) for i in range(200)))
        assert database.pool.stats().in_use == 0


async def test_explain_shows_initplan_and_tenant_index_condition(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        # The seeded table is tiny, so the planner may prefer a seq scan; what matters is
        # that the tenant check is an index condition when an index scan is chosen.
        await uow.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await uow.fetch(
            "EXPLAIN SELECT * FROM projects WHERE id = $1", uuid.uuid4()))
    assert "InitPlan" in plan
    assert re.search(r"Index Cond: \(+tenant_id = \$\d", plan), plan


async def test_use_after_exit_and_from_another_task_raise(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        with pytest.raises(TransactionError, match="belongs to the task"):
            await asyncio.create_task(uow.fetchval("SELECT 1"))
    with pytest.raises(TransactionError, match="not active"):
        await uow.fetchval("SELECT 1")


async def test_cancelled_task_leaves_connection_rolled_back(db: Database, tenant: uuid.UUID) -> None:
    started = asyncio.Event()

    async def slow() -> None:
        async with db.transaction(tenant=tenant) as uow:
            await uow.repo(ProjectRepository).insert(name="cancelled")
            started.set()
            await uow.execute("SELECT pg_sleep(5)")

    task = asyncio.create_task(slow())
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "cancelled" not in await project_names(db, tenant)
    assert db.pool.stats().in_use == 0
    async with db.transaction(tenant=tenant) as uow:
        assert await uow.fetchval("SELECT 1") == 1


async def test_serialization_failure_is_retried_and_on_commit_runs_once(db: Database,
                                                                       tenant: uuid.UUID) -> None:
    attempts = 0
    committed: list[int] = []
    barrier = asyncio.Barrier(2)

    async def body(uow, label: str) -> None:  # type: ignore[no-untyped-def]
        nonlocal attempts
        attempts += 1
        total = await uow.fetchval("SELECT count(*) FROM projects WHERE status = 'active'")
        if attempts <= 2:
            await barrier.wait()  # both read before either writes: a write skew
        await uow.repo(ProjectRepository).insert(name=f"{label}-{total}")
        uow.on_commit(lambda: committed.append(1))

    await asyncio.gather(
        db.run_in_transaction(body, "a", retries=5, options={"tenant": tenant, "isolation": "serializable"}),
        db.run_in_transaction(body, "b", retries=5, options={"tenant": tenant, "isolation": "serializable"}),
    )
    assert attempts >= 3  # at least one retry happened
    assert committed == [1, 1]  # each unit of work's callback ran once


async def test_other_errors_are_not_retried(db: Database, tenant: uuid.UUID) -> None:
    calls = 0

    async def body(uow) -> None:  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        await uow.execute("SELECT 1/0")

    with pytest.raises(QueryError) as info:
        await db.run_in_transaction(body, retries=3, options={"tenant": tenant})
    assert calls == 1 and info.value.sqlstate == "22012"


async def test_deadlock_is_retried(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        rows = await uow.fetch("SELECT id FROM projects ORDER BY id LIMIT 2")
    a, b = rows[0]["id"], rows[1]["id"]
    barrier = asyncio.Barrier(2)
    attempts = {"x": 0, "y": 0}

    async def body(uow, first, second, label) -> None:  # type: ignore[no-untyped-def]
        attempts[label] += 1
        await uow.execute("UPDATE projects SET name = name WHERE id = $1", first)
        if attempts[label] == 1:
            await barrier.wait()
        await uow.execute("UPDATE projects SET name = name WHERE id = $1", second)

    await asyncio.gather(
        db.run_in_transaction(body, a, b, "x", retries=3, options={"tenant": tenant}),
        db.run_in_transaction(body, b, a, "y", retries=3, options={"tenant": tenant}),
    )
    assert attempts["x"] + attempts["y"] == 3  # exactly one side was retried


async def test_serialization_failure_type_without_retries(db: Database, tenant: uuid.UUID) -> None:
    barrier = asyncio.Barrier(2)

    async def body(uow) -> None:  # type: ignore[no-untyped-def]
        await uow.fetchval("SELECT count(*) FROM projects")
        await barrier.wait()
        await uow.repo(ProjectRepository).insert(name=f"s-{uuid.uuid4()}")

    results = await asyncio.gather(
        db.run_in_transaction(body, retries=0, options={"tenant": tenant, "isolation": "serializable"}),
        db.run_in_transaction(body, retries=0, options={"tenant": tenant, "isolation": "serializable"}),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 1 and isinstance(failures[0], SerializationFailure)
    assert failures[0].sqlstate == "40001"


async def test_readonly_transaction_refuses_writes(db: Database, tenant: uuid.UUID) -> None:
    with pytest.raises(QueryError) as info:
        async with db.transaction(tenant=tenant, readonly=True) as uow:
            await uow.repo(ProjectRepository).insert(name="ro")
    assert info.value.sqlstate == "25006"


async def test_timeout_applies_to_the_transaction_only(db: Database, tenant: uuid.UUID) -> None:
    from pgaccess import QueryTimeout

    with pytest.raises(QueryTimeout):
        async with db.transaction(tenant=tenant, timeout=0.1) as uow:
            await uow.execute("SELECT pg_sleep(1)")
    async with db.transaction(tenant=tenant) as uow:
        assert await uow.fetchval("SHOW statement_timeout") == "30s"


def test_opening_is_one_round_trip() -> None:
    t = "00000000-0000-4000-8000-000000000001"
    begin = begin_sql("serializable", True, True)
    sql = opening_sql(begin=begin, tenant_setting="app.tenant_id",
                      tenant=t, local_settings="SET LOCAL statement_timeout = '2000'")
    # The reset in a transaction of its own, committed before the unit of work's BEGIN: a
    # ROLLBACK of the unit of work cannot undo it. Utility statements only: no SELECT.
    assert sql == (f"BEGIN; {RESET_SESSION}; COMMIT; {begin}; "
                   f"SET LOCAL statement_timeout = '2000'; SET LOCAL \"app\".\"tenant_id\" = '{t}'")
    # After raw SQL: session advisory locks released, random() re-seeded by the server (no
    # seed in the text, which pg_stat_activity shows) and the prepared-statement guard, all
    # in the committed reset.
    guarded = opening_sql(begin=begin, tenant_setting="app.tenant_id", tenant=t, guard=3)
    reset = guarded[:guarded.index("COMMIT")]
    assert "pg_advisory_unlock_all()" in reset and "pg_prepared_statements" in reset
    assert "setseed((pg_catalog.hashtextextended(pg_catalog.gen_random_uuid()" in reset
    # Citus: the reset first (Citus replays a SET LOCAL query's text on its workers)
    reset, rest = citus_opening_sql(begin=begin_sql("read_committed", False, False),
                                    tenant_setting="app.tenant_id", tenant=t)
    assert reset.startswith(RESET_SESSION) and "COMMIT" not in reset and "BEGIN" not in reset
    assert rest.startswith("BEGIN ISOLATION LEVEL READ COMMITTED")
    assert rest.endswith(f"SET LOCAL \"app\".\"tenant_id\" = '{t}'")
    # autocommit: the tenant is set for the session (the next user's opening resets it)
    assert opening_sql(begin=None, tenant_setting="app.tenant_id", tenant=t).endswith(
        f"; SET \"app\".\"tenant_id\" = '{t}'")
    with pytest.raises(ValueError, match="pre-validated"):
        opening_sql(begin=None, tenant_setting="app.tenant_id", tenant="x'; DROP TABLE t; --")


async def test_readonly_commit_finishes_in_the_background(db: Database, tenant: uuid.UUID) -> None:
    from pgaccess.uow import background_commits_done

    async with db.transaction(tenant=tenant, readonly=True) as uow:
        pid = await uow.fetchval("SELECT pg_backend_pid()")
        n = await uow.repo(ProjectRepository).count()
    assert n == 20
    await background_commits_done()
    assert db.pool.stats().in_use == 0
    async with db.transaction(tenant=tenant) as uow:  # the connection came back clean
        assert await uow.fetchval("SELECT pg_backend_pid()") == pid
        assert await uow.fetchval("SELECT current_setting('app.tenant_id', true)") == str(tenant)
    ran: list[int] = []
    async with db.transaction(tenant=tenant, readonly=True) as uow:  # with a callback: inline
        uow.on_commit(lambda: ran.append(1))
    assert ran == [1]


async def test_a_negative_or_tiny_timeout(db: Database, tenant: uuid.UUID) -> None:
    """A negative timeout is refused before anything is acquired; a positive one under 1 ms
    is rounded up (a statement_timeout of 0 would mean none at all)."""
    from pgaccess import QueryTimeout

    with pytest.raises(TransactionError, match="timeout must be a number of seconds >= 0"):
        async with db.transaction(tenant=tenant, timeout=-1):
            pass
    with pytest.raises(QueryTimeout, match="statement timeout"):  # with 0 it would sleep on
        async with db.transaction(tenant=tenant, timeout=0.0004) as uow:
            await uow.execute("SELECT pg_sleep(0.2)")
