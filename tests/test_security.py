"""Attacks on tenant isolation through the app role, roles, and the signed tenant context."""

from __future__ import annotations

import asyncio
import secrets
import uuid

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgaccess import (
    Database,
    ForeignKeyViolation,
    InsufficientPrivilege,
    QueryError,
    RowSecurityViolation,
    Settings,
)
from pgaccess.config import with_user
from pgaccess.reference import ProjectRepository, UserRepository


async def other_ids(db: Database, tenant: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    async with db.transaction(tenant=tenant) as uow:
        p = (await uow.repo(ProjectRepository).find_page(limit=1)).rows[0]
        u = (await uow.repo(UserRepository).find_page(limit=1)).rows[0]
    return p.id, u.id


async def test_hand_written_attacks_through_the_app_role(db: Database, tenant: uuid.UUID,
                                                        other_tenant: uuid.UUID) -> None:
    theirs, _their_user = await other_ids(db, other_tenant)
    async with db.transaction(tenant=tenant) as uow:
        # filters naming the other tenant find nothing
        assert await uow.fetchval("SELECT count(*) FROM projects WHERE tenant_id = $1", other_tenant) == 0
        assert await uow.fetchval("SELECT count(*) FROM projects WHERE id = $1", theirs) == 0
        assert await uow.execute("UPDATE projects SET name = 'x' WHERE id = $1", theirs) == "UPDATE 0"
        # a view over tenant data runs with the caller's rights (security_invoker)
        rows = await uow.fetch("SELECT DISTINCT tenant_id FROM project_counts")
        assert [r["tenant_id"] for r in rows] == [tenant]
        # a CTE that writes, and RETURNING
        got = await uow.fetch("WITH d AS (DELETE FROM projects WHERE tenant_id = $1 RETURNING id) "
                              "SELECT * FROM d", other_tenant)
        assert got == []
        # COPY out goes through RLS as well
        lines: list[bytes] = []

        async def sink(chunk: bytes) -> None:
            lines.append(chunk)

        await uow.connection.copy_from_query("SELECT tenant_id FROM projects", output=sink)
        assert set(b"".join(lines).decode().split()) == {str(tenant)}
        # a subquery cannot read around the policy either
        assert await uow.fetchval("SELECT count(*) FROM (SELECT * FROM users) u WHERE u.tenant_id <> $1",
                                  tenant) == 0
    # COPY in is refused under RLS
    with pytest.raises(QueryError):
        async with db.transaction(tenant=tenant) as uow:
            await uow.connection.copy_records_to_table("projects", records=[(tenant, "x")],
                                                       columns=["tenant_id", "name"])
    # no function or object of one's own: the app role cannot create anything
    for ddl in ("CREATE FUNCTION steal() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
                "CREATE TABLE mine (x int)", "CREATE VIEW v2 AS SELECT * FROM projects",
                "ALTER TABLE projects DISABLE ROW LEVEL SECURITY", "DROP POLICY tenant_guard ON projects",
                "SET ROLE pgaccess_admin", "CREATE SCHEMA evil"):
        with pytest.raises(QueryError) as info:
            async with db.transaction(tenant=tenant) as uow:
                await uow.execute(ddl)
        assert info.value.sqlstate in ("42501", "42P01"), ddl


async def test_foreign_key_and_unique_checks_are_no_existence_oracle(
    db: Database, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    _, their_user = await other_ids(db, other_tenant)
    messages = []
    for candidate in (their_user, uuid.uuid4()):  # an existing foreign id and a random one
        with pytest.raises(ForeignKeyViolation) as info:
            async with db.transaction(tenant=tenant) as uow:
                await uow.repo(ProjectRepository).insert(name="probe", owner_id=candidate)
        messages.append(str(info.value).replace(str(candidate), "<id>"))
    assert messages[0] == messages[1]  # the answer is the same whether the row exists or not
    # uniqueness is per tenant: another tenant's e-mail is free here
    async with db.transaction(tenant=tenant) as uow:
        await uow.repo(UserRepository).insert(email="user0@globex.localhost", name="same email")


async def test_set_config_from_injected_sql_switches_tenant_without_signing(
    db: Database, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    """The threat the signed context closes: injected SQL calling set_config()."""
    async with db.transaction(tenant=tenant) as uow:
        await uow.fetchval("SELECT set_config('app.tenant_id', $1, true)", str(other_tenant))
        assert await uow.fetchval("SELECT DISTINCT tenant_id FROM projects") == other_tenant


@pytest.fixture
async def signed_db(db_dsn: str) -> Database:  # type: ignore[misc]
    key = secrets.token_hex(32)
    con = await asyncpg.connect(db_dsn)  # the owner installs the key
    await con.execute("SELECT app.enable_signed_tenant_context(decode($1, 'hex'))", key)
    await con.close()
    database = Database(Settings(min_size=1, max_size=4, tenant_signing_key=key),
                        dsn=with_user(db_dsn, "pgaccess_app"), admin_dsn=with_user(db_dsn, "pgaccess_admin"),
                        sql_dir="sql")
    async with database:
        yield database


async def test_signed_context_blocks_injected_set_config(signed_db: Database, tenant: uuid.UUID,
                                                        other_tenant: uuid.UUID) -> None:
    async with signed_db.transaction(tenant=tenant) as uow:
        assert await uow.repo(ProjectRepository).count() == 20  # signed by pgaccess: works
    with pytest.raises(InsufficientPrivilege, match="signature is missing or invalid"):
        async with signed_db.transaction(tenant=tenant) as uow:
            await uow.fetchval("SELECT set_config('app.tenant_id', $1, true)", str(other_tenant))
            await uow.fetchval("SELECT count(*) FROM projects")
    with pytest.raises(InsufficientPrivilege):
        async with signed_db.transaction(tenant=tenant) as uow:  # a forged signature
            await uow.fetchval("SELECT set_config('app.tenant_id', $1, true)", f"{other_tenant}.{'0' * 64}")
            await uow.fetchval("SELECT count(*) FROM projects")
    async with signed_db.transaction(system=True, reason="test") as uow:
        async with uow.scoped_tenant(other_tenant):
            assert await uow.repo(ProjectRepository).count() == 20


async def test_signed_context_verifies_once_per_statement_and_still_guards_writes(
        signed_db: Database, tenant: uuid.UUID, other_tenant: uuid.UUID) -> None:
    async with signed_db.transaction(tenant=tenant) as uow:
        plan = "\n".join(r[0] for r in await uow.fetch("EXPLAIN (VERBOSE) SELECT * FROM projects"))
    # The restrictive guard verifies; the permissive policy compares with the claimed tenant.
    assert plan.count("verified_tenant_id") == 1, plan
    with pytest.raises(InsufficientPrivilege, match="signature is missing or invalid"):
        async with signed_db.transaction(tenant=tenant) as uow:  # unsigned, injected
            await uow.fetchval("SELECT set_config('app.tenant_id', $1, true)", str(other_tenant))
            await uow.execute("INSERT INTO projects (tenant_id, name) VALUES ($1, 'x')", other_tenant)


async def test_roles(db_dsn: str) -> None:
    con = await asyncpg.connect(with_user(db_dsn, "pgaccess_app"))
    try:
        role = await con.fetchrow("SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb "
                                  "FROM pg_roles WHERE rolname = current_user")
        assert not any(role.values())
        assert await con.fetchval("SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
                                  "WHERE r.rolname = 'pgaccess_app'") == 0
        for sql in ("SELECT * FROM pgaccess.schema_migrations", "SELECT * FROM app_private.tenant_signing_key",
                    "CREATE TABLE t (x int)"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await con.execute(sql)
        # health may read versions and checksums, nothing more
        assert await con.fetchval("SELECT count(*) FROM pgaccess.migration_versions()") >= 3
    finally:
        await con.close()
    admin = await asyncpg.connect(with_user(db_dsn, "pgaccess_admin"))
    try:
        assert not await admin.fetchval("SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user")
    finally:
        await admin.close()


OPS = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["create", "read", "update", "delete", "bulk"]),
                         st.integers(0, 10_000)), min_size=5, max_size=40)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
async def test_random_interleavings_never_cross_tenants(db: Database, ops: list[tuple[int, str, int]]) -> None:
    from pgaccess.reference import ACME_ID, GLOBEX_ID, INITECH_ID

    tenants = [ACME_ID, GLOBEX_ID, INITECH_ID]

    async def run(t_index: int, op: str, n: int) -> None:
        t = tenants[t_index]
        async with db.transaction(tenant=t) as uow:
            projects = uow.repo(ProjectRepository)
            if op == "create":
                p = await projects.insert(name=f"h-{n}")
                assert p.tenant_id == t
            elif op == "bulk":
                await projects.insert_many([{"name": f"hb-{n}-{i}"} for i in range(n % 7 + 1)])
            elif op == "read":
                rows = await uow.fetch("SELECT tenant_id FROM projects")
                assert all(r["tenant_id"] == t for r in rows)
            elif op == "update":
                status = await uow.execute("UPDATE projects SET name = name || '.' WHERE tenant_id <> $1", t)
                assert status == "UPDATE 0"
            else:
                other = tenants[(t_index + 1) % 3]
                assert await uow.execute("DELETE FROM projects WHERE tenant_id = $1", other) == "DELETE 0"

    await asyncio.gather(*(run(*op) for op in ops))
    async with db.transaction(system=True, reason="test: verify ownership") as uow:
        bad = await uow.fetchval(
            "SELECT count(*) FROM projects WHERE (name LIKE 'h-%' OR name LIKE 'hb-%') "
            "AND tenant_id <> ALL($1::uuid[])", tenants)
        assert bad == 0


async def test_row_security_violation_is_typed(db: Database, tenant: uuid.UUID, other_tenant: uuid.UUID) -> None:
    with pytest.raises(RowSecurityViolation) as info:
        async with db.transaction(tenant=tenant) as uow:
            await uow.execute("INSERT INTO projects (tenant_id, name) VALUES ($1, 'x')", other_tenant)
    assert info.value.sqlstate == "42501" and "current tenant" in str(info.value)
