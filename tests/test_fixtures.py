"""The pytest fixtures themselves: isolation, rollback mode, and use from another project."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from pgaccess import Database
from pgaccess.reference import ACME_ID, GLOBEX_ID, ProjectRepository

MARKER = "written-by-an-earlier-test"
ROOT = Path(__file__).resolve().parent.parent


def test_the_suite_picks_the_seeded_tenants(tenant: uuid.UUID, other_tenant: uuid.UUID) -> None:
    # tests/conftest.py names them (pgaccess_tenant_choice); projects use the ini options.
    assert (tenant, other_tenant) == (ACME_ID, GLOBEX_ID)


async def test_1_a_test_writes(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        await uow.repo(ProjectRepository).insert(name=MARKER)


async def test_2_the_next_test_does_not_see_it(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        assert await uow.repo(ProjectRepository).find_where(name=MARKER) == []
        assert await uow.repo(ProjectRepository).count() == 20  # seeded template state


async def test_3_db_tx_writes(db_tx: Database, tenant: uuid.UUID) -> None:
    async with db_tx.transaction(tenant=tenant) as uow:
        await uow.repo(ProjectRepository).insert(name=MARKER)
    async with db_tx.transaction(tenant=tenant) as uow:  # visible within the test
        assert len(await uow.repo(ProjectRepository).find_where(name=MARKER)) == 1
    async with db_tx.transaction() as uow:  # RLS still applies in db_tx
        assert await uow.fetchval("SELECT count(*) FROM projects") == 0


async def test_4_db_tx_rolled_back(db_tx: Database, tenant: uuid.UUID) -> None:
    async with db_tx.transaction(tenant=tenant) as uow:
        assert await uow.repo(ProjectRepository).find_where(name=MARKER) == []
        assert await uow.fetchval("SELECT current_user") == "pgaccess_app"


NOTES_MIGRATION = """
    CREATE TABLE organisations (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                                slug text NOT NULL UNIQUE CHECK (slug = lower(slug)),
                                seats integer NOT NULL, active boolean NOT NULL);
    GRANT SELECT ON organisations TO {app};
    GRANT SELECT, INSERT ON organisations TO {admin};
    CREATE TABLE notes (tenant_id uuid NOT NULL REFERENCES organisations (id), id serial,
                        body text NOT NULL, PRIMARY KEY (tenant_id, id));
    ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
    ALTER TABLE notes FORCE ROW LEVEL SECURITY;
    CREATE POLICY guard ON notes AS RESTRICTIVE TO {app}
        USING (tenant_id = (SELECT app.current_tenant_id()));
    CREATE POLICY access ON notes TO {app} USING (tenant_id = (SELECT app.current_tenant_id()));
    CREATE POLICY system ON notes TO {admin} USING (true);
    GRANT SELECT, INSERT ON notes TO {app}, {admin};
    GRANT USAGE ON SEQUENCE notes_id_seq TO {app}, {admin};
"""

NOTES_SEEDER = """
    import uuid
    from pgaccess.seed import Seeder

    T = uuid.UUID("11111111-1111-4111-8111-111111111111")

    class Notes(Seeder):
        environments = ({env!r},)

        async def seed(self, uow):
            await uow.execute("INSERT INTO organisations VALUES ($1, 'n', 3, true)", T)
            async with uow.scoped_tenant(T):
                await uow.execute("INSERT INTO notes (tenant_id, body) VALUES ($1, 'hello')", T)
"""

NOTES_TESTS = """
    import uuid
    T = uuid.UUID("11111111-1111-4111-8111-111111111111")

    async def test_seeded_and_isolated(db):
        async with db.transaction(tenant=T) as uow:
            assert await uow.fetchval("SELECT body FROM notes") == "hello"
            assert await uow.fetchval("SELECT current_user") == {app!r}
            await uow.execute("INSERT INTO notes (tenant_id, body) VALUES ($1, 'more')", T)
        async with db.transaction() as uow:
            assert await uow.fetchval("SELECT count(*) FROM notes") == 0
        async with db.transaction(system=True) as uow:
            assert await uow.fetchval("SELECT current_user") == {admin!r}

    async def test_fresh_database(db):
        async with db.transaction(tenant=T) as uow:
            assert await uow.fetchval("SELECT count(*) FROM notes") == 1

    async def test_created_tenants_are_the_projects_own(db, tenant, other_tenant, as_tenant):
        assert len({{T, tenant, other_tenant}}) == 3
        async with db.transaction(system=True) as uow:
            slugs = await uow.fetchval("SELECT array_agg(slug) FROM organisations WHERE id <> $1", T)
        assert len(slugs) == 2 and all(s.startswith("tenant-") for s in slugs)
        with as_tenant(tenant):
            async with db.transaction() as uow:
                await uow.execute("INSERT INTO notes (tenant_id, body) VALUES ($1, 'mine')", tenant)
        async with db.transaction(tenant=other_tenant) as uow:
            assert await uow.fetchval("SELECT count(*) FROM notes") == 0

    async def test_rollback_mode(db_tx):
        async with db_tx.transaction(tenant=T) as uow:
            await uow.execute("INSERT INTO notes (tenant_id, body) VALUES ($1, 'tx')", T)
            assert await uow.fetchval("SELECT count(*) FROM notes") == 2
            assert await uow.fetchval("SELECT current_user") == {app!r}
        async with db_tx.transaction(system=True) as uow:
            assert await uow.fetchval("SELECT current_user") == {admin!r}
        assert await db_tx.autocommit(system=True).fetchval("SELECT current_user") == {admin!r}
"""

PYTEST_INI = """
    [tool.pytest.ini_options]
    asyncio_mode = "auto"
    asyncio_default_fixture_loop_scope = "function"
"""


def notes_project(root: Path, directory: str, *, app: str, admin: str, seed_env: str) -> None:
    """Migrations and seeders under ``root/directory`` and the tests at ``root``; the
    project's roles are ``app`` / ``admin``; the seeder runs only in ``seed_env``."""
    (root / directory / "migrations").mkdir(parents=True)
    (root / directory / "seeders").mkdir()
    (root / directory / "migrations" / "0001_notes.sql").write_text(
        textwrap.dedent(NOTES_MIGRATION).format(app=app, admin=admin))
    (root / directory / "seeders" / "notes.py").write_text(
        textwrap.dedent(NOTES_SEEDER).format(env=seed_env))
    (root / "test_notes.py").write_text(textwrap.dedent(NOTES_TESTS).format(app=app, admin=admin))


def run_project_pytest(root: Path, pg_dsn: str, passed: int = 4) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PGACCESS_")},
           "PGACCESS_TEST_DSN": pg_dsn, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
                       cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{passed} passed" in r.stdout


def test_fixtures_in_a_project_outside_the_package(tmp_path: Path, pg_dsn: str) -> None:
    # Only [tool.pgaccess]: its own layout, role names, tenant table and seed environment.
    notes_project(tmp_path, "db", app="notes_app", admin="notes_admin", seed_env="development")
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(PYTEST_INI + """
        [tool.pgaccess]
        migrations = "db/migrations"
        seeders = "db/seeders"
        sql = "db/sql"
        app_role = "notes_app"
        admin_role = "notes_admin"
        tenant_table = "organisations"
        seed_env = "development"
    """))
    run_project_pytest(tmp_path, pg_dsn)


def test_ini_options_override_the_project_table(tmp_path: Path, pg_dsn: str) -> None:
    # [tool.pgaccess] points elsewhere; the ini options win for the tests (seed_env: "test").
    notes_project(tmp_path, "testdb", app="pgaccess_app", admin="pgaccess_admin", seed_env="test")
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(PYTEST_INI + """
        pgaccess_migrations = "testdb/migrations"
        pgaccess_seeders = "testdb/seeders"
        pgaccess_tenant_table = "organisations"

        [tool.pgaccess]
        migrations = "missing/migrations"
        seeders = "missing/seeders"
        tenant_table = "missing_table"
    """))
    run_project_pytest(tmp_path, pg_dsn)


def test_test_tenants_from_the_project_table(tmp_path: Path, pg_dsn: str) -> None:
    notes_project(tmp_path, "db", app="pgaccess_app", admin="pgaccess_admin", seed_env="test")
    (tmp_path / "db" / "seeders" / "more.py").write_text(textwrap.dedent("""
        from pgaccess.seed import Seeder

        class MoreOrganisations(Seeder):
            async def seed(self, uow):
                await uow.execute("INSERT INTO organisations (slug, seats, active) VALUES ('m', 1, true)")
    """))
    (tmp_path / "test_notes.py").write_text(textwrap.dedent("""
        async def test_the_configured_tenants(db, tenant, other_tenant):
            async with db.transaction(system=True) as uow:
                slugs = [await uow.fetchval("SELECT slug FROM organisations WHERE id = $1", t)
                         for t in (tenant, other_tenant)]
            assert slugs == ["m", "n"]
    """))
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(PYTEST_INI + """
        [tool.pgaccess]
        migrations = "db/migrations"
        seeders = "db/seeders"
        tenant_table = "organisations"
        test_tenants = ["slug=m", "11111111-1111-4111-8111-111111111111"]
    """))
    run_project_pytest(tmp_path, pg_dsn, passed=1)
