"""Shared helpers for pgaccess's own tests. The fixtures come from pgaccess.testing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from pgaccess.cluster import LocalCluster
from pgaccess.devdb.clone import admin_exec, drop_database, unique_name
from pgaccess.devdb.fixture_tenants import TenantChoice
from pgaccess.devdb.servers import throwaway_cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "containers: needs a Docker engine (the container path; "
                            "scripts/ci-containers.sh runs the suite's core through it)")


@pytest.fixture(scope="session")
def pgaccess_tenant_choice() -> TenantChoice:
    """The reference seeders' Acme and Globex: many tests read their seeded rows."""
    return TenantChoice(pick=("domain=acme.localhost", "domain=globex.localhost"))


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A private cluster this test may stop, restart or break."""
    cluster = throwaway_cluster(prefix="pgaccess-own-")
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest_asyncio.fixture(loop_scope="function")
async def empty_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """Owner DSN of a new, empty database (dropped afterwards)."""
    from pgaccess.config import with_database

    name = unique_name("pgaccess_empty")
    await admin_exec(pg_dsn, f'CREATE DATABASE "{name}"')
    yield with_database(pg_dsn, name)
    await drop_database(pg_dsn, name)


@pytest.fixture(autouse=True)
def _structlog_as_found() -> Iterator[None]:
    """``structlog.testing.capture_logs`` leaves structlog *configured*, which routes pgaccess's
    events through structlog for every later test: undo it after each test."""
    import structlog

    yield
    structlog.reset_defaults()
