"""`queries check` agrees with sqlc on sqlc's own PostgreSQL example sets (tests/data/sqlc).

For every query of authors, booktest, jets and ondeck, each result column's PostgreSQL type,
Python type and nullability must match what sqlc generated for it: zero differences.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import asyncpg
import pytest

from pgaccess.queries import NamedQuery
from pgaccess.queries.check import Column, describe

DATA = Path(__file__).parent / "data" / "sqlc"
EXPECTED = json.loads((DATA / "expected.json").read_text())
SETS = ["authors", "booktest", "jets", "ondeck"]
_NAME = re.compile(r"^-- name: (?P<name>\w+) :(?P<kind>\w+)\s*$", re.MULTILINE)
_OPERATIONS = {"one": "select_one", "many": "select", "exec": "execute"}

# sqlc's Go type -> (PostgreSQL types it is generated for, Python type, can be NULL).
_GO = {
    "int64": ({"bigint"}, "int", False),
    "int32": ({"integer"}, "int", False),
    "string": ({"text", "character varying", "character varying(255)"}, "str", False),
    "sql.NullString": ({"text", "character varying"}, "str", True),
    "time.Time": ({"timestamp with time zone", "timestamp without time zone"},
                  "datetime.datetime", False),
    "BookType": ({"book_type"}, "str", False),
    "Status": ({"status"}, "str", False),
    "[]string": ({"character varying[]", "text[]"}, "list[str]", None),
    "[]Status": ({"status[]"}, "list[str]", None),
}


def sqlc_queries(text: str) -> list[NamedQuery]:
    """Split a sqlc query file (``-- name: Name :kind``) into queries with $n parameters."""
    marks = list(_NAME.finditer(text))
    out = []
    for i, m in enumerate(marks):
        body = text[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(text)]
        sql = "\n".join(line for line in body.strip().splitlines()
                        if not line.startswith("--")).rstrip(";\n ")
        n = max((int(x) for x in re.findall(r"\$(\d+)", sql)), default=0)
        out.append(NamedQuery(m["name"], _OPERATIONS[m["kind"]], sql,
                              tuple(f"p{k}" for k in range(1, n + 1)), "query.sql",
                              text[: m.start()].count("\n") + 1, ""))
    return out


def differences(name: str, columns: list[Column], expected: list[list[str]]) -> list[str]:
    if [c.name for c in columns] != [e[0] for e in expected]:
        return [f"{name}: columns {[c.name for c in columns]} != sqlc's {[e[0] for e in expected]}"]
    out = []
    for c, (col, go, *slice_null) in zip(columns, expected, strict=True):
        pg_types, py, nullable = _GO[go]
        if nullable is None:
            nullable = slice_null == ["null"]
        if c.type not in pg_types or c.python_type != py:
            out.append(f"{name}.{col}: {c.type} ({c.python_type}), sqlc generates {go}")
        if c.nullable != nullable:
            out.append(f"{name}.{col}: nullable={c.nullable}, sqlc says {nullable} ({go})")
    return out


@pytest.mark.parametrize("example", SETS)
async def test_types_and_nullability_agree_with_sqlc(empty_dsn: str, example: str) -> None:
    con = await asyncpg.connect(empty_dsn)
    try:
        await con.execute((DATA / example / "schema.sql").read_text())
        queries = sqlc_queries((DATA / example / "query.sql").read_text())
        assert [q.name for q in queries] == list(EXPECTED[example])
        diffs: list[str] = []
        for q in queries:
            async with con.transaction():
                desc, errors = await describe(con, q)
            assert errors == [], errors
            diffs += differences(q.name, desc.columns, EXPECTED[example][q.name])
    finally:
        await con.close()
    assert diffs == []


def test_a_disagreement_is_reported() -> None:
    columns = [Column("id", "bigint", "int", False), Column("bio", "text", "str", False)]
    assert differences("GetAuthor", columns, [["id", "int64"], ["bio", "sql.NullString"]]) == [
        "GetAuthor.bio: nullable=False, sqlc says True (sql.NullString)"]
