"""Fixtures for the ``citus`` tests: one real Citus cluster (coordinator + 2 workers) per module.

Without Citus installed the fixtures FAIL (never skip) with the command that installs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pgaccess import Database
from pgaccess.devdb.citus import TemporaryCitusCluster, citus_database, migrate_and_seed
from pgaccess.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "pgaccess_citus"
SHARD_COUNT = 8


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
        await migrate_and_seed(dsn, ROOT)
        return dsn

    return asyncio.run(build())


@pytest.fixture
async def citus_db(citus_dsn: str) -> AsyncIterator[Database]:
    async with citus_database(citus_dsn, ROOT / "sql") as db:
        yield db
