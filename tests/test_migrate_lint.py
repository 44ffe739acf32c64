"""The lock-aware lint, rule by rule: fires on the dangerous form, quiet on the safe form and
on a table created in the same file; every dangerous form is real SQL that PostgreSQL runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pgaccess import MigrationError
from pgaccess.migrate import LintFailed, Migrator, lint_files, load_directory

PRELUDE = """CREATE TABLE p (id int PRIMARY KEY);
CREATE TABLE t (id int PRIMARY KEY, a int, b int);
CREATE UNIQUE INDEX t_a_idx ON t (a);
ALTER TABLE t ADD CONSTRAINT a_nn CHECK (a IS NOT NULL) NOT VALID;
"""
NO_TX = "-- pgaccess: no-transaction\n"

# rule, dangerous form (on {t}), safe form (on t, an existing table)
CASES = [
    ("index-not-concurrent", "CREATE INDEX i_b ON {t} (b);",
     NO_TX + "CREATE INDEX CONCURRENTLY i_b ON t (b);"),
    ("concurrently-in-transaction", "CREATE INDEX CONCURRENTLY i_b ON {t} (b);",
     NO_TX + "CREATE INDEX CONCURRENTLY i_b ON t (b);"),
    ("alter-column-type", "ALTER TABLE {t} ALTER COLUMN b TYPE bigint;",
     "ALTER TABLE t ADD COLUMN b_big bigint;"),
    ("add-column-rewrite", "ALTER TABLE {t} ADD COLUMN u uuid NOT NULL DEFAULT gen_random_uuid();",
     "ALTER TABLE t ADD COLUMN c timestamptz NOT NULL DEFAULT now();"),
    ("add-column-rewrite", "ALTER TABLE {t} ADD COLUMN n bigserial;",
     "ALTER TABLE t ADD COLUMN n bigint;"),
    ("set-not-null", "ALTER TABLE {t} ALTER COLUMN a SET NOT NULL;",
     "ALTER TABLE t VALIDATE CONSTRAINT a_nn;\nALTER TABLE t ALTER COLUMN a SET NOT NULL;"),
    ("constraint-not-valid", "ALTER TABLE {t} ADD CONSTRAINT fk FOREIGN KEY (b) REFERENCES p (id);",
     "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (b) REFERENCES p (id) NOT VALID;"),
    ("constraint-not-valid", "ALTER TABLE {t} ADD CONSTRAINT ck CHECK (b > 0);",
     "ALTER TABLE t ADD CONSTRAINT ck CHECK (b > 0) NOT VALID;"),
    ("constraint-not-valid", "ALTER TABLE {t} ADD COLUMN pid int REFERENCES p (id);",
     "ALTER TABLE t ADD COLUMN pid int;"),
    ("validate-in-same-transaction",
     "ALTER TABLE {t} ADD CONSTRAINT ck CHECK (b > 0) NOT VALID;\nALTER TABLE {t} VALIDATE CONSTRAINT ck;",
     "ALTER TABLE t VALIDATE CONSTRAINT a_nn;"),
    ("unique-without-index", "ALTER TABLE {t} ADD CONSTRAINT uq UNIQUE (a);",
     "ALTER TABLE t ADD CONSTRAINT uq UNIQUE USING INDEX t_a_idx;"),
    ("drop-column", "ALTER TABLE {t} DROP COLUMN b;",
     "-- pgaccess:nolint drop-column: release 2.3 stopped reading b\nALTER TABLE t DROP COLUMN b;"),
    ("rename", "ALTER TABLE {t} RENAME COLUMN b TO b2;", "ALTER TABLE t ADD COLUMN b2 int;"),
    ("rename", "ALTER TABLE {t} RENAME TO t_old;", "CREATE VIEW t_new AS SELECT * FROM t;"),
    ("vacuum-full", NO_TX + "VACUUM FULL {t};", NO_TX + "VACUUM t;"),
    ("cluster", "CLUSTER {t} USING {t}_pkey;", "ANALYZE t;"),
]
IDS = [f"{rule}-{i}" for i, (rule, _, _) in enumerate(CASES)]


def write_set(d: Path, second: str) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    (d / "0001_prelude.sql").write_text(PRELUDE)
    (d / "0002_change.sql").write_text(second)
    return [d / "0001_prelude.sql", d / "0002_change.sql"]


def rules_in(d: Path) -> list[str]:
    return [f.rule for f in lint_files(load_directory(d)).blocking]


@pytest.mark.parametrize(("rule", "danger", "safe"), CASES, ids=IDS)
async def test_rule(rule: str, danger: str, safe: str, tmp_path: Path, empty_dsn: str) -> None:
    write_set(tmp_path / "danger", danger.format(t="t"))
    findings = lint_files(load_directory(tmp_path / "danger")).blocking
    assert [f.rule for f in findings] == [rule]
    f = findings[0]
    assert f.file and f.file.endswith("0002_change.sql") and f.line and f.statement
    assert f.lock and f.why and f.fix and rule in str(f)
    # the dangerous form is real SQL: PostgreSQL applies it (with the lint off)
    if rule != "concurrently-in-transaction":
        assert await Migrator(empty_dsn, tmp_path / "danger", echo=lambda _: None).up(lint=False)
    write_set(tmp_path / "safe", safe)
    assert rules_in(tmp_path / "safe") == []
    # a table created in the same file is exempt
    same = "CREATE TABLE fresh (id int PRIMARY KEY, a int, b int);\n" + danger.replace(NO_TX, "")
    header = NO_TX if rule in ("vacuum-full", "concurrently-in-transaction") else ""
    write_set(tmp_path / "same", header + same.format(t="fresh"))
    expected = ["concurrently-in-transaction"] if rule == "concurrently-in-transaction" and not header else []
    assert rules_in(tmp_path / "same") == expected


def test_reference_migrations_have_no_unwaived_findings() -> None:
    report = Migrator("", "migrations").lint_files()
    assert report.blocking == [], "\n".join(str(f) for f in report.blocking)
    assert all(f.waived for f in report.findings)


def test_waivers_need_a_known_rule_and_a_reason(tmp_path: Path) -> None:
    write_set(tmp_path / "a", "-- pgaccess:nolint index-not-concurrent\nCREATE INDEX i ON t (b);")
    assert sorted(rules_in(tmp_path / "a")) == ["index-not-concurrent", "nolint-needs-reason"]
    write_set(tmp_path / "b", "-- pgaccess:nolint no-such-rule: because\nCREATE INDEX i ON t (b);")
    assert sorted(rules_in(tmp_path / "b")) == ["index-not-concurrent", "nolint-unknown-rule"]
    write_set(tmp_path / "c", "/* pgaccess:nolint index-not-concurrent, rename: 40 rows */\n"
              "CREATE INDEX i ON t (b);")
    report = lint_files(load_directory(tmp_path / "c"))
    assert report.blocking == [] and [f.waived for f in report.waived] == ["40 rows"]


async def test_up_lints_before_applying_anything(empty_dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "m"
    write_set(d, "CREATE TABLE ok (x int);\nCREATE INDEX i_b ON t (b);")
    (d / "0003_later.sql").write_text("CREATE TABLE later (x int);\n")
    m = Migrator(empty_dsn, d, echo=lambda _: None)
    with pytest.raises(LintFailed) as info:
        await m.up()
    assert "0002_change.sql:2" in str(info.value) and "index-not-concurrent" in str(info.value)
    assert (await m.status()).applied == []  # not even 0001, which is clean
    r = subprocess.run([sys.executable, "-m", "pgaccess.migrate", "--dsn", empty_dsn, "--dir", str(d),
                        "up", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 5 and json.loads(r.stdout)["findings"][0]["rule"] == "index-not-concurrent"
    lines: list[str] = []
    assert await Migrator(empty_dsn, d, echo=lines.append).up(lint=False) == ["0001", "0002", "0003"]
    assert "lint skipped (--no-lint)" in lines


async def test_up_refuses_on_checksum_drift(empty_dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "m"
    write_set(d, "CREATE TABLE ok (x int);")
    m = Migrator(empty_dsn, d, echo=lambda _: None)
    await m.up()
    (d / "0002_change.sql").write_text("CREATE TABLE ok (x bigint);")
    (d / "0003_next.sql").write_text("CREATE TABLE next (x int);")
    with pytest.raises(MigrationError, match="checksum drift .* 0002 change"):
        await m.up()
    assert await m.up(allow_drift=True) == ["0003"]


async def test_catalogue_waiver_by_object(empty_dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "0001_legacy.sql").write_text(
        "-- pgaccess:nolint rls-disabled public.legacy: read-only archive, never served to tenants\n"
        "CREATE TABLE legacy (tenant_id uuid);\n")
    m = Migrator(empty_dsn, d, echo=lambda _: None, app_role=None)
    with pytest.raises(LintFailed, match="rls-not-forced"):
        await m.up()  # one finding waived, the others still block the commit
    await m.up(lint=False)
    report = await m.lint()
    assert [(f.rule, f.waived) for f in report.waived] == [
        ("rls-disabled", "read-only archive, never served to tenants")]
    assert {f.rule for f in report.blocking} == {"rls-not-forced", "rls-no-guard"}
