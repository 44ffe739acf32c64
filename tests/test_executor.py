"""The execution boundary: autocommit statements in two round trips, nesting rules, the
one-way core (layering), and the asyncpg internals check."""

from __future__ import annotations

import ast
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from pgaccess import (
    Database,
    QueryError,
    RowSecurityViolation,
    TenantError,
    TenantRequired,
    TransactionError,
    UniqueViolation,
)
from pgaccess.reference import ProjectRepository, UserRepository
from pgaccess.testing import Project, open_test_database

PROJECT = Project(Path("migrations"), Path("sql"), None)


@pytest.fixture
async def db1(db_dsn: str) -> AsyncIterator[Database]:
    database = open_test_database(db_dsn, PROJECT, max_size=1)
    async with database:
        yield database


# -- autocommit ---------------------------------------------------------------------------


async def test_autocommit_reads_and_writes_only_its_tenant(db: Database, tenant: uuid.UUID,
                                                           other_tenant: uuid.UUID) -> None:
    mine = db.autocommit(tenant=tenant)
    theirs = (await db.autocommit(tenant=other_tenant).repo(ProjectRepository).find_page(limit=1)).rows[0]
    assert await mine.repo(ProjectRepository).count() == 20
    assert await mine.repo(ProjectRepository).find_by_id(theirs.id) is None
    assert await mine.fetchval("SELECT count(*) FROM projects WHERE tenant_id = $1", other_tenant) == 0
    assert await mine.execute("UPDATE projects SET name = 'x' WHERE id = $1", theirs.id) == "UPDATE 0"
    with pytest.raises(RowSecurityViolation):
        await mine.repo(ProjectRepository).insert(tenant_id=other_tenant, name="smuggled")
    created = await mine.repo(ProjectRepository).insert(name="autocommitted")
    async with db.transaction(tenant=tenant) as uow:  # committed on its own
        assert await uow.repo(ProjectRepository).find_by_id(created.id) is not None
    assert (await db.autocommit(tenant=tenant).q.count_users()) == 5


async def test_autocommit_without_tenant_sees_nothing_and_writes_nothing(db: Database,
                                                                         tenant: uuid.UUID) -> None:
    nobody = db.autocommit()
    assert await nobody.fetchval("SELECT count(*) FROM projects") == 0
    with pytest.raises(TenantRequired):
        nobody.repo(ProjectRepository)
    with pytest.raises(QueryError):  # the policy's WITH CHECK refuses a row for nobody
        await nobody.execute("INSERT INTO projects (tenant_id, name) VALUES ($1, 'x')", tenant)
    with pytest.raises(TenantError):
        db.autocommit(tenant="not-a-uuid")


async def test_autocommit_errors_are_typed_and_the_connection_survives(db1: Database,
                                                                       tenant: uuid.UUID) -> None:
    users = db1.autocommit(tenant=tenant).repo(UserRepository)
    first = (await users.find_page(limit=1)).rows[0]
    with pytest.raises(UniqueViolation):
        await users.insert(email=first.email, name="dup")
    assert await users.count() == 5  # same (only) connection, still usable
    assert db1.pool.stats().connections_discarded == 0


async def test_autocommit_is_two_round_trips_and_leaves_the_tenant_for_nobody(
    db1: Database, tenant: uuid.UUID
) -> None:
    await db1.autocommit(tenant=tenant).fetchval("SELECT 1")
    # The session-level tenant stays on the idle connection, but every next user's opening
    # resets it before anything runs.
    async with db1.transaction() as uow:
        assert await uow.fetchval("SELECT count(*) FROM projects") == 0
    assert await db1.autocommit().fetchval("SELECT count(*) FROM projects") == 0


async def test_copy_path_needs_a_unit_of_work(db: Database, tenant: uuid.UUID) -> None:
    rows = [{"name": f"c{i}"} for i in range(3)]
    with pytest.raises(TransactionError, match="unit of work"):
        await db.autocommit(tenant=tenant).repo(ProjectRepository).insert_many(rows, method="copy")
    assert await db.autocommit(tenant=tenant).repo(ProjectRepository).insert_many(rows) == 3


# -- nesting --------------------------------------------------------------------------------


async def test_nested_same_options_is_a_savepoint(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as outer:
        async with db.transaction() as inner:
            assert inner is outer
        async with db.transaction(tenant=tenant, isolation="read_committed") as inner:
            assert inner is outer


@pytest.mark.parametrize(("nested", "names"), [
    ({"system": True}, "system=True"),
    ({"isolation": "serializable"}, "isolation 'serializable'"),
    ({"readonly": True}, "readonly=True"),
])
async def test_nested_incompatible_options_are_refused(db: Database, tenant: uuid.UUID,
                                                       nested: dict[str, object], names: str) -> None:
    async with db.transaction(tenant=tenant) as outer:
        with pytest.raises(TransactionError, match=names.replace("(", r"\(")):
            async with db.transaction(**nested):  # type: ignore[arg-type]
                pass
        assert outer.active  # the outer unit of work is untouched
        assert await outer.fetchval("SELECT count(*) FROM projects") == 20


async def test_nested_other_tenant_is_refused_even_through_the_context(
    db: Database, tenant: uuid.UUID, other_tenant: uuid.UUID
) -> None:
    from pgaccess import tenant_scope

    async with db.transaction(tenant=tenant):
        with pytest.raises(TransactionError, match=str(other_tenant)):
            async with db.transaction(tenant=other_tenant):
                pass
        with tenant_scope(other_tenant), pytest.raises(TransactionError, match=str(other_tenant)):
            async with db.transaction():
                pass


async def test_a_transaction_of_another_database_is_independent(db: Database, db_dsn: str,
                                                                tenant: uuid.UUID) -> None:
    other = open_test_database(db_dsn, PROJECT, max_size=2)
    async with other:
        async with db.transaction(tenant=tenant) as outer:
            await outer.repo(ProjectRepository).insert(name="outer-uncommitted")
            async with other.transaction(tenant=tenant) as inner:
                assert inner is not outer and inner.pool is other.pool
                # its own transaction: the outer one's uncommitted row is not visible
                assert await inner.fetchval(
                    "SELECT count(*) FROM projects WHERE name = 'outer-uncommitted'") == 0


# -- one-way core -------------------------------------------------------------------------

# Each module may import only modules of its own layer or below. Tooling (migrate, seed,
# queries check/gen, health, devdb, testing, cli) sits above the runtime.
LAYERS: list[set[str]] = [
    {"errors", "config", "log", "telemetry", "tenancy", "driver", "session"},
    {"pool", "replicas", "metrics"},
    {"queries", "executor"},
    {"uow"},
    {"autocommit", "repository"},
    {"database"},
    {"reference", "asgi", "citus", "demo", "health", "seed", "migrate", "devdb", "testing",
     "cli", "project", "schema", "scaffold", "init", "__init__", "__main__"},
]


# Tooling modules inside runtime packages.
TOOLING = ("queries.cli", "queries.check", "queries.gen", "queries.nullability", "queries.__main__")


def _layer(module: str) -> int:
    if module.startswith(TOOLING):
        return len(LAYERS) - 1
    top = module.split(".")[0]
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    return len(LAYERS) - 1  # new tooling modules


def test_no_module_imports_upward() -> None:
    """Data flows service -> repository/queries -> executor -> pool -> PostgreSQL; imports
    inside ``if TYPE_CHECKING:`` (annotations only) are allowed."""
    root = Path("pgaccess")
    upward = []
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or id(node) in typing_only or not node.level:
                continue
            base = module.split(".")[: -node.level] if path.name != "__init__.py" else \
                module.split(".")[: len(module.split(".")) - node.level + 1]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            targets = [target] if node.module else [f"{target}.{a.name}".lstrip(".") for a in node.names]
            for t in targets:
                if t and _layer(t) > _layer(module):
                    upward.append(f"{module} imports {t}")
    assert upward == [], "\n".join(upward)


# -- asyncpg internals ----------------------------------------------------------------------


async def test_fast_path_is_active(db: Database) -> None:
    assert db.pool.stats().fast_path


async def test_missing_asyncpg_internal_is_reported_and_the_slow_path_works(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch, tenant: uuid.UUID
) -> None:
    from structlog.testing import capture_logs

    from pgaccess import driver

    monkeypatch.setattr(driver, "_INTERNALS", (*driver._INTERNALS, (asyncpg.Connection, "_no_such")))
    database = open_test_database(db_dsn, PROJECT, max_size=2)
    with capture_logs() as logs:
        async with database:
            assert database.pool.stats().fast_path is False
            async with database.transaction(tenant=tenant) as uow:
                assert await uow.repo(ProjectRepository).count() == 20
            assert await database.autocommit(tenant=tenant).repo(ProjectRepository).count() == 20
    event = next(e for e in logs if e["event"] == "asyncpg_fast_path_disabled")
    assert "Connection._no_such" in event["missing"]
