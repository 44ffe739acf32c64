"""pytest plugin: a real, migrated, seeded PostgreSQL for every test.

Registered through the ``pytest11`` entry point, so ``pip install pgaccess[test]`` makes the
fixtures available to plain ``pytest``, in pytest-asyncio's strict and auto modes. Where the
server comes from (:mod:`pgaccess.devdb.servers`): ``PGACCESS_TEST_DSN``, else a throwaway
cluster from the local PostgreSQL binaries, else a throwaway Docker container;
``PGACCESS_TEST_SERVER=dsn|local|container`` forces one. If none works the session fails
with a message that says what to install - it never skips. A killed run leaves no server
behind (:mod:`pgaccess.devdb.janitor`).

Fixtures: ``pg_server`` / ``pg_dsn`` (session), ``migrated_template`` (session: migrated,
seeded and given two fixture tenants once, marked as a template), ``db_dsn`` and ``db``
(function: a fresh clone of the template, a :class:`~pgaccess.Database` logged in as the
app role), ``db_tx`` (function: faster, everything in one transaction rolled back at the
end), ``tenant`` / ``other_tenant`` (two tenants of the project's tenant table), and
``as_tenant`` (``tenant_scope``: ``with as_tenant(tenant): ...``).

The project's layout, role names, tenant table and fixture tenants come from
``[tool.pgaccess]`` in the ``pyproject.toml`` at or above pytest's rootdir
(:mod:`pgaccess.project`). The ini options ``pgaccess_migrations``, ``pgaccess_sql``,
``pgaccess_seeders``, ``pgaccess_seed_env``, ``pgaccess_tenant_table`` and
``pgaccess_tenants`` override it for the tests only; a conftest can override the
``pgaccess_project`` / ``pgaccess_tenant_choice`` fixtures.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import pytest
import pytest_asyncio

from .autocommit import Autocommit
from .config import Settings, with_database
from .database import Database
from .devdb.clone import (
    Project,
    build_template,
    clone_database,
    drop_database,
    drop_template,
    open_test_database,
    unique_name,
)
from .devdb.fixture_tenants import TenantChoice, fixture_tenants
from .devdb.servers import ThrowawayServer, start_test_server
from .errors import ConfigError, PgAccessError
from .executor import Method, Runtime
from .pool import raw_connection
from .project import ProjectConfig, load_project, read_table
from .tenancy import tenant_scope
from .uow import TransactionContext, TransactionOptions, UnitOfWork


@dataclass(frozen=True)
class Template:
    """The session's template database and the fixture tenants created (or picked) in it."""

    name: str
    tenants: tuple[Any, ...]


def _project_config(config: pytest.Config) -> ProjectConfig:
    """``[tool.pgaccess]`` of the project pytest runs in (environment variables apply)."""
    return load_project(start=Path(str(config.rootpath)))


def _directory(config: pytest.Config, ini: str, configured: Path) -> Path | None:
    """The ini option when set (relative to the rootdir), else the project's value; None
    when that directory does not exist."""
    raw = str(config.getini(ini) or "")
    path = Path(raw) if raw else configured
    if not path.is_absolute():
        path = Path(str(config.rootpath)) / path
    return path if path.is_dir() else None


def pytest_addoption(parser: pytest.Parser) -> None:
    unset = " (default: [tool.pgaccess] in pyproject.toml)"
    parser.addini("pgaccess_migrations", "migrations directory" + unset, default="")
    parser.addini("pgaccess_sql", "named SQL directory" + unset, default="")
    parser.addini("pgaccess_seeders", "seeders directory" + unset, default="")
    parser.addini("pgaccess_seed_env", "environment given to seeders (default: test, or "
                  "seed_env of [tool.pgaccess] when set there)", default="")
    parser.addini("pgaccess_tenant_table", "the project's tenant table" + unset, default="")
    parser.addini("pgaccess_tenants", "existing tenants for tenant/other_tenant (column=value "
                  "or primary key); unset: test_tenants of [tool.pgaccess], else two new "
                  "tenants are created", type="linelist")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # pytest-asyncio warns (PytestDeprecationWarning) when no default fixture loop scope is
    # configured. Every async fixture here names its loop scope, so only the project's own
    # fixtures are concerned; "function" is the value pytest-asyncio announces as its future
    # default. A project that sets the option keeps its value. getini's cache is the one
    # place a plugin can supply a value for another plugin's option.
    if config.pluginmanager.hasplugin("asyncio") and not config.getini("asyncio_default_fixture_loop_scope"):
        config._inicache["asyncio_default_fixture_loop_scope"] = "function"


async def assert_no_leaks(db: Database) -> None:
    from .uow import background_commits_done

    await background_commits_done()
    for pool in (db.pool, db.runtime.admin_pool):
        if pool is None or not pool.is_open:
            continue
        stats = pool.stats()
        if stats.in_use:
            held = "\n".join(pool.held_connections())
            pytest.fail(
                f"{stats.in_use} connection(s) of pool {pool.name!r} still checked out at "
                f"teardown (a unit of work or pool.connection() was not closed):\n{held}"
            )


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[ThrowawayServer]:
    error = ""
    try:
        server = start_test_server()
    except ConfigError as exc:
        error = str(exc)
    if error:
        pytest.fail(error, pytrace=False)
    try:
        yield server
    finally:
        if server.clone_ms:
            median = statistics.median(server.clone_ms)
            print(f"\npgaccess: {len(server.clone_ms)} database clones, median {median:.1f} ms")
        server.stop()


@pytest.fixture(scope="session")
def pg_dsn(pg_server: ThrowawayServer) -> str:
    return pg_server.dsn


@pytest.fixture(scope="session")
def pgaccess_config(pytestconfig: pytest.Config) -> ProjectConfig:
    """The project's resolved ``[tool.pgaccess]`` (see :func:`pgaccess.project.load_project`)."""
    error = ""
    try:
        return _project_config(pytestconfig)
    except ConfigError as exc:
        error = f"pgaccess: {exc}"
    pytest.fail(error, pytrace=False)


@pytest.fixture(scope="session")
def pgaccess_project(pytestconfig: pytest.Config, pgaccess_config: ProjectConfig) -> Project:
    config = pgaccess_config
    migrations = _directory(pytestconfig, "pgaccess_migrations", config.migrations)
    if migrations is None:
        pytest.fail(f"pgaccess: no migrations directory {config.migrations} (set migrations in "
                    "[tool.pgaccess] of pyproject.toml)", pytrace=False)
    return Project(
        migrations=migrations,
        sql=_directory(pytestconfig, "pgaccess_sql", config.sql),
        seeders=_directory(pytestconfig, "pgaccess_seeders", config.seeders),
        app_role=config.app_role,
        admin_role=config.admin_role,
        core_schema=config.core_schema,
        tenant_schema_prefix=config.tenant_schema_prefix,
    )


@pytest.fixture(scope="session")
def pgaccess_tenant_choice(pytestconfig: pytest.Config, pgaccess_config: ProjectConfig) -> TenantChoice:
    """Which tenants ``tenant`` / ``other_tenant`` are (see :mod:`pgaccess.devdb.fixture_tenants`)."""
    pick = tuple(str(line) for line in pytestconfig.getini("pgaccess_tenants"))
    return TenantChoice(
        table=str(pytestconfig.getini("pgaccess_tenant_table") or pgaccess_config.tenant_table),
        pick=pick or pgaccess_config.test_tenants,
    )


def _seed_env(pytestconfig: pytest.Config, config: ProjectConfig) -> str:
    """The ini option, else ``seed_env`` of ``[tool.pgaccess]``, else "test". PGACCESS_ENV is
    left out: it is the commands' environment (often "development" in a developer's shell)."""
    table = read_table(config.pyproject) if config.pyproject else {}
    return str(pytestconfig.getini("pgaccess_seed_env") or table.get("seed_env") or "test")


@pytest.fixture(scope="session")
def pgaccess_template(
    pg_server: ThrowawayServer, pgaccess_project: Project, pgaccess_config: ProjectConfig,
    pgaccess_tenant_choice: TenantChoice, pytestconfig: pytest.Config,
) -> Iterator[Template]:
    """Migrated, seeded and given its fixture tenants once per session; marked as template."""
    digest = hashlib.sha1(str(pgaccess_project).encode()).hexdigest()[:8]
    name = unique_name(f"pgaccess_tpl_{digest}")
    env = _seed_env(pytestconfig, pgaccess_config)

    async def build() -> Template:
        dsn = await build_template(pg_server.dsn, pgaccess_project, name, env)
        return Template(name, await fixture_tenants(dsn, pgaccess_tenant_choice))

    error = ""
    try:
        yield asyncio.run(build())
    except PgAccessError as exc:  # a migration, seeder or tenant-table problem: say which
        error = f"pgaccess: {exc}"
    finally:
        asyncio.run(drop_template(pg_server.dsn, name))
    if error:
        pytest.fail(error, pytrace=False)


@pytest.fixture(scope="session")
def migrated_template(pgaccess_template: Template) -> str:
    """The name of the session's template database."""
    return pgaccess_template.name


@pytest_asyncio.fixture(loop_scope="function")
async def db_dsn(pg_server: ThrowawayServer, migrated_template: str) -> AsyncIterator[str]:
    """Owner DSN of a fresh clone of the template, dropped after the test."""
    name = unique_name("pgaccess_test")
    pg_server.clone_ms.append(await clone_database(
        pg_server.dsn, migrated_template, name, file_copy=pg_server.owned))
    yield with_database(pg_server.dsn, name)
    await drop_database(pg_server.dsn, name)


@pytest_asyncio.fixture(loop_scope="function")
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
def shared_database(pg_server: ThrowawayServer, migrated_template: str) -> Iterator[str]:
    """One clone shared by all ``db_tx`` tests (they never commit)."""
    name = unique_name("pgaccess_shared")
    asyncio.run(clone_database(pg_server.dsn, migrated_template, name, file_copy=pg_server.owned))
    yield with_database(pg_server.dsn, name)
    asyncio.run(drop_database(pg_server.dsn, name))


@pytest_asyncio.fixture(loop_scope="function")
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
def tenant(pgaccess_template: Template) -> Any:
    """A tenant of the project's tenant table, present in every clone (``pgaccess_tenants``)."""
    return pgaccess_template.tenants[0]


@pytest.fixture
def other_tenant(pgaccess_template: Template) -> Any:
    """A second tenant, for isolation tests."""
    return pgaccess_template.tenants[1]


@pytest.fixture
def as_tenant() -> type[tenant_scope]:
    """``with as_tenant(tenant):`` - code inside runs for that tenant (``tenant_scope``)."""
    return tenant_scope


# -- rollback-per-test mode ------------------------------------------------------------


class RollbackDatabase(Database):
    """A Database pinned to one connection inside an outer transaction (see ``db_tx``).

    Each unit of work is a savepoint of that transaction, run as the app role (or the admin
    role for system work) with its tenant; autocommit statements are one savepoint each.
    """

    def __init__(self, owner_dsn: str, project: Project) -> None:
        super().__init__(
            Settings(min_size=1, max_size=1), dsn=owner_dsn, admin_dsn=owner_dsn,
            sql_dir=project.sql,
        )
        self._outer: Any = None
        self._roles = (project.app_role, project.admin_role)

    async def open(self) -> RollbackDatabase:
        await self.pool.open()
        self._outer = await self.pool.acquire()
        await self._outer.execute("BEGIN")
        return self

    async def close(self, timeout: float = 10.0) -> None:
        if self._outer is not None:
            await self._outer.execute("ROLLBACK")
            await self.pool.release(self._outer)
            self._outer = None
        await self.pool.close(timeout)

    def transaction(self, **options: Unpack[TransactionOptions]) -> TransactionContext:
        return _PinnedContext(self.runtime, options, outer=self._outer, roles=self._roles)

    def autocommit(self, *, tenant: Any = None, system: bool = False, reason: str | None = None,
                   readonly: bool = False, primary: bool = False, timeout: float | None = None,
                   acquire_timeout: float | None = None) -> Autocommit:
        executor = super().autocommit(tenant=tenant, system=system, reason=reason,
                                      readonly=readonly)
        return _PinnedAutocommit(self.runtime, tenant=executor.tenant, system=system,
                                 readonly=readonly, outer=self._outer, roles=self._roles)


class _PinnedUnitOfWork(UnitOfWork):
    __slots__ = ("_outer", "_roles")
    _outer: Any
    _roles: tuple[str, str]  # (app, admin)

    async def _begin(self, begin: str, timeout: float | None, acquire_timeout: float | None) -> None:
        self._con = self._outer
        self._raw = raw_connection(self._con)
        self._task = asyncio.current_task()
        self._savepoints += 1
        role = self._roles[1] if self.system else self._roles[0]
        tenant = self.runtime.tenant_value(self.tenant, self._outer)
        await self._outer.execute(
            f'SAVEPOINT pgaccess_test_tx; SET LOCAL ROLE "{role}"; '
            f"SELECT set_config('{self.runtime.settings.tenant_setting}', '{tenant}', true)"
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

    async def _rollback(self, broken: bool) -> None:
        con = self._con
        self._state = "done"
        self._con = self._raw = None
        if con is not None:
            await con.execute("ROLLBACK TO SAVEPOINT pgaccess_test_tx; RESET ROLE")


class _PinnedContext(TransactionContext):
    __slots__ = ("_outer", "_roles")

    def __init__(self, runtime: Runtime, options: TransactionOptions, *, outer: Any,
                 roles: tuple[str, str]) -> None:
        super().__init__(runtime, options)
        self._outer = outer
        self._roles = roles

    async def __aenter__(self) -> UnitOfWork:
        outer = self.runtime.active.get()
        if outer is not None and outer.active and outer._task is asyncio.current_task():
            return await super().__aenter__()  # a savepoint inside the pinned unit of work
        system = bool(self.options.get("system", False))
        uow = _PinnedUnitOfWork(
            self.runtime, self.runtime.pool, tenant=self._resolved_tenant(), system=system,
            isolation=self.options.get("isolation", "read_committed"),
            readonly=bool(self.options.get("readonly", False)),
        )
        uow._outer = self._outer
        uow._roles = self._roles
        await uow._begin("", None, None)
        self._uow = uow
        self._token = self.runtime.active.set(uow)
        return uow


class _PinnedAutocommit(Autocommit):
    __slots__ = ("_outer", "_roles")

    def __init__(self, runtime: Runtime, *, tenant: Any, system: bool, readonly: bool,
                 outer: Any, roles: tuple[str, str]) -> None:
        super().__init__(runtime, tenant=tenant, system=system, readonly=readonly)
        self._outer = outer
        self._roles = roles

    async def run(self, method: Method, sql: str, args: Sequence[Any], name: str | None,
                  *, vetted: bool = False) -> Any:
        options: TransactionOptions = {"system": True} if self.system else {"tenant": self.tenant}
        async with _PinnedContext(self.runtime, options, outer=self._outer, roles=self._roles) as uow:
            return await uow.run(method, sql, args, name, vetted=vetted)
