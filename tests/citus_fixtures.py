"""Fixtures for the ``citus`` tests: one real Citus cluster (coordinator + 2 workers) per module.

Without Citus installed the fixtures FAIL (never skip) with the command that installs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pgaccess import Database, Settings
from pgaccess.citus import TENANT_PROPAGATION
from pgaccess.config import with_user
from pgaccess.devdb.citus import TemporaryCitusCluster
from pgaccess.errors import ConfigError
from pgaccess.migrate import Migrator
from pgaccess.seed import SeedRunner, discover_seeders

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "pgaccess_citus"
SHARD_COUNT = 8


def citus_database(owner_dsn: str, **settings: object) -> Database:
    """A Database on the coordinator as the app role, with the tenant sent so Citus forwards it."""
    base = Settings(min_size=0, max_size=10, acquire_timeout=10.0,
                    server_settings=dict([TENANT_PROPAGATION]))
    return Database(
        base.replace(**settings), dsn=with_user(owner_dsn, "pgaccess_app"),
        admin_dsn=with_user(owner_dsn, "pgaccess_admin"), sql_dir=ROOT / "sql",
        tenant_set_local=True,
    )


async def migrate_and_seed(owner_dsn: str) -> None:
    await Migrator(owner_dsn, ROOT / "migrations", echo=lambda _: None).up()
    async with citus_database(owner_dsn) as db:
        await SeedRunner(db, discover_seeders(ROOT / "seeders"), env="test").run()


@pytest.fixture(scope="module")
def citus_cluster() -> Iterator[TemporaryCitusCluster]:
    cluster = TemporaryCitusCluster(workers=2, shard_count=SHARD_COUNT)
    try:
        cluster.start()
    except ConfigError as exc:
        pytest.fail(f"citus tests: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def citus_dsn(citus_cluster: TemporaryCitusCluster) -> str:
    """Owner DSN (superuser) of a migrated, seeded database on the coordinator."""

    async def build() -> str:
        dsn = await citus_cluster.create_database(DATABASE)
        await migrate_and_seed(dsn)
        return dsn

    return asyncio.run(build())


@pytest.fixture
async def citus_db(citus_dsn: str) -> AsyncIterator[Database]:
    async with citus_database(citus_dsn) as db:
        yield db
