"""pgaccess's core schema: shipped with the package, applied before the project's files,
and an upgrade path for databases migrated with the reference schema's old 0001-0006."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg

from pgaccess.migrate import Migrator
from pgaccess.schema import CORE_SCOPE, SUPERSEDED, core_files

OLD = Path(__file__).parent / "data" / "reference_0001_0006"
NEW = Path(__file__).parents[1] / "migrations"


async def _scopes(dsn: str) -> dict[str, list[str]]:
    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch("SELECT scope, version FROM pgaccess.schema_migrations ORDER BY 1, 2")
    finally:
        await con.close()
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["scope"], []).append(r["version"])
    return out


async def test_core_schema_applies_before_the_project_files(empty_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "0001_notes.sql").write_text(
        "CREATE TABLE notes (tenant_id uuid NOT NULL DEFAULT app.current_tenant_id(), body text);\n"
        "GRANT SELECT ON notes TO pgaccess_app;\n")
    lines: list[str] = []
    report = await Migrator(empty_dsn, tmp_path, echo=lines.append).up_report(lint=False)
    assert report.core == [f.version for f in core_files()] and report.applied == ["0001"]
    assert lines[1].startswith("pgaccess core: applied 0001") and lines[-1].startswith("applied 0001 notes")
    assert (await _scopes(empty_dsn))[CORE_SCOPE] == ["0001", "0002", "0003"]
    status = await Migrator(empty_dsn, tmp_path).status()
    assert status.exit_code() == 0 and status.as_json()["core"]["pending"] == []
    assert await Migrator(empty_dsn, tmp_path).up() == []


async def test_core_schema_pending_shows_in_status_and_plan(empty_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (id int PRIMARY KEY);\n")
    m = Migrator(empty_dsn, tmp_path)
    status = await m.status()
    assert [f.version for f in status.core_pending] == ["0001", "0002", "0003"] and status.exit_code() == 3
    plan = await m.plan()
    assert plan.versions == ["0001"] and len(plan.core) == 3
    assert "would apply pgaccess core schema 0001 roles_and_tenant_functions" in "\n".join(plan.render())


async def test_role_names_come_from_the_caller_and_do_not_change_checksums(empty_dsn: str, tmp_path: Path) -> None:
    assert [f.checksum for f in core_files("acme_app", "acme_admin")] == [f.checksum for f in core_files()]
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (id int PRIMARY KEY);\nGRANT SELECT ON a TO acme_app;\n")
    await Migrator(empty_dsn, tmp_path, app_role="acme_app", admin_role="acme_admin").up()
    con = await asyncpg.connect(empty_dsn)
    try:
        roles = await con.fetch("SELECT rolname, rolsuper, rolbypassrls FROM pg_roles "
                                "WHERE rolname IN ('acme_app', 'acme_admin') ORDER BY 1")
        assert [(r["rolname"], r["rolsuper"], r["rolbypassrls"]) for r in roles] == [
            ("acme_admin", False, False), ("acme_app", False, False)]
        assert await con.fetchval("SELECT has_schema_privilege('acme_app', 'app', 'USAGE')")
    finally:
        await con.close()


async def test_database_migrated_with_the_old_layout_upgrades_cleanly(empty_dsn: str, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(OLD, old)
    await Migrator(empty_dsn, old, core=False).up()
    con = await asyncpg.connect(empty_dsn)
    try:
        # Signing on, and a setting given to the verifier later (as 0006 does on Citus).
        await con.execute("SELECT app.enable_signed_tenant_context(decode(repeat('ab', 32), 'hex'))")
        await con.execute("ALTER FUNCTION app.verified_tenant_id() SET work_mem = '2MB'")
        m = Migrator(empty_dsn, NEW)
        before = await m.status()
        assert not before.drift and not before.pending and len(before.core_pending) == 3
        report = await m.up_report()
        assert report.applied == [] and report.core == ["0001", "0002", "0003"]
        after = await m.status()
        assert after.exit_code() == 0 and not after.drift
        assert sorted(a.version for a in after.superseded) == ["0001", "0003", "0004", "0005"]
        assert {a.checksum for a in after.superseded} <= set(SUPERSEDED)
        # Signing stays on and the verifier keeps its settings.
        assert "verified_tenant_id" in await con.fetchval(
            "SELECT prosrc FROM pg_proc WHERE oid = 'app.current_tenant_id()'::regprocedure")
        assert await con.fetchval(
            "SELECT proconfig FROM pg_proc WHERE oid = 'app.verified_tenant_id()'::regprocedure") == [
            "search_path=pg_catalog, pg_temp", "work_mem=2MB"]
        assert (await m.lint()).blocking == []
    finally:
        await con.close()


async def test_database_from_before_0005_gets_the_session_bound_verifier(empty_dsn: str, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for f in OLD.glob("000[1-4]_*.sql"):
        shutil.copy(f, old / f.name)
    await Migrator(empty_dsn, old, core=False).up()
    await Migrator(empty_dsn, NEW).up()
    con = await asyncpg.connect(empty_dsn)
    try:
        assert "app.session_id()" in await con.fetchval(
            "SELECT prosrc FROM pg_proc WHERE oid = 'app.verified_tenant_id()'::regprocedure")
        assert await con.fetchval("SELECT count(*) FROM information_schema.columns WHERE "
                                  "table_schema = 'app_private' AND column_name = 'max_skew_ms'") == 1
        assert (await Migrator(empty_dsn, NEW).status()).exit_code() == 0
    finally:
        await con.close()


async def test_core_false_leaves_the_core_schema_out(empty_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (id int PRIMARY KEY);\n")
    await Migrator(empty_dsn, tmp_path, core=False).up()
    assert CORE_SCOPE not in await _scopes(empty_dsn)
