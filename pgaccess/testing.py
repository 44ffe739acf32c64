"""pytest plugin: a real, migrated, seeded PostgreSQL for every test.

Registered through the ``pytest11`` entry point, so installing pgaccess makes the fixtures
available. Where the server comes from, in order:

1. ``PGACCESS_TEST_DSN`` (a superuser/owner DSN to a running server);
2. a private throwaway cluster from the PostgreSQL binaries on this machine (initdb into a
   temporary directory, unix socket only, ``fsync=off``), stopped and deleted at the end;
3. testcontainers, where Docker is reachable.

If none works the session fails with a message that says what to install - it never skips.

Fixtures: ``pg_server`` / ``pg_dsn`` (session), ``migrated_template`` (session: migrated and
seeded once, marked as a template), ``db_dsn`` and ``db`` (function: a fresh clone of the
template, a :class:`~pgaccess.Database` logged in as the app role), ``db_tx`` (function:
faster, everything in one transaction rolled back at the end), ``tenant`` /
``other_tenant`` (seeded tenant ids), and ``as_tenant`` (``tenant_scope``).

Point them at your own project with ini options (``pgaccess_migrations``, ``pgaccess_sql``,
``pgaccess_seeders``) or by overriding ``pgaccess_project`` in a conftest.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from .cluster import LocalCluster, temporary_cluster
from .config import Settings, with_database, with_user
from .database import Database
from .errors import ConfigError
from .pool import raw_connection
from .tenancy import tenant_scope
from .uow import TransactionContext, UnitOfWork

APP_ROLE = "pgaccess_app"
ADMIN_ROLE = "pgaccess_admin"

as_tenant = tenant_scope


@dataclass
class TestServer:
    """A PostgreSQL server for tests: ``dsn`` logs in as a superuser to ``postgres``."""

    dsn: str
    cluster: LocalCluster | None = None
    container: Any = None
    clone_ms: list[float] = field(default_factory=list)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.destroy()
        if self.container is not None:
            self.container.stop()


@dataclass(frozen=True)
class Project:
    """Where a project's migrations, named SQL and seeders live."""

    migrations: Path
    sql: Path | None
    seeders: Path | None


def start_test_server() -> TestServer:
    """Outside pytest too: the server the test suite would use (see module docstring)."""
    if dsn := os.environ.get("PGACCESS_TEST_DSN"):
        return TestServer(dsn=dsn)
    errors: list[str] = []
    try:
        cluster = temporary_cluster()
        return TestServer(dsn=cluster.dsn(), cluster=cluster)
    except ConfigError as exc:
        errors.append(f"local binaries: {exc}")
    try:
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-not-found]

        container = PostgresContainer("postgres:15", driver=None).start()
        return TestServer(dsn=container.get_connection_url(), container=container)
    except Exception as exc:
        errors.append(f"testcontainers: {type(exc).__name__}: {exc}")
    raise ConfigError(
        "cannot start PostgreSQL for the tests. Install the server (Debian/Ubuntu: "
        "`apt-get install postgresql`), or set PGACCESS_TEST_DSN to a running server, or "
        "make Docker available for testcontainers.\n" + "\n".join(errors)
    )


def _ini_path(config: pytest.Config, name: str, default: str) -> Path | None:
    raw = config.getini(name) or default
    path = Path(str(raw))
    if not path.is_absolute():
        path = Path(str(config.rootpath)) / path
    return path if path.exists() else None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("pgaccess_migrations", "migrations directory", default="migrations")
    parser.addini("pgaccess_sql", "named SQL directory", default="sql")
    parser.addini("pgaccess_seeders", "seeders directory", default="seeders")
    parser.addini("pgaccess_seed_env", "environment given to seeders", default="test")


_counter = itertools.count()


def _unique(prefix: str) -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{prefix}_{worker}_{os.getpid()}_{next(_counter)}"


async def _admin_exec(dsn: str, *statements: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        for st in statements:
            await con.execute(st)
    finally:
        await con.close()


async def build_template(server_dsn: str, project: Project, name: str, seed_env: str) -> str:
    """Create database ``name``, migrate and seed it, mark it a template; return its DSN."""
    from .migrate import Migrator

    await _admin_exec(server_dsn, f'CREATE DATABASE "{name}"')
    dsn = with_database(server_dsn, name)
    await Migrator(dsn, project.migrations, echo=lambda _: None).up()
    if project.seeders is not None:
        from .seed import SeedRunner, discover_seeders

        seeders = discover_seeders(project.seeders)
        if seeders:
            async with Database(
                Settings(min_size=0, max_size=4),
                dsn=with_user(dsn, APP_ROLE),
                admin_dsn=with_user(dsn, ADMIN_ROLE),
                sql_dir=project.sql,
            ) as db:
                await SeedRunner(db, seeders, env=seed_env).run()
    await _admin_exec(server_dsn, f'ALTER DATABASE "{name}" IS_TEMPLATE true')
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
    await _admin_exec(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def open_test_database(owner_dsn: str, project: Project, **settings: Any) -> Database:
    """A Database on ``owner_dsn``'s database, logged in as the app and admin roles."""
    base = Settings(min_size=0, max_size=10, leak_threshold=5.0, acquire_timeout=5.0)
    return Database(
        base.replace(**settings),
        dsn=with_user(owner_dsn, APP_ROLE),
        admin_dsn=with_user(owner_dsn, ADMIN_ROLE),
        sql_dir=project.sql,
    )


async def assert_no_leaks(db: Database) -> None:
    from .uow import background_commits_done

    await background_commits_done()
    for pool in (db.pool, db._admin_pool):
        if pool is None or not pool.is_open:
            continue
        stats = pool.stats()
        if stats.in_use:
            held = "\n".join(pool.held_connections())
            pytest.fail(
                f"{stats.in_use} connection(s) of pool {pool.name!r} still checked out at "
                f"teardown (a unit of work or pool.connection() was not closed):\n{held}"
            )


class TemporaryPgBouncer:
    """A throwaway PgBouncer (transaction pooling) in front of a unix-socket server.

    ``dsn_template`` is ``postgresql://{user}@127.0.0.1:PORT/{database}``. Runs as the
    ``postgres`` user when started by root (PgBouncer refuses root).
    """

    def __init__(self, socket_dir: Path, port: int = 5432, *, pool_size: int = 2,
                 users: tuple[str, ...] = (APP_ROLE, ADMIN_ROLE, "postgres")) -> None:
        import shutil
        import socket
        import subprocess
        import tempfile

        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise ConfigError("pgbouncer is not installed: `apt-get install pgbouncer`")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.directory = Path(tempfile.mkdtemp(prefix="pgaccess-pgbouncer-"))
        os.chmod(self.directory, 0o755)
        d = self.directory
        (d / "users.txt").write_text("".join(f'"{u}" ""\n' for u in users))
        (d / "pgbouncer.ini").write_text(
            f"[databases]\n* = host={socket_dir} port={port}\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {d}/users.txt\npool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmax_client_conn = 1000\nlogfile = {d}/pgbouncer.log\n"
        )
        kwargs: dict[str, object] = {}
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            for p in (d, *d.iterdir()):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            kwargs = {"user": pw.pw_uid, "group": pw.pw_gid}
        self.process = subprocess.Popen(  # type: ignore[call-overload]
            [binary, str(d / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, **kwargs,
        )
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (d / "pgbouncer.log").read_text() if (d / "pgbouncer.log").exists() else ""
                self.stop()
                raise ConfigError(f"pgbouncer did not start:\n{log[-2000:]}")
            time.sleep(0.05)

    def dsn(self, user: str, database: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        import shutil

        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestServer]:
    try:
        server = start_test_server()
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        if server.clone_ms:
            median = statistics.median(server.clone_ms)
            print(f"\npgaccess: {len(server.clone_ms)} database clones, median {median:.1f} ms")
        server.stop()


@pytest.fixture(scope="session")
def pg_dsn(pg_server: TestServer) -> str:
    return pg_server.dsn


@pytest.fixture(scope="session")
def pgaccess_project(pytestconfig: pytest.Config) -> Project:
    migrations = _ini_path(pytestconfig, "pgaccess_migrations", "migrations")
    if migrations is None:
        pytest.fail("pgaccess: no migrations directory (set the pgaccess_migrations ini option)")
    return Project(
        migrations=migrations,
        sql=_ini_path(pytestconfig, "pgaccess_sql", "sql"),
        seeders=_ini_path(pytestconfig, "pgaccess_seeders", "seeders"),
    )


@pytest.fixture(scope="session")
def migrated_template(
    pg_server: TestServer, pgaccess_project: Project, pytestconfig: pytest.Config
) -> Iterator[str]:
    """The name of a database migrated (and seeded) once per session, marked as template."""
    digest = hashlib.sha1(str(pgaccess_project).encode()).hexdigest()[:8]
    name = _unique(f"pgaccess_tpl_{digest}")
    env = str(pytestconfig.getini("pgaccess_seed_env") or "test")
    asyncio.run(build_template(pg_server.dsn, pgaccess_project, name, env))
    yield name
    asyncio.run(_admin_exec(pg_server.dsn, f'ALTER DATABASE "{name}" IS_TEMPLATE false'))
    asyncio.run(drop_database(pg_server.dsn, name))


@pytest.fixture
async def db_dsn(pg_server: TestServer, migrated_template: str) -> AsyncIterator[str]:
    """Owner DSN of a fresh clone of the template, dropped after the test."""
    name = _unique("pgaccess_test")
    pg_server.clone_ms.append(await clone_database(
        pg_server.dsn, migrated_template, name, file_copy=pg_server.cluster is not None))
    yield with_database(pg_server.dsn, name)
    await drop_database(pg_server.dsn, name)


@pytest.fixture
async def db(db_dsn: str, pgaccess_project: Project) -> AsyncIterator[Database]:
    """A Database on a fresh clone, as the app role (RLS applies), admin pool for system."""
    database = open_test_database(db_dsn, pgaccess_project)
    await database.open()
    try:
        yield database
        await assert_no_leaks(database)
    finally:
        await database.close(timeout=5)


@pytest.fixture(scope="session")
def shared_database(pg_server: TestServer, migrated_template: str) -> Iterator[str]:
    """One clone shared by all ``db_tx`` tests (they never commit)."""
    name = _unique("pgaccess_shared")
    asyncio.run(clone_database(pg_server.dsn, migrated_template, name,
                               file_copy=pg_server.cluster is not None))
    yield with_database(pg_server.dsn, name)
    asyncio.run(drop_database(pg_server.dsn, name))


@pytest.fixture
async def db_tx(shared_database: str, pgaccess_project: Project) -> AsyncIterator[Database]:
    """A Database whose units of work all run inside one transaction, rolled back at the end.

    Cheaper than ``db`` (no clone). Each ``db.transaction()`` becomes a savepoint on one
    owner connection and switches to the app (or admin) role and tenant for its duration
    with ``SET LOCAL ROLE`` - a test-only device; production never uses ``SET ROLE``.
    """
    database = RollbackDatabase(shared_database, pgaccess_project)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def tenant() -> UUID:
    """A seeded tenant (the reference seeders' ``acme.localhost``)."""
    from .reference import ACME_ID

    return ACME_ID


@pytest.fixture
def other_tenant() -> UUID:
    """A second seeded tenant (``globex.localhost``)."""
    from .reference import GLOBEX_ID

    return GLOBEX_ID


# -- rollback-per-test mode ------------------------------------------------------------


class RollbackDatabase(Database):
    """A Database pinned to one connection inside an outer transaction (see ``db_tx``)."""

    def __init__(self, owner_dsn: str, project: Project) -> None:
        super().__init__(
            Settings(min_size=1, max_size=1), dsn=owner_dsn, admin_dsn=owner_dsn,
            sql_dir=project.sql,
        )
        self._outer: Any = None

    async def open(self) -> RollbackDatabase:
        await self.pool.open()
        self._outer = await self.pool.acquire()
        await self._outer.execute("BEGIN")
        return self

    async def close(self, timeout: float = 10.0) -> None:
        if self._outer is not None:
            await self._outer.execute("ROLLBACK")
            self.pool.mark_dirty(self._outer)
            await self.pool.release(self._outer)
            self._outer = None
        await self.pool.close(timeout)

    def transaction(self, **kwargs: Any) -> TransactionContext:
        return _PinnedContext(self, **kwargs)


class _PinnedUnitOfWork(UnitOfWork):
    async def _begin(self, statement: Callable[[], str], acquire_timeout: float | None) -> None:
        db = self.db
        assert isinstance(db, RollbackDatabase)
        self._con = db._outer
        self._raw = raw_connection(self._con)
        self._task = asyncio.current_task()
        self._savepoints += 1
        role = ADMIN_ROLE if self.system else APP_ROLE
        tenant = "" if self.tenant is None else db.settings.tenant_value(self.tenant)
        assert self._con is not None
        await self._con.execute(
            f"SAVEPOINT pgaccess_test_tx; SET LOCAL ROLE {role}; "
            f"SELECT set_config('{db.settings.tenant_setting}', '{tenant}', true)"
        )
        self._state = "active"

    async def _commit(self) -> None:
        con = self._check()
        self._state = "done"
        await con.execute("RELEASE SAVEPOINT pgaccess_test_tx; RESET ROLE")
        self._con = self._raw = None
        for callback in self._on_commit:
            result = callback()
            if asyncio.iscoroutine(result):
                await result

    async def _rollback(self) -> None:
        con = self._con
        self._state = "done"
        self._con = self._raw = None
        if con is not None:
            await con.execute("ROLLBACK TO SAVEPOINT pgaccess_test_tx; RESET ROLE")


class _PinnedContext(TransactionContext):
    async def __aenter__(self) -> UnitOfWork:
        from .tenancy import TenantContext
        from .uow import _active

        outer = _active.get()
        if outer is not None and outer.active and outer._task is asyncio.current_task():
            return await super().__aenter__()  # a savepoint inside the pinned unit of work
        tenant = self.tenant
        if tenant is None and not self.system:
            tenant = TenantContext.current()
        uow = _PinnedUnitOfWork(
            self.db, self.db.pool, tenant=tenant, system=self.system,
            isolation=self.isolation, readonly=self.readonly,
        )
        await uow._begin(lambda: "", None)
        self._uow = uow
        self._token = _active.set(uow)
        return uow
