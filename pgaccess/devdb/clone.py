"""Template databases and their clones: migrate and seed once, copy per test.

The pytest plugin builds one template per session and clones it for every test; the
benchmarks and ``queries check`` use the same helpers outside pytest.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from ..config import Settings, with_database, with_user
from ..database import Database

APP_ROLE = "pgaccess_app"
ADMIN_ROLE = "pgaccess_admin"


@dataclass(frozen=True)
class Project:
    """Where a project's migrations, named SQL and seeders live, and its role names
    (the core schema creates them; test databases log in as them)."""

    migrations: Path
    sql: Path | None
    seeders: Path | None
    app_role: str = APP_ROLE
    admin_role: str = ADMIN_ROLE
    core_schema: bool = True
    tenant_schema_prefix: str = "tenant_"

    def role_dsns(self, owner_dsn: str) -> tuple[str, str]:
        """(app, admin) DSNs: ``owner_dsn`` logged in as the project's two roles."""
        return with_user(owner_dsn, self.app_role), with_user(owner_dsn, self.admin_role)


_counter = itertools.count()


def unique_name(prefix: str) -> str:
    """A database name no other process or xdist worker on the server will pick."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{prefix}_{worker}_{os.getpid()}_{next(_counter)}"


async def admin_exec(dsn: str, *statements: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        for st in statements:
            await con.execute(st)
    finally:
        await con.close()


async def build_template(server_dsn: str, project: Project, name: str, seed_env: str) -> str:
    """Create database ``name``, migrate and seed it, mark it a template; return its DSN."""
    from ..migrate import Migrator

    await admin_exec(server_dsn, f'CREATE DATABASE "{name}"')
    dsn = with_database(server_dsn, name)
    await Migrator(dsn, project.migrations, echo=lambda _: None, app_role=project.app_role,
                   admin_role=project.admin_role, core=project.core_schema,
                   tenant_prefix=project.tenant_schema_prefix).up()
    if project.seeders is not None:
        from ..seed import SeedRunner, discover_seeders

        seeders = discover_seeders(project.seeders)
        if seeders:
            app_dsn, admin_dsn = project.role_dsns(dsn)
            async with Database(
                Settings(min_size=0, max_size=4), dsn=app_dsn, admin_dsn=admin_dsn,
                sql_dir=project.sql,
            ) as db:
                await SeedRunner(db, seeders, env=seed_env).run()
    await admin_exec(server_dsn, f'ALTER DATABASE "{name}" IS_TEMPLATE true')
    return dsn


async def clone_database(server_dsn: str, template: str, name: str, *, file_copy: bool = False) -> float:
    """``CREATE DATABASE name TEMPLATE template``; returns the time it took in ms.

    ``file_copy=True`` copies the files and checkpoints instead of WAL-logging every block:
    twice as fast for a small template, and the checkpoint is cheap on a throwaway
    cluster (fsync off). Left off for servers pgaccess did not start.
    """
    start = time.perf_counter()
    con = await asyncpg.connect(server_dsn)
    try:
        # STRATEGY is new in PostgreSQL 15; before it, FILE_COPY was the only way.
        strategy = " STRATEGY FILE_COPY" if file_copy and con.get_server_version().major >= 15 else ""
        await con.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}')
    finally:
        await con.close()
    return (time.perf_counter() - start) * 1000


async def drop_database(server_dsn: str, name: str) -> None:
    await admin_exec(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def drop_template(server_dsn: str, name: str) -> None:
    """Drop a database that may be marked as a template (or may not exist)."""
    con = await asyncpg.connect(server_dsn)
    try:
        if await con.fetchval("SELECT datistemplate FROM pg_database WHERE datname = $1", name):
            await con.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE false')
        await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await con.close()


def open_test_database(owner_dsn: str, project: Project, **settings: Any) -> Database:
    """A Database on ``owner_dsn``'s database, logged in as the project's app and admin roles."""
    base = Settings(min_size=0, max_size=10, leak_threshold=5.0, acquire_timeout=5.0)
    app_dsn, admin_dsn = project.role_dsns(owner_dsn)
    return Database(base.replace(**settings), dsn=app_dsn, admin_dsn=admin_dsn, sql_dir=project.sql)
