"""The tenants the test fixtures hand out: rows of the project's own tenant table.

By default two new rows are inserted into the template (so every clone has them); columns
that need a value and have no default get a unique lowercase text, a new uuid, the next
number, ``false`` or the enum's first label. Projects whose tenant rows need more than
that name existing (seeded) tenants instead: ``pick`` entries are ``column=value`` or a
primary key value.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..errors import ConfigError


@dataclass(frozen=True)
class TenantChoice:
    table: str = "tenants"
    pick: tuple[str, ...] = ()


async def fixture_tenants(owner_dsn: str, choice: TenantChoice, count: int = 2) -> tuple[Any, ...]:
    """Primary keys of ``count`` tenants of ``choice.table`` in ``owner_dsn``'s database."""
    con = await asyncpg.connect(owner_dsn)
    try:
        table, key = await _table_and_key(con, choice.table)
        if choice.pick:
            if len(choice.pick) < count:
                raise ConfigError(
                    f"test_tenants / pgaccess_tenants names {len(choice.pick)} tenant(s); "
                    f"the fixtures need {count}")
            return tuple([await _pick(con, table, key, entry) for entry in choice.pick[:count]])
        return tuple([await _create(con, table, key, label) for label in "ab"[:count]])
    finally:
        await con.close()


async def _table_and_key(con: asyncpg.Connection, name: str) -> tuple[str, str]:
    """(quoted table, quoted single-column primary key)."""
    row = await con.fetchrow(
        """SELECT c.oid::regclass::text AS tbl,
                  array_agg(quote_ident(a.attname)) FILTER (WHERE a.attname IS NOT NULL) AS pk
           FROM pg_class c
           LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
           LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
           WHERE c.oid = to_regclass($1)
           GROUP BY c.oid""",
        name,
    )
    if row is None:
        raise ConfigError(
            f"tenant table {name!r} does not exist after the migrations: set tenant_table in "
            "[tool.pgaccess] (or the pgaccess_tenant_table ini option) to your tenant table")
    if not row["pk"] or len(row["pk"]) != 1:
        raise ConfigError(f"tenant table {row['tbl']} needs a single-column primary key")
    return row["tbl"], row["pk"][0]


async def _pick(con: asyncpg.Connection, table: str, key: str, entry: str) -> Any:
    column, sep, value = entry.partition("=")
    if not sep:
        column, value = key, entry
    else:
        column = await con.fetchval("SELECT quote_ident($1)", column.strip())
    try:
        rows = await con.fetch(f"SELECT {key} FROM {table} WHERE {column}::text = $1 LIMIT 2", value.strip())
    except asyncpg.UndefinedColumnError:
        raise ConfigError(
            f"test_tenants / pgaccess_tenants entry {entry!r}: {table} has no column {column}"
        ) from None
    if len(rows) != 1:
        found = "no" if not rows else "more than one"
        raise ConfigError(f"test_tenants / pgaccess_tenants entry {entry!r} matches {found} row of {table} "
                          "(after migrations and seeders)")
    return rows[0][0]


async def _create(con: asyncpg.Connection, table: str, key: str, label: str) -> Any:
    required = await con.fetch(
        """SELECT quote_ident(a.attname) AS col, a.atttypid::regtype::text AS type,
                  t.typcategory::text AS category
           FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
           WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
             AND a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
           ORDER BY a.attnum""",
        table,
    )
    text = f"tenant-{label}-{secrets.token_hex(4)}.test"
    columns: list[str] = []
    values: list[str] = []
    for r in required:
        if r["category"] == "S":
            expr = "$1"
        elif r["type"] == "uuid":
            expr = "gen_random_uuid()"
        elif r["category"] == "N":
            expr = f"(SELECT coalesce(max({r['col']}), 0) + 1 FROM {table})"
        elif r["category"] == "B":
            expr = "false"
        elif r["category"] == "E":
            expr = f"enum_first(NULL::{r['type']})"
        else:
            raise ConfigError(
                f"cannot invent a value for {table}.{r['col']} ({r['type']}) to create a test "
                "tenant: name existing tenants with the pgaccess_tenants ini option "
                "(e.g. `domain=acme.example`)")
        columns.append(r["col"])
        values.append(f"{expr}::{r['type']}")
    sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(values)}) RETURNING {key}"
           if columns else f"INSERT INTO {table} DEFAULT VALUES RETURNING {key}")
    try:
        return await con.fetchval(sql, *([text] if "$1" in sql else []))
    except asyncpg.PostgresError as exc:
        raise ConfigError(
            f"could not create a test tenant in {table} ({type(exc).__name__}: {exc}); name "
            "existing tenants with the pgaccess_tenants ini option instead") from None
