"""Typed named queries (`queries gen`), positional arguments, and `queries check` as a
production tool: DATABASE_URL, no pytest, the same lock file for owner and app role."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pgaccess import Database, ParameterError
from pgaccess.config import with_user
from pgaccess.queries import load_queries
from pgaccess.queries.check import check_queries, load_row_classes, lock_data
from pgaccess.reference.rows import Project, queries

ROOT = Path(__file__).parent.parent


async def test_typed_queries_return_row_classes(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        rows = await queries(uow).projects_by_status(status="done", lim=2)
        assert len(rows) == 2 and all(isinstance(p, Project) and p.status == "done" for p in rows)
        assert await queries(uow).count_users() == 5
        assert await queries(uow).user_by_email(email="nobody@example.com") is None
        assert await queries(uow).touch_project(id=rows[0].id) == 1


async def test_positional_arguments_raise_parameter_error(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        with pytest.raises(ParameterError, match=r"by name, not position: "
                           r"uow\.q\.projects_by_status\(status=\.\.\., lim=\.\.\.\)"):
            await uow.q.projects_by_status("done", 3)
        with pytest.raises(ParameterError, match="count_users takes no parameters"):
            await uow.q.count_users(1)


def test_mypy_rejects_wrong_parameters_and_results(tmp_path: Path) -> None:
    bad = tmp_path / "bad_use.py"
    bad.write_text(
        "from pgaccess.reference.rows import queries\n"
        "from pgaccess.uow import UnitOfWork\n\n\n"
        "async def use(uow: UnitOfWork) -> None:\n"
        "    await queries(uow).projects_by_status(state='x', lim=1)\n"
        "    rows = await queries(uow).projects_by_status(status='x', lim=1)\n"
        "    rows.name\n"
        "    n: str = await queries(uow).count_users()\n"
        "    one = await queries(uow).user_by_email(email='a@b.c')\n"
        "    one.email\n"
    )
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                          "--follow-imports=silent", str(bad)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300).stdout
    assert 'Unexpected keyword argument "state"' in out, out
    assert '"list[Project]" has no attribute "name"' in out, out
    assert 'Incompatible types in assignment (expression has type "int"' in out, out
    assert 'Item "None" of "User | None" has no attribute "email"' in out, out


def test_example_service_type_checks() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                             "examples/service.py"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout


def test_check_runs_without_pytest_and_honours_database_url(db_dsn: str) -> None:
    """A production install has no pytest; DATABASE_URL is the database to check."""
    script = ("import sys; sys.modules['pytest'] = None\n"
              "from pgaccess.queries.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "DATABASE_URL": db_dsn}
    result = subprocess.run([sys.executable, "-c", script, "check", "--json", "--rows",
                             "pgaccess.reference.rows"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pytest" not in result.stderr
    assert {q["name"] for q in json.loads(result.stdout)["queries"]} >= {"count_users"}
    env["DATABASE_URL"] = db_dsn.replace(db_dsn.rsplit("/", 1)[-1].split("?")[0], "no_such_db")
    result = subprocess.run([sys.executable, "-c", script, "check"], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode != 0 and "no_such_db" in result.stderr


async def test_lock_file_is_the_same_for_owner_and_app_role(db_dsn: str) -> None:
    """The committed lock file holds for the seeded database as owner and as the app role."""
    qs = load_queries(ROOT / "sql")
    committed = json.loads((ROOT / "sql" / "queries.lock.json").read_text())
    rows = load_row_classes("pgaccess.reference.rows")
    as_owner = await check_queries(db_dsn, qs, row_classes=rows)
    as_app = await check_queries(with_user(db_dsn, "pgaccess_app"), qs, row_classes=rows,
                                 admin_dsn=with_user(db_dsn, "pgaccess_admin"))
    assert as_app.errors == [] and as_owner.errors == []
    assert lock_data(as_owner) == lock_data(as_app) == committed
