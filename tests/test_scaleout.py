"""Scale-out on real engines: PgBouncer in transaction mode and a streaming replica."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from pgaccess import ConfigError, Database, MigrationError, QueryTimeout, Settings
from pgaccess.cluster import LocalCluster, find_bindir
from pgaccess.config import with_user
from pgaccess.devdb.clone import Project, build_template
from pgaccess.devdb.pgbouncer import TemporaryPgBouncer
from pgaccess.health import check
from pgaccess.migrate import Migrator
from pgaccess.reference import ACME_ID, GLOBEX_ID, ProjectRepository

PROJECT = Project(Path("migrations"), Path("sql"), Path("seeders"))


@pytest.fixture
async def app_database(own_cluster: LocalCluster) -> AsyncIterator[tuple[LocalCluster, str]]:
    dsn = await build_template(own_cluster.dsn(), PROJECT, "app", "test")
    con = await asyncpg.connect(own_cluster.dsn())
    await con.execute('ALTER DATABASE "app" IS_TEMPLATE false')
    await con.close()
    yield own_cluster, dsn


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory the postgres user can enter (pytest's tmp_path is 0700 root)."""
    d = Path(tempfile.mkdtemp(prefix="pgaccess-scale-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pgbouncer(app_database: tuple[LocalCluster, str]) -> Iterator[str]:
    """A PgBouncer in transaction mode (2 server connections) in front of the cluster;
    yields the DSN template 'postgresql://{user}@127.0.0.1:PORT/app'."""
    cluster, _ = app_database
    try:
        bouncer = TemporaryPgBouncer(cluster.socket_dir, cluster.port)
    except ConfigError as exc:
        pytest.fail(f"{exc} (scripts/bootstrap.sh installs it)")
    try:
        yield bouncer.dsn("{user}", "app")
    finally:
        bouncer.stop()


def bouncer_db(template: str, **settings: object) -> Database:
    base = Settings(min_size=0, max_size=20, statement_cache_size=0, acquire_timeout=20)
    return Database(base.replace(**settings), dsn=template.format(user="pgaccess_app"),
                    admin_dsn=template.format(user="pgaccess_admin"), sql_dir="sql")


async def test_tenant_context_never_leaks_through_pgbouncer(pgbouncer: str) -> None:
    """Many clients, two server connections: the tenant is transaction-local, so it cannot
    follow a server connection to the next client."""
    async with bouncer_db(pgbouncer) as db:

        async def worker(i: int) -> None:
            t = (ACME_ID, GLOBEX_ID)[i % 2]
            if i % 3 == 0:
                async with db.transaction() as uow:  # no tenant: must see nothing
                    assert await uow.fetchval("SELECT count(*) FROM projects") == 0
                return
            async with db.transaction(tenant=t) as uow:
                if i % 5 == 0:
                    await uow.repo(ProjectRepository).insert(name=f"bouncer-{i}")
                rows = await uow.fetch("SELECT DISTINCT tenant_id FROM projects")
                assert [r["tenant_id"] for r in rows] == [t]
                assert await uow.q.count_users() == 5

        await asyncio.gather(*(worker(i) for i in range(300)))
        assert db.pool.session_settings is False  # PgBouncer refused statement_timeout at startup


async def test_timeouts_still_apply_behind_pgbouncer(pgbouncer: str) -> None:
    async with bouncer_db(pgbouncer, statement_timeout=0.3) as db:
        with pytest.raises(QueryTimeout):
            async with db.transaction(tenant=ACME_ID) as uow:
                await uow.execute("SELECT pg_sleep(2)")
        async with db.transaction(tenant=ACME_ID) as uow:
            assert await uow.fetchval("SHOW statement_timeout") == "300ms"


async def test_migrations_refuse_a_transaction_pooler(pgbouncer: str) -> None:
    with pytest.raises(MigrationError, match="connection pooler"):
        await Migrator(pgbouncer.format(user="postgres"), "migrations").up()


@pytest.fixture
async def replica(app_database: tuple[LocalCluster, str], shared_tmp: Path) -> AsyncIterator[LocalCluster]:
    """A streaming replica of the cluster made with pg_basebackup -R, on its own socket."""
    primary, _ = app_database
    replica = LocalCluster(shared_tmp / "replica")
    replica.directory.mkdir()
    replica.socket_dir.mkdir()
    if os.geteuid() == 0:
        replica._chown(replica.directory)
        replica._chown(replica.socket_dir)
    replica._run(["pg_basebackup", "-D", str(replica.data_dir), "-R", "-X", "stream", "-c", "fast",
                  "-h", str(primary.socket_dir), "-p", str(primary.port), "-U", "postgres"])
    with (replica.data_dir / "postgresql.conf").open("a") as fh:
        fh.write(f"\nunix_socket_directories = '{replica.socket_dir}'\nhot_standby_feedback = on\n")
    replica.start()
    assert find_bindir()
    try:
        yield replica
    finally:
        replica.destroy()


async def test_reads_go_to_a_caught_up_replica(app_database: tuple[LocalCluster, str],
                                               replica: LocalCluster) -> None:
    _, owner = app_database
    replica_dsn = with_user(replica.dsn("app"), "pgaccess_app")
    db = Database(Settings(min_size=1, max_size=4), dsn=with_user(owner, "pgaccess_app"),
                  admin_dsn=with_user(owner, "pgaccess_admin"), sql_dir="sql",
                  replica_dsns=[replica_dsn], max_replica_lag=1.0, read_your_writes=0.5)
    async with db:
        assert db.replicas is not None and db.replicas.states[0].healthy
        async with db.transaction(tenant=ACME_ID, readonly=True) as uow:
            assert await uow.fetchval("SELECT pg_is_in_recovery()") is True
            assert await uow.repo(ProjectRepository).count() == 20
        async with db.transaction(tenant=ACME_ID, readonly=True, primary=True) as uow:
            assert await uow.fetchval("SELECT pg_is_in_recovery()") is False
        async with db.transaction(tenant=ACME_ID) as uow:  # a write ...
            p = await uow.repo(ProjectRepository).insert(name="just-written")
        async with db.transaction(tenant=ACME_ID, readonly=True) as uow:  # ... reads pinned to primary
            assert await uow.fetchval("SELECT pg_is_in_recovery()") is False
            assert await uow.repo(ProjectRepository).exists(p.id)
        await asyncio.sleep(0.6)
        async with db.transaction(tenant=ACME_ID, readonly=True) as uow:  # window over: replica
            assert await uow.fetchval("SELECT pg_is_in_recovery()") is True
        report = await check(db)
        assert report.checks["replica:replica0"].status == "ok"
        assert report.checks["replica:replica0"].data["lag_s"] is not None


async def test_lagging_or_stopped_replica_is_skipped(app_database: tuple[LocalCluster, str],
                                                     replica: LocalCluster) -> None:
    _, owner = app_database
    db = Database(Settings(min_size=1, max_size=4, connect_retry_budget=0.5, connect_timeout=1),
                  dsn=with_user(owner, "pgaccess_app"), sql_dir="sql",
                  replica_dsns=[with_user(replica.dsn("app"), "pgaccess_app")], max_replica_lag=0.5)
    async with db:
        assert db.replicas is not None
        admin = await asyncpg.connect(replica.dsn("app"))
        await admin.execute("SELECT pg_wal_replay_pause()")
        await admin.close()
        for i in range(3):  # writes the replica does not replay
            async with db.transaction(tenant=ACME_ID) as uow:
                await uow.repo(ProjectRepository).insert(name=f"lag-{i}-{uuid.uuid4()}")
            await asyncio.sleep(0.4)
        await db.replicas.check()
        state = db.replicas.states[0]
        assert not state.healthy and state.error  # lag over the limit, or unknown
        async with db.transaction(tenant=ACME_ID, readonly=True) as uow:
            assert await uow.fetchval("SELECT pg_is_in_recovery()") is False  # fell back
        assert db.replicas.fallbacks >= 1
        report = await check(db)
        assert report.status == "degraded" and "replica:replica0" in " ".join(report.reasons)
        replica.stop(mode="immediate")
        await db.replicas.check()
        assert not db.replicas.states[0].healthy and db.replicas.states[0].error
        async with db.transaction(tenant=ACME_ID, readonly=True) as uow:
            assert await uow.fetchval("SELECT 1") == 1


async def test_set_local_tenant_statement_for_citus(db_dsn: str, tenant: uuid.UUID) -> None:
    """The Citus path is one setting: SET LOCAL instead of set_config()."""
    db = Database(Settings(min_size=0), dsn=with_user(db_dsn, "pgaccess_app"), sql_dir="sql",
                  tenant_set_local=True)
    async with db:
        async with db.transaction(tenant=tenant) as uow:
            assert await uow.repo(ProjectRepository).count() == 20
            assert await uow.fetchval("SELECT current_setting('app.tenant_id')") == str(tenant)
        async with db.transaction() as uow:
            assert await uow.fetchval("SELECT count(*) FROM projects") == 0


async def test_autocommit_behind_pgbouncer_takes_the_transaction_form(pgbouncer: str) -> None:
    """A session-level tenant cannot be relied on between two round trips through a
    transaction pooler: autocommit statements fall back to BEGIN + tenant, statement, COMMIT."""
    async with bouncer_db(pgbouncer) as db:

        async def worker(i: int) -> None:
            t = (ACME_ID, GLOBEX_ID)[i % 2]
            if i % 3 == 0:
                assert await db.autocommit().fetchval("SELECT count(*) FROM projects") == 0
                return
            rows = await db.autocommit(tenant=t).fetch("SELECT DISTINCT tenant_id FROM projects")
            assert [r["tenant_id"] for r in rows] == [t]
            assert await db.autocommit(tenant=t).q.count_users() == 5

        await asyncio.gather(*(worker(i) for i in range(200)))
        assert db.pool.session_settings is False
