"""Check every named query against a real database, like sqlx does for Rust.

Each query is prepared (asyncpg reports parameter and column types) *and* explained as the
app role with RLS on (``PREPARE`` alone passes a query the role has no privilege for). The
result - parameters and columns with PostgreSQL and Python types and nullability - is
compared with the query's declared operation, with its row class (a ``-- row: Name`` doc
line) and with the committed lock file, so a broken or drifted query fails before deploy.

Nullability is inferred from the statement itself (:mod:`.nullability`: each column resolved
to its source with PostgreSQL's parser, then NOT NULL constraints, outer joins and expression
rules), never from the plan, so the answer is the same for every role, data set and plan. A
``-- not-null: col, col`` doc line overrides it where the inference cannot know.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from ..errors import QueryLoadError
from . import NamedQuery, QuerySet, load_queries, nullability

_PY_TYPES = {
    "int2": "int", "int4": "int", "int8": "int", "oid": "int",
    "float4": "float", "float8": "float", "numeric": "decimal.Decimal",
    "text": "str", "varchar": "str", "bpchar": "str", "name": "str", "citext": "str",
    "bool": "bool", "uuid": "uuid.UUID", "bytea": "bytes",
    "timestamptz": "datetime.datetime", "timestamp": "datetime.datetime",
    "date": "datetime.date", "time": "datetime.time", "interval": "datetime.timedelta",
    "json": "Any", "jsonb": "Any", "inet": "ipaddress.IPv4Address | ipaddress.IPv6Address",
}
_DOC_ROW = re.compile(r"^row:\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)
_DOC_NOT_NULL = re.compile(r"^not-null:\s*(?P<cols>.+)$", re.MULTILINE)
_IN_PARAM = re.compile(r"\bIN\s*\(?\s*\$\d+\s*\)?", re.IGNORECASE)


@dataclass
class Param:
    name: str
    type: str
    python_type: str


@dataclass
class Column:
    name: str
    type: str
    python_type: str
    nullable: bool


@dataclass
class QueryDescription:
    name: str
    file: str
    line: int
    operation: str
    params: list[Param]
    columns: list[Column]
    row: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CheckReport:
    queries: list[QueryDescription] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"queries": [q.as_json() for q in self.queries], "errors": self.errors}


def declared_row(query: NamedQuery) -> str | None:
    m = _DOC_ROW.search(query.doc)
    return m.group("name") if m else None


def declared_not_null(query: NamedQuery) -> set[str]:
    m = _DOC_NOT_NULL.search(query.doc)
    return {c.strip() for c in m.group("cols").split(",")} if m else set()


async def _type_info(con: asyncpg.Connection, oids: set[int]) -> dict[int, tuple[str, str]]:
    rows = await con.fetch(
        """
        SELECT t.oid, format_type(t.oid, NULL) AS formatted, t.typname, t.typtype,
               e.typname AS elem, e.typtype AS elem_type
        FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
        WHERE t.oid = ANY($1::oid[])
        """,
        list(oids),
    )
    out: dict[int, tuple[str, str]] = {}
    for r in rows:
        if r["elem"] is not None:
            inner = "str" if r["elem_type"] in (b"e", "e") else _PY_TYPES.get(r["elem"], "Any")
            py = f"list[{inner}]"
        elif r["typtype"] in (b"e", "e"):
            py = "str"
        else:
            py = _PY_TYPES.get(r["typname"], "Any")
        out[r["oid"]] = (r["formatted"], py)
    return out


async def infer_nullable(con: asyncpg.Connection, query: NamedQuery, names: list[str]) -> list[bool]:
    """Per output column, can it be NULL: inferred from the statement (see nullability),
    ``True`` where not understood, ``False`` where ``-- not-null:`` says so. A ``$`` query's
    value is also None when the statement may return no row."""
    stmt = nullability.parse(query.sql)
    inferred = nullability.infer(stmt, await nullability.load_catalog(con, stmt))
    n = len(names)
    result = inferred if inferred is not None and len(inferred) == n else [True] * n
    if query.operation == "select_value" and not nullability.one_row(stmt):
        result = [True] * n
    forced = declared_not_null(query)
    return [can and name not in forced for can, name in zip(result, names, strict=True)]


async def describe(con: asyncpg.Connection, query: NamedQuery) -> tuple[QueryDescription, list[str]]:
    """Prepare and explain one query on ``con`` (inside a transaction that is rolled back)."""
    where = f"{query.file}:{query.line}"
    errors: list[str] = []
    desc = QueryDescription(query.name, query.file, query.line, query.operation, [], [],
                            declared_row(query))
    if query.operation == "script":
        return desc, errors
    try:
        stmt = await con.prepare(query.sql)
    except asyncpg.PostgresError as exc:
        return desc, [f"{where}: query {query.name} does not prepare: {exc} (SQLSTATE {exc.sqlstate})"]
    params, attrs = stmt.get_parameters(), stmt.get_attributes()
    types = await _type_info(con, {p.oid for p in params} | {a.type.oid for a in attrs})
    desc.params = [Param(name, *types.get(p.oid, (p.name, "Any")))
                   for name, p in zip(query.params, params, strict=False)]
    if len(params) != len(query.params):
        errors.append(f"{where}: query {query.name} declares {len(query.params)} parameters, "
                      f"PostgreSQL sees {len(params)}")
    try:
        await con.execute("SAVEPOINT pgaccess_check")
        nulls = ", ".join("NULL" for _ in params)
        await con.execute(f"PREPARE pgaccess_check_q AS {query.sql}")
        await con.execute(f"EXPLAIN EXECUTE pgaccess_check_q{f'({nulls})' if params else ''}")
        await con.execute("RELEASE SAVEPOINT pgaccess_check; DEALLOCATE pgaccess_check_q")
    except asyncpg.PostgresError as exc:
        await con.execute("ROLLBACK TO SAVEPOINT pgaccess_check")
        if await con.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE name = 'pgaccess_check_q'"):
            await con.execute("DEALLOCATE pgaccess_check_q")
        errors.append(f"{where}: query {query.name} does not EXPLAIN as this role with RLS on: "
                      f"{exc} (SQLSTATE {exc.sqlstate})")
    nullable = await infer_nullable(con, query, [a.name for a in attrs])
    for a, can_be_null in zip(attrs, nullable, strict=True):
        formatted, py = types.get(a.type.oid, (a.type.name, "Any"))
        desc.columns.append(Column(a.name, formatted, py, can_be_null))
    errors += _operation_errors(query, desc, where)
    return desc, errors


def _operation_errors(query: NamedQuery, desc: QueryDescription, where: str) -> list[str]:
    errors: list[str] = []
    op, n = query.operation, len(desc.columns)
    if op == "execute" and n:
        errors.append(f"{where}: query {query.name} is marked '!' but returns rows; use '<!' or "
                      "no operator (a select)")
    if op in ("select_one", "select_value", "select") and n == 0:
        errors.append(f"{where}: query {query.name} is a select ('{_op_suffix(op)}') but returns no columns; "
                      "mark it '!'")
    if op == "select_value" and n > 1:
        errors.append(f"{where}: query {query.name} is marked '$' (one value) but returns {n} columns")
    if _IN_PARAM.search(query.sql):
        errors.append(f"{where}: query {query.name} uses IN with a parameter; use = ANY(:list) "
                      "(IN (:x) compares with one value, not a list)")
    return errors


def _op_suffix(op: str) -> str:
    return {"select": "", "select_one": "^", "select_value": "$"}.get(op, op)


def row_class_errors(desc: QueryDescription, row_classes: dict[str, type[Any]]) -> list[str]:
    """Compare a query's columns with its declared row class (names, count, types, null)."""
    if desc.row is None:
        return []
    where = f"{desc.file}:{desc.line}"
    cls = row_classes.get(desc.row)
    if cls is None:
        return [f"{where}: query {desc.name} declares row {desc.row}, which is not a known row class"]
    if not dataclasses.is_dataclass(cls):
        return [f"{where}: row class {desc.row} is not a dataclass"]
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    cols = [c.name for c in desc.columns]
    if fields != cols:
        return [f"{where}: query {desc.name} returns columns {cols} but row class {desc.row} has "
                f"fields {fields} (names, count and order must match)"]
    errors = []
    for c in desc.columns:
        hint = hints[c.name]
        args = typing.get_args(hint)
        optional = type(None) in args
        base = [a for a in args if a is not type(None)] if args and optional else [hint]
        expected = c.python_type
        got = _type_name(base[0]) if len(base) == 1 else "|".join(_type_name(b) for b in base)
        both_lists = expected.startswith("list[") and got.startswith("list")
        if expected != "Any" and got != expected and not both_lists:
            errors.append(f"{where}: {desc.row}.{c.name} is {got} but the query's column is "
                          f"{c.type} ({expected})")
        if c.nullable and not optional:
            errors.append(f"{where}: {desc.row}.{c.name} is not Optional but the column can be NULL "
                          "(declare `| None`, or `-- not-null:` if you know better)")
    return errors


def _type_name(t: Any) -> str:
    if t is Any:
        return "Any"
    module = getattr(t, "__module__", "")
    name = getattr(t, "__qualname__", str(t))
    if module in ("builtins",):
        return str(name)
    return f"{module}.{name}"


def load_row_classes(spec: str | None) -> dict[str, type[Any]]:
    """``module`` or ``module:Class`` -> {name: dataclass} of the dataclasses it defines."""
    if not spec:
        return {}
    module = importlib.import_module(spec.split(":", 1)[0])
    return {name: obj for name, obj in vars(module).items()
            if isinstance(obj, type) and dataclasses.is_dataclass(obj)}


def runs_as_system(query: NamedQuery) -> bool:
    """``-- context: system`` marks a query meant for ``db.transaction(system=True)``."""
    return re.search(r"^context:\s*system\s*$", query.doc, re.MULTILINE) is not None


async def check_queries(
    dsn: str, queries: QuerySet, *, admin_dsn: str | None = None,
    tenant_setting: str = "app.tenant_id", row_classes: dict[str, type[Any]] | None = None,
) -> CheckReport:
    """Describe and check every query of ``queries`` on ``dsn`` (which should log in as the
    app role, so privileges and RLS are those of the service); queries marked
    ``-- context: system`` are checked on ``admin_dsn`` instead."""
    report = CheckReport()
    app = [q for q in queries if not (admin_dsn and runs_as_system(q))]
    system = [q for q in queries if admin_dsn and runs_as_system(q)]
    await _check_on(dsn, app, tenant_setting, row_classes or {}, report)
    if system and admin_dsn:
        await _check_on(admin_dsn, system, tenant_setting, row_classes or {}, report)
    report.queries.sort(key=lambda d: (d.file, d.line))
    return report


async def _check_on(dsn: str, queries: list[NamedQuery], tenant_setting: str,
                    row_classes: dict[str, type[Any]], report: CheckReport) -> None:
    con = await asyncpg.connect(dsn)
    try:
        # A generic plan keeps $n as parameters (NULLs would be constant-folded away).
        await con.execute(
            f"BEGIN READ WRITE; SELECT set_config('{tenant_setting}', "
            "'00000000-0000-4000-8000-000000000000', true); "
            "SET LOCAL plan_cache_mode = force_generic_plan"
        )
        for q in queries:
            await con.execute("SAVEPOINT pgaccess_query")
            desc, errors = await describe(con, q)
            await con.execute("ROLLBACK TO SAVEPOINT pgaccess_query")
            report.queries.append(desc)
            report.errors += errors
            report.errors += row_class_errors(desc, row_classes)
        await con.execute("ROLLBACK")
    finally:
        await con.close()


def lock_data(report: CheckReport) -> dict[str, Any]:
    """What the lock file holds: descriptions without file paths' directories."""
    queries = []
    for q in sorted(report.queries, key=lambda d: d.name):
        data = q.as_json()
        data["file"] = Path(q.file).name
        queries.append(data)
    return {"version": 1, "queries": queries}


def offline_errors(queries: QuerySet, lock: dict[str, Any],
                   row_classes: dict[str, type[Any]]) -> list[str]:
    """Verify the Python side against the lock file, without a database."""
    errors: list[str] = []
    locked = {q["name"]: q for q in lock.get("queries", [])}
    for q in queries:
        entry = locked.get(q.name)
        where = f"{q.file}:{q.line}"
        if entry is None:
            errors.append(f"{where}: query {q.name} is not in the lock file; run "
                          "`python -m pgaccess.queries check --update-lock` against a database")
            continue
        if entry["operation"] != q.operation or [p["name"] for p in entry["params"]] != list(q.params):
            errors.append(f"{where}: query {q.name} changed since the lock file was written "
                          "(operation or parameters); run check --update-lock")
        desc = QueryDescription(q.name, q.file, q.line, q.operation,
                                [Param(**p) for p in entry["params"]],
                                [Column(**c) for c in entry["columns"]], declared_row(q))
        errors += row_class_errors(desc, row_classes)
    for name in sorted(set(locked) - {q.name for q in queries}):
        errors.append(f"lock file lists query {name}, which no longer exists; run check --update-lock")
    return errors


def load_lock(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except FileNotFoundError:
        raise QueryLoadError(f"no lock file {path}; create it with `check --update-lock`") from None
    except json.JSONDecodeError as exc:
        raise QueryLoadError(f"{path}: not valid JSON ({exc})") from None


__all__ = [
    "CheckReport", "Column", "Param", "QueryDescription", "check_queries", "describe",
    "load_lock", "load_queries", "load_row_classes", "lock_data", "offline_errors",
    "row_class_errors",
]
