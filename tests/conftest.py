"""Shared helpers for pgaccess's own tests. The fixtures come from pgaccess.testing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgaccess.cluster import LocalCluster, temporary_cluster


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A private cluster this test may stop, restart or break."""
    cluster = temporary_cluster(prefix="pgaccess-own-")
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
async def empty_dsn(pg_dsn: str):  # type: ignore[no-untyped-def]
    """Owner DSN of a new, empty database (dropped afterwards)."""
    from pgaccess.config import with_database
    from pgaccess.testing import _admin_exec, _unique, drop_database

    name = _unique("pgaccess_empty")
    await _admin_exec(pg_dsn, f'CREATE DATABASE "{name}"')
    yield with_database(pg_dsn, name)
    await drop_database(pg_dsn, name)
