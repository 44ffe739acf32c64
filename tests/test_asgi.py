"""The tenant middleware: resolution by id and host, refusals, and a lookup that no pooled
session state can answer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pgaccess import Database, TenantContext
from pgaccess.asgi import TenantInfo, TenantMiddleware, TenantTable
from pgaccess.reference import ACME_ID, GLOBEX_ID
from pgaccess.testing import Project, open_test_database


@pytest.fixture
async def db1(db_dsn: str) -> AsyncIterator[Database]:
    database = open_test_database(db_dsn, Project(Path("migrations"), Path("sql"), None), max_size=1)
    async with database:
        yield database


async def call(mw: TenantMiddleware, headers: dict[bytes, bytes]) -> tuple[int, Any]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    await mw({"type": "http", "path": "/x", "headers": list(headers.items())}, receive, send)
    return sent[0]["status"], sent[-1].get("body")


def echo_tenant() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(TenantContext.current()).encode()})
    return app


async def test_resolves_by_id_and_host_and_refuses_the_rest(db1: Database, db_dsn: str) -> None:
    mw = TenantMiddleware(echo_tenant(), db1, cache_ttl=0)
    assert await call(mw, {b"x-tenant-id": str(ACME_ID).encode()}) == (200, str(ACME_ID).encode())
    owner = await asyncpg.connect(db_dsn)
    domain = await owner.fetchval("SELECT domain FROM tenants WHERE id = $1", GLOBEX_ID)
    assert await call(mw, {b"host": f"{domain}:8000".encode()}) == (200, str(GLOBEX_ID).encode())
    assert (await call(mw, {b"x-tenant-id": b"nope"}))[0] == 400
    assert (await call(mw, {b"x-tenant-id": str(uuid.uuid4()).encode()}))[0] == 404
    assert (await call(mw, {b"host": b"unknown.example"}))[0] == 404
    await owner.execute("UPDATE tenants SET status = 'suspended' WHERE id = $1", GLOBEX_ID)
    await owner.close()
    assert (await call(mw, {b"host": domain.encode()}))[0] == 403


async def test_a_temporary_tenants_table_cannot_answer_the_lookup(db1: Database, db_dsn: str) -> None:
    """An injected statement plants pg_temp.tenants mapping its host to another tenant (and
    reviving a suspended one) on the only pooled connection; the lookup does not see it."""
    owner = await asyncpg.connect(db_dsn)
    await owner.execute("UPDATE tenants SET status = 'suspended' WHERE id = $1", GLOBEX_ID)
    await owner.close()
    async with db1.transaction(tenant=ACME_ID) as uow:
        await uow.execute("CREATE TABLE pg_temp.tenants (id uuid, domain text, status text)")
        await uow.execute(f"INSERT INTO pg_temp.tenants VALUES ('{GLOBEX_ID}', 'evil.example', 'active')")
        await uow.execute("COMMIT; CREATE TABLE pg_temp.tenants2 (x int); BEGIN")  # session-level
    mw = TenantMiddleware(echo_tenant(), db1, cache_ttl=0)
    assert (await call(mw, {b"host": b"evil.example"}))[0] == 404
    assert (await call(mw, {b"x-tenant-id": str(GLOBEX_ID).encode()}))[0] == 403


async def test_a_custom_resolver(db1: Database) -> None:
    class Fixed:
        async def by_id(self, db: Database, tenant_id: uuid.UUID) -> TenantInfo | None:
            return TenantInfo(tenant_id, "active")

        async def by_host(self, db: Database, host: str) -> TenantInfo | None:
            return TenantInfo(ACME_ID, "active") if host == "a.example" else None

    mw = TenantMiddleware(echo_tenant(), db1, resolver=Fixed())
    assert await call(mw, {b"host": b"a.example"}) == (200, str(ACME_ID).encode())
    with pytest.raises(Exception, match="name its schema"):
        TenantTable("tenants")
