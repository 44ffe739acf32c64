"""Health report, CLI exit codes, endpoints and the tenant middleware, against real servers."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from examples.service import create_app
from pgaccess import Database, Settings
from pgaccess.cluster import LocalCluster
from pgaccess.health import check
from pgaccess.metrics import Metrics
from pgaccess.reference import INITECH_ID
from pgaccess.testing import Project, open_test_database

PROJECT = Project(Path("migrations"), Path("sql"), Path("seeders"))


async def test_full_report_against_a_migrated_database(db: Database) -> None:
    report = await check(db)
    assert report.status == "ok", report.reasons
    c = report.checks
    assert c["ping"].data["latency_ms"] > 0
    assert c["server"].data["role"] == "primary"
    assert c["server"].data["server_version"].startswith(("15", "16", "17", "14"))
    assert c["server"].data["connections_used"] <= c["server"].data["max_connections"]
    stats = c["database"].data
    for key in ("backends", "commits", "rollbacks", "cache_hit_ratio", "deadlocks", "temp_bytes",
                "conflicts", "size_bytes", "longest_transaction_s", "idle_in_transaction"):
        assert key in stats
    assert stats["size_bytes"] > 1_000_000
    assert c["migrations"].data["latest_applied"] == c["migrations"].data["latest_on_disk"] == "0006"
    assert c["pool"].data["max_size"] == 10
    assert report.exit_code == 0


async def test_health_checks_keep_their_connections_pooled(db: Database) -> None:
    """Health runs fixed SQL on pool.vetted_connection(): its connections go back to the pool
    open (a connection handed out raw is closed at release), and leave no raw-SQL flag."""
    from pgaccess.pool import raw_connection

    await check(db, cache_seconds=0)
    opened = db.pool.stats().connections_opened
    for _ in range(5):
        assert (await check(db, cache_seconds=0)).status == "ok"
    stats = db.pool.stats()
    assert (stats.connections_discarded, stats.connections_opened) == (0, opened)
    async with db.pool.vetted_connection() as con:
        assert raw_connection(con)._pga_raw_sql is False


async def test_a_prepared_transaction_left_behind_degrades_the_database_check(
    db: Database, db_dsn: str, tenant: uuid.UUID
) -> None:
    """PREPARE TRANSACTION from SQL in a unit of work hands its locks to no session (see
    docs/SECURITY.md): health reports it once it is older than max_prepared_age_s."""
    from test_attacks import owner

    from pgaccess import TransactionError

    gid = f"pga_health_{uuid.uuid4().hex[:12]}"
    try:
        with pytest.raises(TransactionError):
            async with db.transaction(tenant=tenant) as uow:
                await uow.execute(f"PREPARE TRANSACTION '{gid}'")
        report = await check(db, cache_seconds=0, max_prepared_age_s=0)
        database = report.checks["database"]
        assert database.status == "degraded" and report.status == "degraded"
        assert database.data["prepared_transactions"] >= 1
        assert "ROLLBACK PREPARED" in (database.error or "")
        assert (await check(db, cache_seconds=0)).checks["database"].status == "ok"  # < 60 s
    finally:
        await owner(db_dsn, f"ROLLBACK PREPARED '{gid}'")
    assert (await check(db, cache_seconds=0, max_prepared_age_s=0)).checks["database"].status == "ok"


async def test_idle_in_transaction_and_long_transaction_are_reported(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        await uow.fetchval("SELECT 1")
        await asyncio.sleep(0.3)
        report = await check(db, cache_seconds=0)
    assert report.checks["database"].data["idle_in_transaction"] >= 1
    assert report.checks["database"].data["longest_transaction_s"] >= 0.2


async def test_pending_and_drifted_migrations_mean_degraded(db: Database, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree("migrations", migrations)
    (migrations / "0099_more.sql").write_text("CREATE TABLE more (id int);\n")
    report = await check(db, migrations_dir=migrations)
    assert report.status == "degraded"
    assert report.checks["migrations"].data["pending_versions"] == ["0099"]
    assert any("pending" in r for r in report.reasons)
    (migrations / "0099_more.sql").unlink()
    with (migrations / "0002_users_and_projects.sql").open("a") as fh:
        fh.write("\n-- edited after it was applied\n")
    report = await check(db, migrations_dir=migrations, cache_seconds=0)
    assert report.status == "degraded"
    assert "0002: checksum changed" in report.checks["migrations"].data["drift"][0]


async def test_expensive_checks_are_cached(db: Database) -> None:
    first = await check(db, cache_seconds=60)
    second = await check(db, cache_seconds=60)
    assert second.checks["database"] is first.checks["database"]
    assert second.checks["ping"] is not first.checks["ping"]


async def test_down_when_the_server_is_stopped_and_report_still_returns(own_cluster: LocalCluster) -> None:
    db = Database(Settings(min_size=0, connect_retry_budget=30), dsn=own_cluster.dsn())
    await db.open()
    own_cluster.stop(mode="immediate")
    try:
        start = time.monotonic()
        report = await check(db, timeout=1.0)
        assert time.monotonic() - start < 3
        assert report.status == "down" and report.exit_code == 2
        assert report.checks["ping"].status == "down"
    finally:
        await db.close(timeout=1)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgaccess.health", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_exit_codes(db_dsn: str, own_cluster: LocalCluster, tmp_path: Path) -> None:
    ok = run_cli("--dsn", db_dsn, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "ok"
    migrations = tmp_path / "m"
    shutil.copytree("migrations", migrations)
    (migrations / "0099_pending.sql").write_text("SELECT 1;\n")
    degraded = run_cli("--dsn", db_dsn, "--migrations", str(migrations))
    assert degraded.returncode == 1 and "DEGRADED" in degraded.stdout
    dsn = own_cluster.dsn()
    own_cluster.stop()
    down = run_cli("--dsn", dsn, "--timeout", "1")
    assert down.returncode == 2 and "DOWN" in down.stdout


@pytest.fixture
async def client(db_dsn: str):  # type: ignore[no-untyped-def]
    database = open_test_database(db_dsn, PROJECT)
    database.metrics = Metrics()
    app = create_app(database)
    async with database:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://acme.localhost") as c:
            yield c


async def test_health_endpoints(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/health/live", "/health/ready"):
        r = await client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.json()["status"] == "ok"


async def test_tenant_by_domain_and_header(client: httpx.AsyncClient, tenant: uuid.UUID,
                                           other_tenant: uuid.UUID) -> None:
    r = await client.get("/projects")
    assert r.status_code == 200
    assert {p["tenant_id"] for p in r.json()} == {str(tenant)}
    r = await client.get("/projects", headers={"X-Tenant-ID": str(other_tenant)})
    assert {p["tenant_id"] for p in r.json()} == {str(other_tenant)}
    created = await client.post("/projects", json={"name": "via-http"})
    assert created.status_code == 201 and created.json()["tenant_id"] == str(tenant)
    r = await client.get("/projects", headers={"X-Tenant-ID": str(other_tenant)}, params={"limit": 500})
    assert "via-http" not in {p["name"] for p in r.json()}


async def test_unknown_suspended_and_malformed_tenants(client: httpx.AsyncClient) -> None:
    assert (await client.get("/projects", headers={"host": "nobody.localhost"})).status_code == 404
    assert (await client.get("/projects", headers={"X-Tenant-ID": str(uuid.uuid4())})).status_code == 404
    r = await client.get("/projects", headers={"X-Tenant-ID": str(INITECH_ID)})
    assert r.status_code == 403 and "suspended" in r.text
    r = await client.get("/projects", headers={"X-Tenant-ID": "1 OR 1=1"})
    assert r.status_code == 400 and "invalid tenant id" in r.text


async def test_concurrent_requests_for_different_tenants_never_mix(
    client: httpx.AsyncClient, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    async def get(t: uuid.UUID) -> set[str]:
        r = await client.get("/projects", headers={"X-Tenant-ID": str(t)})
        return {p["tenant_id"] for p in r.json()}

    results = await asyncio.gather(*(get([tenant, other_tenant][i % 2]) for i in range(40)))
    for i, seen in enumerate(results):
        assert seen == {str([tenant, other_tenant][i % 2])}


async def test_metrics_endpoint(client: httpx.AsyncClient) -> None:
    await client.get("/projects")
    await client.get("/health")
    r = await client.get("/metrics/")
    assert r.status_code == 200
    assert "pgaccess_pool_connections" in r.text
    assert 'pgaccess_query_duration_seconds_count{query="ProjectRepository.find_page"}' in r.text
    assert "pgaccess_health_status 0.0" in r.text


async def test_missing_migration_files_are_not_drift(db: Database, tmp_path: Path) -> None:
    """A service image without migration files: the core schema is still checked (it ships
    with the package) and the files are reported as not available, not as drift."""
    report = await check(db, migrations_dir=tmp_path / "not-in-this-image", cache_seconds=0)
    m = report.checks["migrations"]
    assert m.status == "ok", report.reasons
    assert m.data["files"] == "not available here" and m.data["latest_applied"] == "0006"
    assert m.data["core_pending"] == [] and "drift" not in m.data


async def test_health_cli_without_migration_files_exits_0(db_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.pgaccess]\nmigrations = "gone"\n')
    out = subprocess.run([sys.executable, "-m", "pgaccess.health", "--dsn", db_dsn, "--kind", "ready",
                          "--json"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["checks"]["migrations"]["data"]["files"] == "not available here"


async def test_app_role_defaults_and_dangerous_functions_are_findings(db: Database, db_dsn: str) -> None:
    import asyncpg

    report = await check(db, cache_seconds=0)
    assert report.checks["roles"].status == "ok", report.reasons
    assert report.checks["roles"].data["executable_functions"] == []
    con = await asyncpg.connect(db_dsn)
    try:
        name = await con.fetchval("SELECT current_database()")
        await con.execute(f'ALTER ROLE pgaccess_app IN DATABASE "{name}" SET work_mem = \'8MB\'')
        await con.execute("GRANT EXECUTE ON FUNCTION lo_import(text) TO pgaccess_app")
        await con.execute("GRANT EXECUTE ON FUNCTION pg_terminate_backend(integer, bigint) TO pgaccess_app")
        report = await check(db, cache_seconds=0)
        roles = report.checks["roles"]
        assert roles.status == "degraded" and report.status == "degraded"
        assert roles.data["role_settings"] == [f"work_mem=8MB ({name})"]
        assert roles.data["executable_functions"] == [
            "lo_import(text)", "pg_terminate_backend(integer,bigint)"]
        assert any("role/database defaults" in r and "can execute lo_import(text)" in r
                   for r in report.reasons)
    finally:
        await con.execute(f'ALTER ROLE pgaccess_app IN DATABASE "{name}" RESET ALL')
        await con.close()
