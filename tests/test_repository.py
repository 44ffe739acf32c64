"""Repositories on the reference schema, as the app role under RLS."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from pgaccess import (
    Database,
    InsufficientPrivilege,
    ParameterError,
    RowSecurityViolation,
    TenantRequired,
    UniqueViolation,
)
from pgaccess.reference import (
    INITECH_ID,
    Project,
    ProjectRepository,
    Tenant,
    TenantRepository,
    User,
    UserRepository,
)


async def test_base_reads(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant, readonly=True) as uow:
        projects = uow.repo(ProjectRepository)
        assert await projects.count() == 20
        first = (await projects.find_page(limit=1)).rows[0]
        assert isinstance(first, Project) and first.tenant_id == tenant
        assert isinstance(first.metadata, dict)
        assert first.created_at.tzinfo is not None
        assert await projects.find_by_id(first.id) == first
        assert await projects.exists(first.id)
        assert not await projects.exists(uuid.uuid4())
        assert await projects.find_by_id(uuid.uuid4()) is None


async def test_find_by_ids_keeps_order_skips_missing_and_dedupes(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        projects = uow.repo(ProjectRepository)
        rows = (await projects.find_page(limit=3)).rows
        a, b, c = (r.id for r in rows)
        missing = uuid.uuid4()
        found = await projects.find_by_ids([c, missing, a, c, b])
        assert [p.id for p in found] == [c, a, b]
        assert await projects.find_by_ids([]) == []


async def test_find_by_ids_never_returns_another_tenants_rows(db: Database, tenant: uuid.UUID,
                                                             other_tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=other_tenant) as uow:
        theirs = [p.id for p in (await uow.repo(ProjectRepository).find_page(limit=5)).rows]
    async with db.transaction(tenant=tenant) as uow:
        projects = uow.repo(ProjectRepository)
        assert await projects.find_by_ids(theirs) == []
        assert not await projects.exists(theirs[0])
        assert await projects.update(theirs[0], name="stolen") is None
        assert not await projects.delete(theirs[0])


async def test_insert_update_delete(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        projects = uow.repo(ProjectRepository)
        p = await projects.insert(name="new", metadata={"k": [1, 2]})
        assert p.tenant_id == tenant and p.status == "active" and p.metadata == {"k": [1, 2]}
        updated = await projects.update(p.id, status="done", name="renamed")
        assert updated is not None and (updated.status, updated.name) == ("done", "renamed")
        assert await projects.delete(p.id)
        assert not await projects.delete(p.id)
        with pytest.raises(ParameterError, match="unknown column"):
            await projects.insert(name="x", nope=1)
        with pytest.raises(ParameterError, match="at least one column"):
            await projects.update(p.id)


async def test_keyset_pagination_visits_every_row_once_under_concurrent_inserts(
    db: Database, tenant: uuid.UUID
) -> None:
    async with db.transaction(tenant=tenant) as uow:
        before = {p.id for p in await uow.repo(ProjectRepository).find_where(limit=10_000)}
    stop = asyncio.Event()

    async def writer() -> None:
        # Bounded: a writer that inserts faster than the reader pages would keep adding rows
        # after the cursor, and the walk would never reach the end.
        i = 0
        while not stop.is_set() and i < 300:
            async with db.transaction(tenant=tenant) as uow:
                await uow.repo(ProjectRepository).insert(name=f"concurrent-{i}")
            i += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(writer())
    seen: list[uuid.UUID] = []
    cursor = None
    try:
        while True:
            async with db.transaction(tenant=tenant, readonly=True) as uow:
                page = await uow.repo(ProjectRepository).find_page(limit=3, after=cursor)
            seen += [p.id for p in page.rows]
            await asyncio.sleep(0.005)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    finally:
        stop.set()
        await task
    assert len(seen) == len(set(seen))  # no row twice
    assert before <= set(seen)  # every row that existed before was visited
    with pytest.raises(ParameterError, match="cursor must have 2 values"):
        async with db.transaction(tenant=tenant) as uow:
            await uow.repo(ProjectRepository).find_page(after=(1,))


async def test_tenant_aware_repositories_require_a_tenant(db: Database) -> None:
    async with db.transaction() as uow:
        with pytest.raises(TenantRequired, match="UserRepository works on tenant-owned data"):
            uow.repo(UserRepository)
        assert await uow.repo(TenantRepository).count() == 3  # global table: fine


async def test_rows_naming_another_tenant_are_refused(db: Database, tenant: uuid.UUID,
                                                      other_tenant: uuid.UUID) -> None:
    with pytest.raises(RowSecurityViolation):
        async with db.transaction(tenant=tenant) as uow:
            await uow.repo(UserRepository).insert(tenant_id=other_tenant, email="x@y", name="x")
    with pytest.raises(RowSecurityViolation):
        async with db.transaction(tenant=tenant) as uow:
            await uow.repo(ProjectRepository).insert_many([{"tenant_id": other_tenant, "name": "bulk"}])


async def test_user_repository(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        users = uow.repo(UserRepository)
        u = await users.find_by_email("USER1@acme.localhost")
        assert isinstance(u, User) and u.email == "user1@acme.localhost"
        assert [x.role for x in await users.list_by_role("owner")] == ["owner"]
        assert await users.find_by_email("user1@globex.localhost") is None
        found = await users.find_with_tenant(role="member")
        assert len(found) == 2 and all(x.tenant_id == tenant for x in found)
        assert (await users.find_one_with_tenant(email="user0@acme.localhost")) is not None
    with pytest.raises(UniqueViolation) as info:
        async with db.transaction(tenant=tenant) as uow:
            await uow.repo(UserRepository).insert(email="user1@acme.localhost", name="dup")
    assert info.value.constraint == "users_tenant_email_key" and info.value.table == "users"


async def test_same_email_in_two_tenants_is_fine(db: Database, other_tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=other_tenant) as uow:
        await uow.repo(UserRepository).insert(email="user1@acme.localhost", name="not a dup")


async def test_project_repository_queries(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        projects = uow.repo(ProjectRepository)
        done = await projects.list_by_status("done", limit=100)
        assert len(done) == 5 and all(p.status == "done" for p in done)
        assert [p.created_at for p in done] == sorted((p.created_at for p in done), reverse=True)
        first = (await projects.find_page(limit=1)).rows[0]
        prefix = first.name.split("-")[0]
        hits = await projects.search_by_name(prefix)
        assert hits and all(p.name.startswith(prefix) for p in hits)
        assert await projects.search_by_name("%") == []  # no wildcard injection
        counts = {c.status: c.n for c in await projects.counts_by_status()}
        assert counts == {"active": 10, "paused": 5, "done": 5}


async def test_tenant_repository(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction() as uow:
        tenants = uow.repo(TenantRepository)
        acme = await tenants.find_by_domain(" ACME.localhost ")
        assert isinstance(acme, Tenant) and acme.id == tenant
        assert await tenants.is_active(tenant)
        assert not await tenants.is_active(INITECH_ID)
        assert not await tenants.is_active(uuid.uuid4())
        assert await tenants.find_by_domain("nobody.localhost") is None
    async with db.transaction(system=True, reason="test: provision") as uow:
        tenants = uow.repo(TenantRepository)
        t = await tenants.create("Umbrella", "Umbrella.localhost", plan="pro")
        assert t.domain == "umbrella.localhost" and t.status == "active"
        assert (await tenants.suspend(t.id)).status == "suspended"  # type: ignore[union-attr]
        assert (await tenants.archive(t.id)).status == "archived"  # type: ignore[union-attr]
        assert (await tenants.activate(t.id)).status == "active"  # type: ignore[union-attr]
    with pytest.raises(InsufficientPrivilege):
        async with db.transaction() as uow:  # the app role cannot write tenants
            await uow.repo(TenantRepository).create("Evil", "evil.localhost")


async def test_find_by_domain_uses_the_unique_index(db: Database) -> None:
    async with db.transaction() as uow:
        await uow.execute("SET LOCAL enable_seqscan = off")  # three rows: any plan would do
        plan = "\n".join(r[0] for r in await uow.fetch(
            "EXPLAIN SELECT * FROM tenants WHERE domain = $1", "acme.localhost"))
    assert "tenants_domain_key" in plan


@pytest.mark.slow
async def test_insert_many_100k_under_rls_and_in_system_context(db: Database, tenant: uuid.UUID,
                                                               other_tenant: uuid.UUID) -> None:
    rows = [{"name": f"bulk-{i}", "status": "paused", "metadata": {"i": i}} for i in range(100_000)]
    async with db.transaction(tenant=tenant) as uow:
        assert await uow.repo(ProjectRepository).insert_many(rows, method="unnest") == 100_000
    async with db.transaction(tenant=tenant) as uow:
        assert await uow.repo(ProjectRepository).insert_many(rows[:50_000], method="copy") == 50_000
    system_rows = [{"tenant_id": other_tenant, "name": f"sys-{i}"} for i in range(100_000)]
    async with db.transaction(system=True, reason="test: bulk") as uow:
        assert await uow.repo(ProjectRepository).insert_many(system_rows) == 100_000
    async with db.transaction(tenant=tenant) as uow:
        assert await uow.repo(ProjectRepository).count() == 20 + 150_000
    async with db.transaction(tenant=other_tenant) as uow:
        assert await uow.repo(ProjectRepository).count() == 20 + 100_000


async def test_insert_many_skip_existing_is_idempotent(db: Database, tenant: uuid.UUID) -> None:
    ids = [uuid.uuid4() for _ in range(10)]
    rows = [{"id": i, "name": f"idem-{n}"} for n, i in enumerate(ids)]
    async with db.transaction(tenant=tenant) as uow:
        projects = uow.repo(ProjectRepository)
        assert await projects.insert_many(rows, skip_existing=True) == 10
        assert await projects.insert_many(rows, skip_existing=True) == 0
        assert await projects.insert_many(rows, skip_existing=True, method="copy") == 0
        with pytest.raises(ParameterError, match="lacks column"):
            await projects.insert_many([{"name": "a"}, {"status": "done"}])


async def test_first_page_limit_is_a_checked_int_and_the_statement_has_no_parameters(
    db: Database, tenant: uuid.UUID
) -> None:
    async with db.transaction(tenant=tenant) as uow:
        projects = uow.repo(ProjectRepository)
        for bad in (0, 10_001, True, "5; DROP TABLE projects", 2.0):
            with pytest.raises(ParameterError, match="limit must be an int"):
                await projects.find_page(limit=bad)  # type: ignore[arg-type]
        page = await projects.find_page(limit=7)
        assert len(page.rows) == 7
        # No parameters: PostgreSQL keeps one generic plan instead of re-planning per call.
        types = await uow.fetchval(
            "SELECT parameter_types::text FROM pg_prepared_statements "
            "WHERE statement LIKE '%ORDER BY%LIMIT 7'"
        )
        assert types == "{}"
