"""pgaccess on a real Citus cluster (coordinator + 2 workers, a third added for rebalancing).

Run with ``pytest -m citus tests/test_citus.py`` after ``bash ../shared/citus/build.sh``.
Everything goes through the coordinator, as an application would.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

import asyncpg
import pytest
from citus_fixtures import ROOT, SHARD_COUNT, citus_cluster, citus_db, citus_dsn

from pgaccess import Database, PgAccessError, RowSecurityViolation
from pgaccess.citus import distributed_tables, is_citus, node_status, task_count
from pgaccess.config import with_user
from pgaccess.devdb.citus import TemporaryCitusCluster, citus_database
from pgaccess.migrate import Migrator
from pgaccess.reference import ACME_ID, GLOBEX_ID, INITECH_ID, ProjectRepository

pytestmark = pytest.mark.citus
__all__ = ["citus_cluster", "citus_db", "citus_dsn"]

PRELUDE = ("RESET ALL; CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; "
           "DISCARD SEQUENCES; ")


async def count_as(con: asyncpg.Connection, begin: str, tenant: uuid.UUID | None = None) -> int:
    """Projects visible after ``begin`` (one simple query), optionally filtered to ``tenant``."""
    await con.execute(begin)
    try:
        if tenant is None:
            return int(await con.fetchval("SELECT count(*) FROM projects"))
        return int(await con.fetchval("SELECT count(*) FROM projects WHERE tenant_id = $1", tenant))
    finally:
        await con.execute("ROLLBACK")


# -- schema and operations ---------------------------------------------------------------


async def test_migrations_distribute_the_reference_schema(citus_dsn: str) -> None:
    m = Migrator(citus_dsn, ROOT / "migrations", echo=lambda _: None)
    status = await m.status()
    assert status.up_to_date, status.as_json()
    assert await m.verify() == []
    assert (await m.lint()).blocking == []
    con = await asyncpg.connect(with_user(citus_dsn, "pgaccess_admin"))
    try:
        assert await is_citus(con)
        assert await distributed_tables(con) == {
            "app_private.tenant_signing_key": None, "projects": "tenant_id",
            "tenants": None, "users": "tenant_id",
        }
        assert await con.fetchval(
            "SELECT count(DISTINCT colocationid) FROM pg_dist_partition "
            "WHERE logicalrelid IN ('users'::regclass, 'projects'::regclass)") == 1
    finally:
        await con.close()
    assert await m.up() is not None  # a second run applies nothing and does not fail
    assert (await m.status()).up_to_date


async def test_node_status_lists_coordinator_and_workers(citus_dsn: str) -> None:
    con = await asyncpg.connect(with_user(citus_dsn, "pgaccess_admin"))
    try:
        nodes = await node_status(con)
    finally:
        await con.close()
    assert [n.group_id for n in nodes][:3] == [0, 1, 2]
    assert all(n.healthy for n in nodes)
    workers = [n for n in nodes if n.group_id > 0]
    # 8 shards each of users and projects, plus one placement of each reference table.
    assert sum(n.shards for n in workers) == 2 * SHARD_COUNT + 2 * len(workers)


async def test_health_shows_the_citus_nodes(citus_db: Database) -> None:
    from pgaccess.health import check

    async with citus_db.transaction():
        pass  # the first connection tells the pool it talks to a coordinator
    report = await check(citus_db, migrations_dir=None)
    node_check = report.checks["citus"]
    assert node_check.status == "ok" and node_check.data["workers"] == 2
    assert node_check.data["shard_placements"] > 0


async def test_seeded_through_the_coordinator(citus_db: Database) -> None:
    async with citus_db.transaction(system=True) as uow:
        rows = await uow.fetch("SELECT tenant_id, count(*) AS n FROM projects GROUP BY 1 ORDER BY 1")
    assert {r["tenant_id"] for r in rows} >= {ACME_ID, GLOBEX_ID, INITECH_ID}
    assert all(r["n"] > 0 for r in rows)


# -- tenant isolation through the coordinator ----------------------------------------------


async def test_no_tenant_sees_nothing(citus_db: Database) -> None:
    async with citus_db.transaction() as uow:
        assert await uow.fetchval("SELECT count(*) FROM projects") == 0
        assert await uow.fetchval("SELECT count(*) FROM users") == 0


async def test_tenant_sees_only_its_rows_and_not_other_ids(citus_db: Database) -> None:
    async with citus_db.transaction(system=True) as uow:
        theirs = [r["id"] for r in await uow.fetch(
            "SELECT id FROM projects WHERE tenant_id = $1", GLOBEX_ID)]
        total_acme = await uow.fetchval("SELECT count(*) FROM projects WHERE tenant_id = $1", ACME_ID)
    async with citus_db.transaction(tenant=ACME_ID) as uow:
        assert await uow.fetchval("SELECT count(*) FROM projects") == total_acme
        assert await uow.fetchval(
            "SELECT count(*) FROM projects WHERE tenant_id <> $1", ACME_ID) == 0
        assert await uow.repo(ProjectRepository).find_by_ids(theirs) == []
        assert await uow.fetchval(
            "SELECT count(*) FROM projects WHERE tenant_id = $1 AND id = ANY($2::uuid[])",
            GLOBEX_ID, theirs) == 0


async def test_cross_tenant_writes_are_refused(citus_db: Database) -> None:
    with pytest.raises(RowSecurityViolation):
        async with citus_db.transaction(tenant=ACME_ID) as uow:
            await uow.execute("INSERT INTO projects (tenant_id, name) VALUES ($1, 'x')", GLOBEX_ID)
    async with citus_db.transaction(tenant=ACME_ID) as uow:
        assert await uow.execute(
            "UPDATE projects SET name = 'stolen' WHERE tenant_id = $1", GLOBEX_ID) == "UPDATE 0"
        assert await uow.execute(
            "DELETE FROM projects WHERE tenant_id = $1", GLOBEX_ID) == "DELETE 0"
    with pytest.raises(RowSecurityViolation):
        async with citus_db.transaction() as uow:  # no tenant: no writes
            await uow.execute("INSERT INTO projects (tenant_id, name) VALUES ($1, 'x')", ACME_ID)


# -- how the tenant setting reaches the workers ---------------------------------------------


async def test_tenant_setting_reaches_workers_only_with_set_local_and_propagation(
    citus_dsn: str,
) -> None:
    app = with_user(citus_dsn, "pgaccess_app")
    plain = await asyncpg.connect(app)
    propagating = await asyncpg.connect(
        app, server_settings={"citus.propagate_set_commands": "local"})
    t = ACME_ID
    try:
        # Without propagation the workers see no tenant: fail closed, never open.
        assert await count_as(plain, f"BEGIN; SELECT set_config('app.tenant_id', '{t}', true)") == 0
        assert await count_as(plain, f"BEGIN; SET LOCAL app.tenant_id = '{t}'") == 0
        # set_config() is never forwarded, even with propagation on.
        assert await count_as(
            propagating, f"BEGIN; SELECT set_config('app.tenant_id', '{t}', true)") == 0
        expected = await count_as(
            propagating, f"BEGIN; SET LOCAL app.tenant_id = '{t}'")
        assert expected > 0
        # Propagation sent with BEGIN works on a connection opened without it.
        assert await count_as(plain, "BEGIN; SET LOCAL citus.propagate_set_commands = 'local'; "
                                     f"SET LOCAL app.tenant_id = '{t}'") == expected
        # The full session reset prelude, BEGIN and the tenant in one simple query.
        assert await count_as(propagating, PRELUDE + f"BEGIN; SET LOCAL app.tenant_id = '{t}'") \
            == expected
        assert await count_as(plain, PRELUDE + "BEGIN; SET LOCAL citus.propagate_set_commands = "
                                     f"'local'; SET LOCAL app.tenant_id = '{t}'") == expected
        # The worker connections Citus caches do not carry a tenant into the next transaction.
        assert await count_as(propagating, PRELUDE + "BEGIN") == 0
        assert await count_as(
            propagating, f"BEGIN; SET LOCAL app.tenant_id = '{GLOBEX_ID}'", ACME_ID) == 0
    finally:
        await plain.close()
        await propagating.close()


async def test_propagation_from_alter_role(citus_dsn: str) -> None:
    owner = await asyncpg.connect(citus_dsn)
    await owner.execute("ALTER ROLE pgaccess_app SET citus.propagate_set_commands = 'local'")
    try:
        con = await asyncpg.connect(with_user(citus_dsn, "pgaccess_app"))
        try:
            assert await count_as(con, PRELUDE + f"BEGIN; SET LOCAL app.tenant_id = '{ACME_ID}'") > 0
        finally:
            await con.close()
    finally:
        await owner.execute("ALTER ROLE pgaccess_app RESET citus.propagate_set_commands")
        await owner.close()


async def test_signed_tenant_context_on_citus(citus_dsn: str) -> None:
    """Signed by pgaccess and bound to the session: on Citus the binding is the global pid,
    which the workers executing the statement share with the coordinator backend."""
    from pgaccess import InsufficientPrivilege

    key = secrets.token_hex(32)
    owner = await asyncpg.connect(citus_dsn)
    await owner.execute("SELECT app.enable_signed_tenant_context(decode($1, 'hex'))", key)
    try:
        async with citus_database(citus_dsn, ROOT / "sql", tenant_signing_key=key) as db:
            async with db.transaction(tenant=ACME_ID) as uow:
                assert await uow.repo(ProjectRepository).count() > 0
                value = await uow.fetchval("SELECT current_setting('app.tenant_id')")
                assert value.startswith(f"{ACME_ID}.")
                assert await uow.fetchval(
                    "SELECT count(*) FROM projects WHERE tenant_id = $1", GLOBEX_ID) == 0
            # injected SQL switching to an unsigned value is refused on the workers
            with pytest.raises(InsufficientPrivilege):
                async with db.transaction(tenant=ACME_ID) as uow:
                    await uow.execute(f"SET LOCAL app.tenant_id = '{GLOBEX_ID}'")
                    await uow.fetchval("SELECT count(*) FROM projects")
        # a value captured from another session is refused here (another global pid)
        con = await asyncpg.connect(with_user(citus_dsn, "pgaccess_app"),
                                    server_settings={"citus.propagate_set_commands": "local"})
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="another session"):
                await count_as(con, f"BEGIN; SET LOCAL app.tenant_id = '{value}'")
            # The key is replicated to the workers but unreadable to the app role on each node.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await con.fetchval("SELECT key FROM app_private.tenant_signing_key")
        finally:
            await con.close()
    finally:
        await owner.execute("SELECT app.disable_signed_tenant_context()")
        await owner.close()


# -- router plans -------------------------------------------------------------------------------


async def test_explicit_tenant_predicate_is_router_planned(citus_db: Database) -> None:
    async with citus_db.transaction(tenant=ACME_ID) as uow:
        some_id = await uow.fetchval("SELECT id FROM projects LIMIT 1")
        rls_only = await uow.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT * FROM projects WHERE id = $1", some_id)
        routed = await uow.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT * FROM projects WHERE tenant_id = $1 AND id = $2",
            ACME_ID, some_id)
    assert task_count(rls_only) == SHARD_COUNT
    assert task_count(routed) == 1


async def test_scoped_tenant_of_a_system_unit_of_work_reaches_the_workers(citus_db: Database) -> None:
    """Seeders and cross-tenant jobs narrow a system unit of work to one tenant: on Citus the
    scoped tenant must travel as SET LOCAL too, or the workers see every tenant's rows."""
    async with citus_db.transaction(tenant=ACME_ID) as uow:
        mine = await uow.fetchval("SELECT count(*) FROM projects")
    async with citus_db.transaction(system=True, reason="test") as uow:
        everyone = await uow.fetchval("SELECT count(*) FROM projects")
        async with uow.scoped_tenant(ACME_ID):
            assert await uow.fetchval("SELECT count(*) FROM projects") == mine
        assert await uow.fetchval("SELECT count(*) FROM projects") == everyone > mine


async def test_openings_after_raw_sql_work_through_the_coordinator(citus_db: Database) -> None:
    """Citus replays the opening's text on each worker it connects to (it ran SET LOCAL):
    the prepared-statement guard there must not count the driver's statements."""
    for _ in range(4):  # the same connection: each opening after the first runs the guard
        async with citus_db.transaction(tenant=ACME_ID) as uow:
            assert await uow.fetchrow("SELECT * FROM projects WHERE id = $1", uuid.uuid4()) is None
    assert citus_db.pool.stats().connections_discarded == 0


async def test_repository_reads_are_router_planned(citus_db: Database) -> None:
    """On a coordinator, TenantAwareRepository adds ``tenant_id = $n`` to its statements."""
    from pgaccess.reference import ProjectRepository

    async with citus_db.transaction(tenant=ACME_ID) as uow:
        assert citus_db.pool.distributed  # found on the first connection
        repo = uow.repo(ProjectRepository)
        project = (await repo.find_page(limit=1)).rows[0]
        assert await repo.find_by_id(project.id) == project
        assert await repo.count() > 0
        sql = ProjectRepository._shaped_sql("find_by_id", (), routed=True)
        assert sql.endswith('AND "tenant_id" = $2')
        plan = await uow.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", project.id, ACME_ID)
    assert task_count(plan) == 1
    async with citus_db.transaction(tenant=GLOBEX_ID) as uow:  # and stays isolated
        assert await uow.repo(ProjectRepository).find_by_id(project.id) is None


# -- operations under load ----------------------------------------------------------------------


async def insert_until(db: Database, tenant: uuid.UUID, stop: asyncio.Event,
                       acked: list[uuid.UUID], errors: list[BaseException]) -> None:
    while not stop.is_set():
        try:
            async with db.transaction(tenant=tenant) as uow:
                acked.append(await uow.fetchval(
                    "INSERT INTO projects (tenant_id, name) VALUES ($1, 'load') RETURNING id", tenant))
        except PgAccessError as exc:
            errors.append(exc)
            await asyncio.sleep(0.05)


async def test_rebalance_onto_a_new_worker_while_writing(
    citus_cluster: TemporaryCitusCluster, citus_dsn: str, citus_db: Database
) -> None:
    tenants = [ACME_ID, GLOBEX_ID, INITECH_ID]
    stop = asyncio.Event()
    acked: list[uuid.UUID] = []
    errors: list[BaseException] = []
    writers = [asyncio.create_task(insert_until(citus_db, tenants[i % 3], stop, acked, errors))
               for i in range(8)]
    owner = await asyncpg.connect(citus_dsn)
    try:
        await asyncio.sleep(0.5)
        worker = await citus_cluster.add_worker()
        # FORCE ROW LEVEL SECURITY stalls the default (logical) move; block_writes copies.
        await owner.execute("SELECT citus_rebalance_start(shard_transfer_mode => 'block_writes')")
        deadline = time.monotonic() + 120
        while (state := await owner.fetchval("SELECT state FROM citus_rebalance_status()")) \
                not in ("finished", "failed", "cancelled"):
            assert time.monotonic() < deadline, "rebalance did not finish in 120 s"
            await asyncio.sleep(0.2)
        assert state == "finished"
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    try:
        moved = await owner.fetchval(
            "SELECT count(*) FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid) "
            "WHERE n.nodeport = $1", worker.port)
        assert moved > 0
        present = await owner.fetchval(
            "SELECT count(*) FROM projects WHERE id = ANY($1::uuid[])", acked)
    finally:
        await owner.close()
    assert len(acked) > 100
    assert present == len(acked), f"{len(acked) - present} acknowledged writes lost"
    assert all(isinstance(e, PgAccessError) for e in errors)
    print(f"\nrebalance: {len(acked)} acknowledged inserts, {len(errors)} typed errors, "
          f"{moved} placements on the new worker")


async def test_isolated_tenant_keeps_isolation_and_data(citus_dsn: str, citus_db: Database) -> None:
    async with citus_db.transaction(tenant=INITECH_ID) as uow:
        before = await uow.fetchval("SELECT count(*) FROM projects")
    owner = await asyncpg.connect(citus_dsn)
    try:
        shard = await owner.fetchval(
            "SELECT isolate_tenant_to_new_shard('projects', $1::uuid, cascade_option => 'CASCADE', "
            "shard_transfer_mode => 'block_writes')", INITECH_ID)
        bounds = await owner.fetchrow(
            "SELECT shardminvalue, shardmaxvalue FROM pg_dist_shard WHERE shardid = $1", shard)
        assert bounds["shardminvalue"] == bounds["shardmaxvalue"]
        assert await owner.fetchval(
            "SELECT get_shard_id_for_distribution_column('projects', $1::uuid)", INITECH_ID) == shard
    finally:
        await owner.close()
    async with citus_db.transaction(tenant=INITECH_ID) as uow:
        assert await uow.fetchval("SELECT count(*) FROM projects") == before
        assert await uow.fetchval("SELECT count(*) FROM projects WHERE tenant_id <> $1",
                                  INITECH_ID) == 0
        await uow.execute("INSERT INTO projects (tenant_id, name) VALUES ($1, 'after')", INITECH_ID)
    async with citus_db.transaction(tenant=ACME_ID) as uow:
        assert await uow.fetchval(
            "SELECT count(*) FROM projects WHERE tenant_id = $1", INITECH_ID) == 0
    with pytest.raises(RowSecurityViolation):
        async with citus_db.transaction(tenant=ACME_ID) as uow:
            await uow.execute("INSERT INTO projects (tenant_id, name) VALUES ($1, 'x')", INITECH_ID)
