"""The embedded development cluster under ``.pgaccess/`` in the working directory.

With no ``DATABASE_URL`` the command-line tools use it: it is created and started on first
use and reused after. ``python -m pgaccess devdb status|stop|destroy`` manages it.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg

from ..cluster import LocalCluster
from ..config import with_database

DEV_DATABASE = "pgaccess_dev"


def dev_cluster(root: Path | None = None) -> LocalCluster:
    directory = (root or Path.cwd()) / ".pgaccess"
    return LocalCluster(directory)


async def dev_dsn(root: Path | None = None) -> str:
    """Start the dev cluster if needed, make sure its database exists, return its DSN."""
    cluster = dev_cluster(root)
    if not cluster.is_running():
        if os.geteuid() == 0:
            cluster.directory.mkdir(parents=True, exist_ok=True)
            os.chmod(cluster.directory, 0o755)
        cluster.start()
    await _ensure_database(cluster.dsn())
    return with_database(cluster.dsn(), DEV_DATABASE)


async def _ensure_database(admin_dsn: str) -> None:
    con = await asyncpg.connect(admin_dsn)
    try:
        exists = await con.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DEV_DATABASE)
        if not exists:
            await con.execute(f'CREATE DATABASE "{DEV_DATABASE}"')
    finally:
        await con.close()
