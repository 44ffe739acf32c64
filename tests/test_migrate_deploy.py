"""Deploying on a busy database: lock-timeout retries, statement_timeout, dry-run plans and
staged tenant-schema rollouts, all against real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from pgaccess import MigrationError
from pgaccess.migrate import LockRetry, Migrator, Rollout, RolloutFailed


def write(d: Path, name: str, sql: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(sql)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgaccess.migrate", *args],
                          capture_output=True, text=True, timeout=120)


async def test_lock_timeout_is_retried_until_the_holder_lets_go(empty_dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "m"
    write(d, "0001_a.sql", "CREATE TABLE a (id int);\n")
    await Migrator(empty_dsn, d, echo=lambda _: None).up()
    write(d, "0002_alter.sql", "-- pgaccess: lock_timeout=200ms\nALTER TABLE a ADD COLUMN y int;\n")
    holder = await asyncpg.connect(empty_dsn)
    await holder.execute("BEGIN; LOCK TABLE a IN ACCESS SHARE MODE")
    first_failure = asyncio.Event()
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if line.startswith("lock timeout on"):
            first_failure.set()

    async def release() -> None:
        await first_failure.wait()
        await holder.execute("ROLLBACK")  # released after the first attempt, during the backoff

    releaser = asyncio.create_task(release())
    try:
        m = Migrator(empty_dsn, d, echo=echo, lock_retry=LockRetry(budget=30, base=0.5))
        assert await m.up() == ["0002"]
    finally:
        await releaser
        await holder.close()
    retries = [x for x in lines if x.startswith("lock timeout on")]
    assert retries == [retries[0]] and "0002 alter (attempt 1)" in retries[0]
    con = await asyncpg.connect(empty_dsn)
    try:
        assert await con.fetchval("SELECT count(*) FROM pg_attribute WHERE attrelid = 'a'::regclass "
                                  "AND attname = 'y'") == 1
    finally:
        await con.close()


async def test_budget_exhausted_and_other_errors_are_not_retried(empty_dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "m"
    write(d, "0001_a.sql", "CREATE TABLE a (id int);\n")
    await Migrator(empty_dsn, d, echo=lambda _: None).up()
    write(d, "0002_alter.sql", "-- pgaccess: lock_timeout=100ms\nALTER TABLE a ADD COLUMN y int;\n")
    holder = await asyncpg.connect(empty_dsn)
    await holder.execute("BEGIN; LOCK TABLE a IN ACCESS SHARE MODE")
    lines: list[str] = []
    try:
        with pytest.raises(MigrationError, match=r"55P03.*Gave up after \d+ attempt"):
            await Migrator(empty_dsn, d, echo=lines.append, lock_retry=LockRetry(budget=1.0, base=0.2)).up()
    finally:
        await holder.close()
    assert len([x for x in lines if x.startswith("lock timeout")]) >= 2
    (d / "0002_alter.sql").write_text("-- pgaccess: statement_timeout=200ms\nSELECT pg_sleep(3);\n")
    lines.clear()
    with pytest.raises(MigrationError, match="57014") as info:
        await Migrator(empty_dsn, d, echo=lines.append, lock_retry=LockRetry(budget=30)).up()
    assert "statement timeout" in str(info.value) and not any("lock timeout" in x for x in lines)


async def test_no_transaction_file_retries_only_the_blocked_statement(empty_dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "m"
    write(d, "0001_a.sql", "CREATE TABLE a (id int);\n")
    await Migrator(empty_dsn, d, echo=lambda _: None).up()
    write(d, "0002_steps.sql", "-- pgaccess: no-transaction, lock_timeout=200ms\n"
          "CREATE TABLE b (x int);\nALTER TABLE a ADD COLUMN y int;\n")
    holder = await asyncpg.connect(empty_dsn)
    await holder.execute("BEGIN; LOCK TABLE a IN ACCESS SHARE MODE")
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if line.startswith("lock timeout on"):
            asyncio.get_running_loop().create_task(holder.execute("ROLLBACK"))

    try:
        await Migrator(empty_dsn, d, echo=echo, lock_retry=LockRetry(budget=30, base=0.5)).up()
    finally:
        await holder.close()
    assert any("0002 steps statement 2 (attempt 1)" in x for x in lines)


async def test_dry_run_shows_what_up_then_does(empty_dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "m"
    write(d, "0001_a.sql", "CREATE TABLE a (id int PRIMARY KEY, b int);\n")
    write(d, "0002_idx.sql", "-- pgaccess: no-transaction, statement_timeout=1min\n"
          "CREATE INDEX CONCURRENTLY a_b ON a (b);\nINSERT INTO a VALUES (1, 2);\n")
    write(d / "tenant", "0001_notes.sql", "CREATE TABLE notes (x int);\n")
    m = Migrator(empty_dsn, d, echo=lambda _: None)
    con = await asyncpg.connect(empty_dsn)
    try:
        await con.execute('CREATE SCHEMA "tenant_a"; CREATE SCHEMA "tenant_b"')
        plan = await m.plan()
        text = "\n".join(plan.render())
        assert "line 2: CREATE INDEX CONCURRENTLY a_b ON a (b)" in text
        assert "locks: SHARE UPDATE EXCLUSIVE on a" in text and "locks: ROW EXCLUSIVE on a" in text
        assert "tenant schemas (2): tenant_a, tenant_b" in text
        data = json.loads(cli("--dsn", empty_dsn, "--dir", str(d), "up", "--dry-run", "--json").stdout)
        assert data["totals"] == {"shared_files": 2, "shared_statements": 3, "tenant_schemas": 2,
                                  "tenant_files": 2, "tenant_statements": 2, "lint_findings": 0,
                                  "lint_waived": 0}
        assert data["shared"][1]["statement_timeout"] == "1min"
        assert await con.fetchval("SELECT to_regclass('a')") is None  # dry run applied nothing
        await m.up()
        rows = await con.fetch("SELECT scope, version FROM pgaccess.schema_migrations "
                               "WHERE scope <> 'pgaccess' ORDER BY 1, 2")
        done = [(r["scope"], r["version"]) for r in rows]
        planned = [("shared", v) for v in plan.versions] + [
            (s, v) for s, vs in plan.tenants.items() for v in vs]
        assert sorted(done) == sorted(planned)
        assert await con.fetchval("SELECT count(*) FROM a") == 1
    finally:
        await con.close()


async def _tenant_set(dsn: str, d: Path, n: int) -> list[str]:
    write(d, "0001_a.sql", "SELECT 1;\n")
    write(d / "tenant", "0001_notes.sql", "CREATE TABLE notes (x int);\n")
    schemas = sorted(f"tenant_{uuid.uuid4().hex}" for _ in range(n))
    con = await asyncpg.connect(dsn)
    try:
        await con.execute("".join(f'CREATE SCHEMA "{s}";' for s in schemas))
        # break the first schema: the tenant migration fails there only
        await con.execute(f'CREATE TABLE "{schemas[0]}".notes (y int)')
    finally:
        await con.close()
    return schemas


async def test_canary_failure_stops_the_rollout(empty_dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "m"
    schemas = await _tenant_set(empty_dsn, d, 5)
    m = Migrator(empty_dsn, d, echo=lambda _: None)
    with pytest.raises(RolloutFailed) as info:
        await m.up(rollout=Rollout(canary=2, concurrency=2, continue_on_error=True))
    report = info.value.report
    by = {r.schema: r for r in report.results}
    assert by[schemas[0]].status == "failed" and by[schemas[0]].phase == "canary"
    assert "42P07" in (by[schemas[0]].error or "")
    assert report.count("skipped") == 3  # the rest never started, even with continue_on_error
    status = await m.status()
    assert sum(1 for t in status.tenants.values() if t["pending"]) >= 4


async def test_continue_on_error_reports_every_tenant(empty_dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "m"
    schemas = await _tenant_set(empty_dsn, d, 6)
    r = cli("--dsn", empty_dsn, "--dir", str(d), "up", "--concurrency", "3", "--continue-on-error",
            "--json")
    assert r.returncode == 1, r.stderr
    data = json.loads(r.stdout)["tenants"]
    assert (data["applied"], data["failed"], data["skipped"]) == (5, 1, 0)
    failed = [x for x in data["results"] if x["status"] == "failed"]
    assert [x["schema"] for x in failed] == [schemas[0]]
    status = await Migrator(empty_dsn, d).status()
    assert [s for s, t in status.tenants.items() if t["pending"]] == [schemas[0]]


async def test_stop_on_first_failure_without_continue(empty_dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "m"
    await _tenant_set(empty_dsn, d, 4)
    with pytest.raises(RolloutFailed) as info:
        await Migrator(empty_dsn, d, echo=lambda _: None).up(rollout=Rollout(concurrency=1))
    assert (info.value.report.count("failed"), info.value.report.count("skipped")) == (1, 3)
