"""End to end, as a new user: build the wheel, install it into a fresh virtualenv, run
``pgaccess init`` in an empty directory, give the project its own role names, add a table, a
query, a repository, a seeder and a test, and run that project's pytest and the command line
- with no file copied from this repository, no --dir-style flags and no pytest ini options:
the project's [tool.pgaccess] says where things are and what the roles are called."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from pgaccess.cluster import scratch_dir
from pgaccess.config import with_database

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
PACKAGE = "invoicing"
ROLES = {"pgaccess_app": "invoicing_app", "pgaccess_admin": "invoicing_admin"}

MIGRATION = """\
CREATE TABLE invoices (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    id         uuid NOT NULL DEFAULT gen_random_uuid(),
    number     text NOT NULL,
    amount     numeric(12, 2) NOT NULL CHECK (amount >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT invoices_number_key UNIQUE (tenant_id, number)
);
ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard ON invoices AS RESTRICTIVE FOR ALL TO pgaccess_app
    USING (tenant_id = (SELECT app.current_tenant_id()))
    WITH CHECK (tenant_id = (SELECT app.current_tenant_id()));
CREATE POLICY tenant_access ON invoices FOR ALL TO pgaccess_app
    USING (tenant_id = (SELECT app.claimed_tenant_id()))
    WITH CHECK (tenant_id = (SELECT app.claimed_tenant_id()));
CREATE POLICY system_access ON invoices FOR ALL TO pgaccess_admin
    USING ((SELECT app.current_tenant_id()) IS NULL OR tenant_id = (SELECT app.current_tenant_id()))
    WITH CHECK ((SELECT app.current_tenant_id()) IS NULL OR tenant_id = (SELECT app.current_tenant_id()));
GRANT SELECT, INSERT, UPDATE, DELETE ON invoices TO pgaccess_app, pgaccess_admin;
"""

QUERIES = """\
-- name: invoice_total()$
-- The current tenant's invoiced amount.
SELECT coalesce(sum(amount), 0)::numeric(14, 2) AS total FROM invoices;

-- name: invoices_over(amount)
SELECT tenant_id, id, number, amount, created_at FROM invoices WHERE amount > :amount ORDER BY number;

-- name: notes_as_rows()
-- row: Note
SELECT tenant_id, id, body, created_at FROM notes ORDER BY created_at;
"""

REPOSITORY = """\
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

from pgaccess.repository import TenantAwareRepository


@dataclass(slots=True)
class Invoice:
    tenant_id: UUID
    id: UUID
    number: str
    amount: Decimal
    created_at: dt.datetime


class InvoiceRepository(TenantAwareRepository[Invoice]):
    table = "invoices"
    row = Invoice
    order_by = ("number",)

    async def total(self) -> Decimal:
        return await self.executor.fetchval("SELECT coalesce(sum(amount), 0) FROM invoices")
"""

SEEDER = """\
from decimal import Decimal

from pgaccess.seed import Seeder
from pgaccess.uow import UnitOfWork

from invoicing.invoices import InvoiceRepository


class Invoices(Seeder):
    depends_on = ("Tenants",)
    environments = ("development", "test")

    async def seed(self, uow: UnitOfWork) -> None:
        for (tenant_id,) in await uow.fetch("SELECT id FROM tenants ORDER BY id"):
            async with uow.scoped_tenant(tenant_id):
                if not await uow.fetchval("SELECT count(*) FROM invoices"):
                    await uow.repo(InvoiceRepository).insert(number="INV-1", amount=Decimal("100.00"))
"""

TEST = """\
from decimal import Decimal

import pytest

from invoicing.invoices import InvoiceRepository

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_invoices_stay_with_their_tenant(db, tenant, other_tenant) -> None:
    async with db.transaction(tenant=tenant) as uow:
        assert await uow.fetchval("SELECT current_user") == "invoicing_app"
        await uow.repo(InvoiceRepository).insert(number="T-1", amount=Decimal("12.50"))
        assert await uow.q.invoice_total() == Decimal("12.50")
    async with db.transaction(tenant=other_tenant) as uow:
        assert await uow.q.invoice_total() == Decimal("0.00")
        assert await uow.repo(InvoiceRepository).find_where(number="T-1") == []


async def test_db_tx_and_as_tenant(db_tx, tenant, as_tenant) -> None:
    with as_tenant(tenant):
        async with db_tx.transaction() as uow:
            await uow.repo(InvoiceRepository).insert(number="T-2", amount=Decimal("1"))
            assert len(await uow.q.invoices_over(amount=0)) == 1
            assert await uow.fetchval("SELECT current_user") == "invoicing_app"
"""


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with the wheel built from this checkout and pgaccess[test]."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    shutil.copytree(ROOT / "pgaccess", src / "pgaccess", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(src)],
         work, env)
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], work, env)
    wheel = next((work / "dist").glob("pgaccess-*.whl"))
    _run([str(venv / "bin" / "pip"), "install", "-q", "--find-links", str(work / "dist"),
          f"pgaccess[test] @ {wheel.as_uri()}"], work, env)
    yield venv


def _project_env(venv: Path, database_url: str | None) -> dict[str, str]:
    keep = ("HOME", "LANG", "TMPDIR", "PGACCESS_TEST_DSN", "PGACCESS_TEST_SERVER", "PGACCESS_PG_BINDIR",
            "PGACCESS_TEST_TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PATH"] = f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def test_a_project_of_its_own_from_pip_install(installed: Path, pg_dsn: str) -> None:
    project = Path(tempfile.mkdtemp(prefix="pgaccess-own-", dir=scratch_dir()))
    os.chmod(project, 0o755)  # a cluster run as the postgres user reaches its sockets here
    name = f"pgaccess_own_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(pg_dsn, f'CREATE DATABASE "{name}"'))
    try:
        project = project / PACKAGE
        project.mkdir()
        env = _project_env(installed, None)
        out = _run(["pgaccess", "init"], project, env).stdout
        assert "pyproject.toml" in out and "tests/test_tenant_isolation.py" in out
        assert "[tool.pgaccess]" in (project / "pyproject.toml").read_text()
        # The user's own role names, in the configuration and the first migration.
        for path in (project / "pyproject.toml", project / "migrations" / "0001_tenants_and_notes.sql"):
            path.write_text(_own_roles(path.read_text()))
        ini = tomllib.loads((project / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
        assert not [key for key in ini if key.startswith("pgaccess")], ini
        # The user's own additions.
        (project / "migrations" / "0002_invoices.sql").write_text(_own_roles(MIGRATION))
        (project / "sql" / "invoices.sql").write_text(QUERIES)
        (project / PACKAGE / "invoices.py").write_text(REPOSITORY)
        (project / "seeders" / "invoices.py").write_text(SEEDER)
        (project / "tests" / "test_invoices.py").write_text(TEST)

        tests = _run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"], project, env)
        assert "4 passed" in tests.stdout, tests.stdout

        env = _project_env(installed, with_database(pg_dsn, name))
        assert "applied 0002 invoices" in _run(["pgaccess", "migrate", "up"], project, env).stdout
        assert "up to date" in _run(["pgaccess", "migrate", "status"], project, env).stdout
        assert "ok: no lint findings" in _run(["pgaccess", "migrate", "lint"], project, env).stdout
        check = _run(["pgaccess", "queries", "check"], project, env).stdout  # rows: invoicing.rows
        assert "invoice_total" in check and "notes_as_rows" in check, check
        # No DATABASE_URL: a throwaway database migrated with the project's roles.
        generated = _run(["pgaccess", "queries", "gen"], project, _project_env(installed, None)).stdout
        assert "async def invoices_over(" in generated and "class Invoice:" in generated, generated
        assert "Invoices" in _run(["pgaccess", "seed"], project, env).stdout
        health = _run(["pgaccess", "health"], project, env).stdout
        assert health.startswith("status: OK"), health
        config = _run(["pgaccess", "config"], project, env).stdout
        assert f"{project / 'migrations'}  pyproject [tool.pgaccess]" in config
        assert "invoicing_app" in config and "invoicing.rows" in config, config
        assert not (project / ".pgaccess").exists()
        assert "kept (exists)" in _run(["pgaccess", "init"], project, env).stdout  # nothing overwritten
        assert (project / "migrations" / "0002_invoices.sql").read_text() == _own_roles(MIGRATION)
    finally:
        asyncio.run(_admin(pg_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(project.parent if project.name == PACKAGE else project, ignore_errors=True)


def _own_roles(text: str) -> str:
    for default, own in ROLES.items():
        text = text.replace(default, own)
    return text


async def _admin(dsn: str, statement: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(statement)
    finally:
        await con.close()
