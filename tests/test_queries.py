"""Named SQL: loading, calling through the unit of work, and `queries check` / `gen`."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgaccess import Database, ParameterError, QueryLoadError
from pgaccess.config import with_user
from pgaccess.queries import load_queries, load_queries_from_str
from pgaccess.queries.check import check_queries, lock_data, offline_errors, row_class_errors


def test_dollar_quoted_colons_are_not_parameters() -> None:
    qs = load_queries_from_str(
        "-- name: make_fn()#\nCREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT ':x'::text $$;\n"
        "-- name: tagged(a)$\nSELECT $body$ :not_a_param $body$ || :a::text;\n"
    )
    assert qs["tagged"].params == ("a",)
    assert ":not_a_param" in qs["tagged"].sql and "$1" in qs["tagged"].sql
    assert "':x'" in qs["make_fn"].sql


@pytest.mark.parametrize(("text", "needle"), [
    ("-- name: bad name\nSELECT 1;", "invalid query name"),
    ("-- name: q(a)\nSELECT :a, :b;", "undeclared parameter name in query q: b"),
    ("-- name: q(a, b)\nSELECT :a;", "unused declared parameter"),
    ("-- name: q()\n", "empty query"),
    ("-- name: q\nSELECT 1;", "missing mandatory parameter list"),
])
def test_malformed_files_raise_naming_the_problem(text: str, needle: str) -> None:
    with pytest.raises(QueryLoadError, match=needle):
        load_queries_from_str(text, "x.sql")


def test_duplicate_names_across_files_name_both(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("-- name: same()\nSELECT 1;\n")
    (tmp_path / "b.sql").write_text("\n\n-- name: same()\nSELECT 2;\n")
    with pytest.raises(QueryLoadError) as info:
        load_queries(tmp_path)
    assert "a.sql:1" in str(info.value) and "b.sql:3" in str(info.value)


def test_binary_and_non_utf8_files(tmp_path: Path) -> None:
    (tmp_path / "bin.sql").write_bytes(b"-- name: q()\nSELECT 1;\x00\x01")
    with pytest.raises(QueryLoadError, match="binary file"):
        load_queries(tmp_path)
    (tmp_path / "bin.sql").write_bytes(b"-- name: q()\nSELECT '\xff';")
    with pytest.raises(QueryLoadError, match="not valid UTF-8"):
        load_queries(tmp_path)
    with pytest.raises(QueryLoadError, match="does not exist"):
        load_queries(tmp_path / "nope")


def test_unknown_query_name_lists_the_known_ones() -> None:
    qs = load_queries("sql")
    with pytest.raises(QueryLoadError, match="no query named 'nope'; known: count_users"):
        qs["nope"]


async def test_calls_check_parameters_and_types(db: Database, tenant: uuid.UUID) -> None:
    async with db.transaction(tenant=tenant) as uow:
        assert await uow.q.count_users() == 5
        rows = await uow.q.projects_by_status(status="done", lim=3)
        assert len(rows) == 3 and all(r["status"] == "done" for r in rows)
        with pytest.raises(ParameterError, match="missing parameters \\['lim'\\]"):
            await uow.q.projects_by_status(status="done")
        with pytest.raises(ParameterError, match="unknown parameters \\['limit'\\]"):
            await uow.q.projects_by_status(status="done", lim=1, limit=2)
        with pytest.raises(QueryLoadError):
            await uow.q.no_such_query()
    with pytest.raises(ParameterError, match="wrong type"):
        async with db.transaction(tenant=tenant) as uow:
            await uow.q.touch_project(id="not-a-uuid")


async def test_check_passes_on_the_reference_sql(db_dsn: str) -> None:
    from pgaccess.reference import rows

    qs = load_queries("sql")
    report = await check_queries(with_user(db_dsn, "pgaccess_app"), qs,
                                 admin_dsn=with_user(db_dsn, "pgaccess_admin"),
                                 row_classes={k: v for k, v in vars(rows).items() if isinstance(v, type)})
    assert report.errors == []
    by_name = {q.name: q for q in report.queries}
    p = by_name["projects_by_status"]
    assert [(x.name, x.type) for x in p.params] == [("status", "project_status"), ("lim", "bigint")]
    owner = next(c for c in p.columns if c.name == "owner_id")
    assert owner.nullable and owner.python_type == "uuid.UUID"
    assert not next(c for c in p.columns if c.name == "name").nullable
    assert json.loads(Path("sql/queries.lock.json").read_text()) == lock_data(report)


async def test_check_catches_broken_queries(db_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "bad.sql").write_text(
        "-- name: missing_table()\nSELECT * FROM nope;\n\n"
        "-- name: bang_returns_rows()!\nSELECT 1 AS x;\n\n"
        "-- name: one_without_columns(id)^\nUPDATE projects SET name = name WHERE id = :id;\n\n"
        "-- name: in_list(ids)\nSELECT id FROM projects WHERE id IN (:ids);\n\n"
        "-- name: no_privilege()\nSELECT * FROM pgaccess.schema_migrations;\n\n"
        "-- name: two_values()$\nSELECT 1, 2;\n"
    )
    report = await check_queries(with_user(db_dsn, "pgaccess_app"), load_queries(tmp_path))
    text = "\n".join(report.errors)
    assert "bad.sql:1: query missing_table does not prepare" in text
    assert "bad.sql:4: query bang_returns_rows is marked '!' but returns rows" in text
    assert "bad.sql:7: query one_without_columns is a select ('^') but returns no columns" in text
    assert "bad.sql:10: query in_list uses IN with a parameter; use = ANY(:list)" in text
    assert "query no_privilege does not" in text and "42501" in text
    assert "two_values is marked '$' (one value) but returns 2 columns" in text


async def test_outer_join_side_is_nullable(db_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "j.sql").write_text(
        "-- name: with_owner()\n-- row: WithOwner\n"
        "SELECT p.name, u.email FROM projects p LEFT JOIN users u "
        "ON u.tenant_id = p.tenant_id AND u.id = p.owner_id;\n"
    )

    @dataclass
    class WithOwner:
        name: str
        email: str  # wrong: the LEFT JOIN makes it nullable

    report = await check_queries(with_user(db_dsn, "pgaccess_app"), load_queries(tmp_path),
                                 row_classes={"WithOwner": WithOwner})
    cols = {c.name: c.nullable for c in report.queries[0].columns}
    assert cols == {"name": False, "email": True}
    assert any("WithOwner.email is not Optional but the column can be NULL" in e for e in report.errors)


def test_row_class_disagreements_are_reported() -> None:
    from pgaccess.queries.check import Column, QueryDescription

    @dataclass
    class R:
        a: int
        b: str

    desc = QueryDescription("q", "f.sql", 3, "select", [],
                            [Column("a", "text", "str", False), Column("b", "text", "str", False)], "R")
    assert row_class_errors(desc, {"R": R}) == ["f.sql:3: R.a is int but the query's column is text (str)"]
    desc.columns = desc.columns[:1]
    assert "returns columns ['a'] but row class R has fields ['a', 'b']" in row_class_errors(desc, {"R": R})[0]


def test_offline_check_against_the_lock_file() -> None:
    from pgaccess.reference import rows

    qs = load_queries("sql")
    lock = json.loads(Path("sql/queries.lock.json").read_text())
    classes = {k: v for k, v in vars(rows).items() if isinstance(v, type)}
    assert offline_errors(qs, lock, classes) == []
    lock["queries"] = [q for q in lock["queries"] if q["name"] != "count_users"]
    assert any("count_users is not in the lock file" in e for e in offline_errors(qs, lock, classes))


def test_cli_check_json_and_gen_is_deterministic(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "pgaccess.queries"]
    check = subprocess.run([*run, "check", "--json", "--rows", "pgaccess.reference.rows"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    data = json.loads(check.stdout)
    q = next(q for q in data["queries"] if q["name"] == "user_by_email")
    assert q["operation"] == "select_one" and q["params"] == [
        {"name": "email", "type": "text", "python_type": "str"}]
    one = subprocess.run([*run, "gen"], capture_output=True, text=True, timeout=120).stdout
    two = subprocess.run([*run, "gen"], capture_output=True, text=True, timeout=120).stdout
    assert one == two == Path("pgaccess/reference/rows.py").read_text()
