"""The embedded development cluster under ``.pgaccess/`` in the project's root directory.

With no ``DATABASE_URL`` the command-line tools use it: it is created and started on first
use and reused after. ``pgaccess devdb status|start|stop|destroy`` manages it. A DSN that
points at a stopped cluster's socket directory gets a message that says to start it
(:func:`check_socket`) instead of asyncpg's bare ``FileNotFoundError``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg

from ..cluster import LocalCluster
from ..config import with_database
from ..errors import ConfigError

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


def check_socket(dsn: str) -> str:
    """``dsn`` unchanged, or ConfigError when it names a unix-socket directory with no server
    socket in it (a stopped dev or throwaway cluster)."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = (query.get("host") or [parts.hostname or ""])[0]
    if not host.startswith("/"):
        return dsn
    port = (query.get("port") or [str(parts.port or 5432)])[0]
    socket = Path(host) / f".s.PGSQL.{port}"
    if socket.exists():
        return dsn
    hint = ("run `pgaccess devdb start` (in the project directory)"
            if Path(host).name == "socket" and Path(host).parent.name == ".pgaccess"
            else "start the server, or point DATABASE_URL / --dsn at a running one")
    raise ConfigError(f"no PostgreSQL server is listening on {socket}: the cluster there is "
                      f"stopped; {hint}")
