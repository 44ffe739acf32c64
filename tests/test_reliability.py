"""Faults, stalls and a bounded soak against a private cluster that the tests may break.

Each test is bounded in time. `make reliability` runs the soak longer
(PGACCESS_SOAK_SECONDS); CI runs it for PGACCESS_SOAK_SECONDS or 30 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from pgaccess import (
    ConnectionLost,
    Database,
    PgAccessError,
    PoolTimeout,
    QueryTimeout,
    Settings,
)
from pgaccess.cluster import LocalCluster
from pgaccess.config import with_user
from pgaccess.reference import ACME_ID, GLOBEX_ID, ProjectRepository
from pgaccess.testing import Project, build_template
from pgaccess.uow import background_commits_done

PROJECT = Project(Path("migrations"), Path("sql"), Path("seeders"))
TENANTS = [ACME_ID, GLOBEX_ID]


@pytest.fixture
async def breakable(own_cluster: LocalCluster) -> AsyncIterator[tuple[LocalCluster, str]]:
    """(cluster, owner DSN) of a migrated, seeded database on a cluster we may restart."""
    dsn = await build_template(own_cluster.dsn(), PROJECT, "app", "test")
    con = await asyncpg.connect(own_cluster.dsn())
    await con.execute('ALTER DATABASE "app" IS_TEMPLATE false')
    # Durable commits for crash tests: the throwaway default (synchronous_commit=off) may
    # lose acknowledged commits on `pg_ctl stop -m immediate`, by design of that setting.
    await con.execute("ALTER SYSTEM SET synchronous_commit = on")
    await con.execute("SELECT pg_reload_conf()")
    await con.close()
    yield own_cluster, dsn


def open_db(owner: str, **settings: object) -> Database:
    base = Settings(min_size=2, max_size=10, acquire_timeout=10, connect_retry_budget=30,
                    application_name="pgaccess-fault")
    return Database(base.replace(**settings), dsn=with_user(owner, "pgaccess_app"),
                    admin_dsn=with_user(owner, "pgaccess_admin"), sql_dir="sql")


async def insert_once(uow, key: uuid.UUID) -> None:  # type: ignore[no-untyped-def]
    # The client-generated key makes the unit of work idempotent: a retry after an unknown
    # commit outcome inserts nothing twice.
    await uow.execute("INSERT INTO projects (tenant_id, id, name) VALUES ($1, $2, 'fault') "
                      "ON CONFLICT DO NOTHING", uow.tenant, key)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_server_restart_under_load(breakable: tuple[LocalCluster, str], mode: str) -> None:
    cluster, owner = breakable
    acked: list[uuid.UUID] = []
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async with open_db(owner) as db:
        async def worker(n: int) -> None:
            t = TENANTS[n % 2]
            while not stop.is_set():
                try:
                    if n % 2:
                        key = uuid.uuid4()
                        await db.run_in_transaction(insert_once, key, idempotent=True, retries=20, options={"tenant": t})
                        acked.append(key)
                    else:
                        async with db.transaction(tenant=t, readonly=True) as uow:
                            await uow.repo(ProjectRepository).count()
                except Exception as exc:  # every failure must be typed
                    errors.append(exc)
                await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(worker(n)) for n in range(16)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cluster.restart, mode)
        restarted = time.monotonic()
        while True:  # the pool heals by itself
            try:
                async with db.transaction(tenant=ACME_ID) as uow:
                    await uow.fetchval("SELECT 1")
                break
            except PgAccessError:
                assert time.monotonic() - restarted < 20, "pool did not recover within 20 s"
                await asyncio.sleep(0.1)
        recovery = time.monotonic() - restarted
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        import traceback
        for e in errors:
            if not isinstance(e, PgAccessError):
                traceback.print_exception(e)
        assert all(isinstance(e, PgAccessError) for e in errors), [type(e) for e in errors]
        con = await asyncpg.connect(owner)
        try:
            stored = {r["id"] for r in await con.fetch("SELECT id FROM projects WHERE name = 'fault'")}
        finally:
            await con.close()
        assert acked and set(acked) <= stored  # no acknowledged write lost
        assert len(acked) == len(set(acked))
        await background_commits_done()  # read-only units of work commit in the background
        assert db.pool.stats().in_use == 0  # nothing leaked
        print(f"\nrestart -m {mode}: recovered in {recovery:.2f}s, {len(acked)} acknowledged writes, "
              f"{len(errors)} typed errors")


async def test_killed_backends(breakable: tuple[LocalCluster, str]) -> None:
    _, owner = breakable
    killer = await asyncpg.connect(owner)
    try:
        async with open_db(owner, min_size=1, max_size=1) as db:
            async with db.transaction(tenant=ACME_ID) as uow:
                pid = await uow.fetchval("SELECT pg_backend_pid()")
            await killer.execute("SELECT pg_terminate_backend($1)", pid)  # idle in the pool
            await asyncio.sleep(0.1)
            async with db.transaction(tenant=ACME_ID) as uow:
                assert await uow.fetchval("SELECT pg_backend_pid()") != pid

            with pytest.raises(ConnectionLost):  # mid-transaction: typed
                async with db.transaction(tenant=ACME_ID) as uow:
                    pid = await uow.fetchval("SELECT pg_backend_pid()")
                    await killer.execute("SELECT pg_terminate_backend($1)", pid)
                    await uow.fetchval("SELECT 1")
            attempts = 0

            async def body(uow) -> int:  # type: ignore[no-untyped-def]
                nonlocal attempts
                attempts += 1
                pid = await uow.fetchval("SELECT pg_backend_pid()")
                if attempts == 1:
                    await killer.execute("SELECT pg_terminate_backend($1)", pid)
                return int(await uow.fetchval("SELECT 42"))

            assert await db.run_in_transaction(body, idempotent=True, options={"tenant": ACME_ID}) == 42
            assert attempts == 2
            assert db.pool.stats().in_use == 0
    finally:
        await killer.close()


async def test_stalls_give_typed_errors_in_bounded_time(breakable: tuple[LocalCluster, str]) -> None:
    _, owner = breakable
    async with open_db(owner, max_size=2, acquire_timeout=0.5, idle_in_transaction_session_timeout=0.3,
                       statement_timeout=1.0) as db:
        start = time.monotonic()
        with pytest.raises(QueryTimeout):
            async with db.transaction(tenant=ACME_ID) as uow:
                await uow.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - start < 3

        holder = await asyncpg.connect(owner)
        try:
            await holder.execute("BEGIN; LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
            start = time.monotonic()
            with pytest.raises(QueryTimeout) as info:
                async with db.transaction(tenant=ACME_ID) as uow:
                    await uow.execute("SET LOCAL lock_timeout = '200ms'")
                    await uow.execute("UPDATE projects SET name = name")
            assert info.value.sqlstate == "55P03" and time.monotonic() - start < 3
        finally:
            await holder.close()

        with pytest.raises((QueryTimeout, ConnectionLost)):
            async with db.transaction(tenant=ACME_ID) as uow:
                await uow.fetchval("SELECT 1")
                await asyncio.sleep(0.8)  # the server ends the idle-in-transaction session
                await uow.fetchval("SELECT 1")

    async with open_db(owner, max_size=2, acquire_timeout=0.5) as db:
        release = asyncio.Event()

        async def hog() -> None:
            async with db.transaction(tenant=ACME_ID):
                await release.wait()

        hogs = [asyncio.create_task(hog()) for _ in range(2)]
        await asyncio.sleep(0.1)
        start = time.monotonic()
        with pytest.raises(PoolTimeout):
            async with db.transaction(tenant=ACME_ID):
                pass
        assert time.monotonic() - start < 2
        release.set()
        await asyncio.gather(*hogs)
        async with db.transaction(tenant=ACME_ID) as uow:  # healthy afterwards
            assert await uow.fetchval("SELECT 1") == 1
        assert db.pool.stats().in_use == 0


async def wait_for_sleep(owner: str, timeout: float = 20) -> None:
    con = await asyncpg.connect(owner)
    try:
        deadline = time.monotonic() + timeout
        while not await con.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3)%' "
                                     "AND pid <> pg_backend_pid()"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await con.close()


async def test_migration_process_killed_midway(breakable: tuple[LocalCluster, str], tmp_path: Path) -> None:
    _, owner = breakable
    d = tmp_path / "m"
    d.mkdir()
    for f in Path("migrations").glob("*.sql"):
        (d / f.name).write_text(f.read_text())
    (d / "0100_slow.sql").write_text("CREATE TABLE k1 (x int);\nSELECT pg_sleep(3);\n")
    cmd = [sys.executable, "-m", "pgaccess.migrate", "--dsn", owner, "--dir", str(d), "up", "--no-lint"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    await wait_for_sleep(owner)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    con = await asyncpg.connect(owner)
    try:
        await con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE query LIKE '%pg_sleep(3)%' AND pid <> pg_backend_pid()")
        await asyncio.sleep(0.3)
        assert await con.fetchval("SELECT to_regclass('k1')") is None  # nothing of the file applied
        assert not await con.fetchval("SELECT count(*) FROM pgaccess.schema_migrations WHERE version = '0100'")
    finally:
        await con.close()
    (d / "0100_slow.sql").unlink()
    (d / "0100_steps.sql").write_text("-- pgaccess: no-transaction\nCREATE TABLE n1 (x int);\n"
                                      "CREATE TABLE n2 (x int);\nSELECT pg_sleep(3);\nCREATE TABLE n3 (x int);\n")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    await wait_for_sleep(owner)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "resuming 0100 steps after statement 2/4" in done.stdout
    con = await asyncpg.connect(owner)
    try:
        assert await con.fetchval("SELECT to_regclass('n3') IS NOT NULL")
    finally:
        await con.close()


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def test_soak(breakable: tuple[LocalCluster, str]) -> None:
    _, owner = breakable
    seconds = float(os.environ.get("PGACCESS_SOAK_SECONDS", "30"))
    latencies: list[float] = []
    errors: list[BaseException] = []
    rss: list[float] = []
    conns: list[int] = []
    prepared: list[int] = []
    async with open_db(owner, application_name="pgaccess-soak") as db:
        stop = time.monotonic() + seconds

        async def worker(n: int) -> None:
            t = TENANTS[n % 2]
            i = 0
            while time.monotonic() < stop:
                i += 1
                start = time.perf_counter()
                try:
                    async with db.transaction(tenant=t) as uow:
                        projects = uow.repo(ProjectRepository)
                        if i % 5 == 0:
                            await projects.insert(name=f"soak-{n}-{i}")
                        elif i % 5 == 1:
                            await projects.find_page(limit=20)
                        else:
                            await projects.count()
                except Exception as exc:
                    errors.append(exc)
                latencies.append(time.perf_counter() - start)

        async def sampler() -> None:
            monitor = await asyncpg.connect(owner)
            try:
                while time.monotonic() < stop:
                    rss.append(rss_mb())
                    conns.append(await monitor.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgaccess-soak'"))
                    async with db.transaction(tenant=ACME_ID) as uow:
                        prepared.append(await uow.fetchval("SELECT count(*) FROM pg_prepared_statements"))
                    await asyncio.sleep(max(0.2, seconds / 30))
            finally:
                await monitor.close()

        await asyncio.gather(sampler(), *(worker(n) for n in range(16)))
    ops = len(latencies)
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    half = len(rss) // 2
    growth = statistics.mean(rss[half:]) - statistics.mean(rss[:half]) if half else 0.0
    print(f"\nsoak {seconds:.0f}s: {ops / seconds:,.0f} ops/s, p99 {p99:.1f} ms, errors {len(errors)}, "
          f"RSS {rss[0]:.0f}->{rss[-1]:.0f} MB (growth {growth:+.1f}), connections max {max(conns)}, "
          f"prepared statements max {max(prepared)}")
    assert errors == []
    assert max(conns) <= 10
    assert max(prepared) <= 100  # bounded by the statement cache
    assert growth < 30
