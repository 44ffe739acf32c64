"""The migration runner against real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from pgaccess import MigrationError
from pgaccess.migrate import LockRetry, Migrator, Rollout, checksum, load_directory, tenant_schema_name


def write(d: Path, name: str, sql: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(sql)
    return p


async def fetchval(dsn: str, sql: str, *args: object) -> object:
    con = await asyncpg.connect(dsn)
    try:
        return await con.fetchval(sql, *args)
    finally:
        await con.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgaccess.migrate", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    d = tmp_path / "migrations"
    write(d, "0001_create_a.sql", "CREATE TABLE a (id int PRIMARY KEY);\n")
    write(d, "0001_create_a.down.sql", "DROP TABLE a;\n")
    write(d, "0002_insert_a.sql", "INSERT INTO a VALUES (1), (2);\n")
    write(d, "0002_insert_a.down.sql", "DELETE FROM a;\n")
    return d


async def test_up_applies_in_order_and_is_idempotent(empty_dsn: str, mdir: Path) -> None:
    m = Migrator(empty_dsn, mdir)
    assert await m.up() == ["0001", "0002"]
    assert await m.up() == []
    assert await fetchval(empty_dsn, "SELECT count(*) FROM a") == 2
    status = await m.status()
    assert [a.version for a in status.applied] == ["0001", "0002"] and status.exit_code() == 0
    row = await fetchval(empty_dsn, "SELECT applied_by FROM pgaccess.schema_migrations LIMIT 1")
    assert row


async def test_failing_file_rolls_back_and_names_file_line_and_sqlstate(empty_dsn: str, mdir: Path) -> None:
    write(mdir, "0003_broken.sql", "CREATE TABLE b (id int);\n\nINSERT INTO b VALUES (1);\nSELECT * FROM nope;\n")
    write(mdir, "0004_after.sql", "CREATE TABLE c (id int);\n")
    m = Migrator(empty_dsn, mdir)
    with pytest.raises(MigrationError) as info:
        await m.up()
    msg = str(info.value)
    assert "0003_broken.sql:4" in msg and "42P01" in msg and "nope" in msg
    assert await fetchval(empty_dsn, "SELECT to_regclass('b')") is None  # whole file rolled back
    assert await fetchval(empty_dsn, "SELECT to_regclass('c')") is None  # later files not applied
    assert [a.version for a in (await m.status()).applied] == ["0001", "0002"]


async def test_no_transaction_file_with_concurrent_index_and_dollar_quotes(empty_dsn: str, mdir: Path) -> None:
    write(mdir, "0003_concurrently.sql", """-- pgaccess: no-transaction
CREATE INDEX CONCURRENTLY a_id_idx ON a (id);
CREATE FUNCTION semi() RETURNS text LANGUAGE plpgsql AS $BODY$
BEGIN
  RETURN 'a;b'; -- ; in a body
END
$BODY$;
DO $$ BEGIN PERFORM 1; END $$;
VACUUM a;
""")
    await Migrator(empty_dsn, mdir).up()
    assert await fetchval(empty_dsn, "SELECT semi()") == "a;b"
    assert await fetchval(empty_dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'a_id_idx'::regclass")


async def test_no_transaction_file_resumes_where_it_stopped(empty_dsn: str, mdir: Path) -> None:
    path = write(mdir, "0003_steps.sql", "-- pgaccess: no-transaction\nCREATE TABLE s1 (x int);\n"
                 "CREATE TABLE s2 (x int);\nINSERT INTO missing VALUES (1);\nCREATE TABLE s3 (x int);\n")
    m = Migrator(empty_dsn, mdir)
    with pytest.raises(MigrationError, match="0003_steps.sql:4"):
        await m.up()
    assert await fetchval(empty_dsn, "SELECT statements_done FROM pgaccess.migration_progress") == 2
    # fix the failing statement in place (the applied prefix is unchanged) and resume
    path.write_text(path.read_text().replace("INSERT INTO missing VALUES (1);", "CREATE TABLE missing (x int);"))
    lines: list[str] = []
    await Migrator(empty_dsn, mdir, echo=lines.append).up()
    assert "resuming 0003 steps after statement 2/4" in lines
    assert await fetchval(empty_dsn, "SELECT count(*) FROM pgaccess.migration_progress") == 0
    assert await fetchval(empty_dsn, "SELECT to_regclass('s3') IS NOT NULL")


async def test_failed_concurrent_index_is_reported(empty_dsn: str, mdir: Path) -> None:
    write(mdir, "0003_dup.sql", "INSERT INTO a VALUES (3);\n")
    await Migrator(empty_dsn, mdir).up()
    con = await asyncpg.connect(empty_dsn)
    await con.execute("CREATE TABLE d (x int); INSERT INTO d VALUES (1), (1)")
    await con.close()
    write(mdir, "0004_idx.sql", "-- pgaccess: no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY d_x ON d (x);\n")
    with pytest.raises(MigrationError) as info:
        await Migrator(empty_dsn, mdir).up()
    assert "invalid index(es) left behind: d_x" in str(info.value)


async def test_drift_is_detected_by_verify_and_status(empty_dsn: str, mdir: Path) -> None:
    m = Migrator(empty_dsn, mdir)
    await m.up()
    (mdir / "0002_insert_a.sql").write_text("INSERT INTO a VALUES (9);\n")
    drift = await m.verify()
    assert [(d.version, d.reason) for d in drift] == [("0002", "checksum changed since it was applied")]
    (mdir / "0001_create_a.sql").unlink()
    (mdir / "0001_create_a.down.sql").unlink()
    status = await m.status()
    assert {d.reason for d in status.drift} == {"file missing", "checksum changed since it was applied"}
    assert status.exit_code() == 4
    result = cli("--dsn", empty_dsn, "--dir", str(mdir), "verify")
    assert result.returncode == 4 and "0001" in result.stderr and "0002" in result.stderr


async def test_crlf_and_bom_copies_are_not_drift(empty_dsn: str, mdir: Path) -> None:
    await Migrator(empty_dsn, mdir).up()
    for f in mdir.glob("*.sql"):
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes().replace(b"\n", b"\r\n"))
    assert await Migrator(empty_dsn, mdir).verify() == []
    assert checksum("a\r\nb") == checksum("\ufeffa\nb")


def test_eight_concurrent_runners_apply_each_migration_once(pg_dsn: str, tmp_path: Path) -> None:
    from pgaccess.config import with_database

    name = f"pgaccess_race_{uuid.uuid4().hex[:8]}"
    asyncio.run(_exec(pg_dsn, f'CREATE DATABASE "{name}"'))
    dsn = with_database(pg_dsn, name)
    d = tmp_path / "m"
    for i in range(1, 6):
        write(d, f"{i:04d}_step.sql", f"CREATE TABLE t{i} (x int); SELECT pg_sleep(0.05);\n")
    procs = [subprocess.Popen([sys.executable, "-m", "pgaccess.migrate", "--dsn", dsn, "--dir", str(d),
                               "up", "--no-lint"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outs
    applied = sum(line.startswith("applied ") for o in outs for line in o[0].splitlines())
    assert applied == 5
    assert asyncio.run(fetchval(dsn, "SELECT count(*) FROM pgaccess.schema_migrations WHERE scope = 'shared'")) == 5
    asyncio.run(_exec(pg_dsn, f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _exec(dsn: str, sql: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(sql)
    finally:
        await con.close()


async def test_out_of_order_is_refused_unless_allowed(empty_dsn: str, mdir: Path) -> None:
    (mdir / "0002_insert_a.sql").rename(mdir / "0005_insert_a.sql")
    (mdir / "0002_insert_a.down.sql").unlink()
    await Migrator(empty_dsn, mdir).up()
    write(mdir, "0003_late.sql", "CREATE TABLE late (x int);\n")
    with pytest.raises(MigrationError, match="out-of-order"):
        await Migrator(empty_dsn, mdir).up()
    assert await Migrator(empty_dsn, mdir, allow_out_of_order=True).up() == ["0003"]


async def test_down_and_refusal_without_down_file(empty_dsn: str, mdir: Path) -> None:
    m = Migrator(empty_dsn, mdir)
    await m.up()
    assert await m.down() == ["0002"]
    assert await fetchval(empty_dsn, "SELECT count(*) FROM a") == 0
    assert await m.down(to="0") == ["0001"]
    assert await fetchval(empty_dsn, "SELECT to_regclass('a')") is None
    await m.up()
    write(mdir, "0003_nodown.sql", "SELECT 1;\n")
    await m.up()
    with pytest.raises(MigrationError, match="no down file for 0003_nodown"):
        await m.down(to="0001")
    assert await fetchval(empty_dsn, "SELECT count(*) FROM a") == 2  # nothing was reverted


async def test_baseline_marks_without_running(empty_dsn: str, mdir: Path) -> None:
    m = Migrator(empty_dsn, mdir)
    assert await m.baseline("0001") == ["0001"]
    assert await fetchval(empty_dsn, "SELECT to_regclass('a')") is None
    status = await m.status()
    assert [p.version for p in status.pending] == ["0002"]
    with pytest.raises(MigrationError, match="already has applied"):
        await m.baseline("0002")


async def test_dry_run_changes_nothing(empty_dsn: str, mdir: Path) -> None:
    lines: list[str] = []
    planned = await Migrator(empty_dsn, mdir, echo=lines.append).up(dry_run=True)
    assert planned == ["0001", "0002"]
    assert "  would apply 0001 create_a (one transaction; lock_timeout=5s)" in lines
    assert "  would apply 0002 insert_a (one transaction; lock_timeout=5s)" in lines
    assert await fetchval(empty_dsn, "SELECT to_regclass('a')") is None
    assert (await Migrator(empty_dsn, mdir).status()).exit_code() == 3


async def test_up_to_version(empty_dsn: str, mdir: Path) -> None:
    assert await Migrator(empty_dsn, mdir).up(to="0001") == ["0001"]


async def test_repeatable_migrations_rerun_on_change_only(empty_dsn: str, mdir: Path) -> None:
    view = write(mdir / "repeatable", "a_view.sql", "CREATE OR REPLACE VIEW v AS SELECT 1 AS x;\n")
    m = Migrator(empty_dsn, mdir)
    assert await m.up() == ["0001", "0002", "a_view"]
    assert await m.up() == []
    view.write_text("CREATE OR REPLACE VIEW v AS SELECT 2 AS x;\n")
    assert (await m.status()).exit_code() == 3
    assert await m.up() == ["a_view"]
    assert await fetchval(empty_dsn, "SELECT x FROM v") == 2


async def test_lock_timeout_fails_fast_with_a_clear_message(empty_dsn: str, mdir: Path) -> None:
    await Migrator(empty_dsn, mdir).up()
    write(mdir, "0003_alter.sql", "-- pgaccess: lock_timeout=300ms\nALTER TABLE a ADD COLUMN y int;\n")
    holder = await asyncpg.connect(empty_dsn)
    try:
        await holder.execute("BEGIN; LOCK TABLE a IN ACCESS SHARE MODE")
        start = time.monotonic()
        with pytest.raises(MigrationError) as info:
            await Migrator(empty_dsn, mdir, lock_retry=LockRetry(budget=0)).up()
        assert time.monotonic() - start < 5
        assert "55P03" in str(info.value) and "lock_timeout=300ms" in str(info.value)
    finally:
        await holder.close()


async def test_tenant_schemas_are_migrated_and_a_failure_is_isolated(empty_dsn: str, mdir: Path) -> None:
    write(mdir / "tenant", "0001_notes.sql", "CREATE TABLE notes (x int);\n")
    m = Migrator(empty_dsn, mdir)
    await m.up()
    ids = [uuid.uuid4() for _ in range(3)]
    schemas = [await m.provision_tenant(t) for t in ids]
    assert schemas[0] == tenant_schema_name(ids[0])
    # break one tenant schema so the next tenant migration fails there only
    await _exec(empty_dsn, f'CREATE TABLE "{schemas[1]}".extra (x int)')
    write(mdir / "tenant", "0002_extra.sql", "CREATE TABLE extra (x int);\n")
    with pytest.raises(MigrationError) as info:
        await m.up(rollout=Rollout(continue_on_error=True))
    assert schemas[1] in str(info.value) and "1 schema(s)" in str(info.value)
    status = await m.status()
    assert status.tenants[schemas[0]]["pending"] == []
    assert status.tenants[schemas[1]]["pending"] == ["0002"]
    assert status.tenants[schemas[2]]["latest"] == "0002"


async def test_status_across_200_tenant_schemas_is_fast(empty_dsn: str, mdir: Path) -> None:
    write(mdir / "tenant", "0001_notes.sql", "CREATE TABLE notes (x int);\n")
    m = Migrator(empty_dsn, mdir)
    await m.up()
    con = await asyncpg.connect(empty_dsn)
    try:  # create 200 schemas and their bookkeeping directly, so the test stays quick
        ids = [uuid.uuid4() for _ in range(200)]
        names = [tenant_schema_name(t) for t in ids]
        await con.execute("".join(f'CREATE SCHEMA "{n}";' for n in names))
        f = load_directory(mdir / "tenant")[0]
        await con.executemany(
            "INSERT INTO pgaccess.schema_migrations (scope, version, name, checksum) VALUES ($1, $2, $3, $4)",
            [(n, f.version, f.name, f.checksum) for n in names[:150]],
        )
    finally:
        await con.close()
    start = time.perf_counter()
    status = await m.status()
    elapsed = time.perf_counter() - start
    assert len(status.tenants) == 200
    assert sum(1 for t in status.tenants.values() if t["pending"]) == 50
    assert elapsed < 2.0, f"status took {elapsed:.3f}s"


async def test_rls_lint_passes_on_the_reference_schema(db_dsn: str) -> None:
    assert (await Migrator(db_dsn, "migrations").lint()).blocking == []


async def test_rls_lint_catches_each_violation(empty_dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "bad"
    write(d, "0001_bad.sql", """
CREATE TABLE t (tenant_id uuid NOT NULL, id uuid PRIMARY KEY, email text UNIQUE);
CREATE TABLE parent (tenant_id uuid NOT NULL, id uuid, PRIMARY KEY (tenant_id, id));
ALTER TABLE parent ENABLE ROW LEVEL SECURITY;
CREATE TABLE child (tenant_id uuid NOT NULL, id uuid, parent_id uuid REFERENCES t (id));
ALTER TABLE child ENABLE ROW LEVEL SECURITY; ALTER TABLE child FORCE ROW LEVEL SECURITY;
CREATE POLICY g ON child AS RESTRICTIVE USING (true);
CREATE VIEW v AS SELECT * FROM child;
CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS $$ SELECT 1 $$;
""")
    m = Migrator(empty_dsn, d)
    with pytest.raises(MigrationError, match="adds RLS lint finding"):
        await m.up()  # the RLS gate refuses inside the file's transaction: nothing committed
    assert await fetchval(empty_dsn, "SELECT to_regclass('public.t')") is None
    assert (await m.status()).applied == []
    await m.up(lint=False)
    report = await m.lint()
    found = {(f.rule, f.object) for f in report.blocking}
    text = "\n".join(str(f) for f in report.blocking)
    assert ("rls-disabled", "public.t") in found
    assert ("rls-not-forced", "public.parent") in found
    assert ("rls-no-guard", "public.parent") in found
    assert "unique index t_pkey does not include tenant_id" in text
    assert "unique index t_email_key does not include tenant_id" in text
    assert "foreign key child_parent_id_fkey does not include tenant_id" in text
    assert ("rls-view-not-invoker", "public.v") in found
    assert ("security-definer-search-path", "public.f()") in found
    result = cli("--dsn", empty_dsn, "--dir", str(d), "lint", "--json")
    assert result.returncode == 5 and len(json.loads(result.stdout)["findings"]) >= 8


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("1_ok.sql", "SELECT 1;", None),
    ("abc.sql", "SELECT 1;", "bad migration file name"),
    ("0001_a.sql", "SELECT 'unterminated;", "unterminated string"),
])
def test_bad_files(tmp_path: Path, name: str, content: str, needle: str | None) -> None:
    write(tmp_path, name, content)
    if needle is None:
        assert load_directory(tmp_path)[0].version == "1"
    else:
        with pytest.raises(MigrationError, match=needle):
            load_directory(tmp_path)


def test_duplicate_versions_and_invalid_utf8(tmp_path: Path) -> None:
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    write(tmp_path, "001_b.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="duplicate migration version"):
        load_directory(tmp_path)
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    (tmp_path / "0001_a.sql").write_bytes(b"SELECT '\xff';")
    with pytest.raises(MigrationError, match="not valid UTF-8"):
        load_directory(tmp_path)


def test_new_creates_the_next_numbered_file(mdir: Path) -> None:
    result = cli("--dir", str(mdir), "new", "Add invoices table")
    assert result.returncode == 0
    path = Path(result.stdout.strip())
    assert path.name == "0003_add_invoices_table.sql" and path.exists()


async def test_status_cli_exit_codes_and_json(empty_dsn: str, mdir: Path) -> None:
    pending = cli("--dsn", empty_dsn, "--dir", str(mdir), "status", "--json")
    assert pending.returncode == 3
    data = json.loads(pending.stdout)
    assert [p["version"] for p in data["pending"]] == ["0001", "0002"] and data["applied"] == []
    up = cli("--dsn", empty_dsn, "--dir", str(mdir), "up")
    assert up.returncode == 0 and "applied 0001" in up.stdout
    data = json.loads(cli("--dsn", empty_dsn, "--dir", str(mdir), "status", "--json").stdout)
    assert set(data["applied"][0]) >= {"version", "name", "checksum", "applied_at", "duration_ms"}
    assert data["drift"] == [] and "tenants" in data


def test_unreachable_server_gives_a_clear_error(tmp_path: Path, mdir: Path) -> None:
    r = cli("--dsn", "postgresql://postgres@127.0.0.1:1/none", "--dir", str(mdir), "status")
    assert r.returncode == 1 and r.stderr.startswith("error: could not connect")
