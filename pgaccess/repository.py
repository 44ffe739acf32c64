"""Typed repositories bound to a unit of work.

A repository names its table, its row class (a slotted dataclass whose fields are the
columns, in order) and its key; the common statements are generated once per class from
those identifiers - validated and quoted, never taken from user input - and the rest come
from named SQL (``self.query("name", ...)``)::

    @dataclass(slots=True)
    class Project:
        tenant_id: UUID
        id: UUID
        name: str
        ...

    class ProjectRepository(TenantAwareRepository[Project]):
        table = "projects"
        row = Project

    async with db.transaction(tenant=t) as uow:
        projects = uow.repo(ProjectRepository)
        p = await projects.find_by_id(pid)

``TenantAwareRepository`` never filters by tenant in Python: PostgreSQL's RLS does it.
It only refuses to run without a tenant (``TenantRequired``) and fills ``tenant_id`` on
insert from the unit of work.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import asyncpg

from .errors import ParameterError, QueryError, TenantRequired, TransactionError
from .uow import UnitOfWork

if TYPE_CHECKING:
    from .executor import Executor, Method, Runtime

# What format_type() prints: a (possibly schema-qualified, possibly quoted) name, words such
# as "with time zone", a type modifier, array brackets - nothing that could end a cast.
_TYPE_WORD = r"(?: (?:varying|precision|with|without|time|zone|to|year|month|day|hour|minute|second))"
_TYPE_NAME = re.compile(
    r'^(?:(?:[a-z_][a-z0-9_$]*|"[^"]+")\.)?(?:[a-z_][a-z0-9_$]*|"[^"]+")'
    rf"{_TYPE_WORD}*(?:\(\d+(?:,\d+)?\))?{_TYPE_WORD}*(?:\[\])*$"
)

# Column types of tables, per runtime (database), read once from the catalogue.
_column_types: weakref.WeakKeyDictionary[Runtime, dict[str, dict[str, str]]] = (
    weakref.WeakKeyDictionary()
)

Row = TypeVar("Row")

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Batches at least this large go through COPY into a temporary table, smaller ones through
# one INSERT ... SELECT FROM unnest(...). Measured in bench/ (W4): unnest wins below ~2k rows.
COPY_THRESHOLD = 2000


def ident(name: str) -> str:
    """Validate and quote an identifier (``schema.table`` allowed)."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENT.match(p) for p in parts):
        raise ParameterError(
            f"invalid identifier {name!r}: lower-case letters, digits and _ only"
        )
    return ".".join(f'"{p}"' for p in parts)


@dataclass(frozen=True, slots=True)
class Page(Generic[Row]):
    """One page of a keyset scan. Pass ``next_cursor`` as ``after=`` for the next page."""

    rows: list[Row]
    next_cursor: tuple[Any, ...] | None


class BaseRepository(Generic[Row]):
    """Common reads and writes for one table, on the unit of work it is bound to."""

    table: ClassVar[str]
    row: ClassVar[type[Any]]
    key: ClassVar[str] = "id"
    # The table's schema when ``table`` does not name one: generated SQL is always
    # schema-qualified, so nothing in a search path (or pg_temp) can shadow the table.
    schema: ClassVar[str] = "public"
    # A stable, unique order for keyset pagination (ends with a unique column).
    order_by: ClassVar[tuple[str, ...]] = ("id",)

    # Column that routes a statement to one shard of a distributed table (Citus): set by
    # TenantAwareRepository to ``tenant_id``; added to each WHERE on a Citus coordinator.
    route_by: ClassVar[str | None] = None

    _columns: ClassVar[tuple[str, ...]]
    _column_set: ClassVar[frozenset[str]]
    _shape_cache: ClassVar[dict[tuple[str, tuple[str, ...], bool], str]]
    _names: ClassVar[dict[str, str]]
    _qualified: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "table") or not hasattr(cls, "row"):
            return  # an intermediate base class
        if not dataclasses.is_dataclass(cls.row):
            raise TypeError(f"{cls.__name__}.row must be a dataclass (got {cls.row!r})")
        cls._columns = tuple(f.name for f in dataclasses.fields(cls.row))
        cls._column_set = frozenset(cls._columns)
        for name in (cls.key, *cls.order_by, *([cls.route_by] if cls.route_by else [])):
            if name not in cls._columns:
                raise TypeError(f"{cls.__name__}: {name!r} is not a field of {cls.row.__name__}")
        cls._qualified = cls.table if "." in cls.table else f"{cls.schema}.{cls.table}"
        ident(cls._qualified)  # validated now, not on first use
        cls._shape_cache = {}
        cls._names = {op: f"{cls.__name__}.{op}" for op in (
            "find_by_id", "find_by_ids", "exists", "count", "find_page", "find_where",
            "insert", "insert_many", "update", "delete")}

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    # -- mapping ---------------------------------------------------------------------------

    def _row(self, record: asyncpg.Record | None) -> Row | None:
        return None if record is None else self.row(*record)  # type: ignore[no-any-return,unused-ignore]

    def _rows(self, records: Iterable[asyncpg.Record]) -> list[Row]:
        return list(itertools.starmap(self.row, records))  # faster than row(*r) per Record

    def _check_columns(self, names: Iterable[str], what: str) -> list[str]:
        names = list(names)
        unknown = [n for n in names if n not in self._column_set]
        if unknown:
            raise ParameterError(
                f"{type(self).__name__}.{what}: unknown column(s) {unknown}; "
                f"columns of {self.table}: {list(self._columns)}"
            )
        return names

    def _run_name(self, op: str) -> str:
        """``ProjectRepository.find_by_id``: the name queries are logged and measured by."""
        return self._names.get(op) or f"{type(self).__name__}.{op}"

    def _routed(self) -> bool:
        """Whether to add the routing predicate: a tenant table on a Citus coordinator."""
        executor = self.executor
        return (self.route_by is not None and executor.tenant is not None
                and executor.runtime.pool.distributed)

    async def _run(self, method: Method, kind: str, args: Sequence[Any], op: str,
                   names: tuple[str, ...] = ()) -> Any:
        """Run the statement ``kind`` this class generates (vetted: never built from input;
        values bound), with the routing predicate's value appended when routed."""
        routed = self._routed()
        sql = self._shaped_sql(kind, names, routed)
        if routed:
            args = (*args, self.executor.tenant)
        return await self.executor.run(method, sql, args, self._run_name(op), vetted=True)

    async def _run_sql(self, method: Method, sql: str, args: Sequence[Any], op: str) -> Any:
        return await self.executor.run(method, sql, args, self._run_name(op), vetted=True)

    @classmethod
    def _shaped_sql(cls, kind: str, names: tuple[str, ...], routed: bool = False) -> str:
        """SQL for ``kind`` over the column ``names``, generated once per shape. ``routed``
        adds ``<route_by> = $<last>`` to the WHERE clause."""
        cache_key = (kind, names, routed)
        sql = cls._shape_cache.get(cache_key)
        if sql is not None:
            return sql
        table, cols = ident(cls._qualified), ", ".join(ident(c) for c in cls._columns)
        key, order = ident(cls.key), ", ".join(ident(c) for c in cls.order_by)
        n = len(cls.order_by)

        def where(condition: str, params: int) -> str:
            if not routed or cls.route_by is None:
                return f" WHERE {condition}" if condition else ""
            route = f"{ident(cls.route_by)} = ${params + 1}"
            return f" WHERE {condition} AND {route}" if condition else f" WHERE {route}"

        if kind == "find_by_id":
            sql = f"SELECT {cols} FROM {table}{where(f'{key} = $1', 1)}"
        elif kind == "find_by_ids":
            sql = f"SELECT {cols} FROM {table}{where(f'{key} = ANY($1)', 1)}"
        elif kind == "exists":
            sql = f"SELECT EXISTS (SELECT 1 FROM {table}{where(f'{key} = $1', 1)})"
        elif kind == "count":
            sql = f"SELECT count(*) FROM {table}{where('', 0)}"
        elif kind == "delete":
            sql = f"DELETE FROM {table}{where(f'{key} = $1', 1)}"
        elif kind == "next_page":
            after = ", ".join(f"${i + 1}" for i in range(n))
            sql = (f"SELECT {cols} FROM {table}{where(f'({order}) > ({after})', n + 1)} "
                   f"ORDER BY {order} LIMIT ${n + 1}")
        elif kind == "insert":
            params = ", ".join(f"${i + 1}" for i in range(len(names)))
            sql = (f"INSERT INTO {table} ({', '.join(ident(c) for c in names)}) VALUES ({params}) "
                   f"RETURNING {cols}")
        elif kind == "update":
            sets = ", ".join(f"{ident(c)} = ${i + 2}" for i, c in enumerate(names))
            sql = f"UPDATE {table} SET {sets}{where(f'{key} = $1', len(names) + 1)} RETURNING {cols}"
        elif kind.startswith("first_page "):
            sql = f"SELECT {cols} FROM {table}{where('', 0)} ORDER BY {order} LIMIT {int(kind.split()[1])}"
        elif kind == "find_where":
            condition = " AND ".join(f"{ident(c)} = ${i + 1}" for i, c in enumerate(names)) or "true"
            sql = (f"SELECT {cols} FROM {table}{where(condition, len(names) + 1)} "
                   f"ORDER BY {order} LIMIT ${len(names) + 1}")
        else:
            raise ValueError(f"unknown statement kind {kind!r}")
        if len(cls._shape_cache) < 1024:
            cls._shape_cache[cache_key] = sql
        return sql

    # -- reads -----------------------------------------------------------------------------

    async def find_by_id(self, key: Any) -> Row | None:
        rec = await self._run("fetchrow", "find_by_id", (key,), "find_by_id")
        return self._row(rec)

    async def find_by_ids(self, keys: Sequence[Any]) -> list[Row]:
        """Rows for ``keys`` in the order given; missing keys are skipped, duplicates
        appear once (at their first position). One query (``= ANY($1)``)."""
        if not keys:
            return []
        records = await self._run("fetch", "find_by_ids", (list(keys),), "find_by_ids")
        rows = self._rows(records)
        by_key = {getattr(r, self.key): r for r in rows}
        seen: set[Any] = set()
        out: list[Row] = []
        for k in keys:
            if k in by_key and k not in seen:
                seen.add(k)
                out.append(by_key[k])
        return out

    async def exists(self, key: Any) -> bool:
        return bool(await self._run("fetchval", "exists", (key,), "exists"))

    async def count(self) -> int:
        return int(await self._run("fetchval", "count", (), "count"))

    async def find_page(self, limit: int = 50, after: Sequence[Any] | None = None) -> Page[Row]:
        """Keyset pagination on ``order_by``: stable under concurrent inserts, no OFFSET."""
        if type(limit) is not int or not 1 <= limit <= 10_000:
            raise ParameterError(f"limit must be an int in 1..10000, got {limit!r}")
        if after is None:
            # The page size is written into the SQL (a checked int, never text): without
            # parameters the statement keeps one cached generic plan. With `LIMIT $1`
            # PostgreSQL re-planned it on every call (a bound LIMIT makes custom plans look
            # cheaper), which cost 5-15% of W2's throughput at concurrency 16.
            records = await self._run("fetch", f"first_page {limit}", (), "find_page")
        else:
            if len(after) != len(self.order_by):
                raise ParameterError(
                    f"cursor must have {len(self.order_by)} values ({self.order_by}), "
                    f"got {len(after)}"
                )
            records = await self._run("fetch", "next_page", (*after, limit), "find_page")
        rows = self._rows(records)
        cursor = None
        if len(rows) == limit:
            last = rows[-1]
            cursor = tuple(getattr(last, c) for c in self.order_by)
        return Page(rows, cursor)

    async def find_where(self, limit: int = 1000, **equals: Any) -> list[Row]:
        """Rows whose columns equal the given values, in ``order_by`` order."""
        names = self._check_columns(equals, "find_where")
        records = await self._run("fetch", "find_where", (*equals.values(), limit), "find_where",
                                  tuple(names))
        return self._rows(records)

    async def find_one_where(self, **equals: Any) -> Row | None:
        rows = await self.find_where(limit=1, **equals)
        return rows[0] if rows else None

    async def query(self, name: str, **params: Any) -> list[Row]:
        """Run the named select ``name`` (from ``sql/``) and map its rows to ``row``."""
        records = await self.executor.runtime.named_queries().call(self.executor, name, params)
        if isinstance(records, list):
            return [self.row(**dict(r)) for r in records]
        return [] if records is None else [self.row(**dict(records))]

    # -- writes ----------------------------------------------------------------------------

    def _values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return dict(values)

    async def insert(self, values: Mapping[str, Any] | None = None, **kw: Any) -> Row:
        """Insert one row; returns it as stored (defaults filled in)."""
        data = self._values({**values, **kw} if values else kw)
        names = self._check_columns(data, "insert")
        rec = await self._run("fetchrow", "insert", tuple(data.values()), "insert", tuple(names))
        row = self._row(rec)
        assert row is not None
        return row

    async def insert_many(
        self,
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[str] | None = None,
        *,
        skip_existing: bool = False,
        method: Literal["auto", "unnest", "copy"] = "auto",
    ) -> int:
        """Insert many rows in one statement (unnest) or, for big batches, through COPY into
        a temporary table and one INSERT ... SELECT (PostgreSQL refuses COPY straight into a
        table under RLS). ``skip_existing`` adds ``ON CONFLICT DO NOTHING`` (idempotent
        loads). ``method`` forces one path. Returns the number of rows inserted."""
        if not rows:
            return 0
        data = [self._values(r) for r in rows]
        names = self._check_columns(columns or list(data[0]), "insert_many")
        try:
            records = [tuple(r[c] for c in names) for r in data]
        except KeyError as exc:
            raise ParameterError(f"insert_many: a row lacks column {exc}; every row needs {names}") from None
        types = await self._column_types()
        conflict = " ON CONFLICT DO NOTHING" if skip_existing else ""
        if method == "copy" or (method == "auto" and len(records) >= COPY_THRESHOLD):
            return await self._insert_via_copy(names, records, types, conflict)
        casts = ", ".join(f"${i + 1}::{types[c]}[]" for i, c in enumerate(names))
        cols = ", ".join(ident(c) for c in names)
        sql = f"INSERT INTO {ident(self._qualified)} ({cols}) SELECT * FROM unnest({casts}){conflict}"
        arrays = [list(col) for col in zip(*records, strict=True)]
        status = await self._run_sql("execute", sql, arrays, "insert_many")
        return int(status.rsplit(" ", 1)[-1])

    async def _insert_via_copy(self, names: list[str], records: list[tuple[Any, ...]],
                               types: dict[str, str], conflict: str) -> int:
        executor, name = self.executor, self._run_name("insert_many")
        if not isinstance(executor, UnitOfWork):
            raise TransactionError(
                f"{name} through COPY needs a unit of work (its load table lives for one "
                "transaction): call it inside `async with db.transaction(...)`, or pass "
                "method='unnest'"
            )
        # A fresh name in pg_temp, created here (never IF NOT EXISTS: nothing anyone else
        # made is reused); ON COMMIT DROP: it never outlives the unit of work.
        temp = f"pgaccess_load_{uuid.uuid4().hex}"
        cols = ", ".join(ident(c) for c in names)
        defs = ", ".join(f"{ident(c)} {types[c]}" for c in names)
        await self._run_sql("execute", f'CREATE TEMP TABLE pg_temp."{temp}" ({defs}) ON COMMIT DROP',
                        (), "insert_many")
        await executor.copy_records_to_table(temp, records=records, columns=names,
                                             schema_name="pg_temp", name=name)
        status = await self._run_sql(
            "execute",
            f'INSERT INTO {ident(self._qualified)} ({cols}) SELECT {cols} FROM pg_temp."{temp}"{conflict}',
            (), "insert_many",
        )
        return int(status.rsplit(" ", 1)[-1])

    async def _column_types(self) -> dict[str, str]:
        cache = _column_types.setdefault(self.executor.runtime, {})
        types = cache.get(self._qualified)
        if types is None:
            # Looked up by the qualified name and never from a temporary schema, so no
            # temporary table can shadow it (the cache is shared by every tenant).
            records = await self._run_sql(
                "fetch",
                "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type "
                "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                tuple(self._qualified.split(".", 1)),
                "column_types",
            )
            types = {r["attname"]: r["type"] for r in records}
            if not types:
                raise ParameterError(f"{type(self).__name__}: table {self._qualified} not found")
            odd = sorted(t for t in types.values() if not _TYPE_NAME.match(t))
            if odd:  # they are written into SQL: only ever a type name
                raise QueryError(
                    f"{type(self).__name__}: the catalogue returned {odd} as column types of "
                    f"{self._qualified}; refusing to use them (a tampered session?)"
                )
            if self.executor.session_trusted:  # shared by every tenant: only from a clean session
                cache[self._qualified] = types
        return types

    async def update(self, key: Any, values: Mapping[str, Any] | None = None, **kw: Any) -> Row | None:
        """Set the given columns of the row with ``key``; returns the new row or None."""
        data = {**(values or {}), **kw}
        names = self._check_columns(data, "update")
        if not names:
            raise ParameterError("update: give at least one column to set")
        rec = await self._run("fetchrow", "update", (key, *data.values()), "update", tuple(names))
        return self._row(rec)

    async def delete(self, key: Any) -> bool:
        status = await self._run("execute", "delete", (key,), "delete")
        return bool(status.endswith(" 1"))


class TenantAwareRepository(BaseRepository[Row]):
    """For tenant-owned tables: needs a tenant (or the system context); RLS filters.

    On a Citus coordinator its statements also name the tenant (``tenant_id = $n``, the
    unit of work's tenant) so that Citus routes them to one shard; RLS still enforces it.
    """

    route_by: ClassVar[str | None] = "tenant_id"

    def __init__(self, executor: Executor) -> None:
        if executor.tenant is None and not executor.system:
            raise TenantRequired(
                f"{type(self).__name__} works on tenant-owned data and this executor has no "
                "tenant: use db.transaction(tenant=...) / db.autocommit(tenant=...) or "
                "`with tenant_scope(...)`, or system=True with a reason for cross-tenant jobs"
            )
        super().__init__(executor)

    def _values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        data = dict(values)
        if "tenant_id" not in data and self.executor.tenant is not None:
            data = {"tenant_id": self.executor.tenant, **data}
        return data

    # The story's names for tenant-scoped finds; the filter itself is RLS.
    async def find_with_tenant(self, limit: int = 1000, **equals: Any) -> list[Row]:
        return await self.find_where(limit=limit, **equals)

    async def find_one_with_tenant(self, **equals: Any) -> Row | None:
        return await self.find_one_where(**equals)


__all__ = ["COPY_THRESHOLD", "BaseRepository", "Page", "TenantAwareRepository", "ident"]
